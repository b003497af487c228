"""Result files of an evaluation run.

``episodes.csv`` is the source of truth: one row per finished episode, appended as the episode
ends. Every other table (``summary.csv``, the printed table) is derived from it, so a run that was
killed can be summarised, resumed or re-summarised without rerunning anything.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from evalharness.errors import EvalharnessError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "EPISODE_COLUMNS",
    "HARNESS_FAILURE_REASONS",
    "LEGACY_EPISODE_COLUMNS",
    "SUMMARY_COLUMNS",
    "TIMING_COLUMNS",
    "EpisodeLog",
    "MissingResultsError",
    "ResultsFileError",
    "atomic_write_json",
    "atomic_write_text",
    "average_row",
    "format_episode_row",
    "format_table",
    "read_episodes",
    "read_summary",
    "read_summary_header",
    "summarize",
    "wilson_interval",
    "write_summary",
]

EPISODE_COLUMNS: tuple[str, ...] = (
    "suite",
    "task_id",
    "task_name",
    "instruction",
    "episode_index",
    "init_state_index",
    "seed",
    "success",
    "steps",
    "policy",
    "checkpoint",
    "wall_seconds",
    "failure_reason",
    "scene_fingerprint",
)
#: the columns of episodes files written before `scene_fingerprint` existed: read as if their
#: fingerprints were "", and appended to in their own layout on `--resume`.
LEGACY_EPISODE_COLUMNS: tuple[str, ...] = EPISODE_COLUMNS[:-1]
#: columns a row may leave out, with the value written then.
_OPTIONAL_VALUES: dict[str, str] = {"scene_fingerprint": ""}
# The only columns allowed to differ between two runs of the same command.
TIMING_COLUMNS: tuple[str, ...] = ("wall_seconds",)

SUMMARY_COLUMNS: tuple[str, ...] = (
    "level",
    "suite",
    "task_id",
    "task_name",
    "instruction",
    "episodes",
    "successes",
    "success_rate",
    "ci95_low",
    "ci95_high",
    "mean_steps",
    "excluded",
)

#: failure reasons of the simulator or harness, not the policy (see evalharness.faults):
#: such episodes are left out of `episodes`, the rate and its interval, and counted in
#: `excluded` instead.
HARNESS_FAILURE_REASONS: frozenset[str] = frozenset(
    {"worker_died", "sim_unstable", "episode_timeout", "policy_timeout"}
)

_INT_COLUMNS = ("task_id", "episode_index", "init_state_index", "seed", "steps")
_FLOAT_COLUMNS = ("wall_seconds",)
_BOOL_COLUMNS = ("success",)
_STR_COLUMNS = tuple(
    c for c in EPISODE_COLUMNS if c not in _INT_COLUMNS + _FLOAT_COLUMNS + _BOOL_COLUMNS
)

_SUMMARY_DTYPES: dict[str, Any] = {
    "level": str,
    "suite": str,
    "task_id": "int64",
    "task_name": str,
    "instruction": str,
    "episodes": "int64",
    "successes": "int64",
    "success_rate": "float64",
    "ci95_low": "float64",
    "ci95_high": "float64",
    "mean_steps": "float64",
    "excluded": "int64",
}

_TRUE_TEXT = frozenset({"true", "1"})
_FALSE_TEXT = frozenset({"false", "0"})


# --------------------------------------------------------------------------------------------
# episodes.csv
# --------------------------------------------------------------------------------------------


def _csv_line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


_HEADER_LINE = _csv_line(list(EPISODE_COLUMNS))


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    # Several worker processes may share one episodes.csv; the lock keeps one process's
    # crash repair (a truncate) from cutting a row another process is appending.
    if fcntl is None:  # pragma: no cover
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _split_complete(data: bytes) -> tuple[bytes, bytes]:
    """Split ``data`` into the whole lines and the unterminated tail left by a crash."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]


def _parse_header(first_line: str) -> list[str]:
    return next(csv.reader([first_line]), [])


class ResultsFileError(EvalharnessError, ValueError):
    """An ``episodes.csv`` or ``summary.csv`` that is not one this version writes (foreign
    header, a bad value, an episode logged twice); the message names the file and line."""


class MissingResultsError(EvalharnessError, FileNotFoundError):
    """A results file that does not exist where a run directory should hold it."""


def _header_error(path: Path, found: list[str]) -> ResultsFileError:
    return ResultsFileError(
        f"{path}: not an episodes file of this version: expected columns "
        f"{list(EPISODE_COLUMNS)}, found {found}"
    )


