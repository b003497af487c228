"""The local worker pool: N spawned processes, each serving one `EpisodeEnv` over a pipe.

Workers are spawned, not forked: an EGL render context made before a fork is invalid in the
child, so each worker builds its env on its first reset (`evalharness.worker`). A reply says
how the request went, and `WorkerPool.recv` turns each way of going wrong into one exception:

- `WorkerDied`: the process exited (killed, segfault) before answering;
- `WorkerTimeout`: it did not answer within the time left;
- `faults.SimUnstableError`: the simulator went unstable; the worker closed its env;
- `RunError`: the env cannot be built at all (the run stops, the message says why);
- `WorkerError`: anything else raised inside the worker, with its traceback (a bug).

A slot whose process died or hung is `restart`ed: a fresh process, which builds its env on
the next reset like any new worker.
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
    """N spawned worker processes, each serving one `EpisodeEnv` over a pipe."""

    def __init__(self, n: int, config: EnvConfig | Mapping[str, EnvConfig]) -> None:
        """`config`: the env of a one-suite run, or one per suite (see `EpisodeEnv`)."""
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

    def __len__(self) -> int:
        return len(self.procs)

    def pids(self) -> list[int | None]:
        """The worker processes' ids, by slot."""
        return [p.pid for p in self.procs]

    def send(self, slot: int, command: str, payload: Any) -> None:
        """Send `reset` (an `Episode`) or `step` (an action chunk) to the slot's worker."""
        # A dead worker cannot take the request; the recv that follows reports it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError):
            self.conns[slot].send((command, payload))

    def recv(self, slot: int, what: str, timeout: float | None = None) -> Any:
        """The payload of the slot's reply; raises by what went wrong (see module docstring)."""
        conn = self.conns[slot]
        try:
            if timeout is not None and not conn.poll(max(timeout, 0.0)):
                raise WorkerTimeout(
                    f"env worker {slot} did not answer within the limit during {what}"
                )
            status, payload = conn.recv()
        except (EOFError, ConnectionResetError, BrokenPipeError):
            proc = self.procs[slot]
            proc.join(timeout=5)
            raise WorkerDied(
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
        """Ask every worker to close its env and exit; kill those that do not within 5 s."""
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
