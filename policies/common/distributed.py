"""Data-parallel finetuning: torchrun ranks for the torch trainers, a device mesh for JAX.

Torch (``octo_pt``, ``diffusion``), one process per device::

    torchrun --nproc_per_node 2 -m evalharness finetune --policy octo_pt:CKPT --data D ...
    evalharness finetune --nproc 2 ...          # the same, launched for you

The finetune driver calls `init_from_env` (it reads torchrun's ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``), which joins the process group (gloo on CPU, NCCL on CUDA). Then, at every step:

- the data: every rank draws the same seeded global batch of ``--batch-size`` samples and
  builds only its slice (`Shard.take` of the picks): the global batch is what the user asked;
- the randomness: trainers draw noise, diffusion times and crops for the *global* batch from
  one generator seeded alike on every rank, and keep their rows (`Shard.take`), so every rank's
  generator stays where a single process's would be and each sample gets the same draws;
- the loss: a masked mean divides by the mask count of the global batch (`Shard.all_sum`), and
  the trainer's module is wrapped in ``DistributedDataParallel`` (`wrap_ddp`), which averages
  gradients over ranks: the update is the single-process update for the whole batch;
- the state: parameters, optimizer state, EMA and generator are the same on every rank, so a
  ``train_state`` written under one N resumes under another; rank 0 alone writes files.

JAX (``octo_jax``), one process: `JaxMesh` puts the batch on a 1-d mesh over ``jax.devices()``
(sharded along the batch axis) and parameters and optimizer state on every device (replicated),
as upstream Octo's ``scripts/finetune.py`` does; jit then runs the step on all devices. One
device behaves as without a mesh; a batch size the device count does not divide is refused.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evalharness.policies.common.finetune import FinetuneError

__all__ = [
    "JaxMesh",
    "Shard",
    "current",
    "init_from_env",
    "launch_command",
    "launched_rank",
    "shutdown",
    "wrap_ddp",
]


@dataclass(frozen=True)
class Shard:
    """This process's place among the data-parallel ranks (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and reports."""
        return self.rank == 0

    def rows(self, global_size: int) -> slice:
        """This rank's rows of a global batch of ``global_size`` (checked divisible)."""
        if global_size % self.world:
            raise FinetuneError(
                f"batch size {global_size} is not divisible by the {self.world} processes; "
                f"choose a multiple of {self.world}"
            )
        size = global_size // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def take(self, value: Any, dim: int = 0) -> Any:
        """This rank's slice along ``dim`` of an array or tensor drawn for the global batch."""
        if self.world == 1:
            return value
        index = [slice(None)] * dim + [self.rows(value.shape[dim])]
        return value[tuple(index)]

    def all_sum(self, tensor: Any) -> Any:
        """The sum of a torch tensor over ranks (the tensor itself with one rank)."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def mean(self, value: float) -> float:
        """The mean of a float over ranks: what a metric of the global batch reads."""
        if self.world == 1:
            return float(value)
        import torch
        import torch.distributed as dist

        # NCCL reduces only GPU tensors; gloo takes CPU ones.
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        total = self.all_sum(torch.tensor([float(value)], dtype=torch.float64, device=device))
        return float(total[0]) / self.world

    def barrier(self) -> None:
        """Wait for every rank (no-op with one)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


_CURRENT = Shard()


def launched_rank() -> int:
    """The rank torchrun gave this process (``RANK``; 0 without torchrun), readable before
    the process group exists: callers that only rank 0 should run (trackers) check it."""
    return int(os.environ.get("RANK", "0"))


def current() -> Shard:
    """The process's `Shard`: set by `init_from_env`, rank 0 of 1 otherwise."""
    return _CURRENT


def init_from_env(device: str = "cpu") -> Shard:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (gloo on CPU, NCCL when the
    trainers' ``device`` is CUDA) and return this process's `Shard`."""
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CURRENT = Shard()
        return _CURRENT
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:
        raise FinetuneError(
            f"WORLD_SIZE={world} (torchrun) needs torch for its process group: {exc}"
        ) from None
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        if cuda:
            # One GPU per rank: cuda:LOCAL_RANK, whatever device index the option named.
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    _CURRENT = Shard(rank=rank, world=world)
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (end of a distributed finetune)."""
    global _CURRENT
    if _CURRENT.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CURRENT = Shard()


def device_for(device: str, shard: Shard | None = None) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU per rank); others as given."""
    shard = shard or current()
    if shard.world > 1 and device.startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def wrap_ddp(module: Any, shard: Shard | None = None) -> Any:
    """``module`` in ``DistributedDataParallel`` when there are several ranks, else itself.

    DDP averages the gradients of the parameters that require them over ranks during
    backward, and broadcasts rank 0's parameters and buffers at construction.
    """
    shard = shard or current()
    if shard.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next((p.device for p in module.parameters()), None)
    ids = [device.index] if device is not None and device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def launch_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The torchrun command line for ``evalharness finetune --nproc N ARGS``: the same
    arguments without ``--nproc``, one process per rank on this machine."""
    args = list(argv)
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "evalharness",
        *out,
    ]


class JaxMesh:
    """A 1-d device mesh for JAX data parallelism (see the module docstring)."""

    def __init__(self, devices: Sequence[Any]) -> None:
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.devices = list(devices)
        self.mesh = Mesh(np.asarray(self.devices), ("batch",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("batch"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @classmethod
    def create(cls, batch_size: int, devices: Sequence[Any] | None = None) -> JaxMesh | None:
        """A mesh over ``devices`` (default ``jax.devices()``), or None for one device.

        A batch the device count does not divide is refused, naming both."""
        import jax

        devices = list(jax.devices() if devices is None else devices)
        if len(devices) <= 1:
            return None
        if batch_size % len(devices):
            raise FinetuneError(
                f"batch size {batch_size} is not divisible by the {len(devices)} JAX devices "
                f"({devices[0].platform}); choose a multiple of {len(devices)} or limit the "
                "devices (e.g. CUDA_VISIBLE_DEVICES)"
            )
        return cls(devices)

    def shard_batch(self, batch: Any) -> Any:
        """Every array of a batch pytree split along its leading (batch) axis over the mesh."""
        import jax

        return jax.device_put(batch, self.batch)

    def replicate(self, tree: Any) -> Any:
        """A pytree (parameters, optimizer state) copied to every device of the mesh."""
        import jax

        return jax.device_put(tree, self.replicated)
