"""What a run is: the resolved `evalharness run` command, and the env stack it implies.

`RunConfig` is the run's input as data (suite, policy string, protocol, tasks, workers,
output directory); `env_config` turns it and a policy's spec into the `EnvConfig` every
worker builds its wrappers from. Both are validated here, at the boundary, with errors that
name the flag and the value.

    >>> parse_task_ids("0,3,5-7")
    (0, 3, 5, 6, 7)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from evalharness.envs.libero import TaskInfo, get_task, list_tasks
from evalharness.errors import RunError, UsageError
from evalharness.policies.base import Policy
from evalharness.protocols import Protocol
from evalharness.run_dir import videos_dir
from evalharness.worker import EnvConfig

__all__ = ["RESET_TIMEOUT_S", "RunConfig", "env_config", "parse_task_ids"]

#: wall-clock limit on one reset (an env build included) whatever the episode limit.
RESET_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RunConfig:
    """A resolved `evalharness run`: what to evaluate, how, and where to write it."""

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

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise UsageError(f"--num-envs must be >= 1, got {self.num_envs}")
        if self.episode_timeout is not None and not self.episode_timeout > 0:
            raise UsageError(f"--episode-timeout must be > 0 seconds, got {self.episode_timeout}")
        if self.video_episodes < 0:
            raise UsageError(f"--video must be >= 0, got {self.video_episodes}")

    def tasks(self) -> list[TaskInfo]:
        """The tasks to run, in the order given (all of the suite's by default)."""
        if self.task_ids is None:
            return list(list_tasks(self.suite))
        return [get_task(self.suite, t) for t in self.task_ids]

    @property
    def resolved_episode_timeout(self) -> float:
        """`episode_timeout`, or its default: 120 s plus 2 s per step of the suite's episode."""
        if self.episode_timeout is not None:
            return self.episode_timeout
        p = self.protocol
        return 120.0 + 2.0 * (p.max_steps_for(self.suite) + p.num_steps_wait)


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
    """The wrapper stack a policy needs, from its spec and the CLI overrides."""
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
    return EnvConfig(
        suite=config.suite,
        camera_size=p.camera_size,
        max_steps=p.max_steps_for(config.suite),
        num_steps_wait=p.num_steps_wait,
        wait_action=tuple(p.wait_action),
        window_size=spec.window_size,
        action_horizon=spec.action_horizon,
        exec_horizon=exec_horizon,
        temporal_ensemble_weight=weight,
        image_sizes={k: (int(v[0]), int(v[1])) for k, v in spec.image_sizes.items()},
        image_orientation=spec.image_orientation,
        video_dir=str(videos_dir(config.out_dir, config.suite)) if config.video_episodes else None,
        render_images=spec.uses_images,
        privileged=spec.privileged,
    )
