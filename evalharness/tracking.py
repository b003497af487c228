"""Experiment tracking: Weights & Biases (``--wandb PROJECT``) and TensorBoard (``--tensorboard DIR``).

A tracker follows what a run or a finetune writes anyway: each row appended to
``episodes.csv`` (one finished episode) or ``train_log.csv`` (one optimizer step) is logged
as it lands, then the final tables, the videos and the run's config. Following the files
rather than hooking the loop keeps the runner, the executors and the trainers unaware of
tracking, and logs exactly what the results say.

Neither library is imported unless asked for: ``wandb`` (extra ``[wandb]``; its offline mode,
``WANDB_MODE=offline``, writes the run under ``DIR/wandb/`` for a later ``wandb sync``) and
``tensorboardX`` (extra ``[tensorboard]``).

    with tracking.open_trackers(wandb_project="libero", tensorboard_dir="tb", name="octo",
                                config={"suite": "libero_spatial"}) as tracker:
        with tracking.follow_episodes(tracker, run_dir / "episodes.csv", total=500):
            Runner(config, policy).run()
        tracker.log_tables(summary, episodes)
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalharness.errors import UsageError
from evalharness.results import HARNESS_FAILURE_REASONS, wilson_interval

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CsvFollower",
    "EpisodeCounts",
    "TensorBoardTracker",
    "Tracker",
    "WandbTracker",
    "follow_episodes",
    "follow_train_log",
    "open_trackers",
    "summary_key",
]

logger = logging.getLogger(__name__)

#: seconds between two looks at a followed CSV file.
POLL_SECONDS = 1.0
#: frames kept of a video logged to TensorBoard (an animated GIF in the image dashboard).
TB_VIDEO_FRAMES = 64


class Tracker:
    """Where a run's numbers go; the base class logs nothing (no tracker asked for)."""

    def log_episode(self, row: Mapping[str, str], progress: EpisodeCounts) -> None:
        """One finished episode (an ``episodes.csv`` row, values as text) and the counts so
        far."""

    def log_train_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """One optimizer step of a finetune (a ``train_log.csv`` row)."""

    def log_tables(self, summary: pd.DataFrame, episodes: pd.DataFrame) -> None:
        """The final summary and episode tables of a run."""

    def log_videos(self, videos: Sequence[Path]) -> None:
        """The run's episode videos (mp4)."""

    def update_config(self, config: Mapping[str, Any]) -> None:
        """Settings known only once the run has started (its identity, versions)."""

    def close(self, failed: bool = False) -> None:
        """Flush and finish."""


