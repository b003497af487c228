"""Training samples from episodes: observation windows and action chunks, the Octo way.

For step ``t`` of an episode of length T, with ``W = window_size`` and ``H = action_horizon``
(upstream ``octo/data/traj_transforms.py::chunk_act_obs``):

- observation history: frames ``t-W+1 .. t``; indices before 0 repeat frame 0 and get
  ``timestep_pad_mask`` False.
- action chunk for window slot ``w``: actions ``i_w .. i_w+H-1`` where ``i_w`` is that slot's
  (clamped) frame index; indices past T-1 repeat the last action and get ``action_pad_mask``
  False (``task_completed`` True). Upstream's ``task_completed`` offset is
  ``t - (window_size + 1) + w + h`` (octo issue #140 asks whether it should be ``- 1``); here a
  chunk entry is padding exactly when it is a repeated copy of the last action.

A sample (one ``t``) is nested like Octo's example batch, without the batch axis::

    {"observation": {"image_primary": (W, H, W, 3) uint8, "image_wrist": ..., "proprio": (W, D),
                     "timestep_pad_mask": (W,) bool, "task_completed": (W, H) bool,
                     "pad_mask_dict": {key: (W,) bool}},
     "task": {"language_instruction": str, "pad_mask_dict": {"language_instruction": bool}},
     "action": (W, H, A) float32, "action_pad_mask": (W, H, A) bool,
     "episode_index": int, "timestep": int}

`BatchSampler` stacks samples into fixed-size batches (a leading B axis; text becomes a list).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from evalharness.data.episode import Episode, episode_length
from evalharness.data.errors import DatasetError

Sample = dict[str, Any]


def _check_sizes(window_size: int, action_horizon: int) -> None:
    for name, value in (("window_size", window_size), ("action_horizon", action_horizon)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise DatasetError(f"{name} must be an int >= 1, got {value!r}")


def window_indices(
    length: int, window_size: int, action_horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gather indices for every step of an episode of ``length`` steps.

    Returns ``(history (T, W) int, timestep_pad_mask (T, W) bool, chunk (T, W, H) int,
    action_valid (T, W, H) bool)``: ``history[t, w]`` is the frame shown in slot w at step t,
    ``chunk[t, w, h]`` the action index of chunk entry h for that slot.
    """
    _check_sizes(window_size, action_horizon)
    steps = np.arange(length)[:, None] + np.arange(-window_size + 1, 1)[None, :]
    timestep_pad_mask = steps >= 0
    history = np.maximum(steps, 0)
    chunk = history[:, :, None] + np.arange(action_horizon)[None, None, :]
    action_valid = chunk <= length - 1
    return history, timestep_pad_mask, np.minimum(chunk, length - 1), action_valid


def _observation_keys(episode: Mapping[str, Any]) -> list[str]:
    return [k for k in episode if k.startswith("image_") or k == "proprio"]


def _gather(
    episode: Episode,
    rows: Sequence[np.ndarray],
    episode_index: int,
    t: int,
) -> Sample:
    """Build one sample from one step's rows of `window_indices`."""
    history, pad, chunk, valid = rows
    keys = _observation_keys(episode)
    action = np.asarray(episode["action"])[chunk]  # (W, H, A)
    return {
        "observation": {
            **{k: episode[k][history] for k in keys},
            "timestep_pad_mask": pad.copy(),
            "task_completed": ~valid,
            "pad_mask_dict": {k: np.ones(len(history), dtype=bool) for k in keys},
        },
        "task": {
            "language_instruction": episode["language_instruction"],
            "pad_mask_dict": {"language_instruction": True},
        },
        "action": action,
        "action_pad_mask": np.broadcast_to(valid[:, :, None], action.shape).copy(),
        "episode_index": episode_index,
        "timestep": t,
    }


def make_sample(
    episode: Episode, t: int, window_size: int, action_horizon: int, episode_index: int = 0
) -> Sample:
    """The training sample for step ``t`` of ``episode`` (see the module docstring)."""
    length = episode_length(episode)
    if not 0 <= t < length:
        raise DatasetError(f"step {t} is outside episode {episode.get('episode_id')} (T={length})")
    tables = window_indices(length, window_size, action_horizon)
    return _gather(episode, tuple(table[t] for table in tables), episode_index, t)


