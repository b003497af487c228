"""Dataset statistics, (un)normalization and gripper conventions, shared by every family.

The formulas are upstream Octo's (``octo/data/utils/data_utils.py`` for the data side,
``OctoModel.sample_actions`` for un-normalization), so a model trained by upstream code and
evaluated here sees exactly the numbers it was trained on:

- NORMAL:  x̂ = (x − mean) / (std + 1e-8);        x = x̂ · std + mean
- BOUNDS:  x̂ = clip(2 (x − p01) / (p99 − p01 + 1e-8) − 1, −1, 1);  x = (x̂ + 1)(p99 − p01)/2 + p01

Both apply only where ``mask`` is True (Octo leaves the gripper unnormalized). Un-normalization
omits the 1e-8, as upstream does.

Gripper conventions: Octo/OXE data use 1 = open, 0 = closed (continuous in [0, 1]); LIBERO's
controller takes −1 = open, +1 = close. OpenVLA's evaluation maps one to the other with
``sign(2g − 1)`` then a sign flip; the data side maps LIBERO's ±1 with ``1 − clip(g, 0, 1)``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalharness.errors import EvalharnessError

_EPS = 1e-8
log = logging.getLogger(__name__)

# The suite being evaluated, so that a multi-dataset statistics file without `?stats=` resolves
# to the dataset named after it (libero_spatial → libero_spatial_no_noops) when exactly one is.
_SUITE: ContextVar[str | None] = ContextVar("evalharness_evaluation_suite", default=None)


@contextmanager
def evaluation_suite(suite: str | None) -> Iterator[None]:
    """Within this block, :func:`select_statistics` may pick the dataset named after `suite`."""
    token = _SUITE.set(suite)
    try:
        yield
    finally:
        _SUITE.reset(token)


def _suite_key(keys: list[str], suite: str | None) -> str | None:
    if not suite:
        return None
    if suite in keys:
        return suite
    prefixed = [k for k in keys if k.startswith(f"{suite}_")]
    return prefixed[0] if len(prefixed) == 1 else None


class StatisticsError(EvalharnessError, ValueError):
    """Dataset statistics that are missing, ambiguous or malformed."""


class NormalizationType(str, enum.Enum):
    NORMAL = "normal"
    BOUNDS = "bounds"

    @classmethod
    def parse(cls, value: str | NormalizationType) -> NormalizationType:
        try:
            return cls(str(getattr(value, "value", value)).lower())
        except ValueError:
            raise StatisticsError(
                f"unknown normalization type {value!r}; expected 'normal' or 'bounds'"
            ) from None


@dataclass(frozen=True)
class ArrayStatistics:
    """Per-dimension statistics of one array key (``action`` or ``proprio``)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    p01: np.ndarray
    p99: np.ndarray
    mask: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ArrayStatistics:
        """Read ``{"mean": [...], "std": [...], ...}``; min/max/p01/p99/mask may be absent."""
        if not isinstance(data, Mapping):
            raise StatisticsError(
                f"{where}: expected a mapping of statistics, got {type(data).__name__}"
            )
        for required in ("mean", "std"):
            if required not in data:
                raise StatisticsError(f"{where}: has no {required!r}; found keys {sorted(data)}")
        values: dict[str, np.ndarray] = {}
        for key in ("mean", "std", "min", "max", "p01", "p99"):
            if key not in data:
                continue
            try:
                array = np.asarray(data[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise StatisticsError(
                    f"{where}.{key}: expected a list of numbers, got {data[key]!r:.80}"
                ) from None
            if array.ndim != 1:
                raise StatisticsError(
                    f"{where}.{key}: expected a 1-d list, got shape {array.shape}"
                )
            values[key] = array
        dim = values["mean"].shape[0]
        for key, array in values.items():
            if array.shape != (dim,):
                raise StatisticsError(
                    f"{where}.{key} has {array.shape[0]} entries but mean has {dim}"
                )
        mask = np.asarray(data.get("mask", np.ones(dim, dtype=bool)), dtype=bool)
        if mask.shape != (dim,):
            raise StatisticsError(f"{where}.mask has shape {mask.shape}; expected ({dim},)")
        lo = values.get("min", values.get("p01"))
        hi = values.get("max", values.get("p99"))
        nan = np.full(dim, np.nan)
        return cls(
            mean=values["mean"],
            std=values["std"],
            min=lo if lo is not None else nan,
            max=hi if hi is not None else nan,
            p01=values.get("p01", lo if lo is not None else nan),
            p99=values.get("p99", hi if hi is not None else nan),
            mask=mask,
        )

    def to_dict(self) -> dict[str, list[Any]]:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "p01": self.p01.tolist(),
            "p99": self.p99.tolist(),
            "mask": self.mask.tolist(),
        }

    @classmethod
    def compute(cls, values: np.ndarray, mask: np.ndarray | None = None) -> ArrayStatistics:
        """Statistics of (N, D) data, as upstream's ``get_dataset_statistics`` computes them."""
        data = np.asarray(values, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] == 0:
            raise StatisticsError(f"statistics need (N, D) data with N > 0, got shape {data.shape}")
        dim = data.shape[1]
        return cls(
            mean=data.mean(0),
            std=data.std(0),
            min=data.min(0),
            max=data.max(0),
            p01=np.quantile(data, 0.01, axis=0),
            p99=np.quantile(data, 0.99, axis=0),
            mask=np.ones(dim, dtype=bool) if mask is None else np.asarray(mask, dtype=bool),
        )

    def normalize(self, x: np.ndarray, kind: NormalizationType | str) -> np.ndarray:
        """Data-side normalization (training inputs, proprio at evaluation)."""
        kind = NormalizationType.parse(kind)
        x = np.asarray(x)
        self._check_dim(x)
        if kind is NormalizationType.NORMAL:
            out = (x - self.mean) / (self.std + _EPS)
        else:
            self._check_bounds()
            out = np.clip(2 * (x - self.p01) / (self.p99 - self.p01 + _EPS) - 1, -1, 1)
        return np.where(self.mask, out, x).astype(x.dtype if x.dtype.kind == "f" else np.float32)

    def unnormalize(self, x: np.ndarray, kind: NormalizationType | str) -> np.ndarray:
        """Model-side un-normalization; extra trailing dims beyond the statistics are dropped."""
        kind = NormalizationType.parse(kind)
        x = np.asarray(x)
        if x.shape[-1] < self.dim:
            raise StatisticsError(
                f"model outputs {x.shape[-1]} action dims but the statistics have {self.dim}"
            )
        x = x[..., : self.dim]
        if kind is NormalizationType.NORMAL:
            out = x * self.std + self.mean
        else:
            self._check_bounds()
            out = (x + 1) * (self.p99 - self.p01) / 2 + self.p01
        return np.where(self.mask, out, x)

    def _check_dim(self, x: np.ndarray) -> None:
        if x.shape[-1] != self.dim:
            raise StatisticsError(
                f"data has {x.shape[-1]} dims in its last axis but the statistics have {self.dim}"
            )

    def _check_bounds(self) -> None:
        if np.isnan(self.p01).any() or np.isnan(self.p99).any():
            raise StatisticsError("BOUNDS normalization needs p01/p99 (or min/max) statistics")


@dataclass(frozen=True)
class DatasetStatistics:
    """The statistics a model was trained with: action, and proprio when it has one."""

    action: ArrayStatistics
    proprio: ArrayStatistics | None = None
    key: str | None = None


def _is_single(stats: Mapping[str, Any]) -> bool:
    return "action" in stats and isinstance(stats["action"], Mapping) and "mean" in stats["action"]


def statistics_keys(stats: Mapping[str, Any]) -> list[str]:
    """Dataset names in a multi-dataset statistics file ([] for a single-dataset one)."""
    if _is_single(stats):
        return []
    return sorted(k for k, v in stats.items() if isinstance(v, Mapping) and "action" in v)


def select_statistics(
    stats: Mapping[str, Any], key: str | None = None, source: str = "dataset_statistics.json"
) -> DatasetStatistics:
    """Pick one dataset's statistics: ``key`` for a multi-dataset file, nothing for a single one."""
    if not stats:
        raise StatisticsError(
            f"{source}: no dataset statistics; actions cannot be un-normalized. Provide the "
            "checkpoint's dataset_statistics.json"
        )
    if _is_single(stats):
        if key not in (None, ""):
            raise StatisticsError(
                f"{source}: holds the statistics of a single dataset; drop ?stats={key}"
            )
        entry: Mapping[str, Any] = stats
        chosen = None
    else:
        keys = statistics_keys(stats)
        if key in (None, ""):
            suite = _SUITE.get()
            by_suite = _suite_key(keys, suite)
            if by_suite is not None and len(keys) > 1:
                log.info("%s: using the statistics of %r (the suite evaluated)", source, by_suite)
                key = by_suite
            elif len(keys) != 1:
                because = f" (none is named after the suite {suite!r})" if suite else ""
                raise StatisticsError(
                    f"{source}: has statistics for {len(keys)} datasets{because}; choose one "
                    f"with ?stats=KEY, one of: {', '.join(keys)}"
                )
            else:
                key = keys[0]
        if key not in keys:
            raise StatisticsError(
                f"{source}: has no statistics for dataset {key!r}; available: {', '.join(keys)}"
            )
        entry = stats[key]
        chosen = key
    where = f"{source}[{chosen}]" if chosen else source
    action = ArrayStatistics.from_dict(entry["action"], f"{where}.action")
    proprio = None
    if isinstance(entry.get("proprio"), Mapping):
        proprio = ArrayStatistics.from_dict(entry["proprio"], f"{where}.proprio")
    return DatasetStatistics(action=action, proprio=proprio, key=chosen)


class Gripper(str, enum.Enum):
    """Who means what by the last action dimension."""

    #: Octo / Open X-Embodiment: continuous in [0, 1], 1 = open, 0 = closed.
    OCTO = "octo"
    #: LIBERO / robosuite: −1 = open, +1 = close.
    LIBERO = "libero"

    @classmethod
    def parse(cls, value: str | Gripper) -> Gripper:
        try:
            return cls(str(getattr(value, "value", value)).lower())
        except ValueError:
            raise ValueError(
                f"unknown gripper convention {value!r}; expected one of "
                f"{', '.join(g.value for g in cls)}"
            ) from None


def convert_gripper(values: np.ndarray, source: Gripper | str, target: Gripper | str) -> np.ndarray:
    """Map gripper commands between conventions (any shape; call on the last action dim)."""
    source, target = Gripper.parse(source), Gripper.parse(target)
    g = np.asarray(values, dtype=np.float64)
    if source is target:
        return g
    if source is Gripper.OCTO:  # → LIBERO, as OpenVLA's eval: binarize around 0.5, flip sign
        return -np.sign(2.0 * g - 1.0)
    return 1.0 - np.clip(g, 0.0, 1.0)  # LIBERO → Octo, as OpenVLA's libero_dataset_transform


def gripper_to_env(actions: np.ndarray, source: Gripper | str) -> np.ndarray:
    """Actions (..., A) with the last entry converted to LIBERO's convention."""
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., -1] = convert_gripper(out[..., -1], source, Gripper.LIBERO)
    return out
