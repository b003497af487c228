"""act() latency and actions/s of every policy family, at batch 1, 8 and 32.

One section per family; each lives in its own ``latency_<family>.py`` (runnable alone) and
returns rows of ``{family, model, params_M, device, batch, act_ms, actions_per_s, ...}``.
Families whose framework is not installed are skipped with a note. Prints one table per
family, then all rows as JSON (``--json PATH`` also writes them).

    python benchmarks/policy_latency.py [--families octo_jax,octo_pt,diffusion] [--batch-sizes 1,8,32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# family -> (module file in benchmarks/, rows function, table function)
SECTIONS: dict[str, tuple[str, str, str]] = {
    "octo_jax": ("latency_octo_jax.py", "octo_jax_latency", "format_rows"),
    "octo_pt": ("latency_octo_pt.py", "octo_pt_latency", "format_rows"),
    "diffusion": ("latency_diffusion.py", "diffusion_latency", "format_rows"),
}


def _load(
    family: str,
) -> tuple[Callable[..., list[dict[str, Any]]], Callable[[list[Any]], str]] | None:
    filename, rows_fn, table_fn = SECTIONS[family]
    path = HERE / filename
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"_latency_{family}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, rows_fn), getattr(module, table_fn)


def octo_ratio_table(rows: list[dict[str, Any]]) -> str:
    """octo_pt / octo_jax act() time per (model, batch) both families measured ("" if none)."""
    jax_ms = {(r["model"], r["batch"]): r for r in rows if r.get("family") == "octo_jax"}
    pairs = [
        (jax_ms[(r["model"], r["batch"])], r)
        for r in rows
        if r.get("family") == "octo_pt" and (r["model"], r["batch"]) in jax_ms
    ]
    if not pairs:
        return ""
    header = f"{'model':28} {'batch':>5} {'jax ms':>9} {'torch ms':>9} {'torch/jax':>9} devices"
    lines = [header, "-" * len(header)]
    for j, t in pairs:
        lines.append(
            f"{t['model']:28} {t['batch']:>5} {j['act_ms']:>9} {t['act_ms']:>9} "
            f"{t['act_ms'] / j['act_ms']:>9.2f} {j['device']}/{t['device']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(SECTIONS))
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    all_rows: list[dict[str, Any]] = []
    for family in args.families.split(","):
        if family not in SECTIONS:
            sys.exit(f"unknown family {family!r}; known: {', '.join(SECTIONS)}")
        try:
            section = _load(family)
        except ImportError as exc:
            print(f"[{family}] skipped: {exc}\n")
            continue
        if section is None:
            print(f"[{family}] skipped: benchmarks/{SECTIONS[family][0]} not present\n")
            continue
        rows_fn, table_fn = section
        try:
            rows = rows_fn(sizes, args.repeats)
        except ImportError as exc:
            print(f"[{family}] skipped: {exc}\n")
            continue
        for row in rows:
            row.setdefault("family", family)
        print(f"[{family}]\n{table_fn(rows)}\n", flush=True)
        all_rows.extend(rows)
    ratio = octo_ratio_table(all_rows)
    if ratio:
        print(f"[octo_pt vs octo_jax, same model and batch]\n{ratio}\n", flush=True)
    print(json.dumps(all_rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
