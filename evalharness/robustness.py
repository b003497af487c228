"""The robustness report: how much of a base suite's success survives each perturbation.

A run that holds a base suite and some of its LIBERO-PRO perturbation suites (`--suite
libero_spatial_pro`, or `libero_pro`) is read here as pairs: each perturbed episode with the
base-suite episode of the base task it perturbs (`TaskInfo.base_task_id`) and the same episode
index, i.e. the same policy sampling seed and init state index. What such a pair shares
depends on the axis (`PAIRING`); the installed LIBERO-PRO suites sample their own init states
(measured by `evalharness suites`: no perturbed suite's are its base's), so a pair shares the
task and the episode's place in the protocol, not the exact starting scene. The paired design
is still what the test needs: both arms run the same tasks the same number of times, and
McNemar's test only asks that pairs be fixed before the outcomes are seen.

Per perturbed suite and per axis (pooled over base suites): base and perturbed success on the
paired episodes, the paired difference (perturbed - base) with Newcombe's 95% interval and the
exact McNemar p-value (`evalharness.stats`). `robustness_table` renders the LIBERO-PRO
leaderboard layout (README "LIBERO-Pro Model Leaderboard"): one row per run, per base suite
its original rate then one column per perturbation (Obj, Pos, Sem, Task, Env, ...), and the
mean over the perturbed columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import pandas as pd

from evalharness.envs.suites import (
    AXES,
    AXIS_COLUMNS,
    DISTRACTOR,
    ENVIRONMENT,
    LANGUAGE,
    OBJECT,
    PRO_BASES,
    SHIFT,
    SWAP,
    TASK,
    classify,
)
from evalharness.results import HARNESS_FAILURE_REASONS
from evalharness.stats import PairedTable, mcnemar_exact_p, paired_difference_ci

__all__ = [
    "PAIRING",
    "ROBUSTNESS_COLUMNS",
    "axis_statistics",
    "base_task_ids",
    "format_robustness",
    "has_robustness",
    "leaderboard",
    "pair_with_base",
    "robustness",
    "robustness_table",
]

#: what a perturbed episode and its base partner share, per axis.
PAIRING: dict[str, str] = {
    LANGUAGE: "same task and scene layout, reworded instruction; init state index i of each "
    "suite (LIBERO-PRO's own init states)",
    OBJECT: "same task and layout, other-looking objects; init state index i of each suite",
    SWAP: "same task, objects in each other's places; init state index i of each suite",
    TASK: "same scene, another goal replaces the base task's; init state index i of each suite",
    ENVIRONMENT: "same task on another table or room; init state index i of each suite",
    SHIFT: "same task, objects shifted; init state index i of each suite",
    DISTRACTOR: "same task plus an extra object (tasks matched by name); init state index i "
    "of each suite",
}

ROBUSTNESS_COLUMNS: tuple[str, ...] = (
    "level",
    "base_suite",
    "suite",
    "axis",
    "pairs",
    "base_successes",
    "perturbed_successes",
    "base_rate",
    "perturbed_rate",
    "both",
    "only_base",
    "only_perturbed",
    "neither",
    "difference",
    "ci95_low",
    "ci95_high",
    "p_value",
    "unpaired",
    "pairing",
)


@cache
def base_task_ids(suite: str) -> dict[int, int | None]:
    """Task id of the perturbed suite -> the base task it perturbs (LIBERO's files); the same
    id when LIBERO cannot say (results read where LIBERO is not installed)."""
    try:
        from evalharness.envs.libero import list_tasks

        return {t.task_id: t.base_task_id for t in list_tasks(suite)}
    except Exception:  # a suite this install lacks: LIBERO-PRO keeps task order per suite
        return {}


def _counted(episodes: pd.DataFrame) -> pd.DataFrame:
    if "failure_reason" not in episodes.columns:
        return episodes
    reasons = episodes["failure_reason"].fillna("").astype(str)
    return episodes[~reasons.isin(HARNESS_FAILURE_REASONS)]


def pair_with_base(episodes: pd.DataFrame, suite: str) -> tuple[pd.DataFrame, int]:
    """The episodes of perturbed `suite` paired with their base-suite partners:
    (frame with `task_id`, `base_task_id`, `episode_index`, `success_base`,
    `success_perturbed`; how many counted episodes of either arm found no partner)."""
    kind = classify(suite)
    if kind is None or kind.axis is None:
        raise ValueError(f"{suite} is not a perturbation suite")
    counted = _counted(episodes)
    mine = counted[counted["suite"] == suite][["task_id", "episode_index", "success"]].copy()
    mapping = base_task_ids(suite)
    mine["base_task_id"] = [mapping.get(int(t), int(t)) for t in mine["task_id"]]
    mine = mine.dropna(subset=["base_task_id"])
    mine["base_task_id"] = mine["base_task_id"].astype("int64")
    base = counted[counted["suite"] == kind.base][["task_id", "episode_index", "success"]]
    base = base.rename(columns={"task_id": "base_task_id", "success": "success_base"})
    pairs = mine.rename(columns={"success": "success_perturbed"}).merge(
        base, on=["base_task_id", "episode_index"], how="inner"
    )
    # A base episode partners each perturbed task that maps onto its task.
    used_base = pairs[["base_task_id", "episode_index"]].drop_duplicates()
    lone = (len(mine) - len(pairs)) + (len(base) - len(used_base))
    pairs = pairs.sort_values(["task_id", "episode_index"], kind="mergesort")
    return pairs.reset_index(drop=True), int(lone)


def _row(
    level: str, base_suite: str, suite: str, axis: str, pairs: pd.DataFrame, lone: int
) -> dict[str, object]:
    b, p = pairs["success_base"].astype(bool), pairs["success_perturbed"].astype(bool)
    # PairedTable's A is the base arm and B the perturbed one: difference = perturbed - base.
    table = PairedTable(
        both=int((b & p).sum()),
        only_a=int((b & ~p).sum()),
        only_b=int((~b & p).sum()),
        neither=int((~b & ~p).sum()),
    )
    low, high = paired_difference_ci(table)
    n = table.n
    return {
        "level": level,
        "base_suite": base_suite,
        "suite": suite,
        "axis": axis,
        "pairs": n,
        "base_successes": table.successes_a,
        "perturbed_successes": table.successes_b,
        "base_rate": table.successes_a / n if n else math.nan,
        "perturbed_rate": table.successes_b / n if n else math.nan,
        "both": table.both,
        "only_base": table.only_a,
        "only_perturbed": table.only_b,
        "neither": table.neither,
        "difference": table.difference if n else math.nan,
        "ci95_low": low,
        "ci95_high": high,
        "p_value": mcnemar_exact_p(table.only_a, table.only_b),
        "unpaired": lone,
        "pairing": PAIRING.get(axis, ""),
    }


def _perturbed_suites(episodes: pd.DataFrame) -> list[str]:
    held = {str(s) for s in episodes["suite"]}
    out = []
    for suite in held:
        kind = classify(suite)
        if kind is not None and kind.axis is not None and kind.base in held:
            out.append(suite)

    def order(name: str) -> tuple[int, int, str]:
        kind = classify(name)
        assert kind is not None and kind.axis is not None
        return (PRO_BASES.index(kind.base), AXES.index(kind.axis), name)

    return sorted(out, key=order)


def has_robustness(episodes: pd.DataFrame) -> bool:
    """Whether the episodes hold a perturbation suite together with its base suite."""
    return bool(_perturbed_suites(episodes))


def robustness(episodes: pd.DataFrame) -> pd.DataFrame:
    """One ``level == "suite"`` row per perturbed suite whose base suite the episodes also
    hold, then one ``level == "axis"`` row per axis pooling its suites' pairs over base
    suites (`base_suite` ``all``); columns :data:`ROBUSTNESS_COLUMNS`."""
    rows = []
    pooled: dict[str, list[pd.DataFrame]] = {}
    lone_by_axis: dict[str, int] = {}
    for suite in _perturbed_suites(episodes):
        kind = classify(suite)
        assert kind is not None and kind.axis is not None
        pairs, lone = pair_with_base(episodes, suite)
        rows.append(_row("suite", kind.base, suite, kind.axis, pairs, lone))
        pooled.setdefault(kind.axis, []).append(pairs)
        lone_by_axis[kind.axis] = lone_by_axis.get(kind.axis, 0) + lone
    for axis in AXES:
        if axis in pooled:
            frame = pd.concat(pooled[axis], ignore_index=True)
            rows.append(_row("axis", "all", "all", axis, frame, lone_by_axis[axis]))
    return pd.DataFrame(rows, columns=list(ROBUSTNESS_COLUMNS))


# --------------------------------------------------------------------------------------------
# Tables: terminal, Markdown and LaTeX
# --------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.1f}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _column(suite: str) -> str:
    kind = classify(suite)
    assert kind is not None and kind.axis is not None
    heading = AXIS_COLUMNS[kind.axis]
    if kind.axis == DISTRACTOR:
        heading += f" {kind.variant.removeprefix('with_').replace('_', ' ')}"
    elif kind.variant.endswith("_ood"):
        heading += f" ({kind.variant})"
    return heading


def format_robustness(frame: pd.DataFrame, title: str = "") -> str:
    """The report for the terminal: per perturbed suite and per axis, base and perturbed
    success on the paired episodes, the paired difference with its 95% interval, the
    discordant counts and the exact McNemar p."""
    head = (
        f"{'suite':<32} {'axis':<18} {'pairs':>5} {'base %':>6} {'pert %':>6} "
        f"{'diff':>6} {'95% CI':^15} {'B/P only':>8} {'p':>7}"
    )
    out = [title] if title else []
    out += [head, "-" * len(head)]
    for level in ("suite", "axis"):
        for row in frame[frame["level"] == level].to_dict("records"):
            name = str(row["suite"]) if level == "suite" else f"(all {row['axis']} suites)"
            ci = f"[{_signed(row['ci95_low'])}, {_signed(row['ci95_high'])}]"
            out.append(
                f"{name:<32} {row['axis']:<18} {row['pairs']:>5} {_pct(row['base_rate']):>6} "
                f"{_pct(row['perturbed_rate']):>6} {_signed(row['difference']):>6} {ci:>15} "
                f"{str(row['only_base']) + '/' + str(row['only_perturbed']):>8} "
                f"{_p(row['p_value']):>7}"
            )
        if level == "suite":
            out.append("-" * len(head))
    out.append(
        "Each perturbed episode is paired with the base-suite episode of the base task it "
        "perturbs and the same episode index (LIBERO-PRO samples its own init states: same "
        "task, not the same starting scene). diff = perturbed - base, Newcombe's paired 95% "
        "interval; B/P only: pairs only the base / only the perturbed episode solved; p: exact "
        "McNemar."
    )
    return "\n".join(out) + "\n"


def _latex(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_")):
        text = text.replace(char, repl)
    return text


def leaderboard(runs: Sequence[tuple[str, pd.DataFrame]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the LIBERO-PRO leaderboard layout for (label, episodes) of each run:
    one row per run; per base suite its original success rate (%) then each perturbation's
    rate with the paired difference to the base in parentheses; `Mean pert.` over the
    perturbed cells."""
    frames = [(label, episodes, robustness(episodes)) for label, episodes in runs]
    columns: dict[str, list[str]] = {}
    for _, _, frame in frames:
        for row in frame[frame["level"] == "suite"].to_dict("records"):
            suites = columns.setdefault(str(row["base_suite"]), [])
            if row["suite"] not in suites:
                suites.append(str(row["suite"]))
    bases = [b for b in PRO_BASES if b in columns]
    header = ["Run"]
    for base in bases:
        columns[base].sort(key=lambda s: (AXES.index(_axis(s)), s))
        short = base.removeprefix("libero_").capitalize()
        header += [f"{short} Orig"] + [f"{short} {_column(s)}" for s in columns[base]]
    header.append("Mean pert.")
    body = []
    for label, episodes, frame in frames:
        cells = [label]
        perturbed: list[float] = []
        counted = _counted(episodes)
        by_suite = {str(r["suite"]): r for r in frame.to_dict("records") if r["level"] == "suite"}
        for base in bases:
            rows = counted[counted["suite"] == base]
            cells.append(_pct(float(rows["success"].mean())) if len(rows) else "--")
            for suite in columns[base]:
                paired = by_suite.get(suite)
                mine = counted[counted["suite"] == suite]
                if paired is None or not len(mine):
                    cells.append("--")
                    continue
                rate = float(mine["success"].mean())
                perturbed.append(rate)
                cells.append(f"{_pct(rate)} ({_signed(float(paired['difference']))})")
        cells.append(_pct(sum(perturbed) / len(perturbed)) if perturbed else "--")
        body.append(cells)
    return header, body


def axis_statistics(
    runs: Sequence[tuple[str, pd.DataFrame]], level: str = "axis"
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the paired statistics of each run, per axis (``level="axis"``,
    pooled over base suites) or per perturbed suite (``level="suite"``)."""
    header = ["Run", "Suite" if level == "suite" else "Axis", "Pairs", "Base %", "Pert. %"]
    header += ["Diff", "95% CI", "McNemar p"]
    rows = []
    for label, episodes in runs:
        frame = robustness(episodes)
        for row in frame[frame["level"] == level].to_dict("records"):
            rows.append(
                [
                    label,
                    str(row["suite"] if level == "suite" else row["axis"]),
                    str(row["pairs"]),
                    _pct(row["base_rate"]),
                    _pct(row["perturbed_rate"]),
                    _signed(row["difference"]),
                    f"[{_signed(row['ci95_low'])}, {_signed(row['ci95_high'])}]",
                    _p(row["p_value"]),
                ]
            )
    return header, rows


LEADERBOARD_CAPTION = (
    "Success rate (%) per base suite (Orig) and under each LIBERO-PRO perturbation, in "
    "parentheses the paired difference to the base (points); Mean pert.: mean of the "
    "perturbed columns."
)
STATISTICS_CAPTION = (
    "Per perturbation axis, pooled over base suites: base and perturbed success on paired "
    "episodes (same base task and episode index), difference with Newcombe's paired 95% "
    "interval and the exact McNemar p-value."
)


def robustness_table(runs: Sequence[tuple[str, pd.DataFrame]], fmt: str = "markdown") -> str:
    """The LIBERO-PRO leaderboard layout (`leaderboard`) and the per-axis statistics
    (`axis_statistics`) for (label, episodes) of each run, as Markdown or LaTeX."""
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"unknown table format {fmt!r}; expected markdown or latex")
    header, body = leaderboard(runs)
    stats_header, stats = axis_statistics(runs)
    return (
        _render(header, body, LEADERBOARD_CAPTION, fmt)
        + "\n"
        + _render(stats_header, stats, STATISTICS_CAPTION, fmt)
    )


def _axis(suite: str) -> str:
    kind = classify(suite)
    assert kind is not None and kind.axis is not None
    return kind.axis


def _render(header: list[str], rows: list[list[str]], caption: str, fmt: str) -> str:
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(h.replace("|", r"\|") for h in header) + " |",
            "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
        ]
        lines += ["| " + " | ".join(c.replace("|", r"\|") for c in row) + " |" for row in rows]
        return "\n".join(lines) + f"\n\n{caption}\n"
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}",
        r"\toprule",
        " & ".join(_latex(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_latex(c) for c in row) + r" \\" for row in rows]
    lines += [
        r"\bottomrule",
        r"\end{tabular}}",
        rf"\caption{{{_latex(caption)}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"
