"""Training steps/s per policy family at a fixed small batch, on a tiny synthetic dataset.

    python benchmarks/finetune_throughput.py [--families NAME,...] [--batch-size 8] [--steps 20]
        [--parallel 1,2]

The families are the registered ones that can be finetuned (their entry names a trainer);
each starts from its contract example's checkpoint (``PolicyExample.finetune``, the tiny
upstream fixtures) and reads the data with the example's dataset-spec preset, in ``head_only``
and ``full`` mode, on CUDA where the family takes ``?device=`` and a GPU is present. The driver
times ``Trainer.train_step`` after a warm-up (compilation) step.

``--parallel 1,2`` also measures each family data parallel (`evalharness.policies.common.
distributed`): a torch family on N torchrun ranks (gloo on CPU, NCCL on GPUs), a JAX family on
N devices (on a CPU, N host devices: ``--xla_force_host_platform_device_count``). The batch
size is the global one, so steps/s compare directly. Each N, 1 included, runs in fresh child
processes started the same way (every torch rank with one intra-op thread unless
``OMP_NUM_THREADS`` says otherwise), so the counts compare under the same threading.
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
from typing import Any

from evalharness.data import write_tiny_libero_hdf5
from evalharness.finetune import FinetuneConfig, FinetuneOptions, build_trainer, training_batches
from evalharness.policies.common import distributed
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
    shard = distributed.current()
    t0 = time.perf_counter()
    trainer, dataset = build_trainer(config)
    build = time.perf_counter() - t0
    # The driver's stream: under torchrun each rank builds its rows of the global batch.
    batches = training_batches(dataset, trainer.data, config.options, 0, shard)
    t0 = time.perf_counter()
    trainer.train_step(next(batches))  # compiles
    compile_s = time.perf_counter() - t0
    ready = [next(batches) for _ in range(args.steps)]
    shard.barrier()
    t0 = time.perf_counter()
    for batch in ready:
        trainer.train_step(batch)
    shard.barrier()
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


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def parallel_rows(family: PolicyFamily, count: int, args: argparse.Namespace) -> list[dict]:
    """Rows of ``family`` trained on ``count`` torchrun ranks (torch) or devices (JAX), each
    measured by this script in child processes; rank 0 prints them."""
    command = [__file__, "--families", family.name, "--measure-here", "--json"]
    command += ["--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    command += ["--fixtures", str(args.fixtures)]
    env = dict(os.environ)
    if "jax" in family.requires:
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
        launch = [sys.executable, *command]
        unit = "devices"
    else:
        # One intra-op thread per rank whatever N (torchrun's default for N > 1 only): N
        # processes then use N cores, and 1 process is not slowed by spinning thread pools
        # on a busy machine.
        env.setdefault("OMP_NUM_THREADS", "1")
        launch = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={count}", *command,
        ]  # fmt: skip
        unit = "processes"
    done = subprocess.run(launch, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{family.name} on {count} {unit} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        row["parallel"] = f"{count} {unit}"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trainable = {name: f for name, f in families().items() if f.trainer is not None}
    parser.add_argument("--families", default=",".join(trainable))
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--parallel", default="1", help="process / device counts to measure, e.g. 1,2"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per result")
    # Set on the child processes --parallel starts: measure in this process (or rank).
    parser.add_argument("--measure-here", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Under torchrun (a --parallel child) this process is one rank: NCCL where GPUs train.
    shard = distributed.init_from_env("cuda" if _cuda() else "cpu")
    data = write_tiny_libero_hdf5(
        Path(tempfile.mkdtemp()) / "tiny_demo.hdf5", num_demos=4, steps=16, image_size=32
    )
    counts = [int(c) for c in args.parallel.split(",")]
    for family in args.families.split(","):
        if family not in trainable:
            raise SystemExit(f"no trainer for {family!r}; families: {', '.join(trainable)}")
        rows: list[dict[str, Any]] = []
        for count in counts:
            if args.measure_here or counts == [1]:
                rows += [
                    {"parallel": "1", **row} for row in bench_family(trainable[family], data, args)
                ]
            else:
                rows += parallel_rows(trainable[family], count, args)
        if not shard.is_main:
            continue
        for row in rows:
            row = {"family": family, **row}
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{family:9} {row['mode']:10} batch {row['batch_size']:3} "
                    f"x{row['parallel']:12} {row['steps_per_s']:8.2f} steps/s  "
                    f"{row['samples_per_s']:8.1f} samples/s  (build {row['build_s']} s, first "
                    f"step {row['first_step_s']} s, {row.get('device', '?')})"
                )
    distributed.shutdown()


if __name__ == "__main__":
    main()
