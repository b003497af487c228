"""`--policy scripted`: the waypoint expert of `expert.py` behind the `Policy` contract.

Its spec asks the env for privileged state and for no camera frames, so evaluating it costs
physics only. One `Expert` runs per episode, kept in the policy's `EpisodeStreams` (keyed by
the episode's seed, unique per task and episode within a run), so batches may mix episodes
freely. Options: :class:`ScriptedOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalharness.errors import UsageError
from evalharness.policies.base import EpisodeStreams, Policy, PolicySpec
from evalharness.policies.common.options import parse_options
from evalharness.policies.scripted.expert import Expert, UnsupportedTaskError

__all__ = ["HOLD", "ScriptedOptions", "ScriptedPolicy", "make_scripted"]

HOLD = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


@dataclass(frozen=True)
class ScriptedOptions:
    """Options of the scripted expert."""

    strict: bool = False
    """raise on a task the expert has no skill for, instead of holding still and recording
    the episode's failure reason as ``unsupported: ...``."""


class _Episode:
    """One episode's expert (made on its first observation) or why it has none."""

    def __init__(self) -> None:
        self.expert: Expert | None = None
        self.unsupported = ""


class ScriptedPolicy(Policy):
    """Pick-and-place, drawer and stove skills from the BDDL goal and ground-truth poses."""

    #: nothing is compiled, so batches need no padding to fixed sizes.
    pad_batch = False

    def __init__(self, strict: bool = False) -> None:
        self.spec = PolicySpec(name="scripted", uses_images=False, privileged=True)
        self.strict = strict
        self.episodes: EpisodeStreams[_Episode] = EpisodeStreams(lambda seed: _Episode())

    def reset(self, batch_size: int) -> None:
        self.episodes.clear()

    def failure_reason(self, episode_seed: int) -> str:
        # Asked right after the episode ended, before the next act() forgets it.
        episode = self.episodes.get(episode_seed)
        return "" if episode is None else episode.unsupported

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        if "privileged" not in obs:
            raise ValueError(
                "policy 'scripted' needs obs['privileged'] (simulator state); the env adds it "
                "only for policies whose spec sets privileged=True"
            )
        # A restarted episode (e.g. on a fresh worker) starts its plan over.
        episodes = self.episodes.rows(tasks)
        actions = np.zeros((len(episodes), 1, 7))
        for i, (episode, state) in enumerate(zip(episodes, obs["privileged"], strict=True)):
            actions[i, 0] = self._act_one(episode, state)
        return actions

    def _act_one(self, episode: _Episode, state: Mapping[str, Any]) -> np.ndarray:
        if episode.unsupported:
            return HOLD
        try:
            if episode.expert is None:
                episode.expert = Expert(state["goal"])
            return episode.expert.act(state)
        except UnsupportedTaskError as exc:
            if self.strict:
                raise
            episode.unsupported = f"unsupported: {exc}"
            episode.expert = None
            return HOLD


def make_scripted(path: str | None = None, **options: str) -> Policy:
    """Factory for ``scripted[?strict=true]``; takes no checkpoint."""
    if path is not None:
        raise UsageError(f"policy 'scripted' takes no checkpoint path, got {path!r}")
    parsed = parse_options(ScriptedOptions, options, "policy 'scripted'")
    return ScriptedPolicy(strict=parsed.strict)