def episode_samples(
    episode: Episode, window_size: int, action_horizon: int, episode_index: int = 0
) -> Iterator[Sample]:
    """Every step's sample, in order."""
    tables = window_indices(episode_length(episode), window_size, action_horizon)
    for t in range(episode_length(episode)):
        yield _gather(episode, tuple(table[t] for table in tables), episode_index, t)


def stack_samples(samples: Sequence[Sample]) -> dict[str, Any]:
    """Stack samples along a new leading batch axis; strings become lists."""
    first = samples[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, Mapping):
            out[key] = stack_samples([s[key] for s in samples])
        elif isinstance(value, str):
            out[key] = [s[key] for s in samples]
        else:
            out[key] = np.stack([np.asarray(s[key]) for s in samples])
    return out


def pad_action_dim(batch: Mapping[str, Any], action_dim: int) -> dict[str, Any]:
    """Pad ``action`` (..., A) with zeros to ``action_dim`` and ``action_pad_mask`` with False
    (upstream ``pad_actions_and_proprio``); a sample or a batch. Pad after normalizing: the
    statistics have the data's A dims."""
    out = dict(batch)
    action = np.asarray(batch["action"])
    current = action.shape[-1]
    if current > action_dim:
        raise DatasetError(
            f"the data has {current} action dims but the model takes {action_dim}; cannot pad "
            "down (build the model for the data's action dim instead)"
        )
    extra = [(0, 0)] * (action.ndim - 1) + [(0, action_dim - current)]
    out["action"] = np.pad(action, extra)
    out["action_pad_mask"] = np.pad(np.asarray(batch["action_pad_mask"], bool), extra)
    return out


class BatchSampler:
    """Fixed-size batches of windowed samples, drawn in a seeded random order.

    Every (episode, step) pair is one sample. Samples are taken from successive seeded
    permutations, so each epoch visits every sample once, and a batch that crosses an epoch
    boundary is completed from the next permutation: every batch has exactly ``batch_size``
    samples, even when the dataset is smaller than a batch. Same seed, same batches.

    >>> sampler = BatchSampler(episodes, window_size=2, action_horizon=4, batch_size=8, seed=0)
    >>> batch = next(iter(sampler))
    >>> batch["action"].shape            # (8, 2, 4, 7)
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        window_size: int,
        action_horizon: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        transform: Any = None,
    ) -> None:
        _check_sizes(window_size, action_horizon)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DatasetError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.episodes = list(episodes)
        self.window_size = window_size
        self.action_horizon = action_horizon
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.transform = transform
        self.index = np.asarray(
            [(e, t) for e, ep in enumerate(self.episodes) for t in range(episode_length(ep))],
            dtype=np.int64,
        ).reshape(-1, 2)
        if len(self.index) == 0:
            raise DatasetError("no samples: the dataset has no transitions")
        # Per-episode index tables, computed once rather than per sample.
        self._tables = [
            window_indices(episode_length(ep), window_size, action_horizon) for ep in self.episodes
        ]

    def __len__(self) -> int:
        """Number of samples per epoch (not batches)."""
        return len(self.index)

    def _order(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed)
        while True:
            yield from (
                rng.permutation(len(self.index)) if self.shuffle else range(len(self.index))
            )

    def _sample(self, e: int, t: int) -> Sample:
        rows = tuple(table[t] for table in self._tables[e])
        return _gather(self.episodes[e], rows, e, t)

    def batch_for(self, picks: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """The batch of the given (episode index, step) samples, transformed exactly as the
        stream's batches are: what a trainer is fed for those steps (parity checks, replay)."""
        for e, t in picks:
            if not (0 <= e < len(self.episodes) and 0 <= t < episode_length(self.episodes[e])):
                raise DatasetError(
                    f"no sample (episode {e}, step {t}): the sampler has {len(self.episodes)} "
                    "episodes of lengths "
                    f"{[episode_length(ep) for ep in self.episodes][:10]}"
                )
        batch = stack_samples([self._sample(int(e), int(t)) for e, t in picks])
        return self.transform(batch) if self.transform is not None else batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """An endless stream of batches; take as many as the trainer's steps."""
        order = self._order()
        while True:
            picks = [int(next(order)) for _ in range(self.batch_size)]
            batch = stack_samples([self._sample(*self.index[i]) for i in picks])
            yield self.transform(batch) if self.transform is not None else batch