def _one_line(text: str) -> str:
    # Crash repair and the truncated-row check assume one row per physical line, so a
    # multi-line value (an exception message in failure_reason) is folded onto one line.
    if "\n" in text or "\r" in text:
        return " ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return text


def _format_value(column: str, value: object) -> str:
    if column in _INT_COLUMNS:
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise TypeError(f"episode column {column!r} must be an integer, got {value!r}")
        return str(int(value))
    if column in _BOOL_COLUMNS:
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"episode column {column!r} must be a bool, got {value!r}")
        return "True" if bool(value) else "False"
    if column in _FLOAT_COLUMNS:
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
            raise TypeError(f"episode column {column!r} must be a number, got {value!r}")
        # Millisecond resolution is all wall time means; more digits only add noise to diffs.
        return repr(round(float(value), 3))
    if value is None:
        return ""
    if isinstance(value, os.PathLike):
        return _one_line(str(os.fspath(value)))
    return _one_line(str(value))


def format_episode_row(row: Mapping[str, object], columns: Sequence[str] = EPISODE_COLUMNS) -> str:
    """Return the CSV line (with its newline) that :class:`EpisodeLog` writes for ``row``.

    ``row`` must have the keys in :data:`EPISODE_COLUMNS` (``scene_fingerprint`` may be left
    out: ""): a missing key raises ``KeyError`` and an unknown key ``ValueError``, each naming
    the keys. ``columns`` is the file's layout (`LEGACY_EPISODE_COLUMNS` for an old file).
    """
    missing = [c for c in EPISODE_COLUMNS if c not in row and c not in _OPTIONAL_VALUES]
    if missing:
        raise KeyError(f"episode row is missing column(s) {missing}")
    extra = sorted(str(k) for k in row if k not in EPISODE_COLUMNS)
    if extra:
        raise ValueError(f"episode row has unknown column(s) {extra}; expected {EPISODE_COLUMNS}")
    full = _OPTIONAL_VALUES | dict(row)
    return _csv_line([_format_value(c, full[c]) for c in columns])


class EpisodeLog:
    """Append-only ``episodes.csv`` writer: one whole CSV line per finished episode, flushed as
    it ends.

    Each row goes out as a single ``os.write`` on an ``O_APPEND`` descriptor followed by
    ``fsync``, so a process killed at any point leaves only whole rows behind and concurrent
    writers never interleave. Opening an existing file checks its header and repairs a final
    line cut short by a crash (``dropped_partial_rows`` says whether one was dropped).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.dropped_partial_rows = 0
        #: the file's layout: `EPISODE_COLUMNS`, or `LEGACY_EPISODE_COLUMNS` for an old file.
        self.columns: tuple[str, ...] = EPISODE_COLUMNS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with _locked(self._fd):
                self._prepare()
        except BaseException:
            self.close()
            raise

    def _prepare(self) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0) if size else b""
        whole, tail = _split_complete(data)
        if tail:
            os.ftruncate(self._fd, len(whole))
            os.fsync(self._fd)
            if whole:
                self.dropped_partial_rows = 1
                what = "a partial final row"
            else:
                what = "a partial header"
            warnings.warn(
                f"{self.path}: dropped {what} ({len(tail)} bytes) left by an interrupted write",
                stacklevel=3,
            )
        if not whole:
            os.write(self._fd, _HEADER_LINE.encode("utf-8"))
            os.fsync(self._fd)
            return
        first = whole[: whole.index(b"\n") + 1].decode("utf-8")
        found = _parse_header(first)
        if found == list(LEGACY_EPISODE_COLUMNS):
            self.columns = LEGACY_EPISODE_COLUMNS
        elif found != list(EPISODE_COLUMNS):
            raise _header_error(self.path, found)

    def append(self, row: Mapping[str, object]) -> None:
        """Write one finished episode as one CSV line and make it durable before returning."""
        if self._fd is None:
            raise ValueError(f"{self.path}: EpisodeLog is closed")
        data = format_episode_row(row, self.columns).encode("utf-8")
        with _locked(self._fd):
            written = os.write(self._fd, data)
            os.fsync(self._fd)
        if written != len(data):  # pragma: no cover - only on a full disk
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")

    def close(self) -> None:
        """Close the file; further appends raise. Safe to call more than once."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._fd is None

    def __enter__(self) -> EpisodeLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _empty_episodes() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=_episode_dtype(c)) for c in EPISODE_COLUMNS})


def _episode_dtype(column: str) -> Any:
    if column in _INT_COLUMNS:
        return "int64"
    if column in _FLOAT_COLUMNS:
        return "float64"
    if column in _BOOL_COLUMNS:
        return "bool"
    return str


