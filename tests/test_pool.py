"""`WorkerPool` with several envs per worker process, on real spawned workers (no env is
built: the requests here never reach the simulator, so each test runs in seconds)."""

from __future__ import annotations

import os
import signal

import pytest

from evalharness.pool import WorkerDied, WorkerError, WorkerPool
from evalharness.worker import EnvConfig

CONFIG = EnvConfig(
    suite="libero_spatial", camera_size=32, max_steps=3, num_steps_wait=0, wait_action=(0.0,) * 7
)


@pytest.fixture
def pool():
    p = WorkerPool(1, CONFIG, envs_per_worker=2)
    yield p
    p.kill_all()


def test_a_worker_hosts_envs_per_worker_slots_each_answering_on_its_own_pipe(pool):
    assert len(pool) == 2
    assert [pool.worker_of(s) for s in range(2)] == [0, 0] and pool.slots_of(0) == [0, 1]
    assert pool.pids()[0] == pool.pids()[1] is not None
    pool.send(1, "bogus", None)
    pool.send(0, "other", None)
    with pytest.raises(WorkerError, match=r"env worker 0 \(env 0\) failed during x: .*'other'"):
        pool.recv(0, "x", timeout=60)
    with pytest.raises(WorkerError, match=r"env worker 0 \(env 1\) failed during y: .*'bogus'"):
        pool.recv(1, "y", timeout=60)


def test_a_dead_worker_is_reported_on_each_of_its_slots_and_restarted_with_them_all(pool):
    old = pool.pids()[0]
    assert old is not None
    os.kill(old, signal.SIGKILL)
    for slot in (0, 1):
        with pytest.raises(WorkerDied, match=rf"\(env {slot}\) \(pid {old}\) .*exit code -9"):
            pool.recv(slot, "step", timeout=60)
    assert pool.restart(1) == [0, 1]
    assert pool.pids()[0] == pool.pids()[1] != old
    pool.send(1, "bogus", None)
    with pytest.raises(WorkerError, match="'bogus'"):
        pool.recv(1, "step", timeout=60)
    pool.close()
    assert not pool.procs[0].is_alive()
