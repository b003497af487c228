"""Evaluation protocols as named presets.

Harnesses disagree on episodes per task, step limits, warm-up and render size, and a success
rate is only comparable to another measured under the same protocol. Each preset below is the
published setting of one harness (each names its upstream file in ``source``); every field can
be overridden, and the resolved values are written into `run.json` and the summary header.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from evalharness.envs.libero import SUITES
from evalharness.envs.suites import base_suite
from evalharness.errors import EvalharnessError


class ProtocolError(EvalharnessError, ValueError):
    """A protocol name or override that does not exist or is out of range."""


GRIPPER_OPEN_NOOP = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
ZERO_ACTION = (0.0,) * 7


@dataclass(frozen=True)
class Protocol:
    """How episodes are run: counts, limits, warm-up and render size.

    Episode `i` of a task starts from official init state `i % num_init_states` with seed
    `seed + i`.
    """

    name: str
    episodes_per_task: int
    max_steps: Mapping[str, int]
    num_steps_wait: int
    wait_action: tuple[float, ...]
    camera_size: int
    seed: int
    source: str = ""
    notes: str = ""
    overrides: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Read-only, so an overridden copy can never change the preset it came from.
        object.__setattr__(self, "max_steps", MappingProxyType(dict(self.max_steps)))
        if self.episodes_per_task < 1:
            raise ProtocolError(
                f"protocol {self.name}: episodes_per_task must be >= 1, got {self.episodes_per_task}"
            )
        for suite, steps in self.max_steps.items():
            if steps < 1:
                raise ProtocolError(
                    f"protocol {self.name}: max_steps[{suite}] must be >= 1, got {steps}"
                )
        if self.num_steps_wait < 0:
            raise ProtocolError(
                f"protocol {self.name}: num_steps_wait must be >= 0, got {self.num_steps_wait}"
            )
        if len(self.wait_action) != 7:
            raise ProtocolError(
                f"protocol {self.name}: wait_action must have 7 values, got {list(self.wait_action)}"
            )
        if self.camera_size < 8:
            raise ProtocolError(
                f"protocol {self.name}: camera_size must be >= 8, got {self.camera_size}"
            )

    def max_steps_for(self, suite: str) -> int:
        """The step limit of `suite` (warm-up steps not counted); a perturbation suite
        (LIBERO-PRO's `libero_spatial_lan`, ...) takes its base suite's, as LIBERO-PRO does."""
        base = base_suite(suite)
        if suite not in self.max_steps and base in self.max_steps:
            return int(self.max_steps[str(base)])
        if suite not in self.max_steps:
            raise ProtocolError(
                f"protocol {self.name} has no step limit for suite {suite!r}; "
                f"it knows {', '.join(self.max_steps)}"
            )
        return int(self.max_steps[suite])

    def with_overrides(self, **changes: Any) -> Protocol:
        """A copy with some fields replaced; `max_steps` may be one int for every suite."""
        changes = {k: v for k, v in changes.items() if v is not None}
        known = {f.name for f in dataclasses.fields(self)} - {
            "name",
            "overrides",
            "source",
            "notes",
        }
        unknown = set(changes) - known
        if unknown:
            raise ProtocolError(
                f"unknown protocol field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        if isinstance(changes.get("max_steps"), int):
            changes["max_steps"] = dict.fromkeys(self.max_steps, changes["max_steps"])
        if "wait_action" in changes:
            changes["wait_action"] = tuple(float(x) for x in changes["wait_action"])
        if not changes:
            return self
        return dataclasses.replace(
            self, overrides=tuple(sorted(set(self.overrides) | set(changes))), **changes
        )

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["max_steps"] = dict(self.max_steps)
        data["wait_action"] = list(self.wait_action)
        data["overrides"] = list(self.overrides)
        return data


#: OpenVLA's limits: the longest training demo of each suite plus a margin (193, 254, 270, 505, 373).
OPENVLA_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}

PROTOCOLS: dict[str, Protocol] = {
    "openvla": Protocol(
        name="openvla",
        episodes_per_task=50,
        max_steps=OPENVLA_MAX_STEPS,
        num_steps_wait=10,
        wait_action=GRIPPER_OPEN_NOOP,
        camera_size=256,
        seed=7,
        source="openvla/openvla experiments/robot/libero/run_libero_eval.py (also OFT, openpi)",
        notes="init states 0..49; 10 gripper-open no-op wait steps not counted; 256 px render",
    ),
    "libero": Protocol(
        name="libero",
        episodes_per_task=20,
        max_steps=dict.fromkeys(SUITES, 600),
        num_steps_wait=5,
        wait_action=ZERO_ACTION,
        camera_size=128,
        seed=10000,
        source="Lifelong-Robot-Learning/LIBERO libero/lifelong/metric.py, configs/eval/default.yaml",
        notes="n_eval 20, max_steps 600, 5 zero-action physics warm-up steps, 128 px",
    ),
    "lerobot": Protocol(
        name="lerobot",
        episodes_per_task=50,
        # LeRobot copied OpenVLA's limits but raised libero_spatial to 280 (PR #1984).
        max_steps={**OPENVLA_MAX_STEPS, "libero_spatial": 280},
        num_steps_wait=10,
        wait_action=GRIPPER_OPEN_NOOP,
        camera_size=360,
        seed=1000,
        source="huggingface/lerobot src/lerobot/envs/libero.py, envs/configs.py, EvalConfig",
        notes="n_episodes 50 (docs use 10); per-episode seeds 1000+i; 360 px default render",
    ),
}


def get_protocol(name: str) -> Protocol:
    """A preset by name, with an error listing the presets."""
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
