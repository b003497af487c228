"""The batched runner: episodes scheduled onto worker envs, one batched `act()` per step.

Workers step in lockstep: every control step the runner stacks the observations of all live
envs, calls the policy once, sends each env its chunk and waits for all of them. A finished
episode is written to `episodes.csv` at once and its worker takes the next pending episode
(preferring one of the task it already has built). Lockstep scheduling makes the batches, and
so the results, a function of the command alone; per-episode seeds make each episode's
outcome independent of which other episodes shared its batches, so `--resume` and a different
`--num-envs` reproduce the same outcomes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalharness import __version__
from evalharness.envs.libero import TaskInfo, get_task, list_tasks
from evalharness.policies.base import Policy, check_actions
from evalharness.protocols import Protocol
from evalharness.results import (
    EpisodeLog,
    atomic_write_json,
    format_table,
    read_episodes,
    summarize,
    write_summary,
)
from evalharness.versions import git_revision, host_info, package_versions, simulator_warnings
from evalharness.worker import EnvConfig, Episode, worker_main

EPISODES_CSV = "episodes.csv"
SUMMARY_CSV = "summary.csv"
RUN_JSON = "run.json"

#: run.json entries that must match for `--resume` to continue a run.
IDENTITY_FIELDS = ("suite", "policy", "protocol", "env")


class RunError(RuntimeError):
    """A run that cannot start or cannot go on; the message says what to change."""


class WorkerError(RunError):
    """An env worker failed; the message names the worker, task and episode."""


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

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise ValueError(f"--num-envs must be >= 1, got {self.num_envs}")
        if self.video_episodes < 0:
            raise ValueError(f"--video must be >= 0, got {self.video_episodes}")

    def tasks(self) -> list[TaskInfo]:
        if self.task_ids is None:
            return list(list_tasks(self.suite))
        return [get_task(self.suite, t) for t in self.task_ids]


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
            raise ValueError(
                f"bad task list {text!r}: {part!r} is not an id or a range like 5-7"
            ) from None
    if not ids:
        raise ValueError(f"bad task list {text!r}: no task ids")
    return tuple(dict.fromkeys(ids))


def schedule(config: RunConfig) -> list[Episode]:
    """Every episode of the run: task-major; episode i uses init state i % N and seed seed+i."""
    episodes = []
    for task in config.tasks():
        for i in range(config.protocol.episodes_per_task):
            episodes.append(
                Episode(
                    suite=config.suite,
                    task_id=task.task_id,
                    episode_index=i,
                    init_state_index=i % task.num_init_states,
                    seed=config.protocol.seed + i,
                    record_video=i < config.video_episodes,
                    policy_seed=policy_seed(config.protocol.seed, task.task_id, i),
                )
            )
    return episodes


def policy_seed(seed: int, task_id: int, episode_index: int) -> int:
    """The seed a stochastic policy samples an episode's actions from.

    Env seeds repeat across tasks (`seed + i`, as LeRobot does); policy streams must not, or
    task 1's episode i would replay task 0's action noise.
    """
    return int(np.random.SeedSequence([seed, task_id, episode_index]).generate_state(1)[0])


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
        video_dir=str(config.out_dir / "videos" / config.suite) if config.video_episodes else None,
    )


class WorkerPool:
    """N spawned worker processes, each serving one `EpisodeEnv` over a pipe."""

    def __init__(self, n: int, config: EnvConfig) -> None:
        ctx = mp.get_context("spawn")
        render_threads = max(1, (os.cpu_count() or 1) // n)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(child, config, render_threads),
                name=f"evalharness-env-{i}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def send(self, slot: int, command: str, payload: Any) -> None:
        self.conns[slot].send((command, payload))

    def recv(self, slot: int, what: str) -> Any:
        try:
            status, payload = self.conns[slot].recv()
        except (EOFError, ConnectionResetError):
            code = self.procs[slot].exitcode
            raise WorkerError(f"env worker {slot} died (exit code {code}) during {what}") from None
        if status != "ok":
            message, tb = payload
            raise WorkerError(f"env worker {slot} failed during {what}: {message}\n{tb}")
        return payload

    def close(self) -> None:
        for slot, conn in enumerate(self.conns):
            try:
                conn.send(("close", None))
                if conn.poll(5):
                    conn.recv()
            except (OSError, EOFError, BrokenPipeError):
                pass
            self.procs[slot].join(timeout=5)
            if self.procs[slot].is_alive():
                self.procs[slot].kill()
                self.procs[slot].join(timeout=5)


@dataclass
class _Active:
    episode: Episode
    task: TaskInfo
    obs: dict[str, Any]
    started: float
    steps: int = 0


def _stack(observations: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = [k for k, v in observations[0].items() if isinstance(v, np.ndarray)]
    return {k: np.stack([o[k] for o in observations]) for k in keys}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


class Runner:
    """Runs one `RunConfig` with one policy and writes the three result files."""

    def __init__(self, config: RunConfig, policy: Policy) -> None:
        self.config = config
        self.policy = policy
        self.env_config = env_config(config, policy)
        self.out = Path(config.out_dir)
        self.tasks = {t.task_id: t for t in config.tasks()}
        self.episodes = schedule(config)
        self.run_info: dict[str, Any] = {}
        self.env_steps = 0
        #: monotonic times: loop start, first batched act() (all initial envs built), end.
        self.timing: dict[str, float] = {}

    # -- run.json -------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        identity = {
            "suite": self.config.suite,
            "policy": self.config.policy,
            "protocol": self.config.protocol.to_dict(),
            "env": dataclasses.asdict(self.env_config) | {"video_dir": None},
        }
        # Compared against what run.json holds, so normalize through JSON (tuples -> lists).
        return dict(json.loads(json.dumps(identity, default=str)))

    def _check_resume(self) -> None:
        run_json = self.out / RUN_JSON
        episodes_csv = self.out / EPISODES_CSV
        if not self.config.resume:
            if episodes_csv.exists() or run_json.exists():
                raise RunError(
                    f"{self.out} already holds a run ({EPISODES_CSV} or {RUN_JSON} exists); pass "
                    "--resume to finish it, or choose another --out"
                )
            return
        if not run_json.exists():
            return
        previous = json.loads(run_json.read_text())
        mine = self._identity()
        differing = [f for f in IDENTITY_FIELDS if previous.get(f) != mine[f]]
        if differing:
            details = "; ".join(
                f"{f}: recorded {previous.get(f)!r}, now {mine[f]!r}" for f in differing
            )
            raise RunError(
                f"--resume into {self.out} refused: the run there differs in {', '.join(differing)} "
                f"({details}). Use another --out for a different configuration."
            )

    def _write_run_json(self, status: str, **extra: Any) -> None:
        self.run_info.update(status=status, **extra)
        atomic_write_json(self.out / RUN_JSON, self.run_info)

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        """Run every pending episode; returns the summary table of all recorded episodes."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_resume()
        versions = package_versions()
        warnings = simulator_warnings(versions)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)

        log = EpisodeLog(self.out / EPISODES_CSV)
        done = read_episodes(self.out / EPISODES_CSV)
        done_keys = {
            (s, int(t), int(e))
            for s, t, e in zip(done["suite"], done["task_id"], done["episode_index"], strict=True)
        }
        pending = deque(e for e in self.episodes if e.key not in done_keys)
        started = _now()
        self.run_info = self._identity() | {
            "evalharness_version": __version__,
            "command": sys.argv,
            "config": {
                "suite": self.config.suite,
                "tasks": sorted(self.tasks),
                "policy": self.config.policy,
                "checkpoint": self.policy.checkpoint,
                "num_envs": self.config.num_envs,
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
            "start_time": started,
            "end_time": None,
            "episodes_total": len(self.episodes),
            "episodes_resumed": len(self.episodes) - len(pending),
        }
        self._write_run_json("running")
        interrupted: BaseException | None = None
        error: BaseException | None = None
        previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self._loop(pending, log, done_count=len(self.episodes) - len(pending))
        except KeyboardInterrupt as exc:
            interrupted = exc
        except BaseException as exc:
            error = exc
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            log.close()
        summary = self._finish(interrupted, error)
        if interrupted is not None:
            raise interrupted
        if error is not None:
            raise error
        return summary

    def _finish(
        self, interrupted: BaseException | None, error: BaseException | None
    ) -> pd.DataFrame:
        episodes = read_episodes(self.out / EPISODES_CSV)
        summary = summarize(episodes)
        header = {"protocol": self.config.protocol.name} | {
            k: v for k, v in self.config.protocol.to_dict().items() if k != "name"
        }
        write_summary(summary, self.out / SUMMARY_CSV, header=header)
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
            episodes_recorded=len(episodes),
            env_steps=self.env_steps,
            **extra,
        )
        if len(episodes):
            title = (
                f"{self.config.suite} · {self.config.policy} · protocol {self.config.protocol.name}"
            )
            if status != "finished":
                title += f" · {status.upper()} after {len(episodes)}/{len(self.episodes)} episodes"
            print(title)
            print(format_table(summary))
        print(f"results in {self.out}/ ({EPISODES_CSV}, {SUMMARY_CSV}, {RUN_JSON})")
        return summary

    def _loop(self, pending: deque[Episode], log: EpisodeLog, done_count: int) -> None:
        if not pending:
            return
        n = min(self.config.num_envs, len(pending))
        progress = _Progress(len(self.episodes), done_count, enabled=self.config.progress)
        self.timing["start"] = time.monotonic()
        pool = WorkerPool(n, self.env_config)
        try:
            self.policy.reset(n)
            active: list[_Active | None] = [None] * n
            built: list[int | None] = [None] * n
            self._assign(pool, active, built, pending, range(n))
            self.timing["first_step"] = time.monotonic()
            while any(a is not None for a in active):
                live = [i for i, a in enumerate(active) if a is not None]
                live_active = [a for a in active if a is not None]
                obs = _stack([a.obs for a in live_active])
                tasks: dict[str, Any] = {
                    "language_instruction": [a.task.instruction for a in live_active],
                    "episode_seed": np.array(
                        [a.episode.policy_seed for a in live_active], dtype=np.int64
                    ),
                }
                actions = check_actions(self.policy, self.policy.act(obs, tasks), len(live))
                for j, slot in enumerate(live):
                    pool.send(slot, "step", actions[j])
                freed = []
                for slot in live:
                    a = active[slot]
                    assert a is not None
                    ob, _, terminated, truncated, info = pool.recv(
                        slot, f"task {a.episode.task_id} episode {a.episode.episode_index}"
                    )
                    self.env_steps += int(info["episode_steps"]) - a.steps
                    a.steps = int(info["episode_steps"])
                    a.obs = ob
                    if terminated or truncated:
                        success = bool(info["success"])
                        log.append(self._row(a, success))
                        progress.episode_done(success)
                        active[slot] = None
                        freed.append(slot)
                progress.steps(self.env_steps)
                if freed:
                    self._assign(pool, active, built, pending, freed)
        finally:
            self.timing["end"] = time.monotonic()
            progress.close()
            pool.close()

    def _assign(
        self,
        pool: WorkerPool,
        active: list[_Active | None],
        built: list[int | None],
        pending: deque[Episode],
        slots: Sequence[int],
    ) -> None:
        """Hand each free slot its next episode (same task first: no env rebuild) and reset."""
        sent = []
        for slot in slots:
            if not pending:
                break
            episode = next((e for e in pending if e.task_id == built[slot]), pending[0])
            pending.remove(episode)
            built[slot] = episode.task_id
            pool.send(slot, "reset", episode)
            sent.append((slot, episode))
        for slot, episode in sent:
            obs, _info = pool.recv(
                slot, f"reset of task {episode.task_id} episode {episode.episode_index}"
            )
            active[slot] = _Active(episode, self.tasks[episode.task_id], obs, time.monotonic())

    def _row(self, a: _Active, success: bool) -> dict[str, object]:
        return {
            "suite": a.episode.suite,
            "task_id": a.episode.task_id,
            "task_name": a.task.name,
            "instruction": a.task.instruction,
            "episode_index": a.episode.episode_index,
            "init_state_index": a.episode.init_state_index,
            "seed": a.episode.seed,
            "success": success,
            "steps": a.steps,
            "policy": self.config.policy,
            "checkpoint": self.policy.checkpoint,
            "wall_seconds": round(time.monotonic() - a.started, 3),
            "failure_reason": "" if success else "step_limit",
        }


def _spec_dict(policy: Policy) -> dict[str, Any]:
    spec = dataclasses.asdict(policy.spec)
    if spec.get("dataset_statistics") is not None:
        spec["dataset_statistics"] = "present"
    spec["image_sizes"] = {k: list(v) for k, v in policy.spec.image_sizes.items()}
    return spec


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class _Progress:
    """A one-line live bar: episodes done, success so far, env steps per second."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.successes = 0
        self.finished = 0
        self.t0 = time.monotonic()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="ep", file=sys.stderr, dynamic_ncols=True
            )

    def episode_done(self, success: bool) -> None:
        self.finished += 1
        self.successes += int(success)
        if self.bar is not None:
            self.bar.update(1)

    def steps(self, env_steps: int) -> None:
        if self.bar is not None:
            rate = env_steps / max(time.monotonic() - self.t0, 1e-9)
            ok = f"{100 * self.successes / self.finished:.0f}%" if self.finished else "-"
            self.bar.set_postfix_str(f"success {ok} · {rate:.1f} env steps/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
