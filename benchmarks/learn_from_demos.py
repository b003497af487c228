"""Does finetuning teach? Record scripted demos of one task, finetune, replay, evaluate.

    python benchmarks/learn_from_demos.py --family diffusion --out /tmp/lfd
    python benchmarks/learn_from_demos.py --family octo_jax --demos-dir /tmp/lfd/demos --out /tmp/lfd

The four commands a user would type, in order, each timed (wall and CPU seconds):

1. ``evalharness record --policy scripted --only-success``: ``--num-demos`` successful demos of
   ``--suite``/``--task`` at ``--camera-size`` (skipped with ``--demos-dir``);
2. ``evalharness finetune`` with the family's ``PolicyExample.learning_recipe`` (its ``family.py``; ``docs/learning-from-demos.md``
   explains each), which holds out the last 3 demos and replays them at the end;
3. ``evalharness doctor --open-loop`` on training demos (0, 7, 21 by default): the open-loop
   table (policy vs zero / mean predictor per action dimension, gripper sign agreement);
4. ``evalharness run`` on ``--episodes`` init states of the task: closed-loop success.

Prints the open-loop table and the closed-loop success with its Wilson interval, and writes
``OUT/<family>/learn_from_demos.json``. Long: on a 2-core CPU the diffusion recipe is about 34
CPU-minutes of training (19 min wall) and 15 of evaluation (8 min wall, Ta = 2); recording 50
demos about 7 minutes with two envs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from evalharness.policies.registry import EXPERT_POLICY, families
from evalharness.run_dir import EPISODES_CSV

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def recipes() -> dict[str, Any]:
    """``{family: PolicyExample}`` for every registered family whose example carries a
    ``learning_recipe`` (the checkpoint it starts from, the dataset spec, the finetune
    arguments; see ``docs/learning-from-demos.md`` for why each)."""
    found = {}
    for name, family in families().items():
        example = family.load("example")(FIXTURES) if family.example is not None else None
        if example is not None and example.learning_recipe and example.finetune:
            found[name] = example
    return found


def _cli() -> list[str]:
    return [sys.executable, "-m", "evalharness.cli"]


def _timed(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` with its output in ``log``; wall and CPU seconds (children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 1):  # doctor exits 1 on errors; its output says which
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def _success(run_dir: Path) -> tuple[int, int]:
    with (run_dir / EPISODES_CSV).open() as f:
        rows = list(csv.DictReader(f))
    return sum(r["success"].lower() == "true" for r in rows), len(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    known = recipes()
    p.add_argument("--family", choices=sorted(known), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--num-demos", type=int, default=50)
    p.add_argument("--demos-dir", type=Path, default=None, help="reuse recorded demos")
    p.add_argument("--camera-size", type=int, default=84)
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    p.add_argument("--open-loop-demos", default="0,7,21", help="training demos to replay")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--num-envs", type=int, default=2)
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")

    recipe = known[args.family]
    out = args.out / args.family
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, Any] = {}
    demos = args.demos_dir or args.out / "demos"
    if args.demos_dir is None and not any(demos.glob("*.hdf5")):
        timings["record"] = _timed(
            [
                *_cli(),
                *("record", "--policy", EXPERT_POLICY, "--suite", args.suite),
                *("--tasks", str(args.task), "--episodes-per-task", str(args.num_demos)),
                *("--only-success", "--camera-size", str(args.camera_size), "--out", str(demos)),
                *("--num-envs", str(args.num_envs)),
            ],
            args.out / "record.log",
        )

    ckpt = out / "checkpoint"
    finetune = [*_cli(), "finetune", "--policy", recipe.finetune, "--data", str(demos)]
    finetune += ["--dataset-spec", recipe.finetune_data, "--out", str(ckpt), "--no-progress"]
    finetune += list(recipe.learning_recipe)
    if args.steps is not None:
        finetune += ["--steps", str(args.steps)]
    if not (ckpt / "finetune.json").is_file():
        timings["finetune"] = _timed(finetune, out / "finetune.log")
    info = json.loads((ckpt / "finetune.json").read_text())
    policy = info["policy_string"]

    timings["open_loop"] = _timed(
        [
            *_cli(),
            *("doctor", "--policy", policy, "--data", str(demos)),
            *(
                "--dataset-spec",
                recipe.finetune_data,
                "--open-loop",
                "--demos",
                args.open_loop_demos,
            ),
        ],
        out / "open_loop.log",
    )
    table = (out / "open_loop.log").read_text()
    table = table[table.find("open loop:") :] if "open loop:" in table else table

    run_dir = out / "eval"
    timings["closed_loop"] = _timed(
        [
            *_cli(),
            *("run", "--suite", args.suite, "--tasks", str(args.task)),
            *("--episodes-per-task", str(args.episodes), "--policy", policy),
            *("--camera-size", str(args.camera_size), "--num-envs", str(args.num_envs)),
            *("--out", str(run_dir), "--no-progress"),
        ],
        out / "closed_loop.log",
    )
    successes, episodes = _success(run_dir)
    from evalharness.results import wilson_interval

    low, high = wilson_interval(successes, episodes)
    print(f"family {args.family}: finetune {' '.join(finetune[2:])}")
    print(table.rstrip())
    print(
        f"closed loop: {successes}/{episodes} = {successes / max(episodes, 1):.0%} "
        f"(95% CI {low:.0%}-{high:.0%}) on {args.suite} task {args.task}"
    )
    print(
        f"held-out open loop (finetune.json): {info.get('open_loop', {}).get('gripper_agreement')}"
    )
    print("timings:", json.dumps(timings))
    result = {
        "family": args.family,
        "finetune": finetune[2:],
        "open_loop_training_demos": args.open_loop_demos,
        "open_loop_held_out": info.get("open_loop"),
        "successes": successes,
        "episodes": episodes,
        "timings": timings,
    }
    (out / "learn_from_demos.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
