"""Evaluation protocols as named presets.

Harnesses disagree on episodes per task, step limits, warm-up, render size and how they seed
the scenes, and a success rate is only comparable to another measured under the same
protocol. Each preset below is the published setting of one harness (each names its upstream
file in ``source``) and states that harness's env semantics in ``semantics``: seeding, reset,
init-state assignment, warm-up, the image preprocessing before its policy, the proprio and
action conventions and the replan length. evalharness follows the outcome-relevant ones
(``seeding``/``env_seed``, warm-up, step limits, render size, init states i % N); the rest are
the policy's side of the contract (`evalharness doctor --protocol P --policy X` lists them).
Every field but the descriptive ones can be overridden, and the resolved values are written
into `run.json` and the summary header.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from evalharness.envs.libero import SUITES
from evalharness.envs.scenes import PER_EPISODE, SEEDINGS, TASK_STREAM
from evalharness.envs.suites import base_suite
from evalharness.errors import EvalharnessError


class ProtocolError(EvalharnessError, ValueError):
    """A protocol name or override that does not exist or is out of range."""


GRIPPER_OPEN_NOOP = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
ZERO_ACTION = (0.0,) * 7


#: the keys of `Protocol.semantics`, in the order they are printed.
SEMANTICS_KEYS = (
    "seeding",
    "reset",
    "init_states",
    "warm_up",
    "images",
    "proprio",
    "actions",
    "replan",
)


@dataclass(frozen=True)
class Protocol:
    """How episodes are run: counts, limits, warm-up, render size and scene seeding.

    Episode `i` of a task starts from official init state `i % num_init_states`. Its scene
    (where LIBERO's placement puts the fixtures, see `evalharness.envs.scenes`) follows
    `seeding`: `task_stream` seeds the env RNG once per task with `env_seed` and episode i sees
    the state i resets later, as a loop running the task's episodes in order on one env
    does; `per_episode` seeds episode i's reset with `env_seed + i`. `env_seed` None means
    `seed`. `seed` also derives the policy's per-episode sampling seeds.
    """

    name: str
    episodes_per_task: int
    max_steps: Mapping[str, int]
    num_steps_wait: int
    wait_action: tuple[float, ...]
    camera_size: int
    seed: int
    seeding: str = PER_EPISODE
    env_seed: int | None = None
    source: str = ""
    notes: str = ""
    #: the reference harness's env semantics, one sentence per `SEMANTICS_KEYS` entry, each
    #: naming where upstream it comes from (descriptive: not overridable).
    semantics: Mapping[str, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Read-only, so an overridden copy can never change the preset it came from.
        object.__setattr__(self, "max_steps", MappingProxyType(dict(self.max_steps)))
        object.__setattr__(self, "semantics", MappingProxyType(dict(self.semantics)))
        if self.seeding not in SEEDINGS:
            raise ProtocolError(
                f"protocol {self.name}: seeding must be one of {', '.join(SEEDINGS)}, "
                f"got {self.seeding!r}"
            )
        unknown = sorted(set(self.semantics) - set(SEMANTICS_KEYS))
        if unknown:
            raise ProtocolError(
                f"protocol {self.name}: unknown semantics key(s) {unknown}; "
                f"known: {list(SEMANTICS_KEYS)}"
            )
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

    @property
    def resolved_env_seed(self) -> int:
        """The env seed: `env_seed`, or `seed` when it is None."""
        return self.seed if self.env_seed is None else int(self.env_seed)

    def episode_env_seed(self, episode_index: int) -> int:
        """The env seed recorded for episode `episode_index`: the stream's seed under
        `task_stream` (the episode's place in the stream is its index), `env_seed + i` under
        `per_episode`."""
        if self.seeding == TASK_STREAM:
            return self.resolved_env_seed
        return self.resolved_env_seed + episode_index

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
            "semantics",
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
        """The protocol as JSON-ready data (run.json, the summary header)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["max_steps"] = dict(self.max_steps)
        data["wait_action"] = list(self.wait_action)
        data["semantics"] = dict(self.semantics)
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

_HARD_RESET = (
    "LIBERO's default hard reset (OffScreenRenderEnv hard_reset=True: model rebuilt, fixtures "
    "placed again); evalharness keeps its env and restores the compiled model first, which "
    "draws and places identically"
)
_OPENVLA_WARM_UP = (
    "10 steps of [0,0,0,0,0,0,-1] (gripper open) after set_init_state, not counted in "
    "max_steps (num_steps_wait, get_libero_dummy_action)"
)
_ROBOSUITE_PROPRIO = (
    "eef pos (3) + robosuite quat2axisangle of the eef quaternion (3, no antipodal flip) + "
    "gripper qpos (2)"
)

PROTOCOLS: dict[str, Protocol] = {
    "openvla": Protocol(
        name="openvla",
        episodes_per_task=50,
        max_steps=OPENVLA_MAX_STEPS,
        num_steps_wait=10,
        wait_action=GRIPPER_OPEN_NOOP,
        camera_size=256,
        seed=7,
        seeding=TASK_STREAM,
        env_seed=0,
        source="openvla/openvla experiments/robot/libero/run_libero_eval.py, libero_utils.py "
        "(also OpenVLA-OFT)",
        notes="init states 0..49; env.seed(0) once per task, episodes in order; 10 "
        "gripper-open no-op wait steps not counted; 256 px render",
        semantics={
            "seeding": "env.seed(0) once per task env (libero_utils.get_libero_env); "
            "set_seed_everywhere(7) seeds torch/numpy before that, so --seed changes no scene",
            "reset": _HARD_RESET + "; one env per task, episodes 0..49 in order",
            "init_states": "episode i starts from init state i (initial_states[episode_idx])",
            "warm_up": _OPENVLA_WARM_UP,
            "images": "agentview only, rendered at 256 px, rotated 180 deg (img[::-1, ::-1]); "
            "the policy's 224 px input: JPEG encode/decode, tf.image.resize lanczos3 with "
            "antialias (libero_utils.resize_image), center crop of 0.9 area when center_crop",
            "proprio": _ROBOSUITE_PROPRIO + "; OpenVLA reads none, OpenVLA-OFT reads it",
            "actions": "gripper [0,1] -> [-1,+1], binarized by sign (normalize_gripper_action), "
            "then inverted for openvla (invert_gripper_action: RLDS 1 = open, LIBERO -1 = open); "
            "un-normalized with norm_stats[unnorm_key = suite or suite_no_noops] q01/q99",
            "replan": "one action per query (OpenVLA); OpenVLA-OFT executes chunks of 8",
        },
    ),
    "openpi": Protocol(
        name="openpi",
        episodes_per_task=50,
        max_steps=OPENVLA_MAX_STEPS,
        num_steps_wait=10,
        wait_action=GRIPPER_OPEN_NOOP,
        camera_size=256,
        seed=7,
        seeding=TASK_STREAM,
        env_seed=7,
        source="Physical-Intelligence/openpi examples/libero/main.py",
        notes="init states 0..49; env.seed(7) once per task, episodes in order; 10 "
        "gripper-open no-op wait steps not counted; 256 px render, both cameras "
        "resize_with_pad to 224",
        semantics={
            "seeding": "np.random.seed(7) at start, then env.seed(7) once per task env "
            "(_get_libero_env(task, 256, args.seed))",
            "reset": _HARD_RESET + "; one env per task, episodes 0..49 in order",
            "init_states": "episode i starts from init state i (initial_states[episode_idx])",
            "warm_up": "10 steps of LIBERO_DUMMY_ACTION [0,0,0,0,0,0,-1] (gripper open) after "
            "set_init_state, not counted in max_steps (num_steps_wait)",
            "images": "agentview and wrist rendered at 256 px (LIBERO_ENV_RESOLUTION), both "
            "rotated 180 deg, then openpi_client image_tools.resize_with_pad to 224x224 "
            "(aspect kept, zero padding) and convert_to_uint8",
            "proprio": "observation/state = " + _ROBOSUITE_PROPRIO,
            "actions": "the server's chunk as returned (it un-normalizes with its own norm "
            "stats); no gripper post-processing in the client",
            "replan": "replan_steps 5: the first 5 actions of each chunk, then a new query",
        },
    ),
    "libero": Protocol(
        name="libero",
        episodes_per_task=20,
        max_steps=dict.fromkeys(SUITES, 600),
        num_steps_wait=5,
        wait_action=ZERO_ACTION,
        camera_size=128,
        seed=10000,
        seeding=PER_EPISODE,
        source="Lifelong-Robot-Learning/LIBERO libero/lifelong/metric.py, configs/eval/default.yaml",
        notes="n_eval 20, max_steps 600, 5 zero-action physics warm-up steps, 128 px",
        semantics={
            "seeding": "metric.py seeds no env: its SubprocVectorEnv workers inherit the "
            "training process's NumPy state, so its fixture scenes cannot be reproduced; "
            "evalharness seeds episode i's reset with cfg.seed 10000 + i",
            "reset": _HARD_RESET + "; 20 envs in parallel, one episode each",
            "init_states": "episode i starts from init state i % 50 "
            "(arange(i*env_num, (i+1)*env_num) % 50)",
            "warm_up": "5 steps of zeros(7) (gripper 0), not counted in max_steps",
            "images": "agentview_rgb and eye_in_hand_rgb at 128 px in robosuite's raw "
            "(upside-down) orientation: LIBERO's own policies train and evaluate on raw frames",
            "proprio": "robomimic keys gripper_states (2) and joint_states (7), no eef pose",
            "actions": "as the policy outputs them (7-d OSC_POSE delta, gripper -1 open / +1 close)",
            "replan": "one action per step (policies keep their own history)",
        },
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
        seeding=PER_EPISODE,
        source="huggingface/lerobot src/lerobot/envs/libero.py, envs/configs.py, "
        "scripts/lerobot_eval.py, EvalConfig",
        notes="n_episodes 50 (docs use 10); per-episode seeds 1000+i; 360 px default render",
        semantics={
            "seeding": "every reset seeded: reset(seed) calls env.seed(seed) before "
            "env.reset(); lerobot_eval.py hands out seeds start_seed + batch_ix * n_envs + k "
            "= 1000 + i (EvalPipelineConfig seed 1000)",
            "reset": _HARD_RESET + " (LiberoEnv hard_reset=True by default)",
            "init_states": "episode i starts from init state i: sub-env k starts at k and "
            "steps by n_envs (init_state_id += n_envs)",
            "warm_up": "10 steps of [0,0,0,0,0,0,-1] inside reset (num_steps_wait), not counted",
            "images": "image (agentview) and image2 (wrist) rendered at 360 px "
            "(observation_height/width; the datasets are 256 px), flipped H and W by "
            "LiberoProcessorStep; the policy's processors resize",
            "proprio": "observation.state = " + _ROBOSUITE_PROPRIO,
            "actions": "as the policy's postprocessor un-normalizes them (its dataset stats)",
            "replan": "the policy's n_action_steps (e.g. 10 for pi0.5, 50 in smolvla_libero)",
        },
    ),
}


#: the protocol fields that say how scenes are seeded (added by the presets' stated seeding).
SEEDING_FIELDS = ("seeding", "env_seed")
#: fields that describe a protocol's reference and change no outcome.
DESCRIPTIVE_FIELDS = ("source", "notes", "semantics")


def complete_legacy_protocol(
    recorded: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, Any] | None:
    """A protocol recorded (in run.json) before protocols stated their seeding, written out as
    what it ran, to compare with `current` (`Protocol.to_dict()`); None for a newer record.

    Such runs seeded every episode's reset with `seed + i` (`per_episode`) and soft-reset a
    kept env; their scenes equal `per_episode`'s now (fixture poses depend on the seed alone),
    so only the seeding fields are filled in, and the descriptive fields are taken from
    `current` (their wording changes no outcome).
    """
    if "seeding" in recorded:
        return None
    completed = dict(recorded)
    completed["seeding"] = PER_EPISODE
    # An env seed stated now equals the former seeding only if it is the old base seed.
    completed["env_seed"] = recorded.get("seed") if current.get("env_seed") is not None else None
    for key in DESCRIPTIVE_FIELDS:
        completed[key] = current.get(key)
    stated = [f for f in SEEDING_FIELDS if f in current.get("overrides", ())]
    completed["overrides"] = sorted(set(recorded.get("overrides", ())) | set(stated))
    return completed


def get_protocol(name: str) -> Protocol:
    """A preset by name, with an error listing the presets."""
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
