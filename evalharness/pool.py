"""The local worker pool: spawned processes, each hosting one or more `EpisodeEnv`s.

A *slot* is one env: the unit the executor schedules episodes onto, with a pipe of its own.
A worker process hosts `envs_per_worker` slots (default 1); slot `s` lives in worker
`s // envs_per_worker`. A process steps one of its envs at a time, so its envs share one
core: several per worker pay when an env would otherwise sit idle, e.g. a pipelined run
(`evalharness.executors`), where one env of each worker steps while the other waits for its
actions.

Workers are spawned, not forked: an EGL render context made before a fork is invalid in the
child, so each worker builds its envs on their first reset (`evalharness.worker`). A reply
says how the request went, and `WorkerPool.recv` turns each way of going wrong into one
exception:

- `WorkerDied`: the process exited (killed, segfault) before answering;
- `WorkerTimeout`: it did not answer within the time left;
- `faults.SimUnstableError`: the simulator went unstable; the worker closed that env;
- `RunError`: the env cannot be built at all (the run stops, the message says why);
- `WorkerError`: anything else raised inside the worker, with its traceback (a bug).

A worker whose process died or hung is `restart`ed: a fresh process, which builds its envs
on their next reset like any new worker. Every slot of the old process loses its env (and
the episode it ran): `restart` returns them all.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from evalharness import faults, render_check
from evalharness.errors import RunError
from evalharness.worker import EnvConfig, worker_main

__all__ = ["WorkerDied", "WorkerError", "WorkerPool", "WorkerTimeout"]


class WorkerDied(Exception):
    """The worker process exited (killed, segfault) before answering."""


class WorkerTimeout(Exception):
    """The worker did not answer within the episode's remaining time."""


class WorkerError(RuntimeError):
    """A bug inside an env worker (not a fault it survives); the message names the worker,
    task and episode and carries the worker's traceback."""


class WorkerPool:
    """`num_workers` spawned processes of `envs_per_worker` envs (slots) each.

    `config`: the env of a one-suite run, or one per suite (see `EpisodeEnv`).
    """

    def __init__(
        self,
        num_workers: int,
        config: EnvConfig | Mapping[str, EnvConfig],
        envs_per_worker: int = 1,
    ) -> None:
        if num_workers < 1 or envs_per_worker < 1:
            raise ValueError(
                f"a worker pool needs >= 1 worker and >= 1 env per worker, got "
                f"num_workers={num_workers}, envs_per_worker={envs_per_worker}"
            )
        self.ctx = mp.get_context("spawn")
        self.config = config
        self.num_workers = num_workers
        self.envs_per_worker = envs_per_worker
        # Per process, not per env: a process renders one of its envs at a time.
        self.render_threads = max(1, (os.cpu_count() or 1) // num_workers)
        #: by slot: the runner's end of the slot's pipe.
        self.conns: list[Connection] = []
        #: by worker: its process.
        self.procs: list[Any] = []
        for worker in range(num_workers):
            conns, proc = self._spawn(worker)
            self.conns.extend(conns)
            self.procs.append(proc)

    def _spawn(self, worker: int) -> tuple[list[Connection], Any]:
        pipes = [self.ctx.Pipe() for _ in range(self.envs_per_worker)]
        children = [child for _, child in pipes]
        proc = self.ctx.Process(
            target=worker_main,
            args=(children, self.config, self.render_threads, render_check.egl_device_for(worker)),
            name=f"evalharness-env-{worker}",
            daemon=True,
        )
        proc.start()
        for child in children:
            child.close()
        return [parent for parent, _ in pipes], proc

    def __len__(self) -> int:
        """The number of slots (envs)."""
        return len(self.conns)

    def worker_of(self, slot: int) -> int:
        """The worker process hosting `slot`."""
        return slot // self.envs_per_worker

    def slots_of(self, worker: int) -> list[int]:
        """The slots `worker` hosts."""
        first = worker * self.envs_per_worker
        return list(range(first, first + self.envs_per_worker))

    def pids(self) -> list[int | None]:
        """The worker processes' ids, by slot (slots of one worker share it)."""
        return [self.procs[self.worker_of(s)].pid for s in range(len(self.conns))]

    def _name(self, slot: int) -> str:
        worker = self.worker_of(slot)
        if self.envs_per_worker == 1:
            return f"env worker {worker}"
        return f"env worker {worker} (env {slot})"

    def send(self, slot: int, command: str, payload: Any) -> None:
        """Send `reset` (an `Episode`) or `step` (an action chunk) to the slot's env."""
        # A dead worker cannot take the request; the recv that follows reports it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self.conns[slot].send((command, payload))

    def recv(self, slot: int, what: str, timeout: float | None = None) -> Any:
        """The payload of the slot's reply; raises by what went wrong (see module docstring)."""
        conn = self.conns[slot]
        try:
            if timeout is not None and not conn.poll(max(timeout, 0.0)):
                raise WorkerTimeout(
                    f"{self._name(slot)} did not answer within the limit during {what}"
                )
            status, payload = conn.recv()
        except (EOFError, ConnectionResetError, BrokenPipeError, OSError):
            proc = self.procs[self.worker_of(slot)]
            proc.join(timeout=5)
            raise WorkerDied(
                f"{self._name(slot)} (pid {proc.pid}) died with exit code {proc.exitcode} "
                f"during {what}"
            ) from None
        if status == "ok":
            return payload
        message, tb = payload
        if status == "unstable":
            raise faults.SimUnstableError(message)
        if status == "build_error":
            raise RunError(message)
        raise WorkerError(f"{self._name(slot)} failed during {what}: {message}\n{tb}")

    def restart(self, slot: int) -> list[int]:
        """Replace the slot's worker process by a fresh one (killing it first if it still
        runs); returns every slot of that worker, all of which lost their env."""
        worker = self.worker_of(slot)
        self._kill(worker)
        slots = self.slots_of(worker)
        conns, self.procs[worker] = self._spawn(worker)
        for s, conn in zip(slots, conns, strict=True):
            self.conns[s] = conn
        return slots

    def _kill(self, worker: int) -> None:
        proc = self.procs[worker]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        for slot in self.slots_of(worker):
            self.conns[slot].close()

    def kill_all(self) -> None:
        """Abandon every worker at once (interrupt, error): nothing in flight is waited for."""
        for worker in range(len(self.procs)):
            self._kill(worker)

    def close(self) -> None:
        """Ask every worker to close its envs and exit; kill those that do not within 5 s."""
        for worker, proc in enumerate(self.procs):
            conn = self.conns[self.slots_of(worker)[0]]
            try:
                conn.send(("close", None))
                if conn.poll(5):
                    conn.recv()
            except (OSError, EOFError, BrokenPipeError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            for slot in self.slots_of(worker):
                self.conns[slot].close()
