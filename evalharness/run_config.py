"""What a run is: the resolved `evalharness run` command, and the env stack it implies.

`RunConfig` is the run's input as data (suites, policy string, protocol, tasks, worker
processes and envs per worker, output directory); `env_configs` turns it and a policy's spec
into one `EnvConfig` per suite, which every worker builds its wrappers from. Both are
validated here, at the boundary, with errors that name the flag and the value.

A run may hold several suites (`--suite libero_spatial,libero_object`, or a group such as
`libero_4`, see `evalharness.envs.suites.SUITE_GROUPS`): one policy, one run directory, each
suite with its own step limit (a perturbation suite takes its base suite's).

    >>> parse_task_ids("0,3,5-7")
    (0, 3, 5, 6, 7)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalharness.envs.libero import TaskInfo, get_task, list_tasks
from evalharness.envs.suites import base_suite, resolve_suites
from evalharness.errors import RunError, UsageError
from evalharness.policies.base import Policy
from evalharness.protocols import Protocol
from evalharness.run_dir import videos_dir
from evalharness.worker import EnvConfig

__all__ = [
    "RESET_TIMEOUT_S",
    "RunConfig",
    "env_config",
    "env_configs",
    "env_record",
    "parse_task_ids",
]

#: wall-clock limit on one reset (an env build included) whatever the episode limit.
RESET_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RunConfig:
    """A resolved `evalharness run`: what to evaluate, how, and where to write it.

    `suite` is one suite, or several and named groups separated by commas (`suites` lists
    them); `task_ids` applies to each suite.
    """

    suite: str
    policy: str
    out_dir: Path
    protocol: Protocol
    task_ids: tuple[int, ...] | None = None
    num_envs: int = field(default_factory=lambda: os.cpu_count() or 1)
    video_episodes: int = 0
    resume: bool = False
    exec_horizon: int | None = None
    temporal_ensemble_weight: float | None = None
    progress: bool = True
    #: seconds of env time (reset excluded) one episode may take; None: 120 + 2 per step.
    episode_timeout: float | None = None
    #: pipelined rollouts (`evalharness.executors`); None: when the policy supports them
    #: (remote policies), False: lockstep.
    pipeline: bool | None = None
    #: envs each of the `num_envs` worker processes hosts; None: 2 for pipelined rollouts
    #: (one per pipeline group), else 1.
    envs_per_worker: int | None = None

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise UsageError(f"--num-envs must be >= 1, got {self.num_envs}")
        if self.envs_per_worker is not None and self.envs_per_worker < 1:
            raise UsageError(f"--envs-per-worker must be >= 1, got {self.envs_per_worker}")
        if self.episode_timeout is not None and not self.episode_timeout > 0:
            raise UsageError(f"--episode-timeout must be > 0 seconds, got {self.episode_timeout}")
        if self.video_episodes < 0:
            raise UsageError(f"--video must be >= 0, got {self.video_episodes}")
        if not self.suites:
            raise UsageError(f"--suite {self.suite!r} names no suite")

    @property
    def suites(self) -> tuple[str, ...]:
        """The run's suites in the order given, groups expanded."""
        return resolve_suites(self.suite)

    def tasks(self) -> list[TaskInfo]:
        """The tasks to run, suite by suite in the order given (all of a suite's by default,
        else `task_ids` of each)."""
        from evalharness.suites import check_runnable

        tasks: list[TaskInfo] = []
        for suite in self.suites:
            check_runnable(suite)  # a LIBERO-PRO suite whose files or env are broken here
            if self.task_ids is None:
                tasks.extend(list_tasks(suite))
            else:
                tasks.extend(get_task(suite, t) for t in self.task_ids)
        return tasks

    @property
    def statistics_suite(self) -> str | None:
        """The suite whose dataset statistics a policy should pick (`load_policy(suite=)`):
        the base suite all of the run's suites share, else None (the checkpoint's own choice)."""
        bases = {base_suite(s) or s for s in self.suites}
        return bases.pop() if len(bases) == 1 else None

    @property
    def resolved_episode_timeout(self) -> float:
        """`episode_timeout`, or its default: 120 s plus 2 s per step of the longest episode
        among the run's suites."""
        if self.episode_timeout is not None:
            return self.episode_timeout
        p = self.protocol
        return 120.0 + 2.0 * (max(p.max_steps_for(s) for s in self.suites) + p.num_steps_wait)


def parse_task_ids(text: str) -> tuple[int, ...]:
    """'0,3,5-7' -> (0, 3, 5, 6, 7), in the order given, without repeats."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                ids.extend(range(lo, hi + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise UsageError(
                f"bad task list {text!r}: {part!r} is not an id or a range like 5-7"
            ) from None
    if not ids:
        raise UsageError(f"bad task list {text!r}: no task ids")
    return tuple(dict.fromkeys(ids))


def env_config(config: RunConfig, policy: Policy) -> EnvConfig:
    """The wrapper stack a policy needs, from its spec and the CLI overrides, for the run's
    first suite (`env_configs` has one per suite)."""
    return env_configs(config, policy)[config.suites[0]]


def env_configs(config: RunConfig, policy: Policy) -> dict[str, EnvConfig]:
    """One `EnvConfig` per suite of the run: the same wrapper stack, each suite's own step
    limit and video directory."""
    spec = policy.spec
    exec_horizon = config.exec_horizon or spec.resolved_exec_horizon
    if exec_horizon > spec.action_horizon:
        raise RunError(
            f"--exec-horizon {exec_horizon} exceeds policy {spec.name!r}'s action horizon "
            f"{spec.action_horizon}: a chunk cannot execute more actions than it holds"
        )
    weight = config.temporal_ensemble_weight
    if weight is None:
        weight = spec.temporal_ensemble_weight
    p = config.protocol
    return {
        suite: EnvConfig(
            suite=suite,
            camera_size=p.camera_size,
            max_steps=p.max_steps_for(suite),
            num_steps_wait=p.num_steps_wait,
            wait_action=tuple(p.wait_action),
            window_size=spec.window_size,
            action_horizon=spec.action_horizon,
            exec_horizon=exec_horizon,
            temporal_ensemble_weight=weight,
            image_sizes={k: (int(v[0]), int(v[1])) for k, v in spec.image_sizes.items()},
            image_orientation=spec.image_orientation,
            video_dir=str(videos_dir(config.out_dir, suite)) if config.video_episodes else None,
            render_images=spec.uses_images,
            privileged=spec.privileged,
        )
        for suite in config.suites
    }


def env_record(configs: Mapping[str, EnvConfig]) -> dict[str, Any]:
    """The `env` entry of run.json and of the run's identity: the `EnvConfig` of a one-suite
    run as it always was; for several suites the first one's, with `suite` the suites joined
    by commas and `max_steps` a per-suite mapping (the only fields that differ)."""
    first = next(iter(configs.values()))
    record = dataclasses.asdict(first)
    if len(configs) > 1:
        record["suite"] = ",".join(configs)
        record["max_steps"] = {suite: c.max_steps for suite, c in configs.items()}
    return record