class _Fanout(Tracker):
    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log_episode(self, row: Mapping[str, str], progress: EpisodeCounts) -> None:
        for t in self.trackers:
            t.log_episode(row, progress)

    def log_train_step(self, step: int, metrics: Mapping[str, float]) -> None:
        for t in self.trackers:
            t.log_train_step(step, metrics)

    def log_tables(self, summary: pd.DataFrame, episodes: pd.DataFrame) -> None:
        for t in self.trackers:
            t.log_tables(summary, episodes)

    def log_videos(self, videos: Sequence[Path]) -> None:
        for t in self.trackers:
            t.log_videos(videos)

    def update_config(self, config: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.update_config(config)

    def close(self, failed: bool = False) -> None:
        for t in self.trackers:
            t.close(failed)


@dataclass
class EpisodeCounts:
    """Episodes recorded so far in this process: ``done`` of ``total``; ``counted`` of them
    are policy outcomes (harness failures are left out of rates, as in summaries) and
    ``successes`` of those succeeded."""

    total: int
    done: int = 0
    counted: int = 0
    successes: int = 0

    def add(self, row: Mapping[str, str]) -> None:
        """Count one episodes.csv row."""
        self.done += 1
        if row.get("failure_reason", "") not in HARNESS_FAILURE_REASONS:
            self.counted += 1
            self.successes += _is_success(row)

    @property
    def success_rate(self) -> float:
        return self.successes / self.counted if self.counted else math.nan


def _is_success(row: Mapping[str, str]) -> bool:
    return row.get("success", "").strip().lower() in ("true", "1")


def _episode_metrics(row: Mapping[str, str], progress: EpisodeCounts) -> dict[str, float]:
    low, high = wilson_interval(progress.successes, progress.counted)
    metrics = {
        "episode/success": float(_is_success(row)),
        "episode/steps": _number(row.get("steps")),
        "episode/task_id": _number(row.get("task_id")),
        "progress/episodes_done": float(progress.done),
        "progress/fraction_done": progress.done / progress.total if progress.total else math.nan,
        "progress/success_rate": progress.success_rate,
        "progress/success_ci95_low": low if progress.counted else math.nan,
        "progress/success_ci95_high": high if progress.counted else math.nan,
    }
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def _number(text: object) -> float:
    try:
        return float(str(text))
    except ValueError:
        return math.nan


def summary_key(row: pd.Series, summary: pd.DataFrame) -> str:
    """The metric name of a summary row: `suite`, `task_N`; with several suites prefixed by
    the suite (`libero_object/task_3`), and `average` for the mean over suites."""
    if row["level"] == "average":
        return "average"
    key = "suite" if row["level"] == "suite" else f"task_{row['task_id']}"
    if summary["suite"][summary["level"] != "average"].nunique() > 1:
        return f"{row['suite']}/{key}"
    return key


class WandbTracker(Tracker):
    """A Weights & Biases run: episode and progress scalars by episode count, the summary and
    episode tables, videos, finetune losses by step. ``mode`` is wandb's (``online``,
    ``offline``, ``disabled``; default: ``WANDB_MODE`` or online)."""

    def __init__(
        self,
        project: str,
        name: str,
        config: Mapping[str, Any],
        directory: Path,
        job_type: str = "eval",
        mode: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise UsageError(
                "--wandb needs the wandb package: pip install 'evalharness[wandb]'"
            ) from None
        self.wandb = wandb
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=name,
            config=dict(config),
            dir=str(directory),
            job_type=job_type,
            mode=mode,  # type: ignore[arg-type]
            reinit="create_new",
        )

    def log_episode(self, row: Mapping[str, str], progress: EpisodeCounts) -> None:
        self.run.log(_episode_metrics(row, progress), step=progress.done)

    def log_train_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({f"train/{k}": v for k, v in metrics.items()}, step=step)

    def log_tables(self, summary: pd.DataFrame, episodes: pd.DataFrame) -> None:
        self.run.log(
            {
                "summary": self.wandb.Table(dataframe=summary),
                "episodes": self.wandb.Table(dataframe=episodes),
            }
        )
        for _, row in summary.iterrows():
            key = summary_key(row, summary)
            self.run.summary[f"success_rate/{key}"] = float(row["success_rate"])
            self.run.summary[f"episodes/{key}"] = int(row["episodes"])

    def log_videos(self, videos: Sequence[Path]) -> None:
        if videos:
            self.run.log(
                {f"video/{p.stem}": self.wandb.Video(str(p), format="mp4") for p in videos}
            )

    def update_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class TensorBoardTracker(Tracker):
    """TensorBoard event files under ``directory``: scalars by episode count or optimizer step,
    the tables as markdown text, videos as animated GIFs in the image dashboard."""

    def __init__(self, directory: Path, config: Mapping[str, Any]) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UsageError(
                "--tensorboard needs tensorboardX: pip install 'evalharness[tensorboard]'"
            ) from None
        self.directory = directory
        self.writer = SummaryWriter(logdir=str(directory), flush_secs=10)
        self.writer.add_text("config", _markdown_config(config), 0)

    def log_episode(self, row: Mapping[str, str], progress: EpisodeCounts) -> None:
        for tag, value in _episode_metrics(row, progress).items():
            self.writer.add_scalar(tag, value, progress.done)

    def log_train_step(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def log_tables(self, summary: pd.DataFrame, episodes: pd.DataFrame) -> None:
        done = len(episodes)
        self.writer.add_text("summary", _markdown_table(summary), done)
        for _, row in summary.iterrows():
            key = summary_key(row, summary)
            self.writer.add_scalar(f"final/success_rate/{key}", float(row["success_rate"]), done)

    def log_videos(self, videos: Sequence[Path]) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        for i, path in enumerate(videos):
            gif, height, width = _gif(path)
            image = Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=gif
            )
            summary = Summary(value=[Summary.Value(tag=f"video/{path.stem}", image=image)])
            self.writer.file_writer.add_summary(summary, i)

    def update_config(self, config: Mapping[str, Any]) -> None:
        self.writer.add_text("config", _markdown_config(config), 1)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def _markdown_table(table: pd.DataFrame) -> str:
    rows = [list(map(str, table.columns)), ["---"] * len(table.columns)]
    rows += [[str(v) for v in row] for row in table.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _markdown_config(config: Mapping[str, Any]) -> str:
    return "\n".join(f"- **{k}**: `{v}`" for k, v in config.items())


def _gif(path: Path) -> tuple[bytes, int, int]:
    """An mp4 as an animated GIF of at most TB_VIDEO_FRAMES frames (every k-th frame)."""
    import imageio.v3 as iio

    frames = iio.imread(path)
    step = max(1, math.ceil(len(frames) / TB_VIDEO_FRAMES))
    kept = frames[::step]
    buffer = io.BytesIO()
    iio.imwrite(buffer, kept, extension=".gif", duration=100 * step, loop=0)
    return buffer.getvalue(), int(kept.shape[1]), int(kept.shape[2])


@contextlib.contextmanager
def open_trackers(
    *,
    wandb_project: str | None,
    tensorboard_dir: str | os.PathLike[str] | None,
    name: str,
    config: Mapping[str, Any],
    directory: Path,
    job_type: str = "eval",
) -> Iterator[Tracker]:
    """The trackers asked for, as one; a plain `Tracker` (logs nothing) when none is.

    ``directory`` is the run directory (wandb writes its files under it). On an exception the
    trackers are closed as failed and the exception propagates.
    """
    trackers: list[Tracker] = []
    try:
        if wandb_project:
            trackers.append(WandbTracker(wandb_project, name, config, directory, job_type))
        if tensorboard_dir:
            trackers.append(TensorBoardTracker(Path(tensorboard_dir) / name, config))
    except BaseException:
        for t in trackers:
            t.close(failed=True)
        raise
    tracker: Tracker = _Fanout(trackers) if trackers else Tracker()
    try:
        yield tracker
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close()


class CsvFollower:
    """Calls ``on_row(dict)`` for each complete row appended to a CSV file, from a thread
    (and ``on_poll()`` after each look, about every `POLL_SECONDS`).

    Rows already in the file when following starts go to ``on_existing`` instead (a resumed
    run's earlier episodes were logged by the run that recorded them); only whole lines
    (ending in a newline) are read, since a writer may be mid-row.
    """

    def __init__(
        self,
        path: Path,
        on_row: Callable[[dict[str, str]], None],
        on_existing: Callable[[dict[str, str]], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.on_row = on_row
        self.on_existing = on_existing
        self.on_poll = on_poll
        self.header: list[str] | None = None
        self.offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evalharness-tracking", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> CsvFollower:
        """Note where the file ends now, then follow it in the background."""
        self._read(deliver=False)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following after delivering every complete row written so far."""
        self._stop.set()
        self._thread.join()
        if self.error is None:
            self._deliver()
        if self.error is not None:
            logger.warning(
                "tracking stopped logging rows of %s: %s: %s",
                self.path,
                type(self.error).__name__,
                self.error,
            )

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS) and self.error is None:
            self._deliver()
            if self.on_poll is not None and self.error is None:
                self._guarded(self.on_poll)

    def _deliver(self) -> None:
        self._guarded(lambda: self._read(deliver=True))

    def _guarded(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # a tracker's failure must not stop the evaluation
            self.error = exc

    def _read(self, deliver: bool) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        complete = data[: end + 1]
        self.offset += len(complete)
        lines = complete.decode("utf-8").splitlines()
        if self.header is None and lines:
            self.header = next(csv.reader([lines.pop(0)]))
        callback = self.on_row if deliver else self.on_existing
        if callback is None:
            return
        for values in csv.reader(lines):
            if values:
                callback(dict(zip(self.header or [], values, strict=False)))


@contextlib.contextmanager
def follow_episodes(tracker: Tracker, path: Path, total: int) -> Iterator[CsvFollower | None]:
    """Log each episode appended to ``path`` (episodes.csv) while the block runs."""
    if type(tracker) is Tracker:  # nothing to log to: no thread
        yield None
        return
    counts = EpisodeCounts(total)

    def on_row(row: dict[str, str]) -> None:
        counts.add(row)
        tracker.log_episode(row, counts)

    follower = CsvFollower(path, on_row, on_existing=counts.add).start()
    try:
        yield follower
    finally:
        follower.stop()


@contextlib.contextmanager
def follow_train_log(tracker: Tracker, path: Path) -> Iterator[CsvFollower | None]:
    """Log each row appended to ``path`` (a finetune's train_log.csv) while the block runs."""
    if type(tracker) is Tracker:
        yield None
        return

    def on_row(row: dict[str, str]) -> None:
        step = int(row.pop("step"))
        tracker.log_train_step(step, {k: _number(v) for k, v in row.items()})

    follower = CsvFollower(path, on_row).start()
    try:
        yield follower
    finally:
        follower.stop()
