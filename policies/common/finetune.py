"""Types a policy family's finetune trainer shares with the driver (``evalharness.finetune``).

They live here, below both, so that a family's ``train.py`` never imports upwards into
``evalharness``; the driver re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataRequest", "FinetuneError"]


class FinetuneError(ValueError):
    """A finetune request that cannot work: says what does not fit and how to fix it."""


@dataclass(frozen=True)
class DataRequest:
    """How a trainer wants its batches cut from the dataset (``Dataset.batches`` arguments).

    ``action_dim``: data actions are zero-padded to it (``action_pad_mask`` False) — None keeps
    the data's width. ``normalization``: ``normal`` | ``bounds`` | None (raw actions/proprio).
    """

    window_size: int
    action_horizon: int
    action_dim: int | None = None
    normalization: str | None = "normal"
