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

import contextlib
import dataclasses
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalharness import __version__, faults, render_check
from evalharness.batching import pad_batch, padded_size
from evalharness.envs.libero import TaskInfo, get_task, list_tasks
from evalharness.errors import RunError, UsageError
from evalharness.identity import (
    checkpoint_digest,
    differing_fields,
    identity_hash,
    lookup,
    normalize,
    outcome_versions,
)
from evalharness.policies.base import Policy, PolicyOutputError, check_actions
from evalharness.policies.registry import parse_policy_string
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

#: run.json entries that must match for `--resume` to continue a run written before run.json
#: held an `identity` (newer runs compare `identity_hash`, see evalharness.identity).
IDENTITY_FIELDS = ("suite", "policy", "protocol", "env")
#: an output directory with less free space than this is refused before any env is built.
MIN_FREE_BYTES = 64 * 1024 * 1024
#: wall-clock limit on one reset (an env build included) whatever the episode limit.
RESET_TIMEOUT_S = 600.0


class WorkerError(RuntimeError):
    """A bug inside an env worker (not a fault it survives); the message names the worker,
    task and episode and carries the worker's traceback."""


class PolicyError(RunError):
    """The policy raised or returned actions the env cannot execute; the run stops."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: in-flight episodes are abandoned, finished ones are kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


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
            raise UsageError(
                f"bad task list {text!r}: {part!r} is not an id or a range like 5-7"
            ) from None
    if not ids:
        raise UsageError(f"bad task list {text!r}: no task ids")
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
        image_orientation=spec.image_orientation,
        video_dir=str(config.out_dir / "videos" / config.suite) if config.video_episodes else None,
        render_images=spec.uses_images,
        privileged=spec.privileged,
    )


class _WorkerDied(Exception):
    """The worker process exited (killed, segfault) before answering."""


class _WorkerTimeout(Exception):
    """The worker did not answer within the episode's remaining time."""


