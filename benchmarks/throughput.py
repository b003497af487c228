"""Env steps per second: raw LIBERO stepping vs the harness with the no-op policy
(``NO_OP_POLICY`` of the registry: holds still, costs nothing).

Same workload for every row: one task, E episodes of S steps from official init states, no
warm-up steps, square renders of both cameras on every step. Two rates per row:

- end-to-end: everything a user waits for (env construction, resets, stepping; for the
  harness also worker start-up, IPC, wrappers and result files);
- stepping: from the first step (all envs built) to the last, the steady state a long
  evaluation converges to.

Raw stepping is measured twice, in fresh processes: with Mesa's default rasterizer threads
(one per core, so one env already uses both cores of a 2-core machine while it renders) and
with one thread, which is what each harness worker gets when workers fill the cores.

    python benchmarks/throughput.py                 # 4 episodes x 100 steps, 128 px
    python benchmarks/throughput.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from evalharness.policies.registry import NO_OP_POLICY


def raw_offscreen_env(suite: str, task_id: int, episodes: int, steps: int, size: int) -> dict:
    """Time a plain `OffScreenRenderEnv` loop, the way LIBERO's own scripts step it."""
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
    stepping = 0.0
    for episode in range(episodes):
        env.seed(episode)
        env.reset()
        env.set_init_state(states[episode % len(states)])
        t1 = time.perf_counter()
        for _ in range(steps):
            env.step(np.zeros(7))
        stepping += time.perf_counter() - t1
    elapsed = time.perf_counter() - t0
    env.close()
    n = episodes * steps
    return {"end_to_end": n / elapsed, "stepping": n / stepping}


def raw_in_fresh_process(args: argparse.Namespace, render_threads: int | None) -> dict:
    """Mesa reads LP_NUM_THREADS when the GL context is made, so each setting needs a process."""
    env = dict(os.environ)
    env.pop("LP_NUM_THREADS", None)
    if render_threads is not None:
        env["LP_NUM_THREADS"] = str(render_threads)
    cmd = [
        sys.executable, __file__, "--raw-only", "--suite", args.suite, "--task", str(args.task),
        "--episodes", str(args.episodes), "--steps", str(args.steps),
        "--camera-size", str(args.camera_size),
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def harness(args: argparse.Namespace, workers: int) -> dict:
    """Time `evalharness run` with the no-op policy on the same workload with N workers."""
    from evalharness.policies import load_policy
    from evalharness.protocols import get_protocol
    from evalharness.runner import RunConfig, Runner

    protocol = get_protocol("openvla").with_overrides(
        episodes_per_task=args.episodes,
        max_steps=args.steps,
        num_steps_wait=0,
        camera_size=args.camera_size,
    )
    with tempfile.TemporaryDirectory() as out:
        config = RunConfig(
            suite=args.suite,
            policy=NO_OP_POLICY,
            out_dir=Path(out),
            protocol=protocol,
            task_ids=(args.task,),
            num_envs=workers,
            progress=False,
        )
        runner = Runner(config, load_policy(NO_OP_POLICY))
        t0 = time.perf_counter()
        runner.run()
        elapsed = time.perf_counter() - t0
    n = args.episodes * args.steps
    assert runner.env_steps == n, runner.env_steps
    # With one task every env is built before the first step; resets of later episodes stay
    # inside the stepping window, as they do in the raw loop.
    stepping = runner.timing["end"] - runner.timing["first_step"]
    return {"end_to_end": n / elapsed, "stepping": n / stepping}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--camera-size", type=int, default=128)
    parser.add_argument("--raw-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_only:
        work = (args.suite, args.task, args.episodes, args.steps, args.camera_size)
        print(json.dumps(raw_offscreen_env(*work)))
        return

    rows = {
        "raw OffScreenRenderEnv": raw_in_fresh_process(args, None),
        "raw, 1 render thread": raw_in_fresh_process(args, 1),
        "harness no-op, 1 worker": harness(args, 1),
        "harness no-op, 2 workers": harness(args, 2),
    }
    base = rows["raw OffScreenRenderEnv"]
    print(
        f"\nworkload: {args.suite} task {args.task}, {args.episodes} episodes x {args.steps} "
        f"steps, {args.camera_size} px, 2 cameras; {os.cpu_count()} cores, "
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL', 'egl')}"
    )
    print(f"{'env steps/s':26}{'end-to-end':>11}{'vs raw':>8}{'stepping':>10}{'vs raw':>8}")
    for name, r in rows.items():
        print(
            f"{name:26}{r['end_to_end']:11.2f}{r['end_to_end'] / base['end_to_end']:8.2f}"
            f"{r['stepping']:10.2f}{r['stepping'] / base['stepping']:8.2f}"
        )
    one, two = rows["harness no-op, 1 worker"], rows["harness no-op, 2 workers"]
    single = rows["raw, 1 render thread"]
    print(
        f"harness overhead at 1 worker: {100 * (1 - one['end_to_end'] / base['end_to_end']):.1f} % "
        f"end-to-end, {100 * (1 - one['stepping'] / base['stepping']):.1f} % stepping"
    )
    print(
        f"2 workers: {two['stepping'] / base['stepping']:.2f}x raw stepping, "
        f"{two['stepping'] / single['stepping']:.2f}x raw with one render thread, "
        f"{two['stepping'] / one['stepping']:.2f}x the harness at 1 worker"
    )


if __name__ == "__main__":
    main()
