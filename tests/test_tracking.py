"""Experiment tracking: TensorBoard event files and W&B offline runs hold each episode as it
lands, the final tables and the videos; a finetune's train log goes step by step; neither
library is imported unless asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evalharness import tracking
from evalharness.results import EPISODE_COLUMNS, summarize

HEADER = ",".join(EPISODE_COLUMNS) + "\n"


def _row(task: int, index: int, success: bool, reason: str = "") -> str:
    values = {
        "suite": "libero_spatial",
        "task_id": str(task),
        "task_name": f"task{task}",
        "instruction": "pick it up",
        "episode_index": str(index),
        "init_state_index": str(index),
        "seed": str(7 + index),
        "success": "true" if success else "false",
        "steps": str(40 + index),
        "policy": "scripted",
        "checkpoint": "",
        "wall_seconds": "1.5",
        "failure_reason": reason if reason else ("" if success else "step_limit"),
    }
    # Columns added later (and not needed here) stay empty.
    return ",".join(values.get(c, "") for c in EPISODE_COLUMNS) + "\n"


def test_the_follower_delivers_appended_whole_rows_and_counts_existing_ones(tmp_path: Path) -> None:
    path = tmp_path / "episodes.csv"
    path.write_text(HEADER + _row(0, 0, True))
    seen: list[dict[str, str]] = []
    existing: list[dict[str, str]] = []
    follower = tracking.CsvFollower(path, seen.append, on_existing=existing.append).start()
    with path.open("a") as f:
        f.write(_row(0, 1, False))
        f.write(_row(0, 2, True)[:20])  # a row being written: not delivered half
    follower.stop()
    assert [r["episode_index"] for r in existing] == ["0"]
    assert [(r["episode_index"], r["success"]) for r in seen] == [("1", "false")]
    assert follower.error is None


def test_episode_counts_leave_harness_failures_out_of_the_rate() -> None:
    counts = tracking.EpisodeCounts(total=4)
    for success, reason in [(True, ""), (False, "worker_died"), (False, "")]:
        counts.add({"success": "true" if success else "false", "failure_reason": reason})
    assert (counts.done, counts.counted, counts.successes) == (3, 2, 1)
    assert counts.success_rate == 0.5


def _events(directory: Path) -> list:
    """Every event in the TensorBoard files under ``directory``, in order."""
    from tensorboardX.proto.event_pb2 import Event

    from evalharness.data.tfrecord import iter_records

    events = []
    for file in sorted(directory.rglob("events.out.tfevents.*")):
        events += [Event.FromString(record) for record in iter_records(file)]
    return events


def _mp4(path: Path) -> Path:
    import imageio.v3 as iio

    frames = np.zeros((12, 16, 16, 3), dtype=np.uint8)
    frames[:, :, :8] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, fps=10)
    return path


def _fake_run(tracker: tracking.Tracker, run_dir: Path) -> pd.DataFrame:
    """What evaluate does around a run: follow episodes.csv while rows land, then log the
    tables and videos."""
    from evalharness.results import read_episodes

    log = run_dir / "episodes.csv"
    log.write_text(HEADER)
    with tracking.follow_episodes(tracker, log, total=3), log.open("a") as f:
        for row in (_row(0, 0, True), _row(0, 1, False), _row(1, 0, True)):
            f.write(row)
            f.flush()
    episodes = read_episodes(log)
    tracker.log_tables(summarize(episodes), episodes)
    tracker.log_videos([_mp4(run_dir / "videos" / "libero_spatial" / "task0_ep0.mp4")])
    return episodes


def test_tensorboard_holds_each_episode_the_final_rates_and_a_video(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    with tracking.open_trackers(
        wandb_project=None,
        tensorboard_dir=tmp_path / "tb",
        name="run1",
        config={"suite": "libero_spatial"},
        directory=tmp_path,
    ) as tracker:
        _fake_run(tracker, tmp_path)
    events = _events(tmp_path / "tb" / "run1")
    scalars: dict[str, list[tuple[int, float]]] = {}
    images, texts = {}, {}
    for event in events:
        for value in event.summary.value:
            if value.HasField("image"):
                images[value.tag] = value.image
            elif value.metadata.plugin_data.plugin_name == "text":
                texts[value.tag.removesuffix("/text_summary")] = value.tensor.string_val[0].decode()
            else:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert scalars["episode/success"] == [(1, 1.0), (2, 0.0), (3, 1.0)]
    assert scalars["progress/success_rate"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(2 / 3))]
    assert scalars["progress/fraction_done"][-1] == (3, 1.0)
    assert scalars["final/success_rate/task_0"] == [(3, 0.5)]
    assert scalars["final/success_rate/suite"] == [(3, pytest.approx(2 / 3))]
    assert "| level | suite | task_id |" in texts["summary"]
    assert "libero_spatial" in texts["config"]
    video = images["video/task0_ep0"]
    assert video.encoded_image_string[:6] == b"GIF89a" and (video.height, video.width) == (16, 16)


def test_tensorboard_follows_a_finetune_train_log_step_by_step(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    log = tmp_path / "train_log.csv"
    with (
        tracking.open_trackers(
            wandb_project=None,
            tensorboard_dir=tmp_path / "tb",
            name="ft",
            config={},
            directory=tmp_path,
        ) as tracker,
        tracking.follow_train_log(tracker, log),
    ):
        log.write_text("step,loss,learning_rate,grad_norm,time_s\n1,0.5,0.001,2,0.1\n")
        with log.open("a") as f:
            f.write("2,0.25,0.002,1,0.2\n")
    losses = [
        (e.step, v.simple_value)
        for e in _events(tmp_path / "tb" / "ft")
        for v in e.summary.value
        if v.tag == "train/loss"
    ]
    assert losses == [(1, 0.5), (2, 0.25)]


def test_wandb_offline_writes_the_run_with_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with tracking.open_trackers(
        wandb_project="evalharness-test",
        tensorboard_dir=None,
        name="run1",
        config={"suite": "libero_spatial"},
        directory=tmp_path,
    ) as tracker:
        _fake_run(tracker, tmp_path)
        tracker.update_config({"identity_hash": "abc"})
    wandb.teardown()  # the service process writes the record log out as it stops
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    # The run's record log, which `wandb sync` uploads: one history row per episode.
    (log,) = run.glob("run-*.wandb")
    records = log.read_bytes()
    assert records.count(b"progress/success_rate") >= 3
    assert b"success_rate/suite" in records and b"identity_hash" in records
    (table,) = (run / "files" / "media" / "table").glob("summary_*.table.json")
    summary = json.loads(table.read_text())
    rates = dict(zip(summary["columns"], summary["data"][-1], strict=True))
    assert rates["level"] == "suite" and rates["success_rate"] == pytest.approx(2 / 3)
    assert len(list((run / "files" / "media" / "videos").rglob("task0_ep0_*.mp4"))) == 1


def test_no_tracker_imports_nothing_and_asking_without_the_package_names_the_extra() -> None:
    script = (
        "import sys, pathlib\n"
        "from evalharness import tracking\n"
        "with tracking.open_trackers(wandb_project=None, tensorboard_dir=None, name='x', "
        "config={}, directory=pathlib.Path('.')) as t:\n"
        "    assert type(t) is tracking.Tracker\n"
        "assert 'wandb' not in sys.modules and 'tensorboardX' not in sys.modules\n"
        "sys.modules['wandb'] = None\n"
        "try:\n"
        "    tracking.WandbTracker('p', 'x', {}, pathlib.Path('.'))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "UsageError --wandb needs the wandb package: pip install 'evalharness[wandb]'"
    )
