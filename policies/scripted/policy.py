"""`--policy scripted`: the waypoint expert of `expert.py` behind the `Policy` contract.

Its spec asks the env for privileged state and for no camera frames, so evaluating it costs
physics only. One `Expert` runs per episode, keyed by the episode's seed (unique per task and
episode within a run), so batches may mix episodes freely.

Options: `?strict=1` raises on an unsupported task instead of holding still and reporting
the episode's failure reason as `unsupported: ...`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evalharness.policies.base import Policy, PolicySpec
from evalharness.policies.common.options import check_options, option_bool
from evalharness.policies.scripted.expert import Expert, UnsupportedTaskError

HOLD = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


class ScriptedPolicy(Policy):
    """Pick-and-place, drawer and stove skills from the BDDL goal and ground-truth poses."""

    #: nothing is compiled, so batches need no padding to fixed sizes.
    pad_batch = False

    def __init__(self, strict: bool = False) -> None:
        self.spec = PolicySpec(name="scripted", uses_images=False, privileged=True)
        self.strict = strict
        self._experts: dict[int, Expert] = {}
        self._unsupported: dict[int, str] = {}

    def reset(self, batch_size: int) -> None:
        self._experts.clear()
        self._unsupported.clear()

    def failure_reason(self, episode_seed: int) -> str:
        return self._unsupported.get(int(episode_seed), "")

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        if "privileged" not in obs:
            raise ValueError(
                "policy 'scripted' needs obs['privileged'] (simulator state); the env adds it "
                "only for policies whose spec sets privileged=True"
            )
        seeds = np.asarray(tasks["episode_seed"], dtype=np.int64).tolist()
        # In lockstep every live episode is in every batch: an absent seed has ended.
        for seed in set(self._experts) - set(seeds):
            del self._experts[seed]
        # An episode restarted (e.g. on a fresh worker) starts its plan over.
        starts = np.asarray(tasks.get("episode_start", np.zeros(len(seeds), bool)), dtype=bool)
        for seed, start in zip(seeds, starts.tolist(), strict=True):
            if start:
                self._experts.pop(seed, None)
                self._unsupported.pop(seed, None)
        actions = np.zeros((len(seeds), 1, 7))
        for i, (seed, state) in enumerate(zip(seeds, obs["privileged"], strict=True)):
            actions[i, 0] = self._act_one(seed, state)
        return actions

    def _act_one(self, seed: int, state: Mapping[str, Any]) -> np.ndarray:
        if seed in self._unsupported:
            return HOLD
        try:
            expert = self._experts.get(seed)
            if expert is None:
                expert = self._experts[seed] = Expert(state["goal"])
            return expert.act(state)
        except UnsupportedTaskError as exc:
            if self.strict:
                raise
            self._unsupported[seed] = f"unsupported: {exc}"
            self._experts.pop(seed, None)
            return HOLD


def make_scripted(path: str | None = None, **options: str) -> Policy:
    """Factory for `--policy scripted[?strict=1]`; takes no checkpoint."""
    if path is not None:
        raise ValueError(f"policy 'scripted' takes no checkpoint path, got {path!r}")
    check_options(options, ("strict",), "policy 'scripted'")
    return ScriptedPolicy(strict=option_bool(options, "strict", False, "policy 'scripted'"))
