"""Progress of a run or a finetune: a tqdm line on a terminal, tqdm's widget in a notebook,
log lines everywhere else.

On a terminal the runner draws `Progress`, one tqdm line: episodes done, success so far, env
steps per second. A batch job (SLURM, ``nohup``, a CI log) has no terminal to redraw, so there
the run is followed through the rows it appends to ``episodes.csv`` (a finetune through
``train_log.csv``), and every ``every`` rows, or every ``interval`` seconds when rows come
slower, one line goes to the ``evalharness.progress`` logger (``-q`` silences it):

    progress: 40/500 episodes (8%) · success 31/40 = 77.5% [95% CI 62.5-87.7%] · 6.1 episodes/min · ETA 1h15m
    finetune: step 1200/5000 (24%) · loss 0.0412 · 3.2 steps/s · ETA 19m47s

In a notebook the same rows move tqdm's notebook bar instead. `mode` decides which;
`evalharness.api` sets it up for `evaluate`, `finetune` and the command line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evalharness.results import wilson_interval
from evalharness.tracking import CsvFollower, EpisodeCounts

__all__ = [
    "EPISODE_EVERY",
    "INTERVAL_S",
    "STEP_EVERY",
    "EpisodeProgress",
    "Progress",
    "TrainProgress",
    "follow_episodes",
    "follow_train_log",
    "format_duration",
    "in_notebook",
    "mode",
]

logger = logging.getLogger("evalharness.progress")


class Progress:
    """A one-line tqdm bar on stderr; inert when `enabled` is False (no tty, --no-progress)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.successes = 0
        self.finished = 0
        self.t0 = time.monotonic()
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="ep", file=sys.stderr, dynamic_ncols=True
            )

    def episode_done(self, success: bool, env_steps: int) -> None:
        """Count one finished episode; `env_steps` is the run's total so far."""
        self.finished += 1
        self.successes += int(success)
        if self.bar is not None:
            rate = env_steps / max(time.monotonic() - self.t0, 1e-9)
            ok = f"{100 * self.successes / self.finished:.0f}%"
            self.bar.set_postfix_str(f"success {ok} · {rate:.1f} env steps/s", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """End the bar's line."""
        if self.bar is not None:
            self.bar.close()


#: a line every this many episodes (``--progress-every``) ...
EPISODE_EVERY = 10
#: ... or optimizer steps ...
STEP_EVERY = 100
#: ... or at least this often while rows keep coming slower than that.
INTERVAL_S = 60.0


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where tqdm draws a widget)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def mode(enabled: bool) -> str:
    """How to show progress: ``off``, ``bar`` (stderr is a terminal: the runner's tqdm line),
    ``notebook`` (tqdm's widget) or ``log`` (lines through `logging`)."""
    if not enabled:
        return "off"
    if in_notebook():
        return "notebook"
    if sys.stderr.isatty():
        return "bar"
    return "log"


