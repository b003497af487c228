"""Progress without a terminal: a log line every N episodes (or steps) or 60 s, with success so
far and its Wilson interval, the rate and the time left; -q silences it; a run whose stderr is
a file shows the lines while it runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalharness import logs, progress
from evalharness.progress import EpisodeProgress, TrainProgress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _episode(success: bool, reason: str = "") -> dict[str, str]:
    return {"success": "true" if success else "false", "failure_reason": reason}


def test_a_line_every_n_episodes_with_success_interval_rate_and_eta(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    progress = EpisodeProgress(total=6, every=2, clock=clock)
    with caplog.at_level(logging.INFO, logger="evalharness.progress"):
        for success in (True, False, True):
            clock.now += 30.0
            progress.add(_episode(success))
        progress.close()
    assert caplog.messages == [
        "progress: 2/6 episodes (33%) · success 1/2 = 50.0% [95% CI 9.5-90.5%] · "
        "2.0 episodes/min · ETA 2m00s",
        "progress: 3/6 episodes (50%) · success 2/3 = 66.7% [95% CI 20.8-93.9%] · "
        "2.0 episodes/min · ETA 1m30s",
    ]


def test_slow_episodes_get_a_line_after_60_s_and_harness_failures_leave_the_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    progress = EpisodeProgress(total=100, every=10, interval=60.0, clock=clock)
    progress.existing(_episode(True))  # recorded before a resume: counted, not a new line
    with caplog.at_level(logging.INFO, logger="evalharness.progress"):
        progress.tick()
        clock.now += 30.0
        progress.add(_episode(False, reason="worker_died"))
        progress.tick()
        assert caplog.messages == []
        clock.now += 30.0
        progress.tick()
        clock.now += 100.0
        progress.tick()  # nothing new since the last line: silence
    assert caplog.messages == [
        "progress: 2/100 episodes (2%) · success 1/1 = 100.0% [95% CI 20.7-100.0%] · "
        "1.0 episodes/min · ETA 1h38m"
    ]


def test_finetune_lines_show_step_loss_speed_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = TrainProgress(total=1000, every=100, clock=clock)
    progress.existing({"step": "200", "loss": "0.9"})
    with caplog.at_level(logging.INFO, logger="evalharness.progress"):
        for step in range(201, 301):
            clock.now += 0.5
            progress.add({"step": str(step), "loss": f"{1 / step:.6f}"})
    assert caplog.messages == [
        "finetune: step 300/1000 (30%) · loss 0.003333 · 2.00 steps/s · ETA 5m50s"
    ]


def test_durations_read_like_a_clock() -> None:
    assert [format_duration(s) for s in (0, 59.4, 95, 3599, 4000, 90061)] == [
        "0s",
        "59s",
        "1m35s",
        "59m59s",
        "1h06m",
        "25h01m",
    ]
    assert format_duration(float("nan")) == "?" and format_duration(-1) == "?"


def test_without_a_terminal_progress_goes_to_the_log() -> None:
    # pytest captures stderr, so it is not a terminal here, as in a batch job.
    assert not sys.stderr.isatty()
    assert progress.mode(True) == "log"
    assert progress.mode(False) == "off"


@pytest.fixture
def restore_logging():
    logger = logging.getLogger(logs.LOGGER)
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_log_levels_follow_v_and_q(capsys: pytest.CaptureFixture[str], restore_logging) -> None:
    logger = logs.configure(logs.level_for(verbose=0, quiet=1))
    logging.getLogger("evalharness.progress").info("progress: hidden")
    logging.getLogger("evalharness.runner").warning("disk is slow")
    logs.configure(logs.level_for(verbose=1, quiet=0))
    logging.getLogger("evalharness.progress").info("progress: shown")
    logging.getLogger("evalharness.x").debug("detail")
    logs.configure(logs.level_for())
    logging.getLogger("evalharness.x").debug("hidden detail")
    assert capsys.readouterr().err == ("warning: disk is slow\nprogress: shown\ndebug: detail\n")
    assert logger.level == logging.INFO
    assert [type(h) for h in logger.handlers].count(logs.StderrHandler) == 1


@pytest.mark.sim
@pytest.mark.slow
def test_a_run_with_stderr_in_a_file_logs_progress_while_it_runs(tmp_path: Path) -> None:
    err_path = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "evalharness", "run", "--suite", "libero_spatial",
           "--policy", "scripted", "--tasks", "0", "--episodes-per-task", "2", "--num-envs", "1",
           "--progress-every", "1", "--out", str(tmp_path / "run"),
           "--tensorboard", str(tmp_path / "tb"), "--wandb", "evalharness-test"]  # fmt: skip
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    seen_while_running = ""
    with err_path.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            text = err_path.read_text()
            if "progress: 1/2 episodes" in text and proc.poll() is None:
                seen_while_running = text
            time.sleep(0.2)
        assert proc.wait(timeout=60) == 0, err_path.read_text()
    assert "progress: 1/2 episodes (50%) · success 1/1 = 100.0% [95% CI 20.7-100.0%]" in (
        seen_while_running
    )
    final = err_path.read_text()
    assert "progress: 2/2 episodes (100%) · success 2/2 = 100.0% [95% CI 34.2-100.0%]" in final
    # The trackers asked for wrote their files (their contents: tests/test_tracking.py).
    assert len(list((tmp_path / "tb" / "run").glob("events.out.tfevents.*"))) == 1
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*"))) == 1