def _parse_cell(path: Path, lineno: int, column: str, text: str) -> object:
    try:
        if column in _INT_COLUMNS:
            return int(text)
        if column in _FLOAT_COLUMNS:
            return float(text) if text else math.nan
        if column in _BOOL_COLUMNS:
            low = text.strip().lower()
            if low in _TRUE_TEXT:
                return True
            if low in _FALSE_TEXT:
                return False
            raise ValueError("not a bool")
    except ValueError:
        raise ResultsFileError(f"{path}, line {lineno}: bad {column} value {text!r}") from None
    return text


def read_episodes(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``episodes.csv`` into a frame with one row per episode, in file order.

    Integer columns come back as int64, ``success`` as bool, ``wall_seconds`` as float and the
    text columns as ``str`` with ``""`` for empty values. A final line without its newline (a
    writer killed mid-row) is dropped with a warning. A missing file raises
    ``MissingResultsError`` (a ``FileNotFoundError``) and a foreign header or bad value
    ``ResultsFileError`` (a ``ValueError``), both naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingResultsError(f"episodes file not found: {path}") from None
    whole, tail = _split_complete(data)
    if tail:
        warnings.warn(
            f"{path}: ignoring a truncated final line ({len(tail)} bytes) left by an "
            "interrupted write",
            stacklevel=2,
        )
    if not whole:
        return _empty_episodes()
    reader = csv.reader(io.StringIO(whole.decode("utf-8"), newline=""))
    found = next(reader)
    layout = LEGACY_EPISODE_COLUMNS if found == list(LEGACY_EPISODE_COLUMNS) else EPISODE_COLUMNS
    if found != list(layout):
        raise _header_error(path, found)
    columns: dict[str, list[object]] = {c: [] for c in EPISODE_COLUMNS}
    for record in reader:
        lineno = reader.line_num
        if not record:
            continue
        if len(record) != len(layout):
            raise ResultsFileError(
                f"{path}, line {lineno}: expected {len(layout)} fields, found {len(record)}"
            )
        for column, text in zip(layout, record, strict=True):
            columns[column].append(_parse_cell(path, lineno, column, text))
        for column in EPISODE_COLUMNS[len(layout) :]:
            columns[column].append(_OPTIONAL_VALUES[column])
    return pd.DataFrame(
        {c: pd.Series(columns[c], dtype=_episode_dtype(c)) for c in EPISODE_COLUMNS}
    )


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial success rate.

    Unlike the normal approximation it stays inside [0, 1] and is informative at 0 or ``n``
    successes, which is common for a task evaluated on a few dozen episodes. ``n == 0`` gives
    the uninformative ``(0.0, 1.0)``.
    """
    if isinstance(successes, bool) or isinstance(n, bool):
        raise TypeError(f"successes and n must be integers, got {successes!r} and {n!r}")
    k, total = int(successes), int(n)
    if k != successes or total != n:
        raise ValueError(f"successes and n must be integers, got {successes!r} and {n!r}")
    if not 0 <= k <= total:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if total == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    z2 = z * z
    p = k / total
    denom = 1.0 + z2 / total
    center = (p + z2 / (2.0 * total)) / denom
    half = z * math.sqrt(p * (1.0 - p) / total + z2 / (4.0 * total * total)) / denom
    # At k == 0 or k == n the bound is exactly 0 or 1; rounding would otherwise leave ~1e-17.
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == total else min(1.0, center + half)
    return (low, high)


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _summary_row(
    level: str, suite: str, task_id: int, task_name: str, instruction: str, group: pd.DataFrame
) -> dict[str, object]:
    excluded = int(group["_excluded"].sum())
    group = group[~group["_excluded"]]
    episodes = len(group)
    successes = int(group["success"].sum())
    low, high = wilson_interval(successes, episodes)
    return {
        "level": level,
        "suite": suite,
        "task_id": task_id,
        "task_name": task_name,
        "instruction": instruction,
        "episodes": episodes,
        "successes": successes,
        "success_rate": successes / episodes if episodes else math.nan,
        "ci95_low": low,
        "ci95_high": high,
        "mean_steps": float(group["steps"].astype("float64").mean()) if episodes else math.nan,
        "excluded": excluded,
    }


def summarize(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per-task and per-suite success rates with 95% Wilson intervals.

    Returns the columns in :data:`SUMMARY_COLUMNS`: one ``level == "task"`` row per
    (suite, task_id), sorted, then one ``level == "suite"`` row per suite pooling its episodes
    (``task_id == -1``, empty ``task_name`` and ``instruction``), then, when there are several
    suites, one ``level == "average"`` row (:func:`average_row`). The result depends only on
    the set of episodes, not their order, since parallel workers append in completion order.
    An episode logged twice (same suite, task_id, episode_index) raises ``ValueError`` rather
    than being counted twice. Episodes whose ``failure_reason`` is a simulator or harness
    failure (:data:`HARNESS_FAILURE_REASONS`) are not policy outcomes: they are left out of
    ``episodes``, ``successes``, the rate, its interval and ``mean_steps`` and counted in
    ``excluded`` (a group with nothing left has rate and mean steps NaN).
    """
    needed = ("suite", "task_id", "task_name", "instruction", "episode_index", "success", "steps")
    missing = [c for c in needed if c not in episodes.columns]
    if missing:
        raise KeyError(f"episodes table is missing column(s) {missing}")
    success = episodes["success"]
    # astype(bool) would turn the string "False" into True, so only bools or 0/1 are accepted.
    if not pd.api.types.is_bool_dtype(success) and not (
        pd.api.types.is_numeric_dtype(success) and success.isin([0, 1]).all()
    ):
        raise TypeError(f"success must be bool (or 0/1), got dtype {success.dtype}")
    df = episodes.loc[:, list(needed)].copy()
    df["success"] = success.astype(bool)
    if "failure_reason" in episodes.columns:
        df["_excluded"] = episodes["failure_reason"].map(_text).isin(HARNESS_FAILURE_REASONS)
    else:
        df["_excluded"] = False
    df["suite"] = df["suite"].map(_text)
    df["task_id"] = df["task_id"].astype("int64")
    key = ["suite", "task_id", "episode_index"]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        first = df.loc[dup, key].sort_values(key).iloc[0].tolist()
        raise ResultsFileError(
            f"{int(dup.sum())} episode rows share (suite, task_id, episode_index) with another "
            f"row, e.g. {first}; each episode must be logged once"
        )
    # Sorting first makes the task_name/instruction picked for each task order-independent.
    df = df.sort_values(key, kind="mergesort").reset_index(drop=True)

    rows: list[dict[str, object]] = []
    for (suite, task_id), group in df.groupby(["suite", "task_id"], sort=True):
        rows.append(
            _summary_row(
                "task",
                str(suite),
                int(task_id),  # type: ignore[call-overload]
                _text(group["task_name"].iloc[0]),
                _text(group["instruction"].iloc[0]),
                group,
            )
        )
    suite_rows = [
        _summary_row("suite", str(suite), -1, "", "", group)
        for suite, group in df.groupby("suite", sort=True)
    ]
    rows += suite_rows
    if len(suite_rows) > 1:
        rows.append(average_row(suite_rows))
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in _SUMMARY_DTYPES.items()})
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).astype(_SUMMARY_DTYPES)