class WorkerPool:
    """N spawned worker processes, each serving one `EpisodeEnv` over a pipe.

    A slot whose process died or hung is `restart`ed: a fresh process, which builds its env
    on the next reset like any new worker.
    """

    def __init__(self, n: int, config: EnvConfig) -> None:
        self.ctx = mp.get_context("spawn")
        self.config = config
        self.render_threads = max(1, (os.cpu_count() or 1) // n)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(n):
            conn, proc = self._spawn(i)
            self.conns.append(conn)
            self.procs.append(proc)

    def _spawn(self, slot: int) -> tuple[Connection, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=worker_main,
            args=(child, self.config, self.render_threads, render_check.egl_device_for(slot)),
            name=f"evalharness-env-{slot}",
            daemon=True,
        )
        proc.start()
        child.close()
        return parent, proc

    def pids(self) -> list[int | None]:
        return [p.pid for p in self.procs]

    def send(self, slot: int, command: str, payload: Any) -> None:
        # A dead worker cannot take the request; the recv that follows reports it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError):
            self.conns[slot].send((command, payload))

    def recv(self, slot: int, what: str, timeout: float | None = None) -> Any:
        """The payload of the slot's reply; raises by what went wrong."""
        conn = self.conns[slot]
        try:
            if timeout is not None and not conn.poll(max(timeout, 0.0)):
                raise _WorkerTimeout(
                    f"env worker {slot} did not answer within the limit during {what}"
                )
            status, payload = conn.recv()
        except (EOFError, ConnectionResetError, BrokenPipeError):
            proc = self.procs[slot]
            proc.join(timeout=5)
            raise _WorkerDied(
                f"env worker {slot} (pid {proc.pid}) died with exit code {proc.exitcode} "
                f"during {what}"
            ) from None
        if status == "ok":
            return payload
        message, tb = payload
        if status == "unstable":
            raise faults.SimUnstableError(message)
        if status == "build_error":
            raise RunError(message)
        raise WorkerError(f"env worker {slot} failed during {what}: {message}\n{tb}")

    def restart(self, slot: int) -> None:
        """Replace the slot's process by a fresh one (killing it first if it still runs)."""
        self._kill(slot)
        self.conns[slot], self.procs[slot] = self._spawn(slot)

    def _kill(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        self.conns[slot].close()

    def kill_all(self) -> None:
        """Abandon every worker at once (interrupt, error): nothing in flight is waited for."""
        for slot in range(len(self.procs)):
            self._kill(slot)

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
    queries: int = 0
    #: seconds spent waiting on the env after reset: what the episode limit applies to.
    env_seconds: float = 0.0


def _stack(observations: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = [k for k, v in observations[0].items() if isinstance(v, np.ndarray)]
    batch = {k: np.stack([o[k] for o in observations]) for k in keys}
    if "privileged" in observations[0]:
        # Dicts of simulator state (only for policies whose spec asks): one per env, unstacked.
        privileged = np.empty(len(observations), dtype=object)
        privileged[:] = [o["privileged"] for o in observations]
        batch["privileged"] = privileged
    return batch


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
        p = config.protocol
        self.episode_timeout = config.episode_timeout or (
            120.0 + 2.0 * (p.max_steps_for(config.suite) + p.num_steps_wait)
        )
        #: harness faults met during the run (worker deaths, instabilities, timeouts).
        self.incidents: list[dict[str, Any]] = []

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

    def _full_identity(self, versions: dict[str, str]) -> dict[str, Any]:
        """Everything that changes outcomes (see evalharness.identity), hashed into run.json."""
        path = parse_policy_string(self.config.policy).path
        extra = {}
        # What identifies a model beyond a checkpoint file (a policy server's metadata, see
        # policies.remote); absent for local policies, so their identities are unchanged.
        if getattr(self.policy, "identity", None):
            extra["policy_identity"] = self.policy.identity  # type: ignore[attr-defined]
        return dict(
            normalize(
                self._identity()
                | {
                    "checkpoint_sha256": checkpoint_digest(path),
                    "versions": outcome_versions(versions),
                }
                | extra
            )
        )

    def _check_resume(self, identity: dict[str, Any] | None = None) -> None:
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
        try:
            previous = json.loads(run_json.read_text())
        except (OSError, ValueError) as exc:
            raise RunError(
                f"--resume into {self.out} refused: cannot read {run_json}: {exc}"
            ) from None
        if identity is not None and isinstance(previous.get("identity"), dict):
            if previous.get("identity_hash") == identity_hash(identity):
                return
            fields = differing_fields(previous["identity"], identity) or ["identity_hash"]
            details = "; ".join(
                f"{f}: recorded {lookup(previous['identity'], f)!r}, now {lookup(identity, f)!r}"
                for f in fields
            )
            raise RunError(
                f"--resume into {self.out} refused: the run there differs in {', '.join(fields)} "
                f"({details}). Use another --out for a different configuration."
            )
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
    def _check_out_dir(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.out):
                pass
        except OSError as exc:
            raise RunError(
                f"output directory {self.out} is not writable ({exc.strerror or exc}); "
                "choose another --out"
            ) from None
        free = shutil.disk_usage(self.out).free
        if free < MIN_FREE_BYTES:
            raise RunError(
                f"output directory {self.out} has {free / 2**20:.1f} MiB free; a run needs at "
                f"least {MIN_FREE_BYTES / 2**20:.0f} MiB for its results and videos. Free some "
                "space or choose another --out"
            )

    def run(self) -> pd.DataFrame:
        """Run every pending episode; returns the summary table of all recorded episodes."""
        self._check_out_dir()
        versions = package_versions()
        identity = self._full_identity(versions)
        self._check_resume(identity)
        warnings = simulator_warnings(versions)
        injected = os.environ.get(faults.FAULTS_ENV, "")
        if injected:
            faults.parse_faults(injected)  # a typo fails here, not in every worker
            warnings.append(
                f"{faults.FAULTS_ENV}={injected!r} is set: env workers inject faults (for tests "
                "only); these results are not an evaluation"
            )
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if self.env_config.render_images or self.config.video_episodes:
            render_backend = render_check.probe(self.config.protocol.camera_size)
            print(render_check.describe(render_backend), file=sys.stderr)
        else:
            render_backend = {"skipped": "the policy reads no camera images"}

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
            self._loop(pending, log, done_count=len(self.episodes) - len(pending))
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
            incidents=self.incidents,
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
            excluded = faults.harness_failure_counts(episodes)
            if excluded:
                counts = ", ".join(f"{reason} {n}" for reason, n in excluded.items())
                print(
                    f"excluded from success rates (simulator/harness failures, not policy "
                    f"failures): {counts}"
                )
        print(f"results in {self.out}/ ({EPISODES_CSV}, {SUMMARY_CSV}, {RUN_JSON})")
        return summary

    def _loop(self, pending: deque[Episode], log: EpisodeLog, done_count: int) -> None:
        if not pending:
            return
        n = min(self.config.num_envs, len(pending))
        self._pending = pending
        self._log = log
        self._progress = _Progress(len(self.episodes), done_count, enabled=self.config.progress)
        self.timing["start"] = time.monotonic()
        self._pool = pool = WorkerPool(n, self.env_config)
        self._active: list[_Active | None] = [None] * n
        self._built: list[int | None] = [None] * n
        active = self._active
        finished = False
        try:
            self.policy.reset(n)
            self._assign(range(n))
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
                    # True on an episode's first query (also when it restarts on a fresh
                    # worker): per-episode policy state must start over there.
                    "episode_start": np.array([a.queries == 0 for a in live_active]),
                }
                actions = self._act(obs, tasks, len(live))
                sent_at = time.monotonic()
                for j, slot in enumerate(live):
                    live_active[j].queries += 1
                    pool.send(slot, "step", actions[j])
                freed = []
                for slot in live:
                    a = active[slot]
                    assert a is not None
                    reply = self._receive(slot, a, "step", sent_at)
                    if reply is None:  # a fault ended the episode (recorded or rescheduled)
                        active[slot] = None
                        freed.append(slot)
                        continue
                    ob, _, terminated, truncated, info = reply
                    self.env_steps += int(info["episode_steps"]) - a.steps
                    a.steps = int(info["episode_steps"])
                    a.obs = ob
                    if terminated or truncated:
                        success = bool(info["success"])
                        self._record(self._row(a, success))
                        self._progress.episode_done(success)
                        active[slot] = None
                        freed.append(slot)
                self._progress.steps(self.env_steps)
                if freed:
                    self._assign(freed)
            finished = True
        finally:
            self.timing["end"] = time.monotonic()
            self._progress.close()
            # Interrupted or failed: in-flight episodes are abandoned, not waited for.
            if finished:
                pool.close()
            else:
                pool.kill_all()

    def _act(self, obs: dict[str, np.ndarray], tasks: dict[str, Any], batch: int) -> np.ndarray:
        return act_batch(self.policy, obs, tasks, batch, self.config.policy)

    def _record(self, row: dict[str, object]) -> None:
        try:
            self._log.append(row)
        except OSError as exc:
            raise RunError(
                f"cannot append to {self._log.path}: {exc.strerror or exc}; the episodes "
                "recorded before this one are intact, free space and rerun with --resume"
            ) from exc

    def _receive(self, slot: int, a: _Active, what: str, sent_at: float) -> Any:
        """The worker's reply, or None when a fault ended the episode (handled here)."""
        e = a.episode
        where = f"{what} of task {e.task_id} episode {e.episode_index}"
        if what == "reset":
            limit = max(RESET_TIMEOUT_S, self.episode_timeout)
        else:
            limit = self.episode_timeout - a.env_seconds
        try:
            return self._pool.recv(slot, where, timeout=sent_at + limit - time.monotonic())
        except _WorkerDied as exc:
            self._pool.restart(slot)
            self._built[slot] = None
            if e.attempt == 0:
                self._incident(a, faults.WORKER_DIED, str(exc), "rescheduled on a fresh worker")
                self._pending.appendleft(dataclasses.replace(e, attempt=1))
            else:
                self._fault_row(a, faults.WORKER_DIED, str(exc))
        except _WorkerTimeout as exc:
            self._pool.restart(slot)
            self._built[slot] = None
            self._fault_row(a, faults.EPISODE_TIMEOUT, f"{exc} ({self.episode_timeout:.0f} s)")
        except faults.SimUnstableError as exc:
            self._built[slot] = None  # the worker closed its env; the next reset rebuilds
            self._fault_row(a, faults.SIM_UNSTABLE, str(exc))
        finally:
            if what == "step":
                a.env_seconds += time.monotonic() - sent_at
        return None

    def _incident(self, a: _Active, reason: str, detail: str, action: str) -> None:
        e = a.episode
        self.incidents.append(
            {
                "task_id": e.task_id,
                "episode_index": e.episode_index,
                "attempt": e.attempt,
                "reason": reason,
                "detail": detail,
                "action": action,
            }
        )
        print(
            f"warning: task {e.task_id} episode {e.episode_index}: {reason}: {detail}; {action}",
            file=sys.stderr,
        )

    def _fault_row(self, a: _Active, reason: str, detail: str) -> None:
        self._incident(a, reason, detail, "recorded, excluded from success rates")
        self._record(self._row(a, False, reason=reason))
        self._progress.episode_done(False)

    def _assign(self, slots: Sequence[int]) -> None:
        """Hand each free slot its next episode (same task first: no env rebuild) and reset.

        A slot whose reset fails (worker died, simulator unstable) takes the next episode.
        """
        pending, built = self._pending, self._built
        free = list(slots)
        while free and pending:
            sent = []
            for slot in free:
                if not pending:
                    break
                episode = next((e for e in pending if e.task_id == built[slot]), pending[0])
                pending.remove(episode)
                built[slot] = episode.task_id
                self._pool.send(slot, "reset", episode)
                a = _Active(episode, self.tasks[episode.task_id], {}, time.monotonic())
                sent.append((slot, a))
            free = []
            for slot, a in sent:
                reply = self._receive(slot, a, "reset", a.started)
                if reply is None:
                    free.append(slot)
                    continue
                a.obs, _info = reply
                a.started = time.monotonic()
                self._active[slot] = a

    def _row(self, a: _Active, success: bool, reason: str | None = None) -> dict[str, object]:
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
            "failure_reason": reason
            if reason is not None
            else ""
            if success
            else (self.policy.failure_reason(a.episode.policy_seed) or faults.STEP_LIMIT),
        }


def _spec_dict(policy: Policy) -> dict[str, Any]:
    spec = dataclasses.asdict(policy.spec)
    if spec.get("dataset_statistics") is not None:
        spec["dataset_statistics"] = "present"
    spec["image_sizes"] = {k: list(v) for k, v in policy.spec.image_sizes.items()}
    return spec


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise RunInterrupted(signum)


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
