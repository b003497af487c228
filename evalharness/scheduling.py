"""Which episodes a run has, which one a worker takes next, and how a step's batch is made.

Shared by every executor (local worker processes, Ray actors) and by `evalharness record`, so
that an episode sees the same seeds, the same `tasks` dict and the same batched `act()` call
wherever it runs:

- `schedule`: every episode of a run, task-major, each made by `task_episode`: episode i of a
  task starts from init state `i % num_init_states`, its scene seeded as the protocol's
  `seeding` says (its own env seed `env_seed + i`, or place i in the task's stream seeded
  `env_seed`), with its own policy seed (`policy_seed`); `evalharness record` makes its
  episodes with `task_episode` too, so recorded demo i shows run episode i's scene;
- `next_episode`: a free worker takes a pending episode of the task it has built (no env
  rebuild), else the first pending one;
- `query_policy`: one batched `act()` for the live episodes: observations stacked
  (`stack_observations`), the per-step `tasks` dict (`step_tasks`), padded to a fixed batch
  size and validated (`act_batch`).

Per-episode seeds (and a task stream replayed to the episode's place, `evalharness.envs.scenes`)
make an episode's outcome independent of which other episodes shared its batches or its
worker, so `--resume`, another `--num-envs` or another executor reproduce the same outcomes.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evalharness import faults
from evalharness.batching import pad_batch, padded_size
from evalharness.errors import RunError
from evalharness.policies.base import Policy, PolicyOutputError, check_actions
from evalharness.run_config import RunConfig
from evalharness.run_dir import EPISODES_CSV
from evalharness.worker import Episode

if TYPE_CHECKING:
    from evalharness.envs.libero import TaskInfo
    from evalharness.protocols import Protocol

__all__ = [
    "ActiveEpisode",
    "PolicyError",
    "act_batch",
    "failure_reason",
    "next_episode",
    "policy_seed",
    "query_policy",
    "schedule",
    "stack_observations",
    "step_tasks",
    "task_episode",
]


class PolicyError(RunError):
    """The policy raised or returned actions the env cannot execute; the run stops."""


def policy_seed(seed: int, task_id: int, episode_index: int) -> int:
    """The seed a stochastic policy samples an episode's actions from.

    Env seeds repeat across tasks (`seed + i`, as LeRobot does); policy streams must not, or
    task 1's episode i would replay task 0's action noise.
    """
    return int(np.random.SeedSequence([seed, task_id, episode_index]).generate_state(1)[0])


def task_episode(
    protocol: Protocol, task: TaskInfo, episode_index: int, *, record_video: bool = False
) -> Episode:
    """Episode `episode_index` of `task` under `protocol`: init state i % N, the scene the
    protocol's seeding gives it (`Protocol.episode_env_seed`; reset it with
    `Episode.reset_arguments`) and its own policy seed. `evalharness run` and
    `evalharness record` both make their episodes here."""
    return Episode(
        suite=task.suite,
        task_id=task.task_id,
        episode_index=episode_index,
        init_state_index=episode_index % task.num_init_states,
        seed=protocol.episode_env_seed(episode_index),
        record_video=record_video,
        policy_seed=policy_seed(protocol.seed, task.task_id, episode_index),
        seeding=protocol.seeding,
    )


def schedule(config: RunConfig) -> list[Episode]:
    """Every episode of the run (`task_episode`), task-major."""
    protocol = config.protocol
    return [
        task_episode(protocol, task, i, record_video=i < config.video_episodes)
        for task in config.tasks()
        for i in range(protocol.episodes_per_task)
    ]


def next_episode(pending: deque[Episode], built_task: tuple[str, int] | None) -> Episode:
    """Take the next episode for a worker whose env is built for `built_task` (suite, task_id)
    off `pending`: one of that task if any is pending (no env rebuild), else the first one."""
    episode = next((e for e in pending if e.task_key == built_task), pending[0])
    pending.remove(episode)
    return episode


@dataclass
class ActiveEpisode:
    """An episode being rolled out: its latest observation and how far it has come."""

    episode: Episode
    instruction: str
    obs: dict[str, Any]
    #: monotonic time the episode started (after its reset).
    started: float
    steps: int = 0
    #: policy queries so far; 0 until the first, which is the episode's `episode_start`.
    queries: int = 0
    #: seconds spent waiting on the env after reset: what the episode limit applies to.
    env_seconds: float = 0.0
    #: the scene after the warm-up (`LiberoEnv` reset info), for episodes.csv.
    scene_fingerprint: str = ""


def stack_observations(observations: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One batch from per-env observations: arrays stacked on a new leading axis."""
    keys = [k for k, v in observations[0].items() if isinstance(v, np.ndarray)]
    batch = {k: np.stack([o[k] for o in observations]) for k in keys}
    if "privileged" in observations[0]:
        # Dicts of simulator state (only for policies whose spec asks): one per env, unstacked.
        privileged = np.empty(len(observations), dtype=object)
        privileged[:] = [o["privileged"] for o in observations]
        batch["privileged"] = privileged
    return batch


def step_tasks(active: Sequence[ActiveEpisode]) -> dict[str, Any]:
    """The `tasks` dict of one `act()` call: instruction, episode seed, episode start."""
    return {
        "language_instruction": [a.instruction for a in active],
        "episode_seed": np.array([a.episode.policy_seed for a in active], dtype=np.int64),
        # True on an episode's first query (also when it restarts on a fresh worker):
        # per-episode policy state must start over there.
        "episode_start": np.array([a.queries == 0 for a in active]),
    }


def act_batch(
    policy: Policy,
    obs: dict[str, np.ndarray],
    tasks: dict[str, Any],
    batch: int,
    policy_string: str,
) -> np.ndarray:
    """One batched `act()` on `batch` rows, validated; any failure raises `PolicyError` naming
    the policy (`policy_string`, as given on the command line) and the shape expected."""
    spec = policy.spec
    # Padded to a fixed size (extra rows dropped below): no recompilation as envs finish.
    size = padded_size(batch) if policy.pad_batch else batch
    obs, tasks = pad_batch(obs, tasks, batch, size)
    expected = (size, spec.action_horizon, spec.action_dim)
    try:
        raw = policy.act(obs, tasks)
    except Exception as exc:
        raise PolicyError(
            f"policy {spec.name!r} ({policy_string}) raised {type(exc).__name__}: {exc} "
            f"on a batch of {size} observations; it must return actions of shape "
            f"{expected} (batch, action_horizon, action_dim)"
        ) from exc
    try:
        return check_actions(policy, raw, size)[:batch]
    except PolicyOutputError as exc:
        received: object = type(raw).__name__
        if isinstance(raw, np.ndarray | list | tuple):
            with contextlib.suppress(ValueError):
                received = np.shape(raw)
        raise PolicyError(
            f"{exc} [policy {policy_string!r}: expected shape {expected}, received "
            f"{received}]; the run stopped, finished episodes are kept in {EPISODES_CSV}"
        ) from exc


def query_policy(policy: Policy, active: Sequence[ActiveEpisode], policy_string: str) -> np.ndarray:
    """One action chunk per active episode, in order, from one batched `act()`."""
    obs = stack_observations([a.obs for a in active])
    actions = act_batch(policy, obs, step_tasks(active), len(active), policy_string)
    for a in active:
        a.queries += 1
    return actions


def failure_reason(policy: Policy, episode: Episode, success: bool) -> str:
    """`failure_reason` of an episode the env ended: "" on success, else the reason the
    policy names for it, else `step_limit`."""
    if success:
        return ""
    return policy.failure_reason(episode.policy_seed) or faults.STEP_LIMIT
