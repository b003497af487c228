"""The policy contract every family implements: a `spec` and a batched `act()`.

A policy sees a batch of *windowed* standard observations and returns action chunks in the
environment's action space (unnormalized, gripper convention already converted):

    obs["image_primary"]      (B, window, H, W, 3) uint8, upright
    obs["image_wrist"]        (B, window, H, W, 3) uint8
    obs["proprio"]            (B, window, 8) float32
    obs["timestep_pad_mask"]  (B, window) bool, False for slots padded at episode start
    tasks["language_instruction"]  list of B str
    tasks["episode_seed"]     (B,) int64: one seed per episode, so stochastic policies sample
                              the same actions whatever else shares the batch
    tasks["episode_start"]    (B,) bool: True on an episode's first query, also when it is
                              restarted on a fresh worker; per-episode state starts over
    ->  actions (B, action_horizon, action_dim) float

Which wrappers the runner puts in front of a policy (image size, history window, chunk
execution or temporal ensembling) is read from its `spec`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalharness.envs.rotations import ORIENTATIONS
from evalharness.errors import EvalharnessError


@dataclass(frozen=True)
class PolicySpec:
    """What a policy expects from the env and what it returns.

    `image_sizes` maps a standard image key to the (height, width) the model was trained on;
    keys absent from it are passed at the env's render size. `exec_horizon` is how many actions
    of each chunk to execute before querying again (receding horizon); None means the whole
    chunk. `temporal_ensemble_weight`, when set, replaces chunk execution with ACT/Octo-style
    ensembling of overlapping predictions (one action executed per query).

    `image_orientation` is the orientation the model was trained on: ``upright`` (the env's
    frames, OpenVLA/Octo/LeRobot data) or ``raw`` (LIBERO HDF5's upside-down frames; the
    runner then rotates frames by 180° before resizing, `envs.wrappers.ImageOrientation`).
    `load_policy` sets it from a finetuned checkpoint's ``dataset_spec.json``.

    `uses_images=False` says the policy reads no camera frames, so the env skips rendering
    (unless a video or a recording needs frames). `privileged=True` asks for simulator ground
    truth in `obs["privileged"]` (a (B,) object array of dicts, see
    `LiberoEnv.privileged_state`); only scripted experts may ask, learned policies never see it.
    """

    name: str
    window_size: int = 1
    action_horizon: int = 1
    action_dim: int = 7
    image_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    needs_language: bool = False
    needs_goal_image: bool = False
    exec_horizon: int | None = None
    temporal_ensemble_weight: float | None = None
    dataset_statistics: Mapping[str, Any] | None = None
    uses_images: bool = True
    privileged: bool = False
    image_orientation: str = "upright"

    def __post_init__(self) -> None:
        for name in ("window_size", "action_horizon", "action_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PolicySpec.{name} must be an int >= 1, got {value!r}")
        if self.exec_horizon is not None and not 1 <= self.exec_horizon <= self.action_horizon:
            raise ValueError(
                f"PolicySpec.exec_horizon must be in 1..action_horizon ({self.action_horizon}), "
                f"got {self.exec_horizon}"
            )
        if self.image_orientation not in ORIENTATIONS:
            raise ValueError(
                f"PolicySpec.image_orientation must be {' or '.join(map(repr, ORIENTATIONS))}, "
                f"got {self.image_orientation!r}"
            )
        for key, size in self.image_sizes.items():
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"PolicySpec.image_sizes[{key!r}] must be (h, w) > 0, got {size}")

    @property
    def resolved_exec_horizon(self) -> int:
        return self.action_horizon if self.exec_horizon is None else self.exec_horizon


class Policy(abc.ABC):
    """Base class of every policy adapter. Subclasses set `spec` and implement `act`."""

    spec: PolicySpec
    #: What was loaded, recorded in episodes.csv and run.json ("" for built-ins).
    checkpoint: str = ""
    #: The runner pads each batch to a fixed size (evalharness.batching) so a jitted or
    #: compiled model sees few shapes; a policy that compiles nothing may opt out.
    pad_batch: bool = True

    def reset(self, batch_size: int) -> None:  # noqa: B027 - stateless policies need nothing
        """Forget any internal state before a new set of episodes."""

    def failure_reason(self, episode_seed: int) -> str:
        """Why an episode that did not succeed failed, if the policy knows better than the
        runner's "step_limit" (a scripted expert reports an unsupported task); "" otherwise."""
        return ""

    @abc.abstractmethod
    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        """Action chunks (B, action_horizon, action_dim) for a batch of windowed observations."""


class PolicyOutputError(EvalharnessError, RuntimeError):
    """A policy returned something the environment cannot execute."""


def check_actions(policy: Policy, actions: Any, batch_size: int) -> np.ndarray:
    """Validate `act()`'s output against the policy's spec, with an error that teaches."""
    spec = policy.spec
    expected = (batch_size, spec.action_horizon, spec.action_dim)
    try:
        array = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PolicyOutputError(
            f"policy {spec.name!r} returned {type(actions).__name__}, which is not a numeric "
            f"array; expected shape {expected} (batch, action_horizon, action_dim)"
        ) from exc
    if array.shape != expected:
        raise PolicyOutputError(
            f"policy {spec.name!r} returned actions of shape {array.shape}; expected {expected} "
            "(batch, action_horizon, action_dim) as declared by its spec"
        )
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise PolicyOutputError(
            f"policy {spec.name!r} returned a non-finite action at index {bad}: {array[tuple(bad)]}"
        )
    return array
