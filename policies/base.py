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

Calls are in lockstep: every call carries every episode still running (the runner, Ray actors
and ``record`` step all live envs together), so an episode absent from a call has ended. The
runner pads a batch to a fixed size with rows whose seed is ``>= PAD_SEED_BASE`` and whose
``episode_start`` is True; their actions are dropped. A policy that keeps anything per episode
(noise generators, PRNG query counters, a planner) keeps it in :class:`EpisodeStreams`, which
applies these rules once for every family: restart at ``episode_start``, forget an episode that
ended, never keep a padding row.

Which wrappers the runner puts in front of a policy (image size, history window, chunk
execution or temporal ensembling) is read from its `spec`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from evalharness.envs.rotations import ORIENTATIONS
from evalharness.errors import EvalharnessError

__all__ = [
    "PAD_SEED_BASE",
    "POLICY_TIMEOUT",
    "EpisodeStreams",
    "Policy",
    "PolicyOutputError",
    "PolicySpec",
    "check_actions",
    "episode_seeds",
]

#: episode seeds of the rows the runner adds to pad a batch (``evalharness.batching``) start
#: here; real episode seeds are < 2**32.
PAD_SEED_BASE = 2**62
#: `Policy.failure_reason` of an episode whose policy request outlived its timeout (a remote
#: policy): a harness fault, so the runner ends that episode alone and leaves it out of rates.
POLICY_TIMEOUT = "policy_timeout"

T = TypeVar("T")


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

    def failure_detail(self, episode_seed: int) -> str:
        """What went wrong, when `failure_reason` names a harness fault (the timed-out
        request's URL and limit); "" otherwise."""
        return ""

    #: True if `pipeline_lanes` gives independent lanes (a remote policy: one connection each).
    pipelines: bool = False

    def pipeline_lanes(self, n: int) -> list[Policy]:
        """`n` policies that answer the same as this one, each called in lockstep for its own
        group of envs (pipelined rollouts: one group steps while another's actions are
        computed). Only policies with `pipelines` True support it."""
        raise NotImplementedError(f"policy {self.spec.name!r} has no pipeline lanes")

    @abc.abstractmethod
    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        """Action chunks (B, action_horizon, action_dim) for a batch of windowed observations."""


def episode_seeds(
    tasks: Mapping[str, Sequence[Any] | np.ndarray], batch_size: int | None = None
) -> tuple[list[int], list[bool]]:
    """Each row's ``episode_seed`` and ``episode_start`` (False when absent). Direct calls
    without ``episode_seed`` may pass ``batch_size``: row i is then episode i."""
    if "episode_seed" in tasks:
        seeds = [int(s) for s in np.asarray(tasks["episode_seed"], dtype=np.int64).reshape(-1)]
    elif batch_size is not None:
        seeds = list(range(batch_size))
    else:
        raise KeyError(
            "tasks has no 'episode_seed': a stochastic policy needs one seed per row "
            "(the runner sends it; direct callers pass np.arange(batch))"
        )
    starts = tasks.get("episode_start")
    if starts is None:
        return seeds, [False] * len(seeds)
    flags = [bool(s) for s in np.asarray(starts, dtype=bool).reshape(-1)]
    if len(flags) != len(seeds):
        raise ValueError(
            f"tasks['episode_start'] has {len(flags)} rows, tasks['episode_seed'] {len(seeds)}"
        )
    return seeds, flags


class EpisodeStreams(Generic[T]):
    """Per-episode values keyed by episode seed: the one place a policy keeps episode state.

    ``start(seed)`` makes an episode's value when it first appears or restarts: a seeded
    ``np.random.Generator``, a ``torch.Generator``, a query counter, a planner. Each
    :meth:`rows` call returns one value per row and applies the contract's rules:

    - a row with ``episode_start`` True gets a fresh value (an episode restarted on a fresh
      worker draws its stream from the beginning again);
    - an episode absent from the call has ended (calls are in lockstep) and is forgotten;
    - a padding row (seed ``>= PAD_SEED_BASE``) gets a fresh value that is never kept.

    So the number of live values never exceeds the number of running episodes.

        >>> streams = EpisodeStreams(lambda seed: np.random.default_rng(seed))
        >>> rngs = streams.rows({"episode_seed": [7, PAD_SEED_BASE], "episode_start": [1, 1]})
        >>> len(streams), 7 in streams
        (1, True)
    """

    def __init__(self, start: Callable[[int], T]) -> None:
        self._start = start
        self._live: dict[int, T] = {}

    def rows(
        self, tasks: Mapping[str, Sequence[Any] | np.ndarray], batch_size: int | None = None
    ) -> list[T]:
        """One value per row of ``tasks`` (see the class docstring); ``batch_size`` numbers
        the rows of a direct call that passes no ``episode_seed``."""
        seeds, starts = episode_seeds(tasks, batch_size)
        present = set(seeds)
        for ended in [s for s in self._live if s not in present]:
            del self._live[ended]
        values = []
        for seed, start in zip(seeds, starts, strict=True):
            if seed >= PAD_SEED_BASE:
                values.append(self._start(seed))
                continue
            if start or seed not in self._live:
                self._live[seed] = self._start(seed)
            values.append(self._live[seed])
        return values

    def get(self, seed: int) -> T | None:
        """The value of a running (or just ended) episode, or None; never starts one."""
        return self._live.get(int(seed))

    def clear(self) -> None:
        """Forget every episode (``Policy.reset``)."""
        self._live.clear()

    def restore(self, values: Mapping[int, T]) -> None:
        """Put back episodes a call left out that still run elsewhere: ``evalharness serve``
        gathers several clients' requests, so one call need not hold every live episode."""
        self._live.update({int(seed): value for seed, value in values.items()})

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, seed: object) -> bool:
        return seed in self._live

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._live))


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
