"""The Ray executor: same outcomes as the local executor, and a killed Ray worker's episodes
are rescheduled so the run still completes. Ray runs locally (`ray.init(num_cpus=2)`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rundirs import outcomes

from evalharness.policies import load_policy
from evalharness.protocols import get_protocol
from evalharness.runner import RunConfig, Runner

ray = pytest.importorskip("ray")

from evalharness.ray_executor import RayRunner  # noqa: E402

#: Ray reads this (lower case) variable when it starts; 0 turns its OOM killer off.
RAY_MEMORY_MONITOR = "RAY_memory_monitor_refresh_ms"
POLICY = "random?action_horizon=4&exec_horizon=2"
SMALL = get_protocol("openvla").with_overrides(
    episodes_per_task=3, max_steps=6, num_steps_wait=1, camera_size=32
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Ray kills workers when the node's memory passes 95 %; a shared CI box running other
    # suites can get there, and a test killed by that says nothing about the executor.
    previous = os.environ.get(RAY_MEMORY_MONITOR)
    os.environ[RAY_MEMORY_MONITOR] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if previous is None:
        os.environ.pop(RAY_MEMORY_MONITOR, None)
    else:
        os.environ[RAY_MEMORY_MONITOR] = previous


def _config(out: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        suite="libero_spatial",
        policy=POLICY,
        out_dir=out,
        protocol=SMALL,
        task_ids=(0, 1),
        num_envs=2,
        progress=False,
    )
    return RunConfig(**(base | kw))


@pytest.mark.sim
@pytest.mark.slow
def test_ray_executor_gives_the_local_executors_episodes(tmp_path: Path, local_ray: None) -> None:
    Runner(_config(tmp_path / "local"), load_policy(POLICY)).run()
    RayRunner(_config(tmp_path / "ray"), load_policy(POLICY), envs_per_worker=2).run()

    local, on_ray = outcomes(tmp_path / "local"), outcomes(tmp_path / "ray")
    assert len(on_ray) == 2 * 3
    # Outcomes and scenes: each episode's scene fingerprint is the local executor's.
    assert (on_ray["scene_fingerprint"].str.len() == 12).all()
    pd.testing.assert_frame_equal(local, on_ray)
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["status"] == "finished" and run["env_steps"] == 2 * 3 * 6


@pytest.mark.sim
@pytest.mark.slow
def test_a_killed_ray_worker_loses_no_episode(
    tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    Runner(_config(tmp_path / "local", task_ids=(0,)), load_policy(POLICY)).run()
    # The worker running task 0 episode 1 SIGKILLs itself at its 2nd control step (first try
    # only); the executor forwards this test-only variable into the Ray workers.
    monkeypatch.setenv("EVALHARNESS_FAULTS", "kill:task=0,episode=1,step=2,attempt=0")
    runner = RayRunner(_config(tmp_path / "ray", task_ids=(0,)), load_policy(POLICY))
    runner.run()

    pd.testing.assert_frame_equal(outcomes(tmp_path / "local"), outcomes(tmp_path / "ray"))
    assert len(runner.actor_pids) == 2 + 1  # the killed actor was replaced
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["status"] == "finished"
    assert [(i["episode_index"], i["reason"]) for i in run["incidents"]] == [(1, "worker_died")]
