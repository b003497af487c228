"""Training steps/s per policy family at a fixed small batch, on a tiny synthetic dataset.

    python benchmarks/finetune_throughput.py [--families NAME,...] [--batch-size 8] [--steps 20]

The families are the registered ones that can be finetuned (their entry names a trainer);
each starts from its contract example's checkpoint (``PolicyExample.finetune``, the tiny
upstream fixtures) and reads the data with the example's dataset-spec preset, in ``head_only``
and ``full`` mode, on CUDA where the family takes ``?device=`` and a GPU is present. The driver
times ``Trainer.train_step`` after a warm-up (compilation) step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from evalharness.data import write_tiny_libero_hdf5
from evalharness.finetune import FinetuneConfig, FinetuneOptions, build_trainer
from evalharness.policies.registry import PolicyFamily, families

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def _time_trainer(
    policy: str, data: Path, mode: str, args: argparse.Namespace, spec: Any = "libero"
) -> dict[str, Any]:
    config = FinetuneConfig(
        policy=policy,
        data=data,
        dataset_spec=spec,
        out_dir=Path(tempfile.mkdtemp()),
        options=FinetuneOptions(mode=mode, steps=args.steps, batch_size=args.batch_size),
        progress=False,
    )
    t0 = time.perf_counter()
    trainer, dataset = build_trainer(config)
    build = time.perf_counter() - t0
    request = trainer.data
    batches = dataset.batches(
        request.window_size,
        request.action_horizon,
        args.batch_size,
        seed=0,
        normalization=request.normalization,
        action_dim=request.action_dim,
    )
    t0 = time.perf_counter()
    trainer.train_step(next(batches))  # compiles
    compile_s = time.perf_counter() - t0
    ready = [next(batches) for _ in range(args.steps)]
    t0 = time.perf_counter()
    for batch in ready:
        trainer.train_step(batch)
    elapsed = time.perf_counter() - t0
    return {
        "mode": mode,
        "batch_size": args.batch_size,
        "steps_per_s": round(args.steps / elapsed, 3),
        "samples_per_s": round(args.steps * args.batch_size / elapsed, 1),
        "build_s": round(build, 2),
        "first_step_s": round(compile_s, 2),
    }


def _device(family: PolicyFamily) -> str:
    """``cuda`` for a torch family when a GPU is present, else ``cpu`` (JAX picks its own)."""
    if "torch" in family.requires:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if "jax" in family.requires:
        import jax

        return str(jax.devices()[0].platform)
    return "cpu"


def bench_family(
    family: PolicyFamily, data: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """head_only and full training steps/s of ``family`` on its example checkpoint."""
    example = family.load("example")(args.fixtures)
    if example.finetune is None:
        raise SystemExit(f"{family.name}: its example names no checkpoint to finetune")
    policy = example.finetune
    device = _device(family)
    if device == "cuda" and "device" in {o.name for o in family.describe_options()}:
        policy += "?device=cuda"
    rows = [
        _time_trainer(policy, data, mode, args, example.finetune_data)
        for mode in ("head_only", "full")
    ]
    for row in rows:
        row["device"] = device
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trainable = {name: f for name, f in families().items() if f.trainer is not None}
    parser.add_argument("--families", default=",".join(trainable))
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON line per result")
    args = parser.parse_args()
    data = write_tiny_libero_hdf5(
        Path(tempfile.mkdtemp()) / "tiny_demo.hdf5", num_demos=4, steps=16, image_size=32
    )
    for family in args.families.split(","):
        if family not in trainable:
            raise SystemExit(f"no trainer for {family!r}; families: {', '.join(trainable)}")
        for row in bench_family(trainable[family], data, args):
            row = {"family": family, **row}
            if args.json:
                print(json.dumps(row))
            else:
                print(
                    f"{family:9} {row['mode']:10} batch {row['batch_size']:3}  "
                    f"{row['steps_per_s']:8.2f} steps/s  {row['samples_per_s']:8.1f} samples/s  "
                    f"(build {row['build_s']} s, first step {row['first_step_s']} s, "
                    f"{row.get('device', '?')})"
                )


if __name__ == "__main__":
    main()
