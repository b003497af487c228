"""Training steps/s per policy family at a fixed small batch, on a tiny synthetic dataset.

    python benchmarks/finetune_throughput.py [--families octo_jax] [--batch-size 8] [--steps 20]

Each family contributes one function ``bench_<family>(data, args) -> dict`` registered in
``BENCHES``; the driver times ``Trainer.train_step`` after a warm-up (compilation) step.
Families: ``octo_jax`` and ``octo_pt`` (the tiny Octo fixture), ``diffusion`` (the tiny
robomimic UNet fixture, 84² cameras with random crops, EMA).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evalharness.data import write_tiny_libero_hdf5
from evalharness.finetune import FinetuneConfig, FinetuneOptions, build_trainer

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


def bench_octo_jax(data: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The tiny Octo fixture (64² primary, 32² wrist, T5-tiny), head_only and full."""
    import jax

    policy = f"octo_jax:{FIXTURES / 'octo_tiny_lang'}"
    rows = [_time_trainer(policy, data, mode, args) for mode in ("head_only", "full")]
    for row in rows:
        row["device"] = jax.devices()[0].platform
    return rows


def bench_octo_pt(data: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same tiny Octo fixture in PyTorch (``?device=cuda`` when a GPU is present)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = f"octo_pt:{FIXTURES / 'octo_tiny_lang'}?device={device}"
    rows = [_time_trainer(policy, data, mode, args) for mode in ("head_only", "full")]
    for row in rows:
        row["device"] = device
    return rows


def bench_diffusion(data: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The tiny robomimic diffusion policy (``?device=cuda`` is not a finetune option: the
    trainer runs on CPU), head_only (UNet) and full (encoders too)."""
    policy = f"diffusion:{FIXTURES / 'robomimic_dp_tiny' / 'model.pth'}"
    rows = [
        _time_trainer(policy, data, mode, args, "libero_robomimic")
        for mode in ("head_only", "full")
    ]
    for row in rows:
        row["device"] = "cpu"
    return rows


BENCHES: dict[str, Callable[[Path, argparse.Namespace], list[dict[str, Any]]]] = {
    "octo_jax": bench_octo_jax,
    "octo_pt": bench_octo_pt,
    "diffusion": bench_diffusion,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(BENCHES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON line per result")
    args = parser.parse_args()
    data = write_tiny_libero_hdf5(
        Path(tempfile.mkdtemp()) / "tiny_demo.hdf5", num_demos=4, steps=16, image_size=32
    )
    for family in args.families.split(","):
        for row in BENCHES[family](data, args):
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
