"""act() latency and actions/s of every registered policy family, at batch 1, 8 and 32.

The families come from the registry, not from a list here: each one is timed on its contract
example (``PolicyFamily.example``: a small checkpoint from the upstream conformance fixtures)
plus the extra models its ``benchmarks`` hook offers (released model sizes with random
weights). Families whose extra is not installed, or whose example files are absent, are
skipped with a note. Steady state: one warm-up call per batch size (compilation, instruction
embeddings), then the median of ``--repeats`` calls. The example's observations come at the
model's camera sizes; ``--camera-size N`` renders every camera at N² instead, so the policy's
own resizing is timed too (LIBERO renders 256² under the default protocol).

    python benchmarks/policy_latency.py [--families NAME,...] [--batch-sizes 1,8,32]
        [--option device=cuda] [--camera-size 256] [--fixtures DIR] [--json PATH]

Prints one table per family, a side-by-side table for models measured by several families,
then all rows as JSON. ``--option KEY=VALUE`` goes to every family whose options have KEY.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.policies import Policy, load_policy
from evalharness.policies.examples import PolicyExample, standard_observations
from evalharness.policies.registry import PolicyFamily, families

#: the upstream-written conformance checkpoints, beside the checkout (as the tests find them).
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def count_parameters(policy: Policy) -> int | None:
    """Parameters of the torch modules and JAX parameter trees a policy holds, if any."""
    total, found, seen = 0, False, set()
    for value in vars(policy).values():
        if hasattr(value, "parameters") and callable(value.parameters):
            found = True
            for p in value.parameters():  # a head or encoder may also sit inside the model
                if id(p) not in seen:
                    seen.add(id(p))
                    total += int(p.numel())
    loaded = getattr(policy, "loaded", None)
    params = getattr(loaded, "params", None)
    if not found and params is not None:
        import jax

        total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
        found = True
    return total if found else None


def _with_options(text: str, family: PolicyFamily, options: dict[str, str]) -> str:
    known = {o.name for o in family.describe_options()}
    extra = {k: v for k, v in options.items() if k in known}
    if not extra:
        return text
    joiner = "&" if "?" in text else "?"
    return text + joiner + "&".join(f"{k}={v}" for k, v in extra.items())


def time_policy(
    policy: Policy, example: PolicyExample, batch_sizes: tuple[int, ...], repeats: int
) -> list[dict[str, Any]]:
    """Median steady-state act() time per batch size (CUDA work is done when act() returns
    numpy)."""
    rows = []
    for batch in batch_sizes:
        seeds = list(range(batch))
        obs = dict(example.observations(policy.spec, seeds))
        tasks = example.tasks(seeds, [True] * batch)
        policy.reset(batch)
        start = time.perf_counter()
        policy.act(obs, tasks)
        first = time.perf_counter() - start
        tasks = example.tasks(seeds, [False] * batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            actions = policy.act(obs, tasks)
            times.append(time.perf_counter() - start)
        latency = statistics.median(times)
        rows.append(
            {
                "batch": batch,
                "first_call_s": round(first, 2),
                "act_ms": round(latency * 1e3, 1),
                "actions_per_s": round(actions.shape[0] * actions.shape[1] / latency, 1),
            }
        )
    return rows


def family_rows(
    family: PolicyFamily,
    fixtures: Path,
    batch_sizes: tuple[int, ...],
    repeats: int,
    options: dict[str, str],
    camera_size: int | None,
) -> tuple[list[dict[str, Any]], str]:
    """Rows for one family, or none and why it was skipped."""
    if family.example is None:
        return [], "no example in its registry entry"
    if not family.installed:
        return [], f"{', '.join(family.missing())} not installed (extra [{family.extra}])"
    example: PolicyExample = family.load("example")(fixtures)
    absent = [str(f) for f in example.files if not f.exists()]
    if absent:
        return [], f"example files not available: {absent}"
    if camera_size is not None:
        render = functools.partial(standard_observations, camera_size=camera_size)
        example = dataclasses.replace(example, observations=render)
    models: dict[str, Callable[[], Policy]] = {
        example.model: lambda: load_policy(_with_options(example.policy, family, options))
    }
    extra = family.load("benchmarks")
    if extra is not None:
        models.update(extra(fixtures, options))
    rows = []
    for model, make in models.items():
        policy = make()
        params = count_parameters(policy)
        device = str(getattr(policy, "device", "cpu"))
        for row in time_policy(policy, example, batch_sizes, repeats):
            rows.append(
                {
                    "family": family.name,
                    "model": model,
                    "params_M": None if params is None else round(params / 1e6, 2),
                    "device": device,
                    **row,
                }
            )
    return rows, ""


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of one family's rows."""
    header = (
        f"{'model':42} {'params':>8} {'device':>6} {'batch':>5} {'1st call s':>10} "
        f"{'act() ms':>9} {'actions/s':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        params = "-" if r["params_M"] is None else f"{r['params_M']}M"
        lines.append(
            f"{r['model']:42} {params:>8} {r['device']:>6} {r['batch']:>5} "
            f"{r['first_call_s']:>10} {r['act_ms']:>9} {r['actions_per_s']:>10}"
        )
    return "\n".join(lines)


def side_by_side(rows: list[dict[str, Any]]) -> str:
    """act() ms per (model, batch) for models that several families ran ("" if none)."""
    by_key: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        by_key.setdefault((r["model"], r["batch"]), {})[r["family"]] = r["act_ms"]
    shared = {k: v for k, v in by_key.items() if len(v) > 1}
    if not shared:
        return ""
    names = sorted({f for v in shared.values() for f in v})
    header = f"{'model':42} {'batch':>5} " + " ".join(f"{n + ' ms':>14}" for n in names)
    lines = [header, "-" * len(header)]
    for (model, batch), times in shared.items():
        cells = " ".join(f"{times.get(n, '-'):>14}" for n in names)
        lines.append(f"{model:42} {batch:>5} {cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    registered = families()
    parser.add_argument("--families", default=",".join(registered))
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument("--camera-size", type=int, default=None)
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    options = dict(item.split("=", 1) for item in args.option)
    all_rows: list[dict[str, Any]] = []
    for name in args.families.split(","):
        if name not in registered:
            sys.exit(f"unknown family {name!r}; registered: {', '.join(registered)}")
        rows, skipped = family_rows(
            registered[name], args.fixtures, sizes, args.repeats, options, args.camera_size
        )
        if skipped:
            print(f"[{name}] skipped: {skipped}\n", flush=True)
            continue
        print(f"[{name}]\n{format_rows(rows)}\n", flush=True)
        all_rows.extend(rows)
    shared = side_by_side(all_rows)
    if shared:
        print(f"[same model, several families]\n{shared}\n", flush=True)
    print(json.dumps(all_rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