# --------------------------------------------------------------------------------------------
# summary.csv and other derived files
# --------------------------------------------------------------------------------------------


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8, ``\\n`` line ends) so readers never see a
    half-written file: write a temporary file in the same directory, fsync, ``os.replace``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        # mkstemp creates 0600 files; results are meant to be readable like any other file.
        mode = 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | os.PathLike[str], obj: object) -> None:
    """Atomically write ``obj`` as indented JSON; ``Path`` and other objects become strings."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str, ensure_ascii=False)
    atomic_write_text(path, text + "\n")


def _header_lines(header: Mapping[str, object]) -> str:
    lines = []
    for key, value in header.items():
        key_text = str(key)
        if ":" in key_text or "\n" in key_text or "\r" in key_text:
            raise ValueError(f"summary header key {key_text!r} must not contain ':' or newlines")
        if isinstance(value, str) and "\n" not in value and "\r" not in value:
            text = value
        else:
            # JSON keeps structured and multi-line values on one comment line.
            text = json.dumps(value, default=str, ensure_ascii=False)
        lines.append(f"# {key_text}: {text}\n")
    return "".join(lines)


def write_summary(
    summary: pd.DataFrame,
    path: str | os.PathLike[str],
    header: Mapping[str, object] | None = None,
) -> None:
    """Atomically write ``summary`` as CSV, preceded by one ``# key: value`` line per
    ``header`` entry (non-string values JSON-encoded), so the evaluation protocol that produced
    the numbers is visible at the top of the file.
    """
    body = summary.to_csv(index=False, lineterminator="\n")
    atomic_write_text(path, _header_lines(header or {}) + body)


def _split_summary(path: Path) -> tuple[list[str], str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    return lines[:n], "".join(lines[n:])


def read_summary(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``summary.csv`` written by :func:`write_summary`, skipping its ``#`` header."""
    _, body = _split_summary(Path(path))
    if not body.strip():
        raise ResultsFileError(f"{path}: summary file has no table")
    str_columns = {c: str for c, t in _SUMMARY_DTYPES.items() if t is str}
    # Not comment="#": an instruction may legitimately contain '#'.
    df = pd.read_csv(
        io.StringIO(body),
        dtype=str_columns,
        keep_default_na=False,
        float_precision="round_trip",
    )
    present = {c: t for c, t in _SUMMARY_DTYPES.items() if c in df.columns}
    return df.astype(present)


