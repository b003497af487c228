"""A small, loadable instance of a policy family and observations for it.

Each family's entry (:class:`~evalharness.policies.registry.PolicyFamily`) names an
``example(fixtures) -> PolicyExample``. The contract test (``tests/test_policy_contract.py``)
runs every registered family's example through the same checks, and
``benchmarks/policy_latency.py`` times its ``act()``; neither names a family. ``fixtures`` is the
folder holding the upstream-written conformance checkpoints (an Octo test checkpoint from
octo-models/octo, a robomimic ``DiffusionPolicyUNet`` written by robomimic's own ``train.py``);
examples that need none ignore it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.policies.base import Policy, PolicySpec

__all__ = ["PolicyExample", "example_tasks", "replaced", "standard_observations"]

#: the LIBERO proprio width: eef position 3 + axis-angle 3 + gripper qpos 2.
PROPRIO_DIM = 8
#: LIBERO's arm joint angles (``joint_states``), read by robomimic-trained checkpoints.
JOINT_DIM = 7


def standard_observations(
    spec: PolicySpec,
    seeds: Sequence[int],
    camera_size: int = 64,
    camera_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Windowed standard observations for one row per episode seed.

    Row i depends on ``seeds[i]`` alone (drawn from ``default_rng(seed)``), so the same
    episode gets the same observation whatever shares its batch. Each camera comes at
    ``camera_sizes[key]``, else at ``spec.image_sizes[key]``, else at ``camera_size``.
    """
    window = spec.window_size
    sizes = {**dict(spec.image_sizes), **dict(camera_sizes or {})}
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(int(seed) % 2**63)
        row: dict[str, np.ndarray] = {}
        for key in ("image_primary", "image_wrist"):
            h, w = sizes.get(key, (camera_size, camera_size))
            row[key] = rng.integers(0, 256, (window, h, w, 3), dtype=np.uint8)
        row["proprio"] = rng.normal(0.0, 0.1, (window, PROPRIO_DIM)).astype(np.float32)
        row["joint_states"] = rng.normal(0.0, 0.3, (window, JOINT_DIM)).astype(np.float32)
        row["timestep_pad_mask"] = np.ones(window, dtype=bool)
        rows.append(row)
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def example_tasks(seeds: Sequence[int], starts: Sequence[bool], instruction: str) -> dict[str, Any]:
    """The ``tasks`` dict the runner sends for these episodes."""
    return {
        "language_instruction": [instruction] * len(seeds),
        "episode_seed": np.asarray(seeds, dtype=np.int64),
        "episode_start": np.asarray(starts, dtype=bool),
    }


@contextlib.contextmanager
def _unchanged(policy: Policy) -> Iterator[None]:
    yield


@contextlib.contextmanager
def replaced(obj: Any, name: str, stand_in: Any) -> Iterator[None]:
    """``obj.name`` is ``stand_in`` inside the block (an instance attribute, removed after)."""
    had = name in vars(obj)
    before = vars(obj).get(name)
    setattr(obj, name, stand_in)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, before)
        else:
            delattr(obj, name)


@dataclass(frozen=True)
class PolicyExample:
    """What the contract test and the latency benchmark need to exercise a family."""

    policy: str
    """a policy string that loads a small instance (a tiny checkpoint, or none)."""
    model: str = "example"
    """what it loads, in a few words (the latency benchmark's row label)."""
    files: tuple[Path, ...] = ()
    """files the string needs; where one is absent, checks are skipped and say so."""
    observations: Callable[[PolicySpec, Sequence[int]], Mapping[str, Any]] = standard_observations
    """``observations(spec, seeds)``: one windowed observation row per episode seed, each
    depending on its own seed only."""
    instruction: str = "put the black bowl on the plate"
    """the language instruction of every example episode."""
    non_strict: Callable[[Path], str] | None = None
    """``non_strict(tmp_dir)`` writes a checkpoint whose weights do not all fit its config and
    returns the policy string that loads it with ``strict=false``; None for families that
    load no weights."""
    finetune: str | None = None
    """the ``FAMILY:CHECKPOINT`` a finetune of this example starts from (no act-time options),
    for ``benchmarks/finetune_throughput.py``; None for families without a trainer."""
    finetune_data: str = "libero"
    """the dataset-spec preset that finetune reads demonstrations with."""
    learning_recipe: tuple[str, ...] = ()
    """``evalharness finetune`` arguments that make this family learn one LIBERO task from a few
    dozen demos (``benchmarks/learn_from_demos.py``; the reasons are in
    ``docs/learning-from-demos.md``); empty where no recipe has been measured."""
    cheap_network: Callable[[Policy], contextlib.AbstractContextManager[Any]] = field(
        default=_unchanged
    )
    """a context in which the network is replaced by a stand-in returning zeros of the right
    shape, leaving everything else in ``act()`` (per-episode state above all) as it is; used
    where a check needs a thousand calls. Families without a network keep the default."""

    def tasks(self, seeds: Sequence[int], starts: Sequence[bool]) -> dict[str, Any]:
        """The ``tasks`` dict for these episodes, with this example's instruction."""
        return example_tasks(seeds, starts, self.instruction)
