"""Paired comparison of runs: the statistics, pairing, run.json differences and the tables."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from rundirs import pattern, write_run

from evalharness.cli import main
from evalharness.compare import (
    ComparisonError,
    compare_runs,
    find_train_log,
    load_run,
    load_runs,
    paired_table,
    run_differences,
    scene_differences,
    scene_warnings,
    suite_table,
)
from evalharness.results import wilson_interval
from evalharness.stats import PairedTable, mcnemar_exact_p, paired_difference_ci

T, F = True, False

# --------------------------------------------------------------------------------------------
# Exact McNemar
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (1, 6, 0.125),  # 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128
        (2, 10, 0.03857421875),  # 2 * (1 + 12 + 66) / 2^12 = 158 / 4096
        (1, 5, 0.21875),  # 2 * (1 + 6) / 2^6 = 14 / 64
        (0, 10, 0.001953125),  # 2 / 2^10
        (1, 15, 0.000518798828125),  # 2 * (1 + 16) / 2^16 = 34 / 65536
        # Cavo et al. (2012) table from Fagerland, Lydersen & Laake (2014): exact p = 0.052.
        (6, 16, 0.052478790283203125),  # 2 * 110056 / 2^22
        (3, 3, 1.0),  # two tails overlap: capped at 1
        (0, 0, 1.0),  # no discordant pairs, no evidence
    ],
)
def test_mcnemar_exact_p_matches_hand_computed_binomial_tails(only_a, only_b, expected):
    assert mcnemar_exact_p(only_a, only_b) == expected
    assert mcnemar_exact_p(only_b, only_a) == expected


def test_mcnemar_exact_p_agrees_with_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    for only_a in range(0, 25, 3):
        for only_b in range(0, 25, 4):
            if only_a + only_b == 0:
                continue
            expected = scipy_stats.binomtest(only_b, only_a + only_b, 0.5).pvalue
            assert mcnemar_exact_p(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_rejects_negative_or_non_integer_counts():
    with pytest.raises(ValueError, match="only_a"):
        mcnemar_exact_p(-1, 3)
    with pytest.raises(ValueError, match="only_b"):
        mcnemar_exact_p(1, 2.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Newcombe's paired interval
# --------------------------------------------------------------------------------------------


def test_newcombe_interval_hand_computed_with_negative_correlation():
    # both=2, only_a=1, only_b=5, neither=2: p_a = 0.3, p_b = 0.7, difference +0.4.
    # Wilson(3, 10) = [0.1077913, 0.6032219], Wilson(7, 10) = [0.3967781, 0.8922087], so all
    # four distances to the bounds are 0.1922087 or 0.3032219.
    # D = 2*2 - 1*5 = -1 < 0  =>  phi = -1 / sqrt(3*7*7*3) = -1/21.
    # lower = 0.4 - sqrt(0.3032219^2 + 0.3032219^2 + 2/21 * 0.3032219^2) = -0.0389117
    # upper = 0.4 + sqrt(0.1922087^2 + 0.1922087^2 + 2/21 * 0.1922087^2) = +0.6782209
    table = PairedTable(both=2, only_a=1, only_b=5, neither=2)
    assert table.difference == pytest.approx(0.4)
    low, high = paired_difference_ci(table)
    assert low == pytest.approx(-0.0389117, abs=1e-7)
    assert high == pytest.approx(0.6782209, abs=1e-7)


def test_newcombe_interval_for_identical_runs_uses_the_continuity_corrected_correlation():
    # both=5, neither=5: D = 25 > n/2 = 5  =>  phi = (25 - 5) / sqrt(5^4) = 0.8.
    # Wilson(5, 10) = [0.2365931, 0.7634069]: half-width = 0.2634069 * sqrt(2 - 1.6) = 0.1665932
    low, high = paired_difference_ci(PairedTable(both=5, only_a=0, only_b=0, neither=5))
    assert (low, high) == pytest.approx((-0.1665932, 0.1665932), abs=1e-7)


def test_newcombe_interval_at_zero_and_full_success_stays_inside_minus_one_one():
    # 0/10 vs 10/10: a margin is empty so phi = 0; lower = 1 - sqrt(2) * 0.2775328.
    low, high = paired_difference_ci(PairedTable(both=0, only_a=0, only_b=10, neither=0))
    assert low == pytest.approx(1 - math.sqrt(2) * wilson_interval(0, 10)[1])
    assert low == pytest.approx(0.6075094, abs=1e-7)
    assert high == 1.0


def test_newcombe_interval_matches_the_published_cavo_example():
    # Fagerland, Lydersen & Laake (2014), Cavo et al. (2012) data: 59, 6 / 16, 80.
    # Their A - B interval is -0.1186 to -0.0046; ours is B - A, so the mirror image.
    low, high = paired_difference_ci(PairedTable(both=59, only_a=6, only_b=16, neither=80))
    assert (round(low, 4), round(high, 4)) == (0.0046, 0.1186)


def test_newcombe_interval_is_antisymmetric_in_the_two_runs():
    forward = paired_difference_ci(PairedTable(both=4, only_a=2, only_b=9, neither=5))
    backward = paired_difference_ci(PairedTable(both=4, only_a=9, only_b=2, neither=5))
    assert forward == pytest.approx((-backward[1], -backward[0]))


def test_newcombe_interval_without_episodes_is_uninformative():
    assert paired_difference_ci(PairedTable(0, 0, 0, 0)) == (-1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Result directories and pairing
# --------------------------------------------------------------------------------------------

# Task 0: the table above (A 3/10, B 7/10) plus two episodes only B ran.
# Task 1: identical outcomes. Task 2: A 0/10, B 10/10.
OUTCOMES_A = {
    0: [T, T, T, F, F, F, F, F, F, F],
    1: pattern(5, 10),
    2: pattern(0, 10),
}
OUTCOMES_B = {
    0: [T, T, F, T, T, T, T, T, F, F, T, T],
    1: pattern(5, 10),
    2: pattern(10, 10),
}


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path / "base", OUTCOMES_A)
    b = write_run(tmp_path / "finetuned", OUTCOMES_B, meta={"policy": "octo_jax:/ckpt"})
    return a, b


def test_compare_runs_per_task_and_pooled_numbers(two_runs):
    a, b = load_runs(two_runs)
    comp = compare_runs(a, b)
    assert list(comp["level"]) == ["task", "task", "task", "suite"]
    rows = comp.set_index(["level", "task_id"])
    t0 = rows.loc[("task", 0)]
    assert (t0["shared"], t0["both"], t0["only_a"], t0["only_b"], t0["neither"]) == (10, 2, 1, 5, 2)
    assert (t0["rate_a"], t0["rate_b"]) == pytest.approx((0.3, 0.7))
    assert t0["difference"] == pytest.approx(0.4)
    assert (t0["ci95_low"], t0["ci95_high"]) == pytest.approx((-0.0389117, 0.6782209), abs=1e-7)
    assert t0["p_value"] == 0.21875
    assert (t0["unpaired_a"], t0["unpaired_b"]) == (0, 2)
    assert t0["instruction"].startswith("pick up the black bowl between the plate")
    t1 = rows.loc[("task", 1)]
    assert (t1["difference"], t1["p_value"]) == (0.0, 1.0)
    t2 = rows.loc[("task", 2)]
    assert (t2["difference"], t2["p_value"], t2["ci95_high"]) == (1.0, 0.001953125, 1.0)
    pooled = rows.loc[("suite", -1)]
    # 30 shared episodes: both 7, only A 1, only B 15, neither 7.
    assert (pooled["shared"], pooled["only_a"], pooled["only_b"]) == (30, 1, 15)
    assert pooled["difference"] == pytest.approx(14 / 30)
    assert pooled["p_value"] == 0.000518798828125
    assert pooled["unpaired_b"] == 2


def test_pairing_uses_init_state_and_episode_index(tmp_path):
    # Same task and count, but B ran episodes 10..19: no episode is shared.
    a = write_run(tmp_path / "a", {0: pattern(3, 10)})
    b = write_run(tmp_path / "b", {0: pattern(3, 10)}, first_episode=10)
    with pytest.raises(ComparisonError, match="share no episodes") as err:
        compare_runs(*load_runs([a, b]))
    assert "init_state_index" in str(err.value) and "a (" in str(err.value)


def test_a_directory_without_run_files_names_the_path_and_what_is_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ComparisonError, match=r"episodes\.csv and run\.json missing") as err:
        load_run(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)
    only_csv = write_run(tmp_path / "only_csv", {0: [T]})
    (only_csv / "run.json").unlink()
    with pytest.raises(ComparisonError, match=r"run\.json missing"):
        load_run(only_csv)


def test_labels_are_directory_names_made_unique(tmp_path):
    a = write_run(tmp_path / "x" / "run", {0: [T]})
    b = write_run(tmp_path / "y" / "run", {0: [F]})
    assert [r.label for r in load_runs([a, b])] == ["x/run", "y/run"]
    assert [r.label for r in load_runs([a, a])] == ["run (1)", "run (2)"]
    assert [r.label for r in load_runs([a, b], ["before", "after"])] == ["before", "after"]


# --------------------------------------------------------------------------------------------
# run.json differences
# --------------------------------------------------------------------------------------------


def test_protocol_and_mujoco_differences_are_critical_others_are_not(tmp_path):
    a = write_run(tmp_path / "a", {0: [T]})
    b = write_run(
        tmp_path / "b",
        {0: [T]},
        meta={
            "policy": "zero",
            "protocol": {"name": "libero", "seed": 10000},
            "versions": {"mujoco": "3.4.0"},
            "start_time": "2026-02-02T00:00:00+00:00",
        },
    )
    diffs = {m.key: m for m in run_differences(load_runs([a, b]))}
    assert diffs["protocol.name"].critical
    assert diffs["protocol.name"].values == ("openvla", "libero")
    assert diffs["protocol.seed"].critical
    assert diffs["versions.mujoco"].critical
    assert diffs["versions.mujoco"].values == ("3.3.2", "3.4.0")
    assert not diffs["policy"].critical
    assert "start_time" not in diffs  # expected to differ, not reported
    assert "versions.robosuite" not in diffs  # equal


def test_identical_configs_have_no_differences(two_runs):
    a, b = load_runs(two_runs)
    assert [m.key for m in run_differences([a, b]) if m.critical] == []


# --------------------------------------------------------------------------------------------
# Tables and the CLI
# --------------------------------------------------------------------------------------------


def test_suite_table_markdown_has_rate_plus_minus_standard_error(tmp_path):
    a = write_run(tmp_path / "a", {0: pattern(7, 10), 1: pattern(3, 10)})
    b = write_run(tmp_path / "b", {0: pattern(9, 10), 1: pattern(9, 10)})
    text = suite_table(load_runs([a, b], ["A", "B"]), "markdown")
    # A: 10/20 = 50.0%, SE = sqrt(0.25 / 20) = 11.18%; B: 18/20 = 90.0%, SE = sqrt(0.09/20) = 6.71%
    assert "| Run | Spatial |" in text
    assert "| A | 50.0 ± 11.2% |" in text
    assert "| B | **90.0 ± 6.7%** |" in text


def test_suite_table_averages_suites_openvla_style(tmp_path):
    a = write_run(tmp_path / "a", {0: pattern(8, 10)})
    write_run(tmp_path / "extra", {0: pattern(4, 10)}, suite="libero_object")
    # One run dir holding two suites: append the second suite's episodes to the first.
    extra = (tmp_path / "extra" / "episodes.csv").read_text().splitlines(keepends=True)[1:]
    with open(a / "episodes.csv", "a") as fh:
        fh.writelines(extra)
    text = suite_table(load_runs([a], ["A"]), "latex")
    # Spatial 80.0 (SE 12.6), Object 40.0 (SE 15.5), Average 60.0 (sqrt(.016+.024)/2 = 10.0).
    assert r"Run & Spatial & Object & Average \\" in text
    assert r"A & 80.0 $\pm$ 12.6\% & 40.0 $\pm$ 15.5\% & 60.0 $\pm$ 10.0\% \\" in text
    assert r"\toprule" in text and r"\begin{tabular}{lrrr}" in text


def test_paired_table_formats(two_runs):
    a, b = load_runs(two_runs, ["base_ckpt", "ft"])
    comp = compare_runs(a, b)
    latex = paired_table(comp, a.label, b.label, "latex")
    assert r"base\_ckpt" in latex  # escaped
    assert r"\textbf{+100.0}" in latex  # task 2 is significant
    md = paired_table(comp, a.label, b.label, "markdown")
    assert "| Spatial | 0 | pick up the black bowl between the plate" in md
    assert "| 10 | 30.0 | 70.0 | +40.0 | [-3.9, +67.8] | 0.219 |" in md
    csv = pd.read_csv(io.StringIO(paired_table(comp, a.label, b.label, "csv")))
    assert list(csv["p_value"]) == pytest.approx([0.21875, 1.0, 0.001953125, 0.000518798828125])


def test_cli_compare_prints_the_paired_table(two_runs, capsys):
    a, b = two_runs
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "A = base: policy random" in out and "B = finetuned: policy octo_jax:/ckpt" in out
    assert "libero_spatial     2    10    0.0  100.0  +100.0" in out
    assert "B better" in out and "(B)" in out
    assert "WARNING" not in out


def test_cli_compare_warns_on_a_version_mismatch_and_formats_for_papers(tmp_path, capsys):
    a = write_run(tmp_path / "a", {0: pattern(2, 4)})
    b = write_run(tmp_path / "b", {0: pattern(3, 4)}, meta={"versions": {"mujoco": "3.4.0"}})
    assert main(["compare", str(a), str(b)]) == 0
    assert "WARNING: runs differ in versions.mujoco: a=3.3.2, b=3.4.0" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--format", "markdown"]) == 0
    captured = capsys.readouterr()
    assert "versions.mujoco" in captured.err and "versions.mujoco" not in captured.out
    assert "| a | 50.0 ± 25.0% |" in captured.out


def _scenes(task_ids, episodes, changed=()):
    """Fingerprints: one per (task, episode), those in `changed` replaced by another."""
    return {
        (t, e): ("5c3e0a9b17d2" if (t, e) in changed else f"{t:02d}{e:02d}aa00bb11")
        for t in task_ids
        for e in range(episodes)
    }


def test_compare_names_the_paired_episodes_that_saw_different_scenes(tmp_path, capsys):
    a = write_run(
        tmp_path / "a", {0: pattern(2, 4), 1: pattern(1, 4)}, fingerprints=_scenes((0, 1), 4)
    )
    b = write_run(
        tmp_path / "b",
        {0: pattern(3, 4), 1: pattern(1, 4)},
        fingerprints=_scenes((0, 1), 4, changed={(0, 1), (0, 3), (1, 0)}),
    )
    runs = load_runs([a, b])
    differ = scene_differences(*runs)
    assert differ[["task_id", "episode_index"]].values.tolist() == [[0, 1], [0, 3], [1, 0]]
    assert differ["scene_fingerprint_b"].tolist() == ["5c3e0a9b17d2"] * 3
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert (
        "WARNING: 3 of 8 paired episodes of a and b saw different scenes (scene fingerprints "
        "differ): libero_spatial task 0 episodes 1, 3; libero_spatial task 1 episode 0; same "
        "protocol and simulator versions, so the scenes should be equal: check that both "
        "machines have the same LIBERO assets (`evalharness suites --fingerprints` on each). "
        "Paired differences on them compare different scenes." in out
    )


def test_differing_scenes_under_another_mujoco_are_reported_as_drift(tmp_path):
    a = write_run(tmp_path / "a", {5: pattern(2, 2)}, fingerprints=_scenes((5,), 2))
    b = write_run(
        tmp_path / "b",
        {5: pattern(2, 2)},
        meta={"versions": {"mujoco": "3.4.0"}},
        fingerprints=_scenes((5,), 2, changed={(5, 0), (5, 1)}),
    )
    (warning,) = scene_warnings(load_runs([a, b]))
    assert warning.startswith(
        "2 of 2 paired episodes of a and b saw different scenes (scene fingerprints differ): "
        "libero_spatial task 5 episodes 0-1; "
    )
    assert "the simulator versions differ (mujoco 3.3.2 vs 3.4.0): objects settle " in warning
    assert "so this is drift" in warning


def test_differing_seeding_is_named_and_runs_without_fingerprints_are_not_flagged(tmp_path):
    a = write_run(tmp_path / "a", {0: pattern(1, 2)}, fingerprints=_scenes((0,), 2))
    b = write_run(
        tmp_path / "b",
        {0: pattern(1, 2)},
        meta={"protocol": {"seeding": "task_stream", "env_seed": 0}},
        fingerprints=_scenes((0,), 2, changed={(0, 0)}),
    )
    (warning,) = scene_warnings(load_runs([a, b]))
    assert "seed or settle their scenes differently (seeding None vs 'task_stream', " in warning
    # A run from before fingerprints were recorded has "" everywhere: nothing to compare.
    legacy = write_run(tmp_path / "legacy", {0: pattern(1, 2)})
    assert scene_warnings(load_runs([a, legacy])) == []
    assert scene_differences(*load_runs([a, legacy])).empty


def test_cli_compare_errors_teach(tmp_path, capsys):
    a = write_run(tmp_path / "a", {0: [T]})
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing: not a directory" in err and "episodes.csv and run.json" in err
    b = write_run(tmp_path / "b", {1: [T]})
    assert main(["compare", str(a), str(b)]) == 2
    assert "share no episodes" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Finetune logs
# --------------------------------------------------------------------------------------------


def test_train_log_lookup_prefers_run_json_then_the_run_dir(tmp_path):
    run = write_run(tmp_path / "run", {0: [T]})
    assert find_train_log(run, {}) is None
    (run / "finetune").mkdir()
    (run / "finetune" / "train_log.csv").write_text("step,loss\n0,1.0\n")
    assert find_train_log(run, {}) == run / "finetune" / "train_log.csv"
    (run / "train_log.csv").write_text("step,loss\n0,1.0\n")
    assert find_train_log(run, {}) == run / "train_log.csv"
    other = tmp_path / "ft_out" / "log.csv"
    other.parent.mkdir()
    other.write_text("step,loss,learning_rate,grad_norm\n0,2.0,1e-4,1.0\n10,1.0,1e-4,0.5\n")
    meta = {"finetune": {"train_log": str(other)}}
    assert find_train_log(run, meta) == other
    (run / "run.json").write_text(json.dumps({"finetune": {"train_log": str(other)}}))
    assert list(load_run(run).train_log["loss"]) == [2.0, 1.0]


def test_a_train_log_without_loss_is_rejected_with_its_columns(tmp_path):
    run = write_run(tmp_path / "run", {0: [T]})
    Path(run / "train_log.csv").write_text("step,lr\n0,1\n")
    with pytest.raises(ComparisonError, match=r"missing \['loss'\], found \['step', 'lr'\]"):
        load_run(run)


def test_harness_failures_are_left_out_of_the_pairing_as_out_of_the_rates(tmp_path):
    a = write_run(tmp_path / "a", {0: pattern(2, 4)})
    b = write_run(tmp_path / "b", {0: pattern(2, 4)})
    # B's episode 3 (a failure) was lost to the simulator: it says nothing about B's policy.
    csv = b / "episodes.csv"
    lines = csv.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if ",3,3," in line and "step_limit" in line)
    lines[row] = lines[row].replace("step_limit", "sim_unstable")
    csv.write_text("\n".join(lines) + "\n")
    run_a, run_b = load_runs([a, b])
    t0 = compare_runs(run_a, run_b).set_index(["level", "task_id"]).loc[("task", 0)]
    assert (t0["shared"], t0["both"], t0["neither"], t0["only_a"], t0["only_b"]) == (3, 2, 1, 0, 0)
    assert (t0["unpaired_a"], t0["unpaired_b"]) == (1, 0)
    assert run_b.summary().iloc[0][["episodes", "excluded"]].tolist() == [3, 1]


def test_suite_table_of_a_suite_without_policy_outcomes_shows_nan_not_an_error(tmp_path):
    a = write_run(tmp_path / "a", {0: [False]})
    csv = a / "episodes.csv"
    csv.write_text(csv.read_text().replace("step_limit", "episode_timeout"))
    assert "| a | nan ± nan% |" in suite_table(load_runs([a]))