def read_summary_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the ``# key: value`` lines at the top of a summary file, values as raw text."""
    lines, _ = _split_summary(Path(path))
    header: dict[str, str] = {}
    for line in lines:
        content = line[1:].strip()
        key, sep, value = content.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    return header


def average_row(suite_rows: Sequence[Mapping[str, Any]]) -> dict[str, object]:
    """The ``level == "average"`` summary row of several suites, as papers report the LIBERO
    average: ``success_rate`` is the unweighted mean of the suites' rates (suites whose
    episodes were all excluded left out); ``episodes``, ``successes`` and ``excluded`` are
    totals. Its 95% interval is Wilson's at the mean rate with the effective number of
    episodes ``k**2 / sum(1 / n_i)`` of k suites of n_i episodes, which is the pooled Wilson
    interval when every suite has the same count.
    """
    counted = [r for r in suite_rows if int(r["episodes"]) > 0]
    total = sum(int(r["episodes"]) for r in suite_rows)
    steps = sum(float(r["mean_steps"]) * int(r["episodes"]) for r in counted)
    row: dict[str, object] = {
        "level": "average",
        "suite": "average",
        "task_id": -1,
        "task_name": "",
        "instruction": f"mean of {len(counted)} suites",
        "episodes": total,
        "successes": sum(int(r["successes"]) for r in suite_rows),
        "success_rate": math.nan,
        "ci95_low": 0.0,
        "ci95_high": 1.0,
        "mean_steps": steps / total if total else math.nan,
        "excluded": sum(int(r["excluded"]) for r in suite_rows),
    }
    if counted:
        k = len(counted)
        mean = sum(float(r["success_rate"]) for r in counted) / k
        n_eff = k * k / sum(1.0 / int(r["episodes"]) for r in counted)
        row["success_rate"] = mean
        row["ci95_low"], row["ci95_high"] = _wilson(mean, n_eff)
    return row


def _wilson(p: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    # `wilson_interval` for a rate and a (possibly fractional) number of trials.
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    low = 0.0 if p <= 0.0 else max(0.0, center - half)
    high = 1.0 if p >= 1.0 else min(1.0, center + half)
    return (low, high)


def _pct(x: float) -> str:
    return f"{100.0 * x:5.1f}"


def format_table(summary: pd.DataFrame, instruction_width: int = 60) -> str:
    """Render a summary as the fixed-width table printed at the end of a run.

    One line per task (suite, task id, success %, 95% interval in %, successes/episodes,
    instruction cut to ``instruction_width`` characters), then one line per suite.
    """
    tasks = summary[summary["level"] == "task"]
    suites = summary[summary["level"] == "suite"]
    suite_w = max([len("suite"), *(len(str(s)) for s in summary["suite"])])
    head = (
        f"{'suite':<{suite_w}}  {'task':>4}  {'success':>7}  {'95% CI':^15}  "
        f"{'succ/eps':>9}  instruction"
    )
    out = [head, "-" * len(head)]

    def line(row: pd.Series, task: str, text: str) -> str:
        ratio = f"{int(row['successes'])}/{int(row['episodes'])}"
        rate = _pct(row["success_rate"]) + "%"
        ci = f"[{_pct(row['ci95_low'])}, {_pct(row['ci95_high'])}]%"
        return (
            f"{row['suite']!s:<{suite_w}}  {task:>4}  {rate:>7}  {ci:>15}  {ratio:>9}  {text}"
        ).rstrip()

    for _, row in tasks.iterrows():
        text = _text(row["instruction"]) or _text(row["task_name"])
        if len(text) > instruction_width:
            text = text[: max(instruction_width - 3, 0)] + "..."
        out.append(line(row, str(int(row["task_id"])), text))
    if len(suites):
        out.append("-" * len(head))
        for _, row in suites.iterrows():
            out.append(line(row, "all", "(all tasks)"))
    for _, row in summary[summary["level"] == "average"].iterrows():
        out.append(line(row, "all", f"({row['instruction']}: the average papers report)"))
    return "\n".join(out) + "\n"
