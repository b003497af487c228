"""The ``scripted`` family: a waypoint expert reading privileged simulator state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.policies.base import PolicySpec
from evalharness.policies.examples import PolicyExample
from evalharness.policies.registry import PolicyFamily
from evalharness.policies.scripted.policy import ScriptedOptions


def _box(pos: np.ndarray, half: Sequence[float]) -> dict[str, Any]:
    half_size = np.asarray(half, dtype=float)
    return {
        "pos": pos,
        "mat": np.eye(3),
        "bbox": np.stack([pos - half_size, pos + half_size]),
        "extent": np.stack([-half_size, half_size]),
        "fixture": False,
    }


def tabletop_state(seed: int) -> dict[str, Any]:
    """Privileged state of a bowl and a plate on a table, placed by ``seed``, without a
    simulator: what ``LiberoEnv.privileged_state`` holds, for the parts the expert reads."""
    rng = np.random.default_rng(seed)
    bowl = np.array([*rng.uniform(-0.15, 0.15, 2), 0.92])
    plate = np.array([*rng.uniform(-0.15, 0.15, 2), 0.91])
    down = np.diag([1.0, -1.0, -1.0])  # gripper pointing at the table
    return {
        "eef_pos": np.array([*rng.uniform(-0.05, 0.05, 2), 1.1]),
        "eef_mat": down,
        "gripper_qpos": np.array([0.04, -0.04]),
        "objects": {
            "akita_black_bowl_1": _box(bowl, (0.05, 0.05, 0.025)),
            "plate_1": _box(plate, (0.08, 0.08, 0.01)),
        },
        "sites": {},
        "joints": {},
        "goal": [["on", "akita_black_bowl_1", "plate_1"]],
        "obj_of_interest": ["akita_black_bowl_1", "plate_1"],
    }


def privileged_observations(spec: PolicySpec, seeds: Sequence[int]) -> dict[str, Any]:
    """One :func:`tabletop_state` per episode seed, batched as the runner batches them."""
    privileged = np.empty(len(seeds), dtype=object)
    privileged[:] = [tabletop_state(int(seed) % 2**32) for seed in seeds]
    return {"privileged": privileged}


def example(fixtures: Path) -> PolicyExample:
    """The expert on a simulator-free tabletop scene."""
    return PolicyExample("scripted", observations=privileged_observations)


FAMILIES = (
    PolicyFamily(
        name="scripted",
        summary="waypoint expert on privileged simulator state (records demonstrations)",
        policy="evalharness.policies.scripted.policy:make_scripted",
        options=ScriptedOptions,
        usage="scripted?strict=true",
        example=example,
    ),
)
