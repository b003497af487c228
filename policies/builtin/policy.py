"""The built-in policies: no model, so the whole harness runs without one.

- ``zero``: every action is zeros (hold still, gripper command 0). A floor for any task.
- ``random``: uniform actions in [-1, 1], drawn from each episode's own seed.

Both take :class:`BuiltinOptions` (``?action_horizon=H&exec_horizon=K``), which exercise the
chunking path of the runner without a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalharness.errors import UsageError
from evalharness.policies.base import EpisodeStreams, Policy, PolicySpec
from evalharness.policies.common.options import parse_options

__all__ = ["BuiltinOptions", "RandomPolicy", "ZeroPolicy", "make_random", "make_zero"]


@dataclass(frozen=True)
class BuiltinOptions:
    """Options of the model-free built-in policies."""

    action_horizon: int = 1
    """actions per chunk (each query returns this many)."""
    exec_horizon: int | None = None
    """actions executed per chunk before the next query (default: the whole chunk)."""


def _spec(name: str, path: str | None, options: Mapping[str, str]) -> PolicySpec:
    if path is not None:
        raise UsageError(f"policy {name!r} takes no checkpoint path, got {path!r}")
    parsed = parse_options(BuiltinOptions, options, f"policy {name!r}")
    exec_horizon = parsed.exec_horizon
    return PolicySpec(
        name=name,
        action_horizon=parsed.action_horizon,
        exec_horizon=parsed.action_horizon if exec_horizon is None else exec_horizon,
    )


class ZeroPolicy(Policy):
    """Always outputs zeros: the robot holds still."""

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        batch = len(tasks["language_instruction"])
        return np.zeros((batch, self.spec.action_horizon, self.spec.action_dim))


class RandomPolicy(Policy):
    """Uniform actions in [-1, 1]; each episode draws from a generator seeded by its own seed."""

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec
        self.episodes: EpisodeStreams[np.random.Generator] = EpisodeStreams(np.random.default_rng)

    def reset(self, batch_size: int) -> None:
        self.episodes.clear()

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        shape = (self.spec.action_horizon, self.spec.action_dim)
        return np.stack([rng.uniform(-1.0, 1.0, size=shape) for rng in self.episodes.rows(tasks)])


def make_zero(path: str | None = None, **options: str) -> Policy:
    """Factory for ``zero[?action_horizon=H&exec_horizon=K]``."""
    return ZeroPolicy(_spec("zero", path, options))


def make_random(path: str | None = None, **options: str) -> Policy:
    """Factory for ``random[?action_horizon=H&exec_horizon=K]``."""
    return RandomPolicy(_spec("random", path, options))
