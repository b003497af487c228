"""The runner: one `RunConfig`, one policy, one run directory.

`Runner(RunConfig(...), policy).run()` checks the output directory (and, with `--resume`,
that it holds the same run), writes run.json, hands the pending episodes to an executor and
turns what it yields into results: one `episodes.csv` row per finished episode at once, the
harness incidents into run.json, a live progress line; at the end `summary.csv`, the final
run.json and the printed table. SIGINT/SIGTERM stop the run with every finished episode kept.

The jobs it delegates, one module each:

    evalharness.run_config   RunConfig, task ids, the env stack a policy needs
    evalharness.scheduling   the episode list, the next episode, one batched act() per step
    evalharness.executors    where episodes run: local worker processes (evalharness.pool)
    evalharness.ray_executor ... or Ray actors (`RayRunner`)
    evalharness.run_dir      file names, identity, resume check, run.json, summary.csv
    evalharness.progress     the progress line
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import signal
import sys
import time
from collections import deque
from typing import Any

import pandas as pd

from evalharness import __version__, faults, render_check
from evalharness.errors import RunError
from evalharness.executors import EpisodeResult, Executor, Incident, LocalExecutor
from evalharness.identity import identity_hash
from evalharness.policies.base import Policy
from evalharness.policies.registry import parse_policy_string
from evalharness.pool import WorkerError
from evalharness.progress import Progress
from evalharness.results import EpisodeLog, format_table
from evalharness.run_config import RunConfig, env_config, env_configs, env_record, parse_task_ids
from evalharness.run_dir import (
    EPISODES_CSV,
    RESULTS_JSON,
    RUN_JSON,
    SUMMARY_CSV,
    RunDir,
    append_episode,
    outcome_identity,
    recorded_fields,
)
from evalharness.scheduling import PolicyError, act_batch, policy_seed, schedule
from evalharness.versions import git_revision, host_info, package_versions, simulator_warnings
from evalharness.worker import Episode

logger = logging.getLogger(__name__)

__all__ = [
    "PolicyError",
    "RunConfig",
    "RunError",
    "RunInterrupted",
    "Runner",
    "WorkerError",
    "act_batch",
    "env_config",
    "parse_task_ids",
    "policy_seed",
    "schedule",
]


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: in-flight episodes are abandoned, finished ones are kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise RunInterrupted(signum)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _spec_dict(policy: Policy) -> dict[str, Any]:
    spec = dataclasses.asdict(policy.spec)
    if spec.get("dataset_statistics") is not None:
        spec["dataset_statistics"] = "present"
    spec["image_sizes"] = {k: list(v) for k, v in policy.spec.image_sizes.items()}
    return spec


class Runner:
    """Runs one `RunConfig` with one policy and writes the three result files."""

    def __init__(self, config: RunConfig, policy: Policy) -> None:
        self.config = config
        self.policy = policy
        #: one per suite of the run; `env_config` is the first suite's.
        self.env_configs = env_configs(config, policy)
        self.env_config = self.env_configs[config.suites[0]]
        self.run_dir = RunDir(config.out_dir)
        self.out = self.run_dir.path
        self.tasks = {(t.suite, t.task_id): t for t in config.tasks()}
        self.episodes = schedule(config)
        self.run_info: dict[str, Any] = {}
        self.env_steps = 0
        #: monotonic times: loop start, first batched act() (all initial envs built), end.
        self.timing: dict[str, float] = {}
        self.episode_timeout = config.resolved_episode_timeout
        #: harness faults met during the run (worker deaths, instabilities, timeouts).
        self.incidents: list[dict[str, Any]] = []
        #: the executor of the latest `run()`.
        self.executor: Executor | None = None

    def make_executor(self) -> Executor:
        """Where the episodes run: local worker processes (`RayRunner`: Ray actors)."""
        return LocalExecutor(
            self.env_configs,
            self.policy,
            self.config.policy,
            self.config.num_envs,
            self.episode_timeout,
            {key: task.instruction for key, task in self.tasks.items()},
            pipeline=self.pipelined,
            envs_per_worker=self.envs_per_worker,
        )

    @property
    def _lanes_wanted(self) -> bool:
        wanted = self.config.pipeline if self.config.pipeline is not None else True
        return wanted and self.policy.pipelines

    @property
    def envs_per_worker(self) -> int:
        """Envs each worker process hosts: `--envs-per-worker`, or by default 2 when the
        rollouts pipeline (one env of each worker per group, so every process steps while the
        other group waits for its actions) and 1 otherwise."""
        if self.config.envs_per_worker is not None:
            return self.config.envs_per_worker
        return 2 if self._lanes_wanted else 1

    @property
    def pipelined(self) -> bool:
        """Whether episodes roll out pipelined: asked for (by default, when the policy has
        lanes), supported by the policy, and at least two envs in all."""
        return self._lanes_wanted and self.config.num_envs * self.envs_per_worker >= 2

    def _fields(self) -> dict[str, Any]:
        return recorded_fields(
            self.config.suite,
            self.config.policy,
            self.config.protocol.to_dict(),
            env_record(self.env_configs),
        )

    def identity(self, versions: dict[str, str]) -> dict[str, Any]:
        """Everything that changes this run's outcomes (see evalharness.run_dir), as hashed
        into run.json and compared by `--resume`."""
        path = parse_policy_string(self.config.policy).path
        policy_identity = getattr(self.policy, "identity", None)
        return outcome_identity(self._fields(), path, versions, policy_identity)

    def run(self) -> pd.DataFrame:
        """Run every pending episode; returns the summary table of all recorded episodes."""
        self.run_dir.check_writable()
        versions = package_versions()
        identity = self.identity(versions)
        self.run_dir.check_resume(identity, self.config.resume)
        warnings = simulator_warnings(versions)
        injected = os.environ.get(faults.FAULTS_ENV, "")
        if injected:
            faults.parse_faults(injected)  # a typo fails here, not in every worker
            warnings.append(
                f"{faults.FAULTS_ENV}={injected!r} is set: env workers inject faults (for tests "
                "only); these results are not an evaluation"
            )
        for w in warnings:
            logger.warning(w)
        if self.env_config.render_images or self.config.video_episodes:
            render_backend = render_check.probe(self.config.protocol.camera_size)
            logger.info(render_check.describe(render_backend))
        else:
            render_backend = {"skipped": "the policy reads no camera images"}

        log = EpisodeLog(self.run_dir.episodes_csv)
        done_keys = self.run_dir.finished_keys()
        pending = deque(e for e in self.episodes if e.key not in done_keys)
        self.run_info = self._fields() | {
            "evalharness_version": __version__,
            "command": sys.argv,
            "config": {
                "suite": self.config.suite,
                "suites": list(self.config.suites),
                "tasks": sorted({task_id for _, task_id in self.tasks}),
                # A perturbation suite runs with its base suite's step limit (LIBERO-PRO's).
                "step_limits": {s: c.max_steps for s, c in self.env_configs.items()},
                "policy": self.config.policy,
                "checkpoint": self.policy.checkpoint,
                "num_envs": self.config.num_envs,
                "envs_per_worker": self.envs_per_worker,
                "pipeline": self.pipelined,
                "episodes_per_task": self.config.protocol.episodes_per_task,
                "video_episodes": self.config.video_episodes,
                "exec_horizon": self.env_config.exec_horizon,
                "temporal_ensemble_weight": self.env_config.temporal_ensemble_weight,
            },
            "policy_spec": _spec_dict(self.policy),
            "versions": versions,
            "version_warnings": warnings,
            "git": git_revision(),
            "host": host_info(),
            "start_time": _now(),
            "end_time": None,
            "episodes_total": len(self.episodes),
            "episodes_resumed": len(self.episodes) - len(pending),
            "identity": identity,
            "identity_hash": identity_hash(identity),
            "episode_timeout_s": self.episode_timeout,
            "render_backend": render_backend,
            "faults_injected": injected or None,
        }
        self._write_run_json("running")
        interrupted: BaseException | None = None
        error: BaseException | None = None
        previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        previous_int = signal.signal(signal.SIGINT, _raise_interrupt)
        try:
            self._execute(pending, log, done_count=len(self.episodes) - len(pending))
        except KeyboardInterrupt as exc:
            interrupted = exc
        except BaseException as exc:
            error = exc
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
            log.close()
        summary = self._finish(interrupted, error)
        if interrupted is not None:
            raise interrupted
        if error is not None:
            raise error
        return summary

    def _execute(self, pending: deque[Episode], log: EpisodeLog, done_count: int) -> None:
        if not pending:
            return
        progress = Progress(len(self.episodes), done_count, enabled=self.config.progress)
        self.timing["start"] = time.monotonic()
        self.executor = executor = self.make_executor()
        try:
            # Closing the events on any exit stops the executor and abandons its episodes.
            with contextlib.closing(executor.run(pending)) as events:
                for event in events:
                    self.env_steps = executor.env_steps
                    if isinstance(event, Incident):
                        self._incident(event.episode, event.reason, event.detail, event.action)
                        continue
                    self._record(event, log)
                    progress.episode_done(event.success, self.env_steps)
        finally:
            self.env_steps = executor.env_steps
            self.timing["end"] = time.monotonic()
            if executor.first_step is not None:
                self.timing["first_step"] = executor.first_step
            progress.close()

    def _record(self, result: EpisodeResult, log: EpisodeLog) -> None:
        """One `episodes.csv` row; a harness failure is also an incident (run.json, stderr)."""
        e = result.episode
        if result.failure_reason in faults.HARNESS_FAILURES:
            action = "recorded, excluded from success rates"
            self._incident(e, result.failure_reason, result.detail, action)
        task = self.tasks[e.task_key]
        row = {
            "suite": e.suite,
            "task_id": e.task_id,
            "task_name": task.name,
            "instruction": task.instruction,
            "episode_index": e.episode_index,
            "init_state_index": e.init_state_index,
            "seed": e.seed,
            "success": result.success,
            "steps": result.steps,
            "policy": self.config.policy,
            "checkpoint": self.policy.checkpoint,
            "wall_seconds": round(result.wall_seconds, 3),
            "failure_reason": result.failure_reason,
            "scene_fingerprint": result.scene_fingerprint,
        }
        append_episode(log, row)

    def _incident(self, e: Episode, reason: str, detail: str, action: str) -> None:
        self.incidents.append(
            {
                "suite": e.suite,
                "task_id": e.task_id,
                "episode_index": e.episode_index,
                "attempt": e.attempt,
                "reason": reason,
                "detail": detail,
                "action": action,
            }
        )
        logger.warning(
            "%s task %s episode %s: %s: %s; %s",
            e.suite,
            e.task_id,
            e.episode_index,
            reason,
            detail,
            action,
        )

    def _write_run_json(self, status: str, **extra: Any) -> None:
        self.run_info.update(status=status, **extra)
        self.run_dir.write_run_json(self.run_info)

    def _finish(
        self, interrupted: BaseException | None, error: BaseException | None
    ) -> pd.DataFrame:
        episodes = self.run_dir.read_episodes()
        summary = self.run_dir.write_summary(self.config.protocol.to_dict(), episodes)
        recorded = len(episodes)
        status = "finished"
        extra: dict[str, Any] = {}
        if interrupted is not None:
            status = "interrupted"
        elif error is not None:
            status = "failed"
            extra["error"] = f"{type(error).__name__}: {error}"
        if "first_step" in self.timing and "end" in self.timing:
            stepping = self.timing["end"] - self.timing["first_step"]
            extra["env_steps_per_s"] = round(self.env_steps / max(stepping, 1e-9), 3)
        self._write_run_json(
            status,
            end_time=_now(),
            episodes_recorded=recorded,
            env_steps=self.env_steps,
            incidents=self.incidents,
            **extra,
        )
        # Again, now that run.json holds the end time and status results.json reports.
        self.run_dir.write_results_json(episodes)
        if recorded:
            title = (
                f"{self.config.suite} · {self.config.policy} · protocol {self.config.protocol.name}"
            )
            if status != "finished":
                title += f" · {status.upper()} after {recorded}/{len(self.episodes)} episodes"
            print(title)
            print(format_table(summary))
            excluded = faults.harness_failure_counts(episodes)
            if excluded:
                counts = ", ".join(f"{reason} {n}" for reason, n in excluded.items())
                print(
                    f"excluded from success rates (simulator/harness failures, not policy "
                    f"failures): {counts}"
                )
        print(f"results in {self.out}/ ({EPISODES_CSV}, {SUMMARY_CSV}, {RESULTS_JSON}, {RUN_JSON})")
        return summary
