"""Fixed batch sizes at the policy-call boundary, so compiled models never see a new shape.

The runner's batch shrinks as episodes finish (8 live envs, then 7, 5, ...). A jitted JAX
model recompiles for every new batch size and `torch.compile` re-traces; padding each batch
up to one of a few sizes (`BATCH_SIZES`) caps that at a handful of compilations per run, for
every policy family at once, without touching the adapters.

Padded rows repeat the last real row, so they are valid inputs, but they carry throwaway
episode seeds (`PAD_SEED_BASE + i`, above any seed the runner hands out) and
`episode_start=True`: a policy that keeps per-episode state or samples from per-episode
generators never mixes them with a real episode's. Their actions are dropped.

    >>> padded_size(3), padded_size(64), padded_size(65)
    (4, 64, 128)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Part of the act() contract, so defined beside it; re-exported here where padding happens.
from evalharness.policies.base import PAD_SEED_BASE

__all__ = ["BATCH_SIZES", "PAD_SEED_BASE", "pad_batch", "padded_size"]

#: batch sizes a policy is called with; beyond the largest, multiples of it.
BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


def padded_size(batch: int, sizes: Sequence[int] = BATCH_SIZES) -> int:
    """The smallest of `sizes` that holds `batch` rows (past the largest: a multiple of it)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for size in sizes:
        if size >= batch:
            return int(size)
    largest = int(sizes[-1])
    return -(-batch // largest) * largest


def _pad_rows(value: Any, batch: int, size: int) -> Any:
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == batch:
        if value.dtype == object:
            out = np.empty(size, dtype=object)
            out[:batch] = value
            out[batch:] = [value[-1]] * (size - batch)
            return out
        return np.concatenate([value, np.repeat(value[-1:], size - batch, axis=0)])
    if isinstance(value, list | tuple) and len(value) == batch:
        return type(value)([*value, *[value[-1]] * (size - batch)])
    return value


def pad_batch(
    obs: Mapping[str, Any], tasks: Mapping[str, Any], batch: int, size: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`obs` and `tasks` of `batch` rows padded to `size` rows (see the module docstring)."""
    if size == batch:
        return dict(obs), dict(tasks)
    if size < batch:
        raise ValueError(f"cannot pad a batch of {batch} down to {size}")
    padded_obs = {k: _pad_rows(v, batch, size) for k, v in obs.items()}
    padded_tasks = {k: _pad_rows(v, batch, size) for k, v in tasks.items()}
    if "episode_seed" in tasks:
        seeds = np.asarray(tasks["episode_seed"], dtype=np.int64)
        fill = PAD_SEED_BASE + np.arange(size - batch, dtype=np.int64)
        padded_tasks["episode_seed"] = np.concatenate([seeds, fill])
    if "episode_start" in tasks:
        starts = np.asarray(tasks["episode_start"], dtype=bool)
        padded_tasks["episode_start"] = np.concatenate([starts, np.ones(size - batch, bool)])
    return padded_obs, padded_tasks
