"""What exact scenes cost: one replayed reset, and its share of a suite run's wall time.

Under a `task_stream` protocol (`openvla`, `openpi`) episode i's scene is the RNG state a loop
that seeded once and reset i times leaves. A worker that runs a task's episodes in order
replays nothing; one that jumps (another worker ran the episodes between, or a resumed run)
replays one reset per skipped episode (`evalharness.envs.scenes.SceneStream`). With N workers
sharing a task, each episode replays about N - 1 resets.

This times, on one env with no camera renders: a reset that continues the stream, and a reset
that replays K earlier ones; the difference over K is one replayed reset. Given a run's
episodes.csv (`--episodes-csv`, e.g. an `openvla` run), it estimates the share of that run's
wall time the replays take at `--num-envs`.

    python benchmarks/scene_replay.py --suite libero_spatial --tasks 0,5 --replays 10
    python benchmarks/scene_replay.py --episodes-csv results/x/episodes.csv --num-envs 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from evalharness.protocols import get_protocol


def time_replays(suite: str, task_id: int, replays: int, repeats: int) -> dict[str, float]:
    """Seconds of a continuing stream reset, and per replayed reset, on one env."""
    from evalharness.envs.libero import LiberoEnv

    protocol = get_protocol("openvla")
    env = LiberoEnv(
        suite,
        task_id,
        camera_size=8,
        num_steps_wait=protocol.num_steps_wait,
        wait_action=protocol.wait_action,
        render_images=False,
    )
    seed = protocol.resolved_env_seed
    try:
        continuing, jumping = [], []
        index = 0
        for _ in range(repeats):
            start = time.perf_counter()
            env.reset(options={"init_state_index": index % 50, "scene_stream": (seed, index)})
            continuing.append(time.perf_counter() - start)
            index += 1
            # The next episode `replays` further on: a fresh seed and `index + replays` resets
            # would also do, but jumping ahead from the cursor is what a worker does.
            index += replays
            start = time.perf_counter()
            _, info = env.reset(
                options={"init_state_index": index % 50, "scene_stream": (seed, index)}
            )
            jumping.append(time.perf_counter() - start)
            assert info["scene_replays"] == replays, info
            index += 1
    finally:
        env.close()
    reset = statistics.median(continuing)
    return {
        "task_id": task_id,
        "reset_s": round(reset, 4),
        "replayed_reset_s": round((statistics.median(jumping) - reset) / replays, 4),
    }


def main() -> None:
    """Print one JSON line per task, then the estimate for a run if an episodes.csv is given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--tasks", default="0")
    parser.add_argument("--replays", type=int, default=10, help="K resets replayed per jump")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--episodes-csv", default=None, help="a run's episodes.csv")
    parser.add_argument("--num-envs", type=int, default=2)
    args = parser.parse_args()
    rows = [
        time_replays(args.suite, int(t), args.replays, args.repeats) for t in args.tasks.split(",")
    ]
    for row in rows:
        print(json.dumps(row))
    if args.episodes_csv:
        from evalharness.results import read_episodes

        episodes = read_episodes(args.episodes_csv)
        per_replay = statistics.median(r["replayed_reset_s"] for r in rows)
        episode_s = float(episodes["wall_seconds"].median())
        extra = (args.num_envs - 1) * per_replay
        print(
            json.dumps(
                {
                    "episodes": len(episodes),
                    "median_episode_s": round(episode_s, 3),
                    "replayed_reset_s": per_replay,
                    "num_envs": args.num_envs,
                    "replays_per_episode": args.num_envs - 1,
                    "replay_share_of_episode": round(extra / (episode_s + extra), 4),
                }
            )
        )


if __name__ == "__main__":
    main()
