"""Run the finetune trainers' steps on N torch.distributed ranks (gloo) for the DDP tests.

`run_ranks` spawns one process per rank, each doing what the finetune driver does under
torchrun: join the process group, build the trainer, draw its rows of every global batch and
take ``steps`` steps; each rank saves its losses and final trainer state for the test to compare.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nothing listens on (for the gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(config: Any, steps: int) -> dict[str, Any]:
    """``steps`` driver-fed steps of ``config``'s trainer on this rank: losses and state."""
    from evalharness.finetune import build_trainer, training_batches
    from evalharness.policies.common import distributed

    shard = distributed.current()
    trainer, dataset = build_trainer(config)
    batches = training_batches(dataset, trainer.data, config.options, 0, shard)
    losses = [float(trainer.train_step(next(batches))["loss"]) for _ in range(steps)]
    return {"losses": losses, "state": trainer.state_dict()}


def rank_main(rank: int, world: int, port: int, config: Any, steps: int, out: str) -> None:
    """One spawned rank (torch.multiprocessing.start_processes calls it with ``rank``)."""
    import torch

    from evalharness.policies.common import distributed

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # as torchrun sets OMP_NUM_THREADS
    distributed.init_from_env()
    try:
        torch.save(train(config, steps), Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def run_ranks(config: Any, steps: int, world: int, out: Path) -> list[dict[str, Any]]:
    """Each rank's ``{"losses", "state"}`` after ``steps`` steps on ``world`` gloo ranks."""
    import torch
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(
        rank_main,
        args=(world, free_port(), config, steps, str(out)),
        nprocs=world,
        start_method="spawn",
    )
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
