"""What a family's ``doctor`` hook reports about a checkpoint, family-neutrally.

``evalharness doctor`` (``evalharness/doctor.py``) compares a checkpoint with a dataset and
the environment. The checkpoint side is the family's: its entry names a hook

    describe(path: str, options: dict[str, str], findings: list[Finding]) -> CheckpointFacts

that reads the checkpoint without building the policy where it can, appends what it found
about the weights and statistics to ``findings``, and returns the facts the family-neutral
checks compare. A family without a hook gets the facts its loaded ``PolicySpec`` declares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SEVERITIES", "CheckpointFacts", "DataCheck", "Finding"]

SEVERITIES = ("ok", "info", "warning", "error")


@dataclass(frozen=True)
class Finding:
    """One check's outcome: what was compared, what was found, how to fix it."""

    severity: str
    topic: str
    message: str
    fix: str = ""


#: ``check(dataset, first_episode, findings)``: a family's own checks of a dataset against its
#: checkpoint (which data array feeds each checkpoint key, ...).
DataCheck = Callable[[Any, Mapping[str, Any], list[Finding]], None]


@dataclass
class CheckpointFacts:
    """What the checkpoint's model takes and produces, family-neutrally."""

    image_sizes: dict[str, tuple[int, int]]
    lowdim: dict[str, int]
    window_size: int
    action_horizon: int
    action_dim: int
    needs_language: bool
    statistics: dict[str, Any]
    directory: Path | None
    #: the model's gripper convention (``octo``, ``libero`` or ``none``).
    gripper: str = "octo"
    #: who converts the data's gripper for training when the family's trainer does it itself
    #: (e.g. "the diffusion trainer"); "" when the dataset spec's conversion must match.
    gripper_converted_by: str = ""
    #: how the model resizes images, for the image-size notes.
    resize: str = "lanczos3, as Octo"
    #: the policy options that change window and horizon when finetuning.
    horizon_options: str = "?window_size=N / ?action_horizon=N"
    #: the family's extra dataset checks, run after the family-neutral ones.
    data_checks: list[DataCheck] = field(default_factory=list)
