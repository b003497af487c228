"""Pipelined rollouts and policy timeouts in `LocalExecutor`, on in-process fake envs (the
worker pool replaced by a deterministic counter env), so the scheduling is checked in
milliseconds; tests/test_remote.py checks both against the simulator."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest

from evalharness import executors
from evalharness.executors import EpisodeResult, Incident, LocalExecutor, pipeline_groups
from evalharness.policies.base import POLICY_TIMEOUT, Policy, PolicySpec
from evalharness.pool import WorkerDied, WorkerTimeout
from evalharness.worker import Episode

STEPS = 4


class CounterPool:
    """Stands in for `WorkerPool`: each slot's env counts its steps; an episode ends after
    STEPS steps and succeeds when the actions it executed sum to its policy seed * STEPS.
    `DIE` maps (episode_index, attempt) to the control step at which its worker process dies
    (requests to its envs get no reply, `WorkerDied`, until it is restarted)."""

    DIE: ClassVar[dict[tuple[int, int], int]] = {}
    #: as DIE, for a step that hangs (no reply within the limit: `WorkerTimeout`).
    HANG: ClassVar[dict[tuple[int, int], int]] = {}
    #: every pool made, for the tests to read its layout and restarts.
    made: ClassVar[list[CounterPool]] = []

    def __init__(self, num_workers: int, config: Any, envs_per_worker: int = 1) -> None:
        self.num_workers, self.envs_per_worker = num_workers, envs_per_worker
        n = num_workers * envs_per_worker
        self.state: list[dict[str, Any]] = [{} for _ in range(n)]
        self.replies: list[Any] = [None] * n
        self.dead: set[int] = set()
        self.restarts: list[int] = []
        CounterPool.made.append(self)

    def __len__(self) -> int:
        return len(self.state)

    def worker_of(self, slot: int) -> int:
        return slot // self.envs_per_worker

    def send(self, slot: int, command: str, payload: Any) -> None:
        self.replies[slot] = None  # no reply: its worker is dead, or dies serving it
        if self.worker_of(slot) in self.dead:
            return
        s = self.state[slot]
        if command == "reset":
            s.update(episode=payload, steps=0, total=0.0)
            self.replies[slot] = ({"proprio": np.zeros(1)}, {"scene_fingerprint": "f"})
            return
        s["steps"] += 1
        e = s["episode"]
        if self.DIE.get((e.episode_index, e.attempt)) == s["steps"]:
            self.dead.add(self.worker_of(slot))
            return
        if self.HANG.get((e.episode_index, e.attempt)) == s["steps"]:
            self.replies[slot] = "hang"
            return
        s["total"] += float(np.asarray(payload)[0, 0])
        done = s["steps"] == STEPS
        success = done and s["total"] == e.policy_seed * STEPS
        info = {"episode_steps": s["steps"], "success": success}
        obs = {"proprio": np.full(1, s["steps"], float)}
        self.replies[slot] = (obs, 0.0, done, False, info)

    def recv(self, slot: int, where: str, timeout: float | None = None) -> Any:
        # Replies sent before the worker died are still read, as from a real pipe.
        if self.replies[slot] is None:
            raise WorkerDied(f"env worker {self.worker_of(slot)} died during {where}")
        if self.replies[slot] == "hang":
            raise WorkerTimeout(f"env worker {self.worker_of(slot)} did not answer")
        return self.replies[slot]

    def restart(self, slot: int) -> list[int]:
        worker = self.worker_of(slot)
        self.dead.discard(worker)
        self.restarts.append(worker)
        first = worker * self.envs_per_worker
        return list(range(first, first + self.envs_per_worker))

    def close(self) -> None:
        pass

    def kill_all(self) -> None:
        pass


class LanePolicy(Policy):
    """Answers each row with its episode seed; lanes share `calls` (lane, seeds) and record
    which thread called; `slow` seeds are marked timed out, as a remote policy marks them."""

    pipelines = True

    def __init__(self, calls: list[tuple[int, list[int]]], lane: int = 0, slow=()) -> None:
        self.spec = PolicySpec(name="lanes", action_horizon=1, uses_images=False)
        self.pad_batch = False
        self.calls, self.lane, self.slow = calls, lane, set(slow)
        self.threads: set[str] = set()
        self.timed_out: set[int] = set()

    def pipeline_lanes(self, n: int) -> list[Policy]:
        return [self] + [LanePolicy(self.calls, i, self.slow) for i in range(1, n)]

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Sequence[Any] | np.ndarray]):
        seeds = [int(s) for s in tasks["episode_seed"]]
        self.calls.append((self.lane, seeds))
        self.threads.add(threading.current_thread().name)
        self.timed_out |= self.slow & set(seeds)
        return np.array(seeds, float)[:, None, None] * np.ones((1, 1, 7))

    def failure_reason(self, episode_seed: int) -> str:
        return POLICY_TIMEOUT if episode_seed in self.timed_out else ""


def _episodes(n: int) -> deque[Episode]:
    return deque(Episode("libero_spatial", 0, i, i, 7, policy_seed=100 + i) for i in range(n))


def _executor(policy: Policy, num_workers: int, pipeline: bool, envs_per_worker: int = 1):
    instructions = {("libero_spatial", 0): "t"}
    return LocalExecutor(
        {}, policy, "lanes", num_workers, 60.0, instructions, pipeline, envs_per_worker
    )


def _run(
    policy: Policy, num_workers: int, pipeline: bool, n: int = 5, envs_per_worker: int = 1
) -> list[EpisodeResult]:
    ex = _executor(policy, num_workers, pipeline, envs_per_worker)
    results = [e for e in ex.run(_episodes(n)) if isinstance(e, EpisodeResult)]
    return sorted(results, key=lambda r: r.episode.episode_index)


@pytest.fixture(autouse=True)
def counter_pool(monkeypatch):
    monkeypatch.setattr(executors, "WorkerPool", CounterPool)
    monkeypatch.setattr(CounterPool, "DIE", {})
    monkeypatch.setattr(CounterPool, "HANG", {})
    monkeypatch.setattr(CounterPool, "made", [])


def _outcome(r: EpisodeResult) -> tuple[bool, int, str]:
    return (r.success, r.steps, r.failure_reason)


def _outcomes(results: list[EpisodeResult]) -> list[tuple[int, bool, int, str]]:
    return [(r.episode.episode_index, r.success, r.steps, r.failure_reason) for r in results]


def test_pipelined_rollouts_give_lockstep_outcomes_with_each_lane_serving_its_group():
    lockstep_calls: list[tuple[int, list[int]]] = []
    lockstep = _run(LanePolicy(lockstep_calls), 4, pipeline=False)
    calls: list[tuple[int, list[int]]] = []
    policy = LanePolicy(calls)
    pipelined = _run(policy, 4, pipeline=True)
    assert _outcomes(pipelined) == _outcomes(lockstep)
    assert _outcomes(pipelined) == [(i, True, STEPS, "") for i in range(5)]
    # Lockstep: one lane, every live episode in every call.
    assert {lane for lane, _ in lockstep_calls} == {0}
    assert lockstep_calls[0] == (0, [100, 101, 102, 103])
    # Pipelined: slots 0 and 2 on lane 0, slots 1 and 3 on lane 1, alternating; each call
    # carries only its group, and the calls run on the executor's thread.
    assert calls[:4] == [(0, [100, 102]), (1, [101, 103]), (0, [100, 102]), (1, [101, 103])]
    assert policy.threads == {"evalharness-act_0"}


def test_pipelining_needs_a_policy_with_lanes_and_two_envs():
    calls: list[tuple[int, list[int]]] = []
    _run(LanePolicy(calls), 1, pipeline=True, n=2)
    assert {lane for lane, _ in calls} == {0}
    no_lanes = LanePolicy(calls := [])
    no_lanes.pipelines = False
    assert _outcomes(_run(no_lanes, 2, pipeline=True, n=2))[0] == (0, True, STEPS, "")
    assert calls[0] == (0, [100, 101])


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_policy_timeout_ends_only_its_episode_unstepped_and_the_run_goes_on(pipeline):
    results = _run(LanePolicy([], slow={101}), 2, pipeline=pipeline, n=3)
    assert _outcomes(results) == [
        (0, True, STEPS, ""),
        (1, False, 0, POLICY_TIMEOUT),
        (2, True, STEPS, ""),
    ]


def test_pipeline_groups_split_every_worker_when_it_hosts_several_envs():
    # Two workers of two envs: slots 0, 1 on worker 0, slots 2, 3 on worker 1.
    assert pipeline_groups(2, 2, 2) == [[0, 2], [1, 3]]
    # One env per worker: the groups alternate workers, as before.
    assert pipeline_groups(4, 1, 2) == [[0, 2], [1, 3]]
    assert pipeline_groups(1, 3, 2) == [[0, 2], [1]]


def test_a_pool_has_the_asked_workers_and_no_more_envs_each_than_the_episodes_need():
    ex = _executor(LanePolicy([]), 2, pipeline=True, envs_per_worker=2)
    assert [ex.layout(n) for n in (1, 2, 3, 4, 9)] == [(1, 1), (2, 1), (2, 2), (2, 2), (2, 2)]


def test_two_envs_per_worker_pipeline_one_env_of_each_worker_per_group():
    lockstep = _run(LanePolicy([]), 2, pipeline=False, n=6)
    calls: list[tuple[int, list[int]]] = []
    pipelined = _run(LanePolicy(calls), 2, pipeline=True, n=6, envs_per_worker=2)
    assert _outcomes(pipelined) == _outcomes(lockstep) == [(i, True, STEPS, "") for i in range(6)]
    pool = CounterPool.made[-1]
    assert (pool.num_workers, pool.envs_per_worker) == (2, 2)
    # Episodes 0-3 start on slots 0-3; group 0 = env 0 of each worker (slots 0 and 2).
    assert calls[:4] == [(0, [100, 102]), (1, [101, 103]), (0, [100, 102]), (1, [101, 103])]


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_dead_worker_takes_its_envs_episodes_and_only_the_faulty_one_uses_up_an_attempt(
    pipeline,
):
    # Two workers of two envs: episodes 0, 1 on worker 0, episodes 2, 3 on worker 1.
    # Episode 0's worker dies at its step 2 on the first try; episode 2's at its step 1 on
    # every try.
    CounterPool.DIE = {(0, 0): 2, (2, 0): 1, (2, 1): 1}
    ex = _executor(LanePolicy([]), 2, pipeline=pipeline, envs_per_worker=2)
    events = list(ex.run(_episodes(4)))
    results = sorted(
        (e for e in events if isinstance(e, EpisodeResult)), key=lambda r: r.episode.episode_index
    )
    # The faulty episode is rescheduled once, then recorded as worker_died; the others end
    # as in an undisturbed run, however often they were rescheduled.
    assert [(r.episode.episode_index, r.episode.attempt, *_outcome(r)) for r in results] == [
        (0, 1, True, STEPS, ""),
        (1, 0, True, STEPS, ""),
        (2, 1, False, 0, "worker_died"),
        (3, 0, True, STEPS, ""),
    ]
    incidents = [
        (e.episode.episode_index, e.episode.attempt, e.reason, e.action)
        for e in events
        if isinstance(e, Incident)
    ]
    fresh, with_envs = "rescheduled on a fresh worker", "rescheduled with its worker's envs"
    assert incidents == [
        (2, 0, "worker_died", fresh),
        (3, 0, "worker_died", with_envs),  # episode 2's neighbour: attempt kept
        (0, 0, "worker_died", fresh),
        (1, 0, "worker_died", with_envs),
        (3, 0, "worker_died", with_envs),  # next to episode 2's second try, again
    ]
    sibling = next(e for e in events if isinstance(e, Incident) and e.episode.episode_index == 1)
    assert sibling.detail == (
        "env worker 0 died during step of task 0 episode 0; "
        "the episode ran on env 1 of the same worker process"
    )


def test_a_hung_env_times_out_and_the_other_env_of_its_restarted_worker_runs_again():
    CounterPool.HANG = {(0, 0): 2}
    events = list(_executor(LanePolicy([]), 1, False, envs_per_worker=2).run(_episodes(2)))
    assert [
        (e.episode.episode_index, e.failure_reason)
        if isinstance(e, EpisodeResult)
        else (e.episode.episode_index, e.action)
        for e in events
    ] == [
        (0, "episode_timeout"),
        (1, "rescheduled with its worker's envs"),
        (1, ""),
    ]
    assert CounterPool.made[-1].restarts == [0]


@pytest.mark.parametrize(
    ("lanes", "pipeline", "num_envs", "envs_per_worker", "expected"),
    [
        (True, None, 2, None, (2, True)),  # a remote policy: two envs per worker, one per group
        (True, None, 1, None, (2, True)),  # one worker: its two envs are the two groups
        (True, False, 2, None, (1, False)),  # --no-pipeline: one env per worker, lockstep
        (True, None, 1, 1, (1, False)),  # a single env cannot pipeline
        (False, None, 2, None, (1, False)),  # in-process policies have no lanes
        (False, None, 2, 3, (3, False)),  # --envs-per-worker wins, lockstep
    ],
)
def test_envs_per_worker_defaults_to_one_per_pipeline_group(
    tmp_path, lanes, pipeline, num_envs, envs_per_worker, expected
):
    from evalharness.protocols import get_protocol
    from evalharness.runner import RunConfig, Runner

    policy = LanePolicy([])
    policy.pipelines = lanes
    config = RunConfig(
        suite="libero_spatial",
        policy="lanes",
        out_dir=tmp_path,
        protocol=get_protocol("openvla"),
        task_ids=(0,),
        num_envs=num_envs,
        pipeline=pipeline,
        envs_per_worker=envs_per_worker,
    )
    runner = Runner(config, policy)
    assert (runner.envs_per_worker, runner.pipelined) == expected
    executor = runner.make_executor()
    assert isinstance(executor, LocalExecutor)
    assert (executor.num_workers, executor.envs_per_worker) == (num_envs, expected[0])
