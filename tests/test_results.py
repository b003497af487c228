"""Tests for evalharness.results: episodes.csv, the statistics and the derived summary files."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from evalharness.results import (
    EPISODE_COLUMNS,
    LEGACY_EPISODE_COLUMNS,
    SUMMARY_COLUMNS,
    TIMING_COLUMNS,
    EpisodeLog,
    atomic_write_json,
    atomic_write_text,
    format_table,
    read_episodes,
    read_summary,
    read_summary_header,
    summarize,
    wilson_interval,
    write_summary,
)
from evalharness.run_dir import regenerate_summary

HEADER = ",".join(EPISODE_COLUMNS) + "\n"


def episode(
    suite: str = "libero_spatial",
    task_id: int = 0,
    episode_index: int = 0,
    success: bool = True,
    steps: int = 100,
    instruction: str | None = None,
    failure_reason: str = "",
) -> dict[str, object]:
    return {
        "suite": suite,
        "task_id": task_id,
        "task_name": f"{suite}_task_{task_id}",
        "instruction": instruction if instruction is not None else f"do task {task_id}",
        "episode_index": episode_index,
        "init_state_index": episode_index,
        "seed": 7 + episode_index,
        "success": success,
        "steps": steps,
        "policy": "openvla",
        "checkpoint": "",
        "wall_seconds": 12.3456789,
        "failure_reason": failure_reason,
    }


def hand_made_episodes() -> pd.DataFrame:
    """Suite A: task 0 succeeds 2/3, task 1 fails 0/3. Suite B: task 3 succeeds 3/3."""
    rows = [
        episode("A", 0, 0, True, 100),
        episode("A", 0, 1, False, 150),
        episode("A", 0, 2, True, 120),
        episode("A", 1, 0, False, 300, failure_reason="timeout"),
        episode("A", 1, 1, False, 300, failure_reason="timeout"),
        episode("A", 1, 2, False, 300, failure_reason="timeout"),
        episode("B", 3, 0, True, 50),
        episode("B", 3, 1, True, 60),
        episode("B", 3, 2, True, 70),
    ]
    df = pd.DataFrame(rows, columns=list(EPISODE_COLUMNS))
    return df.astype({"success": bool, "wall_seconds": "float64"})


def write_log(path: Path, rows: list[dict[str, object]]) -> None:
    with EpisodeLog(path) as log:
        for row in rows:
            log.append(row)


# --------------------------------------------------------------------------------------------
# Wilson interval
# --------------------------------------------------------------------------------------------
# Reference values worked by hand from
#   center = (p + z²/2n) / (1 + z²/n),  half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n),
#   z = 1.959964, z² = 3.841459.
# (0, 10):  z²/n = 0.384146, denom = 1.384146, center = 0.192073/1.384146 = 0.138766,
#           half = 1.959964·sqrt(0.00960365)/1.384146 = 0.192073/1.384146 = 0.138766
#           -> (0, 0.27753)
# (10, 10): mirror image of (0, 10) -> (1 - 0.27753, 1) = (0.72247, 1)
# (5, 10):  center = 0.692073/1.384146 = 0.5,
#           half = 1.959964·sqrt(0.025 + 0.00960365)/1.384146 = 0.364595/1.384146 = 0.263407
#           -> (0.23659, 0.76341)
# (1, 2):   z²/n = 1.920730, denom = 2.920730, center = 0.5,
#           half = 1.959964·sqrt(0.125 + 0.240091)/2.920730 = 1.184265/2.920730 = 0.405469
#           -> (0.09453, 0.90547)
# (45, 50): z²/n = 0.076829, denom = 1.076829, center = (0.9 + 0.038415)/1.076829 = 0.871461,
#           half = 1.959964·sqrt(0.0018 + 0.000384146)/1.076829 = 0.091599/1.076829 = 0.085064
#           -> (0.78640, 0.95652)
# (2, 3):   z²/n = 1.280486, denom = 2.280486, center = 1.306910/2.280486 = 0.573082,
#           half = 1.959964·sqrt(0.0740741 + 0.106707)/2.280486 = 0.833345/2.280486 = 0.365424
#           -> (0.20766, 0.93851)
# (2, 6):   z²/n = 0.640243, denom = 1.640243, center = 0.653455/1.640243 = 0.398390,
#           half = 1.959964·sqrt(0.0370370 + 0.0266768)/1.640243 = 0.494726/1.640243 = 0.301618
#           -> (0.09677, 0.70001)
# (3, 3):   center = 1.640243/2.280486 = 0.719250,
#           half = 1.959964·sqrt(0.106707)/2.280486 = 0.640248/2.280486 = 0.280750
#           -> (0.43850, 1)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.27753),
        (10, 10, 0.72247, 1.0),
        (5, 10, 0.23659, 0.76341),
        (1, 2, 0.09453, 0.90547),
        (45, 50, 0.78640, 0.95652),
        (2, 3, 0.20766, 0.93851),
        (2, 6, 0.09677, 0.70001),
        (3, 3, 0.43850, 1.0),
    ],
)
def test_wilson_interval_matches_hand_computed_values(
    successes: int, n: int, low: float, high: float
) -> None:
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=1e-5)
    assert got_high == pytest.approx(high, abs=1e-5)


def test_wilson_interval_is_exactly_zero_or_one_at_the_extremes() -> None:
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0


def test_wilson_interval_with_no_episodes_is_uninformative() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_widens_with_confidence() -> None:
    low90, high90 = wilson_interval(5, 10, confidence=0.90)
    low95, high95 = wilson_interval(5, 10)
    assert low95 < low90 < 0.5 < high90 < high95


@pytest.mark.parametrize(("successes", "n"), [(11, 10), (-1, 10), (0, -1), (3, 2)])
def test_wilson_interval_rejects_counts_outside_zero_to_n(successes: int, n: int) -> None:
    with pytest.raises(ValueError, match=rf"successes={successes}, n={n}"):
        wilson_interval(successes, n)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_wilson_interval_rejects_confidence_outside_open_unit_interval(
    confidence: float,
) -> None:
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=confidence)


def test_wilson_interval_rejects_non_integer_counts() -> None:
    with pytest.raises(ValueError, match="integers"):
        wilson_interval(2.5, 10)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------


def test_summarize_gives_exact_counts_rates_and_intervals_per_task_then_per_suite() -> None:
    summary = summarize(hand_made_episodes())

    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary["level"].tolist() == ["task", "task", "task", "suite", "suite", "average"]
    assert summary["suite"].tolist() == ["A", "A", "B", "A", "B", "average"]
    assert summary["task_id"].tolist() == [0, 1, 3, -1, -1, -1]
    assert summary["task_name"].tolist() == ["A_task_0", "A_task_1", "B_task_3", "", "", ""]
    assert summary["instruction"].tolist() == [
        "do task 0",
        "do task 1",
        "do task 3",
        "",
        "",
        "mean of 2 suites",
    ]
    assert summary["episodes"].tolist() == [3, 3, 3, 6, 3, 9]
    assert summary["successes"].tolist() == [2, 0, 3, 2, 3, 5]
    # The average is the mean of the suite rates (1/3 and 1), not the pooled 5/9.
    assert summary["success_rate"].tolist() == [2 / 3, 0.0, 1.0, 1 / 3, 1.0, 2 / 3]
    assert summary["mean_steps"].tolist() == pytest.approx(
        [370 / 3, 300.0, 60.0, 1270 / 6, 60.0, 1450 / 9], abs=1e-12
    )
    # Literals from the hand computations above the Wilson tests: 2/3, 0/3, 3/3, 2/6, 3/3;
    # the average's at 2/3 with the effective count 2**2 / (1/6 + 1/3) = 8.
    assert summary["ci95_low"].tolist() == pytest.approx(
        [0.20766, 0.0, 0.43850, 0.09677, 0.43850, 0.33871], abs=1e-5
    )
    assert summary["ci95_high"].tolist() == pytest.approx(
        [0.93851, 0.56150, 1.0, 0.70001, 1.0, 0.88649], abs=1e-5
    )
    assert str(summary["task_id"].dtype) == "int64"
    assert str(summary["episodes"].dtype) == "int64"
    assert str(summary["successes"].dtype) == "int64"


def test_summarize_does_not_depend_on_episode_row_order() -> None:
    episodes = hand_made_episodes()
    expected = summarize(episodes)
    for seed in range(5):
        shuffled = episodes.sample(frac=1.0, random_state=seed)
        pd.testing.assert_frame_equal(summarize(shuffled), expected)
    pd.testing.assert_frame_equal(summarize(episodes.iloc[::-1]), expected)


def test_summarize_rejects_an_episode_logged_twice() -> None:
    episodes = hand_made_episodes()
    doubled = pd.concat([episodes, episodes.iloc[[0]]], ignore_index=True)
    with pytest.raises(ValueError, match="logged once"):
        summarize(doubled)


def test_summarize_rejects_text_success_values() -> None:
    episodes = hand_made_episodes()
    episodes["success"] = episodes["success"].map(str)
    with pytest.raises(TypeError, match="success"):
        summarize(episodes)


def test_summarize_of_no_episodes_is_an_empty_table_with_the_summary_columns() -> None:
    summary = summarize(hand_made_episodes().iloc[0:0])
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == 0


# --------------------------------------------------------------------------------------------
# EpisodeLog and read_episodes
# --------------------------------------------------------------------------------------------


def test_episode_log_writes_header_once_and_continues_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "run" / "episodes.csv"
    write_log(path, [episode(episode_index=0), episode(episode_index=1)])
    write_log(path, [episode(episode_index=2)])

    text = path.read_text()
    assert text.startswith(HEADER)
    assert text.count("suite,task_id") == 1
    assert text.count("\n") == 4
    assert read_episodes(path)["episode_index"].tolist() == [0, 1, 2]


def test_episode_log_writes_header_into_an_existing_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    path.touch()
    EpisodeLog(path).close()
    assert path.read_text() == HEADER


def test_episode_log_repairs_a_row_cut_mid_write_on_open(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    write_log(path, [episode(episode_index=0)])
    whole = path.read_bytes()
    path.write_bytes(whole + b"libero_spatial,0,libero_spatial_task_0,do ta")

    with pytest.warns(UserWarning, match=re.escape(str(path))), EpisodeLog(path) as log:
        assert log.dropped_partial_rows == 1
        assert path.read_bytes() == whole
        log.append(episode(episode_index=1))

    assert read_episodes(path)["episode_index"].tolist() == [0, 1]


def test_episode_log_reports_no_dropped_rows_for_an_intact_file(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    write_log(path, [episode()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with EpisodeLog(path) as log:
            assert log.dropped_partial_rows == 0


def test_read_episodes_drops_a_truncated_final_row_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    path.write_bytes(
        HEADER.encode()
        + b"libero_spatial,0,t0,pick it,0,0,7,True,120,openvla,,1.5,,3f0a9c2e41b7\n"
        + b"libero_spatial,0,t0,pick it,1,1,8,Fal"
    )
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        df = read_episodes(path)
    assert len(df) == 1
    assert df.loc[0, "steps"] == 120
    # The cut file is left alone: only the writer repairs it.
    assert path.read_bytes().endswith(b"Fal")


def test_read_episodes_returns_the_documented_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    write_log(path, [episode(success=False, failure_reason=""), episode(episode_index=1)])
    df = read_episodes(path)

    assert list(df.columns) == list(EPISODE_COLUMNS)
    for column in ("task_id", "episode_index", "init_state_index", "seed", "steps"):
        assert str(df[column].dtype) == "int64", column
    assert df["success"].dtype == bool
    assert df["success"].tolist() == [False, True]
    assert df["wall_seconds"].dtype == "float64"
    assert df["wall_seconds"].tolist() == [12.346, 12.346]
    assert df["failure_reason"].tolist() == ["", ""]
    assert df["checkpoint"].tolist() == ["", ""]
    assert pd.api.types.is_string_dtype(df["instruction"])


def test_episode_log_writes_success_as_true_false_and_rounds_wall_seconds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "episodes.csv"
    write_log(path, [episode(success=True), episode(episode_index=1, success=False)])
    rows = path.read_text().splitlines()[1:]
    assert (
        rows[0]
        == "libero_spatial,0,libero_spatial_task_0,do task 0,0,0,7,True,100,openvla,,12.346,,"
    )
    assert rows[1].split(",")[7] == "False"


def test_the_scene_fingerprint_is_the_last_column_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    write_log(path, [episode() | {"scene_fingerprint": "3f0a9c2e41b7"}])
    assert EPISODE_COLUMNS[-1] == "scene_fingerprint"
    assert path.read_text().splitlines()[1].endswith(",12.346,,3f0a9c2e41b7")
    assert read_episodes(path)["scene_fingerprint"].tolist() == ["3f0a9c2e41b7"]


def test_an_episodes_file_from_before_fingerprints_reads_and_resumes_in_its_own_layout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "episodes.csv"
    old_header = ",".join(LEGACY_EPISODE_COLUMNS) + "\n"
    path.write_text(old_header + "libero_spatial,0,t0,pick it,0,0,7,True,120,openvla,,1.5,\n")
    assert read_episodes(path)["scene_fingerprint"].tolist() == [""]
    # Appending (--resume) keeps the file's 13 columns: the fingerprint is dropped, not shifted.
    write_log(path, [episode(episode_index=1) | {"scene_fingerprint": "3f0a9c2e41b7"}])
    lines = path.read_text().splitlines()
    assert lines[0] == old_header.strip()
    assert lines[2].endswith(",openvla,,12.346,")
    df = read_episodes(path)
    assert df["episode_index"].tolist() == [0, 1]
    assert df["scene_fingerprint"].tolist() == ["", ""]


def test_instructions_with_commas_and_quotes_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    tricky = 'put the "red" mug, then the bowl, on the plate'
    reason = 'exception: ValueError("bad, action")'
    write_log(path, [episode(instruction=tricky, failure_reason=reason, success=False)])
    df = read_episodes(path)
    assert df.loc[0, "instruction"] == tricky
    assert df.loc[0, "failure_reason"] == reason


def test_line_breaks_in_a_value_are_folded_so_each_row_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    write_log(path, [episode(failure_reason="Traceback:\n  boom\r\nerror")])
    assert path.read_text().count("\n") == 2
    assert read_episodes(path).loc[0, "failure_reason"] == "Traceback:   boom error"


def test_episode_log_rejects_a_file_with_another_header(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    path.write_text("suite,task,ok\nA,0,True\n")
    with pytest.raises(ValueError, match=r"episodes\.csv") as info:
        EpisodeLog(path)
    message = str(info.value)
    assert "['suite', 'task', 'ok']" in message
    assert "'failure_reason'" in message


def test_read_episodes_rejects_a_file_with_another_header(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    path.write_text("suite,task,ok\nA,0,True\n")
    with pytest.raises(ValueError, match=r"found \['suite', 'task', 'ok'\]"):
        read_episodes(path)


def test_read_episodes_of_a_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "episodes.csv"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_episodes(path)


def test_append_with_a_missing_key_names_the_key(tmp_path: Path) -> None:
    row = episode()
    del row["seed"]
    with EpisodeLog(tmp_path / "episodes.csv") as log, pytest.raises(KeyError, match="seed"):
        log.append(row)
    assert read_episodes(tmp_path / "episodes.csv").empty


def test_append_with_an_unknown_key_names_the_key(tmp_path: Path) -> None:
    row = episode()
    row["reward"] = 1.0
    with EpisodeLog(tmp_path / "episodes.csv") as log, pytest.raises(ValueError, match="reward"):
        log.append(row)


def test_append_rejects_a_non_bool_success(tmp_path: Path) -> None:
    row = episode()
    row["success"] = "yes"
    with EpisodeLog(tmp_path / "episodes.csv") as log, pytest.raises(TypeError, match="success"):
        log.append(row)


def test_append_after_close_raises(tmp_path: Path) -> None:
    log = EpisodeLog(tmp_path / "episodes.csv")
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append(episode())


def test_timing_columns_are_episode_columns() -> None:
    assert set(TIMING_COLUMNS) <= set(EPISODE_COLUMNS)


# --------------------------------------------------------------------------------------------
# summary.csv, atomic writes, regenerate_summary, format_table
# --------------------------------------------------------------------------------------------


def test_write_summary_round_trips_table_and_header(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    summary = summarize(hand_made_episodes())
    header = {"suite": "libero_spatial", "episodes_per_task": 50, "seeds": [0, 1]}
    write_summary(summary, path, header)

    lines = path.read_text().splitlines()
    assert lines[:3] == [
        "# suite: libero_spatial",
        "# episodes_per_task: 50",
        "# seeds: [0, 1]",
    ]
    pd.testing.assert_frame_equal(read_summary(path), summary)
    assert read_summary_header(path) == {
        "suite": "libero_spatial",
        "episodes_per_task": "50",
        "seeds": "[0, 1]",
    }


def test_read_summary_keeps_a_hash_inside_an_instruction(tmp_path: Path) -> None:
    episodes = hand_made_episodes()
    episodes["instruction"] = "stack block #2 on block #1"
    summary = summarize(episodes)
    write_summary(summary, tmp_path / "summary.csv")
    pd.testing.assert_frame_equal(read_summary(tmp_path / "summary.csv"), summary)
    assert read_summary_header(tmp_path / "summary.csv") == {}


def test_atomic_write_text_replaces_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "out" / "notes.txt"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert os.listdir(path.parent) == ["notes.txt"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_write_json_is_indented_and_stringifies_paths(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    atomic_write_json(path, {"b": 1, "a": Path("/ckpt/model")})
    assert path.read_text() == '{\n  "b": 1,\n  "a": "/ckpt/model"\n}\n'


def test_regenerate_summary_equals_summarize_of_read_episodes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rows = hand_made_episodes().to_dict("records")
    # Parallel workers finish out of order.
    write_log(run_dir / "episodes.csv", [{str(k): v for k, v in r.items()} for r in rows[::-1]])
    protocol = {"suites": ["A", "B"], "episodes_per_task": 3, "max_steps": 300}
    atomic_write_json(run_dir / "run.json", {"protocol": protocol, "started": "now"})

    summary = regenerate_summary(run_dir)

    expected = summarize(read_episodes(run_dir / "episodes.csv"))
    pd.testing.assert_frame_equal(summary, expected)
    pd.testing.assert_frame_equal(summary, summarize(hand_made_episodes()))
    pd.testing.assert_frame_equal(read_summary(run_dir / "summary.csv"), expected)
    assert read_summary_header(run_dir / "summary.csv") == {
        "suites": '["A", "B"]',
        "episodes_per_task": "3",
        "max_steps": "300",
    }


def test_regenerate_summary_without_run_json_writes_no_header(tmp_path: Path) -> None:
    write_log(tmp_path / "episodes.csv", [episode()])
    regenerate_summary(tmp_path)
    assert read_summary_header(tmp_path / "summary.csv") == {}
    assert not (tmp_path / "summary.csv").read_text().startswith("#")


def test_format_table_shows_instructions_percentages_and_counts() -> None:
    summary = summarize(hand_made_episodes())
    table = format_table(summary)
    lines = table.splitlines()

    task0 = next(line for line in lines if "do task 0" in line)
    assert " 66.7%" in task0
    assert "[ 20.8,  93.9]%" in task0
    assert "2/3" in task0
    assert "do task 1" in table and "  0.0%" in table
    suite_a = lines[-3]
    assert suite_a.startswith("A ")
    assert " 33.3%" in suite_a and "2/6" in suite_a and "[  9.7,  70.0]%" in suite_a
    assert lines[-2].startswith("B ") and "100.0%" in lines[-2]
    # Two suites: the mean of their rates closes the table.
    assert lines[-1].startswith("average ") and " 66.7%" in lines[-1] and "5/9" in lines[-1]
    assert "mean of 2 suites" in lines[-1]


def test_format_table_truncates_long_instructions() -> None:
    episodes = hand_made_episodes()
    episodes["instruction"] = "pick up the black bowl " * 10
    table = format_table(summarize(episodes))
    task_line = next(line for line in table.splitlines() if "pick up" in line)
    shown = task_line[task_line.index("pick up") :]
    assert len(shown) == 60
    assert shown.endswith("...")


def test_format_table_reads_back_from_summary_csv(tmp_path: Path) -> None:
    summary = summarize(hand_made_episodes())
    write_summary(summary, tmp_path / "summary.csv", {"note": "x"})
    assert format_table(read_summary(tmp_path / "summary.csv")) == format_table(summary)


def test_summary_header_values_with_newlines_stay_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    write_summary(summarize(hand_made_episodes()), path, {"note": "two\nlines"})
    assert read_summary_header(path) == {"note": json.dumps("two\nlines")}
    assert len(read_summary(path)) == 6  # 3 tasks, 2 suites, their average


def _append_rows(path: Path, worker: int, count: int) -> None:
    with EpisodeLog(path) as log:
        for i in range(count):
            log.append(episode(task_id=worker, episode_index=i, instruction="a, b " * 20))


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_parallel_writers_leave_whole_rows_and_one_header(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "episodes.csv"
    workers = [ctx.Process(target=_append_rows, args=(path, w, 20)) for w in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    df = read_episodes(path)
    assert len(df) == 80
    assert sorted(df.groupby("task_id").size().tolist()) == [20, 20, 20, 20]
    assert path.read_text().count("suite,task_id") == 1
