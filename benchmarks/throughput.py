"""Env steps per second: raw LIBERO stepping vs the harness with the `zero` policy.

Same workload for every row: one task, E episodes of S steps from official init states,
no warm-up steps, square renders of both cameras. Each row's wall time covers everything a
user waits for: env construction, resets, stepping, and for the harness worker start-up, IPC,
observation wrappers and result files. Run:

    python benchmarks/throughput.py                # 4 episodes x 60 steps, 128 px
    python benchmarks/throughput.py --steps 200    # longer episodes amortize start-up
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def raw_offscreen_env(suite: str, task_id: int, episodes: int, steps: int, size: int) -> float:
    """Steps/s of a plain `OffScreenRenderEnv` loop, the way LIBERO's own scripts step it."""
    from evalharness.envs.libero import get_task, init_states  # also sets MUJOCO_GL

    task = get_task(suite, task_id)
    states = init_states(suite, task_id)
    from libero.libero.envs import OffScreenRenderEnv

    t0 = time.perf_counter()
    env = OffScreenRenderEnv(
        bddl_file_name=task.bddl_file,
        camera_heights=size,
        camera_widths=size,
        hard_reset=False,
        ignore_done=True,
    )
    for episode in range(episodes):
        env.seed(episode)
        env.reset()
        env.set_init_state(states[episode % len(states)])
        for _ in range(steps):
            env.step(np.zeros(7))
    elapsed = time.perf_counter() - t0
    env.close()
    return episodes * steps / elapsed


def harness(suite: str, task_id: int, episodes: int, steps: int, size: int, workers: int) -> float:
    """Steps/s of `evalharness run --policy zero` on the same workload with N workers."""
    from evalharness.policies import load_policy

    from evalharness.protocols import get_protocol
    from evalharness.runner import RunConfig, Runner

    protocol = get_protocol("openvla").with_overrides(
        episodes_per_task=episodes, max_steps=steps, num_steps_wait=0, camera_size=size
    )
    with tempfile.TemporaryDirectory() as out:
        config = RunConfig(
            suite=suite,
            policy="zero",
            out_dir=Path(out),
            protocol=protocol,
            task_ids=(task_id,),
            num_envs=workers,
            progress=False,
        )
        runner = Runner(config, load_policy("zero"))
        t0 = time.perf_counter()
        runner.run()
        elapsed = time.perf_counter() - t0
    assert runner.env_steps == episodes * steps, runner.env_steps
    return episodes * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--camera-size", type=int, default=128)
    args = parser.parse_args()
    work = (args.suite, args.task, args.episodes, args.steps, args.camera_size)

    raw = raw_offscreen_env(*work)
    one = harness(*work, workers=1)
    two = harness(*work, workers=2)
    print(
        f"\nworkload: {args.suite} task {args.task}, {args.episodes} episodes x {args.steps} steps, "
        f"{args.camera_size} px, 2 cameras, {os.cpu_count()} cores, MUJOCO_GL={os.environ.get('MUJOCO_GL')}"
    )
    print(f"{'':28}{'env steps/s':>12}{'vs raw':>9}")
    print(f"{'raw OffScreenRenderEnv':28}{raw:12.2f}{1.0:9.2f}")
    print(f"{'harness zero, 1 worker':28}{one:12.2f}{one / raw:9.2f}")
    print(f"{'harness zero, 2 workers':28}{two:12.2f}{two / raw:9.2f}")
    print(
        f"harness overhead at 1 worker: {100 * (1 - one / raw):.1f} %; 2-worker speed-up: {two / raw:.2f}x"
    )


if __name__ == "__main__":
    main()
