"""results.json: every run directory's numbers for lm-evaluation-harness and LeRobot readers.

Checked against the episodes it summarizes: per task, per suite, the average over suites and
the pooled overall rate, Wilson intervals, counts and the excluded (harness-failed) episodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rundirs import pattern, write_run

from evalharness.results import EpisodeLog, read_episodes, wilson_interval
from evalharness.run_dir import RESULTS_JSON, regenerate_summary


def _two_suite_run(path: Path) -> Path:
    """libero_spatial tasks 0 and 1 (3/4 and 1/4), libero_object task 0 (2 of 3 counted: one
    more episode that the simulator failed, excluded)."""
    write_run(
        path,
        {0: pattern(3, 4), 1: pattern(1, 4)},
        meta={
            "identity_hash": "abc123",
            "config": {"num_envs": 2, "step_limits": {"libero_spatial": 220, "libero_object": 280}},
            "protocol": {"episodes_per_task": 4},
        },
    )
    with EpisodeLog(path / "episodes.csv") as log:
        for i, (success, reason) in enumerate(
            [(True, ""), (True, ""), (False, "step_limit"), (False, "sim_unstable")]
        ):
            log.append(
                {
                    "suite": "libero_object",
                    "task_id": 0,
                    "task_name": "pick_up_the_alphabet_soup_and_place_it_in_the_basket",
                    "instruction": "pick up the alphabet soup and place it in the basket",
                    "episode_index": i,
                    "init_state_index": i,
                    "seed": 7,
                    "success": success,
                    "steps": 100 if success else 280,
                    "policy": "random",
                    "checkpoint": "",
                    "wall_seconds": 2.0,
                    "failure_reason": reason,
                }
            )
    regenerate_summary(path)
    return path


def test_results_json_agrees_with_the_episodes_it_summarizes(tmp_path: Path) -> None:
    run_dir = _two_suite_run(tmp_path / "run")
    doc = json.loads((run_dir / RESULTS_JSON).read_text())
    episodes = read_episodes(run_dir / "episodes.csv")
    own = doc["evalharness"]
    counted = episodes[episodes["failure_reason"] != "sim_unstable"]

    for task in own["tasks"]:
        rows = counted[
            (counted["suite"] == task["suite"]) & (counted["task_id"] == task["task_id"])
        ]
        k, n = int(rows["success"].sum()), len(rows)
        assert (task["successes"], task["n"], task["success_rate"]) == (k, n, k / n)
        assert (task["ci95_low"], task["ci95_high"]) == wilson_interval(k, n)
    assert [(t["suite"], t["task_id"], t["successes"], t["n"]) for t in own["tasks"]] == [
        ("libero_object", 0, 2, 3),
        ("libero_spatial", 0, 3, 4),
        ("libero_spatial", 1, 1, 4),
    ]
    suites = {s["suite"]: s for s in own["suites"]}
    assert (suites["libero_spatial"]["successes"], suites["libero_spatial"]["n"]) == (4, 8)
    assert (suites["libero_object"]["n"], suites["libero_object"]["excluded"]) == (3, 1)
    assert (suites["libero_object"]["ci95_low"], suites["libero_object"]["ci95_high"]) == (
        wilson_interval(2, 3)
    )
    # The average papers report: the mean of the suite rates (2/3 and 1/2).
    assert own["average"]["success_rate"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert own["average"]["suites"] == ["libero_object", "libero_spatial"]
    # Overall: every counted episode pooled, the excluded one counted apart.
    assert (own["overall"]["successes"], own["overall"]["n"]) == (6, 11)
    assert (own["overall"]["ci95_low"], own["overall"]["ci95_high"]) == wilson_interval(6, 11)
    assert own["overall"]["excluded"] == 1 and own["excluded_by_reason"] == {"sim_unstable": 1}
    assert own["identity_hash"] == "abc123"
    assert own["protocol"]["name"] == "openvla"


def test_results_json_reads_as_an_lm_eval_results_file(tmp_path: Path) -> None:
    doc = json.loads((_two_suite_run(tmp_path / "run") / RESULTS_JSON).read_text())
    for key in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot"):
        assert key in doc
    assert set(doc) >= {"higher_is_better", "n-samples", "config", "git_hash", "date"}
    spatial = doc["results"]["libero_spatial"]
    assert spatial["alias"] == "libero_spatial"
    assert spatial["success,none"] == 0.5
    assert spatial["success_stderr,none"] == pytest.approx((0.5 * 0.5 / 8) ** 0.5)
    task = doc["results"]["libero_spatial_task01"]
    assert task["success,none"] == 0.25 and task["alias"].startswith(" - task 1: pick up")
    assert doc["group_subtasks"]["libero_spatial"] == [
        "libero_spatial_task00",
        "libero_spatial_task01",
    ]
    assert doc["groups"]["average"]["success,none"] == pytest.approx(7 / 12)
    assert doc["group_subtasks"]["average"] == ["libero_object", "libero_spatial"]
    assert doc["n-samples"]["libero_object_task00"] == {"original": 4, "effective": 3}
    assert doc["n-samples"]["libero_spatial"] == {"original": 8, "effective": 8}
    assert doc["higher_is_better"]["libero_object"] == {"success": True}
    assert doc["configs"]["libero_object"]["max_steps"] == 280
    assert doc["config"]["model"] == "random" and doc["config"]["batch_size"] == 2
    assert doc["git_hash"] == "87d89d68db13ff1a3b257a9229ea4c49aaf452b4"


def test_results_json_reads_as_lerobots_eval_info(tmp_path: Path) -> None:
    doc = json.loads((_two_suite_run(tmp_path / "run") / RESULTS_JSON).read_text())
    assert [(t["task_group"], t["task_id"]) for t in doc["per_task"]] == [
        ("libero_object", 0),
        ("libero_spatial", 0),
        ("libero_spatial", 1),
    ]
    # Per-episode successes in episode order; the simulator failure is not an outcome.
    assert doc["per_task"][0]["metrics"]["successes"] == [True, True, False]
    assert doc["per_task"][1]["metrics"]["sum_rewards"] == [1.0, 1.0, 1.0, 0.0]
    assert doc["per_group"]["libero_spatial"]["pc_success"] == 50.0
    assert doc["per_group"]["libero_spatial"]["n_episodes"] == 8
    assert doc["per_group"]["libero_object"]["n_excluded"] == 1
    overall = doc["overall"]
    assert overall["pc_success"] == pytest.approx(100 * 6 / 11)
    assert overall["n_episodes"] == 11
    assert overall["eval_s"] == 3600.0  # run.json's start and end times
    assert overall["eval_ep_s"] == pytest.approx(3600.0 / 11)


def test_summarize_rebuilds_results_json(tmp_path: Path) -> None:
    run_dir = _two_suite_run(tmp_path / "run")
    before = (run_dir / RESULTS_JSON).read_text()
    (run_dir / RESULTS_JSON).unlink()
    done = subprocess.run(
        [sys.executable, "-m", "evalharness", "summarize", str(run_dir)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / RESULTS_JSON).read_text() == before
