"""Speed and scale: env steps/s vs workers and render skipping, policy actions/s vs batch
size, and end-to-end wall time of the harness against a sequential OpenVLA-style loop.

    python benchmarks/scaling.py                          # all sections, JSON + tables
    python benchmarks/scaling.py --sections steps --steps 80 --repeats 3
    python benchmarks/scaling.py --sections e2e --policy "NAME:CKPT?options"

The default policy is the contract example of the registry's ``BENCHMARK_FAMILY`` (the tiny
Octo conformance checkpoint written by upstream Octo), found beside the checkout the way the
tests find it (`FIXTURES`).

Sections:

- `steps`: the harness with the no-op policy (chunks of `--exec-horizon`), 1 and 2 workers,
  rendering every step vs only the steps a policy query reads; "stepping" env steps/s from
  the first step to the last (all envs built), the median of `--repeats` runs. By default a
  lone worker renders with every core's llvmpipe thread (the harness' setting), which already
  uses more than one core; `--render-threads 1` compares worker counts at equal threads.
- `policy`: `act()` latency and actions/s (batch x action_horizon / latency) per padded batch
  size, after one warm-up call per size (the compile).
- `e2e`: the same slice and the same (warmed-up) policy object through the harness
  (`--num-envs` workers, the policy's own chunking, render skipping) and through
  `reference_loop.reference_eval` (one env, one policy call per step, every step rendered).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.policies.registry import NO_OP_POLICY

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Relative to the repository, never to one machine: the fixtures sit beside the checkout.
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def default_policy() -> str:
    """The contract example of the family the speed benchmarks default to."""
    from evalharness.policies.registry import BENCHMARK_FAMILY, get_family

    return str(get_family(BENCHMARK_FAMILY).load("example")(FIXTURES).policy)


def _protocol(args: argparse.Namespace, episodes: int, steps: int, wait: int) -> Any:
    from evalharness.protocols import get_protocol

    return get_protocol("openvla").with_overrides(
        episodes_per_task=episodes, max_steps=steps, num_steps_wait=wait,
        camera_size=args.camera_size,
    )  # fmt: skip


def _harness(
    args: argparse.Namespace, policy: Any, policy_str: str, workers: int, protocol: Any,
    tasks: tuple[int, ...], every_step: bool, exec_horizon: int | None = None,
) -> dict[str, float]:  # fmt: skip
    from evalharness.runner import RunConfig, Runner
    from evalharness.worker import RENDER_EVERY_STEP_ENV

    if every_step:
        os.environ[RENDER_EVERY_STEP_ENV] = "1"
    else:
        os.environ.pop(RENDER_EVERY_STEP_ENV, None)
    try:
        with tempfile.TemporaryDirectory() as out:
            config = RunConfig(
                suite=args.suite, policy=policy_str, out_dir=Path(out), protocol=protocol,
                task_ids=tasks, num_envs=workers, progress=False, exec_horizon=exec_horizon,
            )  # fmt: skip
            runner = Runner(config, policy)
            t0 = time.perf_counter()
            runner.run()
            wall = time.perf_counter() - t0
    finally:
        os.environ.pop(RENDER_EVERY_STEP_ENV, None)
    stepping = runner.timing["end"] - runner.timing["first_step"]
    return {
        "wall_seconds": wall,
        "env_steps": runner.env_steps,
        "env_steps_per_s": runner.env_steps / wall,
        "stepping_steps_per_s": runner.env_steps / stepping,
    }


def section_steps(args: argparse.Namespace) -> dict[str, Any]:
    from evalharness.policies import load_policy

    k = args.exec_horizon
    policy_str = f"{NO_OP_POLICY}?action_horizon={k}&exec_horizon={k}"
    policy = load_policy(policy_str)
    protocol = _protocol(args, episodes=args.episodes, steps=args.steps, wait=0)
    rows: dict[str, Any] = {}
    for workers in (1, 2):
        for every_step in (True, False):
            name = f"{workers} worker{'s' if workers > 1 else ''}, " + (
                "every step rendered" if every_step else "render skipping"
            )
            runs = [
                _harness(args, policy, policy_str, workers, protocol, (args.task,), every_step)
                for _ in range(args.repeats)
            ]
            rows[name] = {
                "stepping_steps_per_s": statistics.median(r["stepping_steps_per_s"] for r in runs),
                "env_steps_per_s": statistics.median(r["env_steps_per_s"] for r in runs),
                "runs": runs,
            }
    r = {name: row["stepping_steps_per_s"] for name, row in rows.items()}
    ratios = {
        "render_skipping_1_worker": r["1 worker, render skipping"]
        / r["1 worker, every step rendered"],
        "render_skipping_2_workers": r["2 workers, render skipping"]
        / r["2 workers, every step rendered"],
        "2_vs_1_workers_every_step": r["2 workers, every step rendered"]
        / r["1 worker, every step rendered"],
        "2_vs_1_workers_render_skipping": r["2 workers, render skipping"]
        / r["1 worker, render skipping"],
    }
    print(f"\nenv steps/s, no-op policy, exec_horizon {k}, {args.episodes} episodes x "
          f"{args.steps} steps, {args.camera_size} px, median of {args.repeats}")  # fmt: skip
    print(f"{'':40}{'stepping':>10}{'end-to-end':>12}")
    for name, row in rows.items():
        print(f"{name:40}{row['stepping_steps_per_s']:10.2f}{row['env_steps_per_s']:12.2f}")
    for name, value in ratios.items():
        print(f"{name:40}{value:10.2f}x")
    return {"exec_horizon": k, "rows": rows, "ratios": ratios}


def _dummy_obs(policy: Any, batch: int, size: int) -> tuple[dict, dict]:
    w = policy.spec.window_size
    obs = {
        "image_primary": np.zeros((batch, w, size, size, 3), np.uint8),
        "image_wrist": np.zeros((batch, w, size, size, 3), np.uint8),
        "proprio": np.zeros((batch, w, 8), np.float32),
        "timestep_pad_mask": np.ones((batch, w), bool),
    }
    tasks = {
        "language_instruction": ["put the bowl on the plate"] * batch,
        "episode_seed": np.arange(batch, dtype=np.int64),
        "episode_start": np.zeros(batch, bool),
    }
    return obs, tasks


def section_policy(args: argparse.Namespace, policy: Any) -> dict[str, Any]:
    rows = {}
    for batch in args.batch_sizes:
        obs, tasks = _dummy_obs(policy, batch, args.camera_size)
        t0 = time.perf_counter()
        policy.act(obs, tasks)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            policy.act(obs, tasks)
            times.append(time.perf_counter() - t0)
        latency = statistics.median(times)
        rows[batch] = {
            "first_call_s": first,
            "latency_s": latency,
            "observations_per_s": batch / latency,
            "actions_per_s": batch * policy.spec.action_horizon / latency,
        }
    print(f"\npolicy {args.policy}: act() per batch size (median of {args.repeats})")
    print(f"{'batch':>6}{'first call s':>14}{'latency ms':>12}{'obs/s':>10}{'actions/s':>11}")
    for batch, row in rows.items():
        print(
            f"{batch:>6}{row['first_call_s']:14.2f}{1000 * row['latency_s']:12.1f}"
            f"{row['observations_per_s']:10.1f}{row['actions_per_s']:11.1f}"
        )
    return {"policy": args.policy, "rows": rows}


def section_e2e(args: argparse.Namespace, policy: Any) -> dict[str, Any]:
    from reference_loop import reference_eval

    from evalharness.batching import padded_size

    protocol = _protocol(args, episodes=args.episodes, steps=args.steps, wait=10)
    tasks = tuple(args.tasks)
    # Warm up (compile) every batch size either loop will use, outside both timings.
    for batch in sorted({1, *(padded_size(b) for b in range(1, args.num_envs + 1))}):
        policy.act(*_dummy_obs(policy, batch, args.camera_size))
    reference, harness = [], []
    for _ in range(args.repeats):
        reference.append(
            reference_eval(
                policy,
                args.suite,
                tasks,
                args.episodes,
                args.steps,
                protocol.num_steps_wait,
                tuple(protocol.wait_action),
                args.camera_size,
                protocol.seed,
            )
        )
        harness.append(
            _harness(args, policy, args.policy, args.num_envs, protocol, tasks, every_step=False)
        )
    ref_wall = statistics.median(r["wall_seconds"] for r in reference)
    har_wall = statistics.median(r["wall_seconds"] for r in harness)
    out = {
        "policy": args.policy,
        "slice": {
            "suite": args.suite,
            "tasks": list(tasks),
            "episodes_per_task": args.episodes,
            "max_steps": args.steps,
            "num_steps_wait": protocol.num_steps_wait,
            "camera_size": args.camera_size,
        },
        "reference_wall_s": ref_wall,
        "harness_wall_s": har_wall,
        "speedup": ref_wall / har_wall,
        "reference_runs": [{k: v for k, v in r.items() if k != "episodes"} for r in reference],
        "harness_runs": harness,
        "harness_num_envs": args.num_envs,
    }
    print(f"\nend to end, {args.suite} tasks {list(tasks)} x {args.episodes} episodes, "
          f"{args.steps} steps, policy {args.policy}, median of {args.repeats}")  # fmt: skip
    print(f"{'sequential reference (OpenVLA-style)':45}{ref_wall:10.1f} s")
    print(f"{f'evalharness, {args.num_envs} workers':45}{har_wall:10.1f} s")
    print(f"{'speedup':45}{out['speedup']:10.2f}x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="steps,policy,e2e")
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task", type=int, default=0, help="task of the steps section")
    parser.add_argument("--tasks", default="0,1", help="tasks of the e2e section")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--camera-size", type=int, default=128)
    parser.add_argument("--exec-horizon", type=int, default=4)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--policy", default=None, help="default: default_policy()")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--render-threads",
        type=int,
        default=None,
        help="llvmpipe threads per worker (LP_NUM_THREADS); default: cores / workers, so one "
        "worker renders with every core. 1 compares worker counts at equal threads per worker",
    )
    args = parser.parse_args()
    args.policy = args.policy or default_policy()
    if args.render_threads is not None:
        os.environ["LP_NUM_THREADS"] = str(args.render_threads)
    args.tasks = [int(t) for t in args.tasks.split(",")]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    sections = set(args.sections.split(","))
    load = os.getloadavg()
    results: dict[str, Any] = {
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_start": load,
            "render_threads": args.render_threads or "cores / workers",
        }
    }
    if "steps" in sections:
        results["steps"] = section_steps(args)
    if sections & {"policy", "e2e"}:
        from evalharness.policies import load_policy

        policy = load_policy(args.policy)
        if "policy" in sections:
            results["policy"] = section_policy(args, policy)
        if "e2e" in sections:
            results["e2e"] = section_e2e(args, policy)
    results["host"]["loadavg_end"] = os.getloadavg()
    text = json.dumps(results, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
