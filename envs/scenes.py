"""Which scene an episode sees: how LIBERO's fixture placement is seeded, and a fingerprint.

A LIBERO init state is a flat MuJoCo state: it fixes the robot, the free objects and the
articulated joints, but not the **fixtures** (wooden cabinet, flat stove, ...). Their poses
are model parameters that LIBERO samples at every reset (`_reset_internal`, its placement
samplers) from NumPy's *global* RNG, so which scene episode i shows depends on how that RNG
was seeded and on how many resets drew from it before. The reference loops differ:

- `TASK_STREAM`: the RNG is seeded once per task env and the episodes run in order, each
  reset drawing where the previous one stopped. OpenVLA and OpenVLA-OFT seed 0
  (openvla/openvla `experiments/robot/libero/libero_utils.py`, `get_libero_env`:
  `env.seed(0)`), openpi seeds 7 (Physical-Intelligence/openpi `examples/libero/main.py`,
  `_get_libero_env`: `env.seed(args.seed)`). Episode i sees the RNG state left by the seed
  and i resets.
- `PER_EPISODE`: every reset is seeded, episode i with `env_seed + i` (huggingface/lerobot
  `src/lerobot/envs/libero.py` `reset(seed)` with the seeds `lerobot_eval.py` hands out,
  1000 + i; evalharness's own seeding before the presets stated theirs).

`SceneStream` recreates a stream's RNG state for any episode index by replaying it: seed, then
one reset's draws per earlier episode (from the nearest state it has already seen), so episode
i shows the same scene whichever worker runs it, in whatever order, after `--resume` or on
Ray. A replayed reset is the env's own reset with its camera renders skipped.

`scene_fingerprint` hashes what a scene is after the warm-up: each object's and fixture's
world pose and each articulated joint, rounded to `POSITION_DECIMALS` / `ANGLE_DECIMALS`,
plus the init-state index. Two runs whose paired episodes have equal fingerprints saw the
same scenes; within one simulator version the fingerprint is exact, and under another MuJoCo
version objects may settle differently (drift) and change it.

    >>> scene_fingerprint(0, {"bowl_1": ((0.1, 0.2, 0.9), (1.0, 0.0, 0.0, 0.0), ())})
    '4a557acb8203'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ANGLE_DECIMALS",
    "PER_EPISODE",
    "POSITION_DECIMALS",
    "SEEDINGS",
    "TASK_STREAM",
    "Pose",
    "SceneStream",
    "scene_fingerprint",
]

TASK_STREAM = "task_stream"
PER_EPISODE = "per_episode"
#: the seedings a protocol may name, with what each means.
SEEDINGS: Mapping[str, str] = {
    TASK_STREAM: "the env RNG seeded once per task (env_seed), episodes in order, one "
    "reset's draws each (OpenVLA, OpenVLA-OFT, openpi)",
    PER_EPISODE: "every reset seeded with env_seed + episode index (LeRobot; evalharness "
    "before the presets stated their seeding)",
}

#: positions (metres) are rounded to 1 mm before hashing.
POSITION_DECIMALS = 3
#: quaternion components and joint positions (radians or metres) to 1e-3.
ANGLE_DECIMALS = 3
#: hex digits kept of the SHA-256.
FINGERPRINT_LENGTH = 12

#: (world position (3,), world quaternion w-x-y-z (4,), articulated joint positions), each
#: an array or a sequence of floats.
Pose = tuple[Any, Any, Any]


def _rounded(values: Any, decimals: int) -> list[int]:
    # Integers of the rounded unit (mm, 1e-3): no "-0.000" vs "0.000" and no float printing.
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 10**decimals).astype(np.int64)
    return [int(v) for v in scaled.ravel()]


def _canonical_quat(quat: Any) -> np.ndarray:
    # q and -q are the same rotation; the first non-zero component is made positive.
    q = np.asarray(quat, dtype=np.float64)
    nonzero = np.flatnonzero(np.abs(q) > 1e-12)
    if len(nonzero) and q[nonzero[0]] < 0:
        q = -q
    return q


def scene_fingerprint(init_state_index: int, poses: Mapping[str, Pose]) -> str:
    """A short hash of a scene: the init-state index and every body's rounded pose.

    `poses` maps each object and fixture name to (world position, world quaternion w-x-y-z,
    its articulated joint positions). Positions are rounded to `POSITION_DECIMALS` decimals
    (1 mm), quaternions (sign made canonical) and joints to `ANGLE_DECIMALS`; names are
    sorted, so the order of `poses` does not matter.
    """
    parts = [f"init_state={int(init_state_index)}"]
    for name in sorted(poses):
        pos, quat, joints = poses[name]
        parts.append(
            f"{name}:{_rounded(pos, POSITION_DECIMALS)}"
            f"{_rounded(_canonical_quat(quat), ANGLE_DECIMALS)}"
            f"{_rounded(joints, ANGLE_DECIMALS)}"
        )
    digest = hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()
    return digest[:FINGERPRINT_LENGTH]


@dataclass
class _Cursor:
    seed: int
    #: the number of resets drawn from the stream since it was seeded.
    position: int
    state: Any  # what np.random.get_state() returns


class SceneStream:
    """A per-task seeded stream of NumPy's global RNG, replayable to any episode index.

    `draw()` is one reset's worth of draws (the env's own reset, renders skipped).
    `seek(seed, index)` leaves the global RNG where the reference loop has it before the reset
    of episode `index`: it continues from the last state it saw of that stream when that is
    not past `index` (a worker running a task's episodes in order replays nothing), else
    seeds again and replays `index` resets. `advanced()` records the state after the reset.
    `replayed` counts the replayed resets (their cost is what exact scenes cost).

        >>> stream = SceneStream(lambda: np.random.uniform(size=3))
        >>> stream.seek(0, 2)
        2
        >>> a = np.random.uniform(); stream.advanced()
        >>> np.random.seed(0); _ = np.random.uniform(size=6); a == np.random.uniform()
        True
    """

    def __init__(self, draw: Callable[[], Any]) -> None:
        self._draw = draw
        self._cursor: _Cursor | None = None
        self._pending: tuple[int, int] | None = None
        self.replayed = 0

    def seek(self, seed: int, index: int) -> int:
        """Set the global RNG to the state before the reset of episode `index` of the stream
        seeded with `seed`; returns how many resets that replayed."""
        if index < 0:
            raise ValueError(f"a stream's episode index must be >= 0, got {index}")
        cursor = self._cursor
        if cursor is not None and cursor.seed == seed and cursor.position <= index:
            np.random.set_state(cursor.state)
            position = cursor.position
        else:
            np.random.seed(seed)
            position = 0
        replays = index - position
        for _ in range(replays):
            self._draw()
        self.replayed += replays
        self._pending = (seed, index)
        return replays

    def advanced(self) -> None:
        """Record the RNG state after the reset that followed `seek`: the next episode's."""
        if self._pending is None:
            raise RuntimeError("SceneStream.advanced() without a seek() before it")
        seed, index = self._pending
        self._cursor = _Cursor(seed, index + 1, np.random.get_state())
        self._pending = None

    def forget(self) -> None:
        """Drop the remembered state (the env's model was rebuilt or a reset failed)."""
        self._cursor = None
        self._pending = None
