"""What exact scenes change: the scripted expert under the former per-episode seeding and
under `openvla`'s own (a per-task stream seeded 0), paired episode by episode.

Both runs use the `openvla` preset (step limits, warm-up) and differ only in how the scenes are
seeded; the scripted expert reads simulator state, so no camera is rendered. The paired table
(McNemar, Newcombe's interval) is `evalharness compare`'s; docs/protocols.md holds its result.

    python benchmarks/seeding_expert.py --out results/seeding --episodes-per-task 10 --num-envs 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from evalharness.api import evaluate
from evalharness.compare import compare_runs, format_comparison, load_runs, mismatch_warnings
from evalharness.policies.registry import EXPERT_POLICY


def main() -> None:
    """Run both seedings (or finish them with --resume) and print the paired comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/seeding")
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--episodes-per-task", type=int, default=10)
    parser.add_argument("--num-envs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    runs = {
        "per_episode": {"seeding": "per_episode", "env_seed": 7},  # evalharness before
        "openvla": {},  # the preset: task_stream, env seed 0
    }
    for name, seeding in runs.items():
        start = time.perf_counter()
        evaluate(
            EXPERT_POLICY,
            args.suite,
            protocol="openvla",
            episodes_per_task=args.episodes_per_task,
            num_envs=args.num_envs,
            out=out / name,
            resume=(out / name / "run.json").exists(),
            progress=False,
            **seeding,
        )
        print(f"{name}: {time.perf_counter() - start:.0f} s")
    a, b = load_runs([out / name for name in runs], list(runs))
    print(format_comparison(a, b, compare_runs(a, b), mismatch_warnings([a, b])), end="")


if __name__ == "__main__":
    main()
