"""Result directories with known outcomes, for the compare and dashboard tests.

They are written with the same writers `evalharness run` uses (`EpisodeLog`,
`atomic_write_json`), so the formats stay defined in one place, and need no LIBERO env.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from evalharness.results import TIMING_COLUMNS, EpisodeLog, atomic_write_json, read_episodes

# Real libero_spatial instructions, so the dashboard looks like the real thing.
INSTRUCTIONS = (
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the black bowl next to the ramekin and place it on the plate",
    "pick up the black bowl from table center and place it on the plate",
    "pick up the black bowl on the cookie box and place it on the plate",
    "pick up the black bowl in the top drawer of the wooden cabinet and place it on the plate",
    "pick up the black bowl on the ramekin and place it on the plate",
    "pick up the black bowl next to the cookie box and place it on the plate",
    "pick up the black bowl on the stove and place it on the plate",
    "pick up the black bowl next to the plate and place it on the plate",
    "pick up the black bowl on the wooden cabinet and place it on the plate",
)

MAX_STEPS = 220

BASE_META: dict[str, Any] = {
    "suite": "libero_spatial",
    "policy": "random",
    "protocol": {
        "name": "openvla",
        "episodes_per_task": 50,
        "max_steps": {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300},
        "num_steps_wait": 10,
        "wait_action": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0],
        "camera_size": 256,
        "seed": 7,
    },
    "env": {"suite": "libero_spatial", "camera_size": 256, "max_steps": 220, "window_size": 1},
    "evalharness_version": "0.1.0",
    "command": ["evalharness", "run"],
    "config": {"suite": "libero_spatial", "policy": "random", "checkpoint": "", "num_envs": 2},
    "versions": {"python": "3.11.7", "mujoco": "3.3.2", "robosuite": "1.4.0", "numpy": "2.4.6"},
    "git": {"sha": "87d89d68db13ff1a3b257a9229ea4c49aaf452b4", "dirty": False},
    "host": {"hostname": "vm", "cpu_count": 2},
    "start_time": "2026-01-01T00:00:00+00:00",
    "end_time": "2026-01-01T01:00:00+00:00",
    "status": "finished",
}


def _merge(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_run(
    path: Path,
    outcomes: Mapping[int, Sequence[bool]],
    *,
    suite: str = "libero_spatial",
    meta: Mapping[str, Any] | None = None,
    first_episode: int = 0,
    steps: Mapping[tuple[int, int], int] | None = None,
    videos: Sequence[tuple[int, int]] = (),
    fingerprints: Mapping[tuple[int, int], str] | None = None,
) -> Path:
    """Write ``path/episodes.csv`` and ``path/run.json``.

    ``outcomes[task_id][k]`` is the success of episode ``first_episode + k`` of that task
    (init state = episode index). A success takes ``40 + 5 * episode`` steps unless
    ``steps[(task_id, episode)]`` says otherwise; a failure runs to ``MAX_STEPS``. ``meta``
    entries are merged into a realistic run.json; ``videos`` lists (task_id, episode) pairs
    that get a (dummy) video file named the way the runner names them. ``fingerprints``
    gives (task_id, episode) its scene fingerprint ("" for the others).
    """
    path.mkdir(parents=True, exist_ok=True)
    policy = str((meta or {}).get("policy", BASE_META["policy"]))
    with EpisodeLog(path / "episodes.csv") as log:
        for task_id, results in outcomes.items():
            instruction = INSTRUCTIONS[task_id % len(INSTRUCTIONS)]
            for k, success in enumerate(results):
                episode = first_episode + k
                n_steps = (steps or {}).get((task_id, episode))
                if n_steps is None:
                    n_steps = 40 + 5 * episode if success else MAX_STEPS
                log.append(
                    {
                        "suite": suite,
                        "task_id": task_id,
                        "task_name": instruction.replace(" ", "_"),
                        "instruction": instruction,
                        "episode_index": episode,
                        "init_state_index": episode % 50,
                        "seed": 7 + episode,
                        "success": bool(success),
                        "steps": n_steps,
                        "policy": policy,
                        "checkpoint": "",
                        "wall_seconds": 1.5,
                        "failure_reason": "" if success else "step_limit",
                        "scene_fingerprint": (fingerprints or {}).get((task_id, episode), ""),
                    }
                )
    atomic_write_json(path / "run.json", _merge(BASE_META, {"suite": suite, **(meta or {})}))
    for task_id, episode in videos:
        outcome = "success" if outcomes[task_id][episode - first_episode] else "failure"
        slug = INSTRUCTIONS[task_id % len(INSTRUCTIONS)].replace(" ", "_")
        video = path / "videos" / suite / f"task{task_id:02d}_ep{episode:03d}_{outcome}_{slug}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        video.write_bytes(b"")
    return path


def pattern(successes: int, n: int) -> list[bool]:
    """``successes`` True then False, ``n`` in all."""
    return [True] * successes + [False] * (n - successes)


def outcomes(run_dir: Path) -> pd.DataFrame:
    """A run's episodes.csv without its timing columns, in (task, episode) order: what two
    runs of the same seed must agree on whatever the workers, executor or interruptions."""
    df = read_episodes(run_dir / "episodes.csv").drop(columns=list(TIMING_COLUMNS))
    return df.sort_values(["task_id", "episode_index"]).reset_index(drop=True)
