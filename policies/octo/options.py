"""The ``?key=value`` options of both Octo families, declared once.

``octo_jax`` and ``octo_pt`` load the same checkpoints and turn observations into actions the
same way (``policies/octo/inputs.py``), so they read one :class:`OctoOptions`; the few options
only the torch family has (device, compilation, partial loading) say so in ``only``, and the
other family refuses them as unknown. ``evalharness policies`` prints this table from the
field docstrings below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evalharness.policies.common.options import option_field

__all__ = ["OctoOptions"]

_TORCH = ("octo_pt",)


@dataclass(frozen=True)
class OctoOptions:
    """How an Octo checkpoint is loaded and run (``octo_jax:PATH?key=value&...``)."""

    step: int | None = option_field(None, minimum=0)
    """checkpoint step (``<step>`` folder) to load; default: the latest."""
    stats: str | None = None
    """dataset key in a multi-dataset ``dataset_statistics.json`` (e.g.
    ``libero_spatial_no_noops``); not needed when the file holds one dataset (the error lists
    them)."""
    strict: bool = True
    """``false`` loads what fits the config and initializes the rest fresh, reporting it."""
    tokenizer: str | None = None
    """folder with the instruction tokenizer's ``tokenizer.json`` (overrides the name in
    ``config.json``, e.g. ``t5-base`` offline)."""
    exec_horizon: int | None = option_field(None, minimum=1)
    """actions executed per chunk before the next query; default: the whole chunk."""
    temporal_ensemble: float | None = None
    """exponential weight: ensemble overlapping chunks (Octo's/ACT's wrapper) instead of
    executing chunks."""
    seed: int = 0
    """mixed into every episode's noise stream."""
    normalization: Literal["normal", "bounds"] | None = None
    """how actions were normalized; default: the config's
    ``dataset_kwargs.action_proprio_normalization_type``, else ``normal``."""
    gripper: Literal["octo", "libero", "none"] = "octo"
    """the checkpoint's gripper convention: ``octo`` (1 open, 0 closed), ``libero`` (already
    −1 open, +1 close) or ``none`` (no conversion)."""
    resize: Literal["policy", "env"] = "policy"
    """``policy`` resizes images in the adapter (lanczos3 + antialias, as Octo's pipeline);
    ``env`` declares the sizes so the runner's ResizeImage wrapper does it."""
    device: str = option_field("cpu", only=_TORCH)
    """torch device: ``cpu``, ``cuda`` or ``cuda:N``."""
    compile: bool = option_field(False, only=_TORCH)
    """``torch.compile`` the transformer stack (the first call is slow)."""
    threads: int | None = option_field(None, minimum=1, only=_TORCH)
    """torch's intra-op CPU threads (process-wide); 1 avoids oversubscription on a CPU shared
    with env workers."""
    skip: str | None = option_field(None, only=_TORCH)
    """regex: parameters whose torch name or Flax path it finds keep fresh values."""
    non_strict: str | None = option_field(None, only=_TORCH)
    """regex: matching parameters of another shape get the overlapping slice."""
