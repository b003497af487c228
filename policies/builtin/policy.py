"""Built-in policies that need no model, so the whole harness runs without one.

- `zero`: every action is zeros (hold still, gripper command 0). A floor for any task.
- `random`: uniform actions in [-1, 1], drawn from each episode's own seed.

Both accept `?action_horizon=H` (chunks of H actions) and `exec_horizon=K`, which exercise
the chunking path of the runner without a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evalharness.policies.base import Policy, PolicySpec
from evalharness.policies.common.options import check_options, option_int
from evalharness.policies.registry import register_policy


def _spec(name: str, path: str | None, options: Mapping[str, str]) -> PolicySpec:
    if path is not None:
        raise ValueError(f"policy {name!r} takes no checkpoint path, got {path!r}")
    check_options(options, ("action_horizon", "exec_horizon"), f"policy {name!r}")
    horizon = option_int(options, "action_horizon", 1, f"policy {name!r}")
    exec_horizon = option_int(options, "exec_horizon", horizon, f"policy {name!r}")
    return PolicySpec(name=name, action_horizon=horizon, exec_horizon=exec_horizon)


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
        self._rngs: dict[int, np.random.Generator] = {}

    def reset(self, batch_size: int) -> None:
        self._rngs.clear()

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        shape = (self.spec.action_horizon, self.spec.action_dim)
        seeds = np.asarray(tasks["episode_seed"], dtype=np.int64).tolist()
        starts = np.asarray(tasks.get("episode_start", np.zeros(len(seeds), dtype=bool)))
        chunks = []
        for seed, start in zip(seeds, starts.tolist(), strict=True):
            if start:  # an episode (re)starting, e.g. rescheduled after its worker died
                self._rngs.pop(seed, None)
            rng = self._rngs.setdefault(seed, np.random.default_rng(seed))
            chunks.append(rng.uniform(-1.0, 1.0, size=shape))
        return np.stack(chunks)


@register_policy("zero")
def make_zero(path: str | None = None, **options: str) -> Policy:
    return ZeroPolicy(_spec("zero", path, options))


@register_policy("random")
def make_random(path: str | None = None, **options: str) -> Policy:
    return RandomPolicy(_spec("random", path, options))


# The scripted expert reads privileged simulator state; registered lazily like the families.
register_policy("scripted", "evalharness.policies.scripted.policy:make_scripted")
# robomimic / DROID diffusion policy (torch); lazy so that the built-ins never import torch.
register_policy("diffusion", "evalharness.policies.diffusion.policy:make_diffusion_policy")
# Octo in PyTorch (JAX or torch checkpoints, no JAX import); lazy: importing it loads torch.
register_policy("octo_pt", "evalharness.policies.octo_pt.policy:make_octo_pt_policy")
# Octo in JAX/Flax (upstream-compatible checkpoints); lazy: importing it loads jax and flax.
register_policy("octo_jax", "evalharness.policies.octo_jax.policy:make_octo_jax_policy")
# A model behind a policy server (openpi, vla-eval, evalharness serve); lazy: needs websockets.
register_policy("remote", "evalharness.policies.remote.policy:make_remote_policy")
