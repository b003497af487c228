"""Pipelined rollouts and policy timeouts in `LocalExecutor`, on in-process fake envs (the
worker pool replaced by a deterministic counter env), so the scheduling is checked in
milliseconds; tests/test_remote.py checks both against the simulator."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from evalharness import executors
from evalharness.executors import EpisodeResult, LocalExecutor
from evalharness.policies.base import POLICY_TIMEOUT, Policy, PolicySpec
from evalharness.worker import Episode

STEPS = 4


class CounterPool:
    """Stands in for `WorkerPool`: each slot's env counts its steps; an episode ends after
    STEPS steps and succeeds when the actions it executed sum to its policy seed * STEPS."""

    def __init__(self, n: int, config: Any) -> None:
        self.state: list[dict[str, Any]] = [{} for _ in range(n)]
        self.replies: list[Any] = [None] * n

    def send(self, slot: int, command: str, payload: Any) -> None:
        s = self.state[slot]
        if command == "reset":
            s.update(episode=payload, steps=0, total=0.0)
            self.replies[slot] = ({"proprio": np.zeros(1)}, {"scene_fingerprint": "f"})
            return
        s["steps"] += 1
        s["total"] += float(np.asarray(payload)[0, 0])
        done = s["steps"] == STEPS
        success = done and s["total"] == s["episode"].policy_seed * STEPS
        info = {"episode_steps": s["steps"], "success": success}
        obs = {"proprio": np.full(1, s["steps"], float)}
        self.replies[slot] = (obs, 0.0, done, False, info)

    def recv(self, slot: int, where: str, timeout: float | None = None) -> Any:
        return self.replies[slot]

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


def _run(policy: Policy, num_envs: int, pipeline: bool, n: int = 5) -> list[EpisodeResult]:
    ex = LocalExecutor({}, policy, "lanes", num_envs, 60.0, {("libero_spatial", 0): "t"}, pipeline)
    results = [e for e in ex.run(_episodes(n)) if isinstance(e, EpisodeResult)]
    return sorted(results, key=lambda r: r.episode.episode_index)


@pytest.fixture(autouse=True)
def counter_pool(monkeypatch):
    monkeypatch.setattr(executors, "WorkerPool", CounterPool)


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
