"""Several suites in one run: `--suite a,b,c` and named groups.

One policy, one run directory, one episodes.csv keyed by suite, each suite with its own step
limit (a perturbation suite takes its base suite's), resume across the suite boundary, and a
summary with per-suite rows plus the average over suites.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rundirs import pattern, write_run

from evalharness.compare import load_runs, mismatch_warnings, run_differences
from evalharness.envs.suites import SUITE_GROUPS, resolve_suites
from evalharness.errors import UsageError
from evalharness.policies import load_policy
from evalharness.protocols import get_protocol
from evalharness.results import (
    TIMING_COLUMNS,
    read_episodes,
    read_summary,
    summarize,
    wilson_interval,
)
from evalharness.run_config import RunConfig, env_config, env_configs, env_record
from evalharness.runner import Runner
from evalharness.scheduling import schedule
from evalharness.tracking import summary_key


def _config(out: Path, suite: str, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        suite=suite,
        policy="zero",
        out_dir=out,
        protocol=get_protocol("openvla").with_overrides(episodes_per_task=2),
        task_ids=(0,),
        num_envs=1,
        progress=False,
    )
    base.update(kw)
    return RunConfig(**base)


def test_suite_lists_and_groups_resolve_in_order_without_repeats() -> None:
    assert resolve_suites("libero_spatial") == ("libero_spatial",)
    assert resolve_suites(" libero_object, libero_spatial ,libero_object") == (
        "libero_object",
        "libero_spatial",
    )
    assert resolve_suites("libero_4") == (
        "libero_spatial",
        "libero_object",
        "libero_goal",
        "libero_10",
    )
    assert resolve_suites("libero_goal_pro") == (
        "libero_goal",
        "libero_goal_lan",
        "libero_goal_object",
        "libero_goal_swap",
        "libero_goal_task",
    )
    assert len(SUITE_GROUPS["libero_pro"]) == 20
    with pytest.raises(UsageError, match="names no suite"):
        _config(Path("x"), " , ")


def test_tasks_and_episodes_go_suite_by_suite_each_keyed_by_its_suite(tmp_path: Path) -> None:
    config = _config(tmp_path, "libero_spatial,libero_object", task_ids=(0, 3))
    assert config.suites == ("libero_spatial", "libero_object")
    assert [(t.suite, t.task_id) for t in config.tasks()] == [
        ("libero_spatial", 0),
        ("libero_spatial", 3),
        ("libero_object", 0),
        ("libero_object", 3),
    ]
    episodes = schedule(config)
    assert [e.key for e in episodes[:2]] == [("libero_spatial", 0, 0), ("libero_spatial", 0, 1)]
    assert [e.key for e in episodes[-2:]] == [("libero_object", 3, 0), ("libero_object", 3, 1)]
    # An episode of a suite gets the seeds it gets in a run of that suite alone, so a
    # multi-suite run equals the single-suite runs side by side.
    alone = schedule(_config(tmp_path, "libero_object", task_ids=(0, 3)))
    assert [dataclasses.astuple(e) for e in alone] == [dataclasses.astuple(e) for e in episodes[4:]]


def test_each_suite_gets_its_own_step_limit_and_a_perturbed_suite_its_base_suites(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, "libero_spatial,libero_object,libero_goal_lan", video_episodes=1)
    configs = env_configs(config, load_policy("zero"))
    assert {s: c.max_steps for s, c in configs.items()} == {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal_lan": 300,  # libero_goal's limit under the openvla protocol
    }
    assert configs["libero_object"].video_dir == str(tmp_path / "videos" / "libero_object")
    assert env_config(config, load_policy("zero")) == configs["libero_spatial"]
    assert config.resolved_episode_timeout == 120.0 + 2.0 * (300 + 10)
    # One policy load for the run: statistics named after a suite only when all share a base.
    assert config.statistics_suite is None
    assert _config(tmp_path, "libero_goal_pro").statistics_suite == "libero_goal"


def test_run_json_env_of_one_suite_is_unchanged_and_of_several_holds_each_limit(
    tmp_path: Path,
) -> None:
    zero = load_policy("zero")
    single = env_configs(_config(tmp_path, "libero_spatial"), zero)
    assert env_record(single) == dataclasses.asdict(single["libero_spatial"])
    several = env_record(env_configs(_config(tmp_path, "libero_spatial,libero_10"), zero))
    assert several["suite"] == "libero_spatial,libero_10"
    assert several["max_steps"] == {"libero_spatial": 220, "libero_10": 520}
    # Another suite list is another run: --resume refuses it.
    a = Runner(_config(tmp_path, "libero_spatial,libero_object"), zero).identity({})
    b = Runner(_config(tmp_path, "libero_spatial"), zero).identity({})
    assert a["suite"] == "libero_spatial,libero_object" and a != b


def _episode(suite: str, task: int, episode: int, success: bool) -> dict[str, object]:
    return {
        "suite": suite,
        "task_id": task,
        "task_name": f"t{task}",
        "instruction": f"do {task}",
        "episode_index": episode,
        "success": success,
        "steps": 10 if success else 20,
        "failure_reason": "" if success else "step_limit",
    }


def test_summary_average_is_the_mean_of_suite_rates_with_the_pooled_interval() -> None:
    # Equal episode counts: the mean of 2/4 and 4/4 is the pooled 6/8, interval included.
    rows = [_episode("a", 0, i, i < 2) for i in range(4)]
    rows += [_episode("b", 0, i, True) for i in range(4)]
    summary = summarize(pd.DataFrame(rows))
    average = summary[summary["level"] == "average"].iloc[0]
    assert (average["suite"], average["episodes"], average["successes"]) == ("average", 8, 6)
    assert average["success_rate"] == 0.75
    assert (average["ci95_low"], average["ci95_high"]) == pytest.approx(wilson_interval(6, 8))
    assert average["instruction"] == "mean of 2 suites"
    # Unequal counts: papers average the suite rates (3/4 and 1/2 -> 0.625, not 4/6).
    rows = [_episode("a", 0, i, i < 3) for i in range(4)]
    rows += [_episode("b", 0, i, i < 1) for i in range(2)]
    average = summarize(pd.DataFrame(rows)).iloc[-1]
    assert average["level"] == "average" and average["success_rate"] == 0.625
    # A one-suite summary has no average row.
    assert set(summarize(pd.DataFrame(rows[:4]))["level"]) == {"task", "suite"}


def _outcomes(run_dir: Path) -> pd.DataFrame:
    df = read_episodes(run_dir / "episodes.csv").drop(columns=list(TIMING_COLUMNS))
    key = ["suite", "task_id", "episode_index"]
    return df.sort_values(key).reset_index(drop=True)


@pytest.mark.sim
@pytest.mark.slow
def test_two_suites_with_the_scripted_expert_make_one_run_directory_with_the_average(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "evalharness", "run", "--suite", "libero_spatial,libero_object",
        "--tasks", "0", "--episodes-per-task", "2", "--policy", "scripted",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    episodes = _outcomes(out)
    assert episodes[["suite", "task_id", "episode_index"]].values.tolist() == [
        ["libero_object", 0, 0],
        ["libero_object", 0, 1],
        ["libero_spatial", 0, 0],
        ["libero_spatial", 0, 1],
    ]
    summary = read_summary(out / "summary.csv")
    assert summary["level"].tolist() == ["task", "task", "suite", "suite", "average"]
    suites = summary[summary["level"] == "suite"]
    average = summary[summary["level"] == "average"].iloc[0]
    assert average["success_rate"] == suites["success_rate"].mean()
    assert average["episodes"] == 4
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["suites"] == ["libero_spatial", "libero_object"]
    assert run["config"]["step_limits"] == {"libero_spatial": 220, "libero_object": 280}
    assert run["env"]["max_steps"] == {"libero_spatial": 220, "libero_object": 280}
    assert "average" in done.stdout


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "evalharness", "run", "--suite", "libero_spatial,libero_object",
        "--policy", "zero", "--tasks", "0", "--episodes-per-task", "2", "--max-steps", "12",
        "--num-steps-wait", "0", "--camera-size", "32", "--num-envs", "1", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.sim
@pytest.mark.slow
def test_killed_in_the_first_suite_and_resumed_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(killed), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    csv = killed / "episodes.csv"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and csv.read_text().count("\n") >= 2:  # header + one episode
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_episodes(csv)
    # Killed inside the first suite: the resumed run crosses the boundary to the second.
    assert 1 <= len(before) < 4 and before["suite"].iloc[0] == "libero_spatial"

    resumed = subprocess.run(_cli(killed, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference"
    plain = subprocess.run(_cli(reference), capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr

    pd.testing.assert_frame_equal(_outcomes(killed), _outcomes(reference))
    assert sorted(set(_outcomes(killed)["suite"])) == ["libero_object", "libero_spatial"]
    pd.testing.assert_frame_equal(
        read_summary(killed / "summary.csv"), read_summary(reference / "summary.csv")
    )
    run = json.loads((killed / "run.json").read_text())
    assert run["episodes_resumed"] == len(before) and run["status"] == "finished"


def test_compare_judges_comparability_on_the_suites_the_runs_hold(tmp_path: Path) -> None:
    limits = dict.fromkeys(
        ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"], 300
    )
    a = write_run(tmp_path / "a", {0: pattern(2, 4)})
    b = write_run(
        tmp_path / "b",
        {0: pattern(3, 4)},
        meta={
            "protocol": {"max_steps": limits, "overrides": ["max_steps"]},
            "env": {"max_steps": 300},
        },
    )
    runs = load_runs([a, b])
    critical = [m.key for m in run_differences(runs) if m.critical]
    # Only libero_spatial's limit matters: neither run evaluated another suite.
    assert critical == ["protocol.max_steps.libero_spatial", "env.max_steps"]
    assert len(mismatch_warnings(runs)) == 2
    # A multi-suite run's per-suite limits are critical for each suite it holds.
    c = write_run(
        tmp_path / "c",
        {0: pattern(1, 4)},
        suite="libero_object",
        meta={"env": {"max_steps": {"libero_spatial": 220, "libero_object": 280}}},
    )
    d = write_run(
        tmp_path / "d",
        {0: pattern(1, 4)},
        suite="libero_object",
        meta={"env": {"max_steps": {"libero_spatial": 220, "libero_object": 300}}},
    )
    keys = [m.key for m in run_differences(load_runs([c, d])) if m.critical]
    assert keys == ["env.max_steps.libero_object"]


def test_trackers_name_each_suites_rows_apart() -> None:
    rows = [_episode("libero_spatial", 0, 0, True), _episode("libero_object", 0, 0, False)]
    summary = summarize(pd.DataFrame(rows))
    keys = [summary_key(row, summary) for _, row in summary.iterrows()]
    assert keys == [
        "libero_object/task_0",
        "libero_spatial/task_0",
        "libero_object/suite",
        "libero_spatial/suite",
        "average",
    ]
    one = summarize(pd.DataFrame(rows[:1]))
    assert [summary_key(row, one) for _, row in one.iterrows()] == ["task_0", "suite"]