def format_duration(seconds: float) -> str:
    """``95`` -> ``1m35s``, ``4000`` -> ``1h06m``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class _Reporter:
    """Counts rows; emits a line every ``every`` rows or ``interval`` seconds, or moves a bar."""

    unit = "rows"

    def __init__(
        self, total: int, every: int, interval: float, notebook: bool, clock: Any = time.monotonic
    ) -> None:
        if every < 1:
            raise ValueError(f"progress every must be >= 1, got {every}")
        self.total = total
        self.every = every
        self.interval = interval
        self.clock = clock
        self.t0 = clock()
        self.last_line = self.t0
        self.new_rows = 0
        self.since_line = 0
        self.bar: Any = None
        if notebook:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit=self.unit)

    @property
    def done(self) -> int:
        raise NotImplementedError

    def rate_per_s(self) -> float:
        elapsed = self.clock() - self.t0
        return self.new_rows / elapsed if elapsed > 0 and self.new_rows else math.nan

    def eta_s(self) -> float:
        return (self.total - self.done) / self.rate_per_s()

    def row_added(self) -> None:
        self.new_rows += 1
        self.since_line += 1
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.set_postfix_str(self.postfix(), refresh=True)
        elif self.since_line >= self.every or self.done >= self.total:
            self.emit()

    def tick(self) -> None:
        """Called about every second: a line if rows came but none was printed for a while."""
        if self.bar is None and self.since_line and self.clock() - self.last_line >= self.interval:
            self.emit()

    def emit(self) -> None:
        logger.info(self.line())
        self.last_line = self.clock()
        self.since_line = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.since_line:
            self.emit()

    def line(self) -> str:
        raise NotImplementedError

    def postfix(self) -> str:
        raise NotImplementedError


class EpisodeProgress(_Reporter):
    """Episodes done of the run's total, success so far with its Wilson interval (harness
    failures left out, as in summaries), episodes per minute and the time left."""

    unit = "ep"

    def __init__(
        self,
        total: int,
        every: int = EPISODE_EVERY,
        interval: float = INTERVAL_S,
        notebook: bool = False,
        clock: Any = time.monotonic,
    ) -> None:
        self.counts = EpisodeCounts(total)
        super().__init__(total, every, interval, notebook, clock)

    @property
    def done(self) -> int:
        return self.counts.done

    def existing(self, row: dict[str, str]) -> None:
        """An episode recorded before this process started (a resumed run)."""
        self.counts.add(row)
        if self.bar is not None:
            self.bar.n = self.done

    def add(self, row: dict[str, str]) -> None:
        """An episode just recorded."""
        self.counts.add(row)
        self.row_added()

    def _success(self) -> str:
        c = self.counts
        if not c.counted:
            return "success -"
        low, high = wilson_interval(c.successes, c.counted)
        return (
            f"success {c.successes}/{c.counted} = {100 * c.success_rate:.1f}% "
            f"[95% CI {100 * low:.1f}-{100 * high:.1f}%]"
        )

    def line(self) -> str:
        c = self.counts
        percent = f" ({100 * c.done / c.total:.0f}%)" if c.total else ""
        per_min = 60 * self.rate_per_s()
        speed = f"{per_min:.1f} episodes/min" if math.isfinite(per_min) else "- episodes/min"
        return (
            f"progress: {c.done}/{c.total} episodes{percent} · {self._success()} · {speed} · "
            f"ETA {format_duration(self.eta_s())}"
        )

    def postfix(self) -> str:
        return self._success()


class TrainProgress(_Reporter):
    """Optimizer steps done of the total, the last loss, steps per second and the time left."""

    unit = "step"

    def __init__(
        self,
        total: int,
        every: int = STEP_EVERY,
        interval: float = INTERVAL_S,
        notebook: bool = False,
        clock: Any = time.monotonic,
    ) -> None:
        self.step = 0
        self.loss = math.nan
        super().__init__(total, every, interval, notebook, clock)

    @property
    def done(self) -> int:
        return self.step

    def existing(self, row: dict[str, str]) -> None:
        """A step logged before this process started (a resumed finetune)."""
        self.step = int(row["step"])

    def add(self, row: dict[str, str]) -> None:
        """A step just logged."""
        self.step = int(row["step"])
        with contextlib.suppress(KeyError, ValueError):
            self.loss = float(row["loss"])
        self.row_added()

    def line(self) -> str:
        percent = f" ({100 * self.step / self.total:.0f}%)" if self.total else ""
        rate = self.rate_per_s()
        speed = f"{rate:.2f} steps/s" if math.isfinite(rate) else "- steps/s"
        return (
            f"finetune: step {self.step}/{self.total}{percent} · loss {self.loss:.4g} · {speed} · "
            f"ETA {format_duration(self.eta_s())}"
        )

    def postfix(self) -> str:
        return f"loss {self.loss:.4g}"


@contextlib.contextmanager
def _follow(reporter: EpisodeProgress | TrainProgress, path: Path) -> Iterator[Any]:
    follower = CsvFollower(path, reporter.add, on_existing=reporter.existing, on_poll=reporter.tick)
    follower.start()
    try:
        yield reporter
    finally:
        follower.stop()
        reporter.close()


@contextlib.contextmanager
def follow_episodes(
    path: Path, total: int, display: str, every: int = EPISODE_EVERY
) -> Iterator[EpisodeProgress | None]:
    """Progress of a run from its episodes.csv while the block runs, for ``display`` ``log``
    or ``notebook`` (see `mode`); nothing for ``off`` and ``bar`` (the runner draws that)."""
    if display not in ("log", "notebook"):
        yield None
        return
    with _follow(EpisodeProgress(total, every, notebook=display == "notebook"), path) as r:
        yield r


@contextlib.contextmanager
def follow_train_log(
    path: Path, total_steps: int, display: str, every: int = STEP_EVERY
) -> Iterator[TrainProgress | None]:
    """Progress of a finetune from its train_log.csv while the block runs (as `follow_episodes`)."""
    if display not in ("log", "notebook"):
        yield None
        return
    with _follow(TrainProgress(total_steps, every, notebook=display == "notebook"), path) as r:
        yield r
