"""Types a policy family's finetune trainer shares with the driver (``evalharness.finetune``).

They live here, below both, so that a family's ``train.py`` never imports upwards into
``evalharness``; the driver re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from evalharness.errors import EvalharnessError
from evalharness.policies.common.options import check_options as check_known
from evalharness.policies.common.options import option_bool as parse_bool
from evalharness.policies.common.options import option_int as parse_int

__all__ = [
    "DataRequest",
    "FinetuneError",
    "check_options",
    "option_bool",
    "option_int",
    "warmup_cosine",
]


class FinetuneError(EvalharnessError, ValueError):
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


def _what(family: str) -> str:
    return f"{family} finetune" if family else "finetune"


def check_options(options: Mapping[str, str], known: Iterable[str], family: str) -> None:
    """Refuse ``?key=value`` options a family's trainer does not know, listing the known."""
    check_known(options, known, _what(family), error=FinetuneError)


def option_int(options: Mapping[str, str], key: str, default: int, family: str = "") -> int:
    """An integer option >= 1, or ``default`` when absent."""
    return parse_int(options, key, default, _what(family), minimum=1, error=FinetuneError)


def option_bool(
    options: Mapping[str, str], key: str, default: bool = False, family: str = ""
) -> bool:
    """A true/false option (1/0, yes/no, on/off), or ``default`` when absent."""
    return parse_bool(options, key, default, _what(family), error=FinetuneError)


def warmup_cosine(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """The finetune learning rate at ``step``: linear warmup 0 → ``peak`` over ``warmup_steps``,
    then cosine to 0 at ``total_steps``; ``optax.warmup_cosine_decay_schedule(0, peak, warmup,
    max(total, warmup + 1), 0)``, which the JAX Octo trainer uses, for the torch trainers."""
    decay_steps = max(total_steps, warmup_steps + 1)
    if warmup_steps > 0 and step < warmup_steps:
        return peak * step / warmup_steps
    span = decay_steps - warmup_steps
    progress = min(max(step - warmup_steps, 0), span) / span
    return 0.5 * peak * (1 + math.cos(math.pi * progress))
