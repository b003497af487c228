"""`evalharness dashboard`: one self-contained HTML page from one or more run directories.

The page is static HTML with inline SVG charts drawn here in Python and a few lines of inline
JavaScript (table sorting, a "differences only" filter); it loads nothing from the network, so
it opens offline and from a copied results folder. Everything on it comes from each run's
``episodes.csv`` and ``run.json`` (plus ``train_log.csv`` and ``videos/`` when present).

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies), one per run everywhere on the page. The first run is the baseline: each other
run is compared with it on their shared episodes, and on the per-task chart every task row gets
a difference marker in the colour of the run that did better (filled when the exact McNemar
p < 0.05, hollow otherwise), plus a tint of that colour behind the row when two runs are
compared and the difference is significant, so a screenshot tells which run wins where.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from evalharness.compare import (
    ComparisonError,
    Mismatch,
    RunResult,
    compare_runs,
    flatten,
    load_runs,
    run_differences,
    scene_warnings,
    suite_order,
    task_labels,
)
from evalharness.robustness import (
    LEADERBOARD_CAPTION,
    PAIRING,
    STATISTICS_CAPTION,
    axis_statistics,
    has_robustness,
    leaderboard,
)

__all__ = ["PALETTE", "build_dashboard", "render_dashboard"]

#: Okabe-Ito colours, in the order runs get them.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow
    "#000000",
)
NEUTRAL = "#8a8a8a"
ALPHA = 0.05

# Per-task chart geometry (px).
_LABEL_W = 420
_BAR_W = 340
_DIFF_W = 300
_GAP = 44
_SUB_H = 16
_TASK_PAD = 12
_TOP = 60


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or math.isnan(x) else f"{100.0 * x:.{digits}f}%"


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# --------------------------------------------------------------------------------------------
# Per-task chart
# --------------------------------------------------------------------------------------------


def _wrap(text: str, width: int = 58, lines: int = 2) -> list[str]:
    wrapped = textwrap.wrap(text, width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1].rstrip() + "…"
    return wrapped


def _diff_range(comparisons: Iterable[pd.DataFrame | None]) -> float:
    extent = 0.0
    for comp in comparisons:
        if comp is not None and len(comp):
            extent = max(extent, float(comp["ci95_low"].abs().max()))
            extent = max(extent, float(comp["ci95_high"].abs().max()))
    return next((r for r in (0.1, 0.25, 0.5, 1.0) if extent <= r + 1e-12), 1.0)


def _task_chart(
    suite: str,
    runs: Sequence[RunResult],
    summaries: Sequence[pd.DataFrame],
    comparisons: Sequence[pd.DataFrame | None],
    labels: dict[tuple[str, int], str],
) -> str:
    """Grouped horizontal bars (one per run, Wilson whiskers) per task, and a paired
    difference panel against the baseline run."""
    task_ids = sorted(
        {
            int(t)
            for s in summaries
            for t in s.loc[(s["level"] == "task") & (s["suite"] == suite), "task_id"]
        }
    )
    has_diff = len(runs) > 1
    rows: list[tuple[str, int]] = [("task", t) for t in task_ids] + [("suite", -1)]
    sub_rows = len(runs)
    task_h = max(sub_rows * _SUB_H, 30) + _TASK_PAD
    bar_x = _LABEL_W
    diff_x = bar_x + _BAR_W + _GAP
    width = diff_x + (_DIFF_W if has_diff else 0) + 16
    height = _TOP + len(rows) * task_h + 14 + 26
    drange = _diff_range(comparisons[1:]) if has_diff else 1.0

    def bx(rate: float) -> float:
        return bar_x + rate * _BAR_W

    def dx(diff: float) -> float:
        return diff_x + _DIFF_W / 2 + diff / drange * (_DIFF_W / 2)

    out = [
        f'<svg class="chart task-chart" data-suite="{_e(suite)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="success rate per task, {_e(suite)}">'
    ]
    # Axes and grid.
    plot_bottom = _TOP + len(rows) * task_h + 14
    out.append(
        f'<text x="{bar_x}" y="14" class="axis-title">success rate (bar) and Wilson 95% '
        "interval (whisker)</text>"
    )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = bx(tick)
        out.append(
            f'<line x1="{x:.1f}" y1="{_TOP - 6}" x2="{x:.1f}" y2="{plot_bottom}" class="grid"/>'
            f'<text x="{x:.1f}" y="{_TOP - 10}" class="tick" text-anchor="middle">'
            f"{int(tick * 100)}%</text>"
        )
    if has_diff:
        if len(runs) == 2:
            left = f"◀ {_e(runs[0].label)} better"
            right, right_colour = f"{_e(runs[1].label)} better ▶", _color(1)
        else:
            left = f"◀ {_e(runs[0].label)} (baseline) better"
            right, right_colour = "run better ▶", "#333"
        out.append(
            f'<text x="{diff_x}" y="14" class="axis-title">paired difference vs '
            f"{_e(runs[0].label)} (points)</text>"
            f'<text x="{diff_x}" y="31" class="axis-title" style="fill:{_color(0)}">{left}</text>'
            f'<text x="{diff_x + _DIFF_W}" y="31" class="axis-title" style="fill:{right_colour}" '
            f'text-anchor="end">{right}</text>'
        )
        for tick in (-drange, -drange / 2, 0.0, drange / 2, drange):
            x = dx(tick)
            cls = "zero" if tick == 0 else "grid"
            out.append(
                f'<line x1="{x:.1f}" y1="{_TOP - 6}" x2="{x:.1f}" y2="{plot_bottom}" '
                f'class="{cls}"/><text x="{x:.1f}" y="{_TOP - 10}" class="tick" '
                f'text-anchor="middle">{f"{100 * tick:+.0f}" if tick else "0"}</text>'
            )

    lookups = [
        {(str(r["level"]), int(r["task_id"])): r for r in s[s["suite"] == suite].to_dict("records")}
        for s in summaries
    ]
    comp_lookups = [
        None
        if c is None
        else {
            (str(r["level"]), int(r["task_id"])): r
            for r in c[c["suite"] == suite].to_dict("records")
        }
        for c in comparisons
    ]
    for k, (level, task_id) in enumerate(rows):
        y0 = _TOP + k * task_h + (14 if level == "suite" else 0)
        if level == "suite":
            out.append(
                f'<line x1="4" y1="{y0 - 8}" x2="{width - 4}" y2="{y0 - 8}" class="separator"/>'
            )
            label_lines = ["All tasks of the suite (pooled)"]
            full = f"{suite}: all tasks"
            attrs = f'class="task-row suite-row" data-suite="{_e(suite)}" data-level="suite"'
        else:
            full = labels.get((suite, task_id), f"task {task_id}")
            label_lines = _wrap(f"{task_id}. {full}")
            attrs = (
                f'class="task-row" data-suite="{_e(suite)}" data-task="{task_id}" data-level="task"'
            )
        out.append(f"<g {attrs}><title>{_e(full)}</title>")
        # A significant two-run difference tints the row in the winner's colour.
        if len(runs) == 2 and comp_lookups[1] is not None:
            crow = comp_lookups[1].get((level, task_id))
            if crow is not None and crow["p_value"] < ALPHA and crow["difference"] != 0:
                winner = 1 if crow["difference"] > 0 else 0
                out.append(
                    f'<rect class="win-tint" data-winner="{_e(runs[winner].label)}" x="2" '
                    f'y="{y0 - 4}" width="{width - 4}" height="{task_h - _TASK_PAD + 8}" '
                    f'fill="{_color(winner)}" fill-opacity="0.10"/>'
                )
        block_h = sub_rows * _SUB_H
        text_y = y0 + block_h / 2 - (len(label_lines) - 1) * 7 + 4
        weight = ' font-weight="bold"' if level == "suite" else ""
        for j, line in enumerate(label_lines):
            out.append(
                f'<text x="{_LABEL_W - 10}" y="{text_y + j * 14:.1f}" class="task-label" '
                f'text-anchor="end"{weight}>{_e(line)}</text>'
            )
        for i, run in enumerate(runs):
            yr = y0 + i * _SUB_H
            row = lookups[i].get((level, task_id))
            if row is None:
                out.append(
                    f'<text x="{bar_x + 4}" y="{yr + 12}" class="tick">{_e(run.label)}: '
                    "not evaluated</text>"
                )
                continue
            rate, lo, hi = (
                float(row["success_rate"]),
                float(row["ci95_low"]),
                float(row["ci95_high"]),
            )
            tip = (
                f"{run.label}: {_pct(rate)} ({int(row['successes'])}/{int(row['episodes'])}), "
                f"95% CI [{_pct(lo)}, {_pct(hi)}]"
            )
            cy = yr + _SUB_H / 2
            out.append(
                f'<rect class="bar" data-run="{_e(run.label)}" data-rate="{rate:.6f}" '
                f'x="{bar_x}" y="{yr + 2}" width="{rate * _BAR_W:.2f}" height="{_SUB_H - 4}" '
                f'fill="{_color(i)}"><title>{_e(tip)}</title></rect>'
                f'<line class="whisker" data-run="{_e(run.label)}" x1="{bx(lo):.2f}" '
                f'y1="{cy}" x2="{bx(hi):.2f}" y2="{cy}"/>'
                f'<line class="whisker-cap" x1="{bx(lo):.2f}" y1="{cy - 4}" x2="{bx(lo):.2f}" '
                f'y2="{cy + 4}"/><line class="whisker-cap" x1="{bx(hi):.2f}" y1="{cy - 4}" '
                f'x2="{bx(hi):.2f}" y2="{cy + 4}"/>'
            )
            if i == 0 or not has_diff:
                continue
            comp = comp_lookups[i]
            crow = comp.get((level, task_id)) if comp is not None else None
            if crow is None:
                continue
            diff = float(crow["difference"])
            significant = crow["p_value"] < ALPHA
            colour = NEUTRAL if diff == 0 else _color(i if diff > 0 else 0)
            fill = colour if significant else "#ffffff"
            dtip = (
                f"{run.label} − {runs[0].label}: {100 * diff:+.1f} points "
                f"[{100 * crow['ci95_low']:+.1f}, {100 * crow['ci95_high']:+.1f}], "
                f"McNemar p = {crow['p_value']:.3g}, n = {int(crow['shared'])} shared episodes"
            )
            out.append(
                f'<g class="diff" data-run="{_e(run.label)}" data-difference="{diff:.6f}" '
                f'data-significant="{str(bool(significant)).lower()}"><title>{_e(dtip)}</title>'
                f'<line class="diff-ci" x1="{dx(crow["ci95_low"]):.2f}" y1="{cy}" '
                f'x2="{dx(crow["ci95_high"]):.2f}" y2="{cy}" stroke="{colour}"/>'
                f'<circle cx="{dx(diff):.2f}" cy="{cy}" r="5.5" fill="{fill}" '
                f'stroke="{colour}" stroke-width="2.5"/></g>'
            )
        out.append("</g>")
    # Legend.
    ly = height - 10
    x = 8
    for i, run in enumerate(runs):
        out.append(
            f'<rect x="{x}" y="{ly - 10}" width="12" height="12" fill="{_color(i)}"/>'
            f'<text x="{x + 16}" y="{ly}" class="legend">{_e(run.label)}</text>'
        )
        x += 28 + 7 * len(run.label)
    if has_diff:
        out.append(
            f'<text x="{x + 10}" y="{ly}" class="legend">difference marker: filled = significant '
            f"(exact McNemar p &lt; {ALPHA}), hollow = not; colour = the better run</text>"
        )
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Episode lengths and loss curves
# --------------------------------------------------------------------------------------------


def _length_chart(suite: str, runs: Sequence[RunResult]) -> str:
    """Strip plot of episode lengths (steps), one row per run and outcome, with medians."""
    groups: list[tuple[int, bool, list[int]]] = []
    for i, run in enumerate(runs):
        df = run.episodes[run.episodes["suite"] == suite]
        for outcome in (True, False):
            steps = [int(s) for s in df.loc[df["success"] == outcome, "steps"]]
            groups.append((i, outcome, steps))
    max_steps = max((max(g[2]) for g in groups if g[2]), default=1)
    left, plot_w, row_h = 240, 560, 26
    width, height = left + plot_w + 120, 40 + len(groups) * row_h + 20

    def sx(v: float) -> float:
        return left + v / max_steps * plot_w

    out = [
        f'<svg class="chart length-chart" data-suite="{_e(suite)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="episode lengths, {_e(suite)}">'
        f'<text x="{left}" y="14" class="axis-title">episode length (steps), by outcome; '
        "bar = median</text>"
    ]
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = sx(frac * max_steps)
        out.append(
            f'<line x1="{x:.1f}" y1="30" x2="{x:.1f}" y2="{height - 16}" class="grid"/>'
            f'<text x="{x:.1f}" y="28" class="tick" text-anchor="middle">'
            f"{round(frac * max_steps)}</text>"
        )
    for k, (i, outcome, steps) in enumerate(groups):
        y = 40 + k * row_h + row_h / 2
        colour = _color(i)
        name = "success" if outcome else "failure"
        out.append(
            f'<g class="length-row" data-run="{_e(runs[i].label)}" data-outcome="{name}">'
            f'<text x="{left - 10}" y="{y + 4}" class="task-label" text-anchor="end">'
            f"{_e(runs[i].label)} · {name}</text>"
        )
        for j, s in enumerate(steps):
            # Deterministic jitter so the page is byte-identical across regenerations.
            jitter = ((j * 7919) % 13 - 6) * 1.2
            if outcome:
                out.append(
                    f'<circle cx="{sx(s):.1f}" cy="{y + jitter:.1f}" r="3" fill="{colour}" '
                    'fill-opacity="0.55"/>'
                )
            else:
                out.append(
                    f'<circle cx="{sx(s):.1f}" cy="{y + jitter:.1f}" r="3" fill="none" '
                    f'stroke="{colour}" stroke-opacity="0.6"/>'
                )
        if steps:
            med = float(pd.Series(steps).median())
            out.append(
                f'<line x1="{sx(med):.1f}" y1="{y - 10}" x2="{sx(med):.1f}" y2="{y + 10}" '
                f'stroke="#222" stroke-width="2.5"><title>median {med:g}</title></line>'
            )
        label = f"n={len(steps)}" + (f", median {med:g}" if steps else "")
        out.append(f'<text x="{left + plot_w + 8}" y="{y + 4}" class="tick">{label}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _loss_chart(runs: Sequence[RunResult]) -> str:
    """Finetune loss against step, one line per run that has a train log."""
    logs = [(i, r.train_log) for i, r in enumerate(runs) if r.train_log is not None]
    logs = [(i, log) for i, log in logs if len(log)]
    steps = [float(v) for _, log in logs for v in log["step"]]
    losses = [float(v) for _, log in logs for v in log["loss"] if math.isfinite(float(v))]
    if not steps or not losses:
        return ""
    lo_s, hi_s = min(steps), max(steps)
    lo_l, hi_l = min(losses), max(losses)
    use_log = lo_l > 0 and hi_l / lo_l > 20
    left, plot_w, plot_h, top = 70, 640, 260, 30
    width, height = left + plot_w + 30, top + plot_h + 60

    def tx(v: float) -> float:
        return left + (v - lo_s) / ((hi_s - lo_s) or 1.0) * plot_w

    def ty(v: float) -> float:
        if use_log:
            a, b, c = math.log10(lo_l), math.log10(hi_l), math.log10(max(v, 1e-300))
        else:
            a, b, c = lo_l, hi_l, v
        return top + plot_h - (c - a) / ((b - a) or 1.0) * plot_h

    out = [
        f'<svg class="chart loss-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="finetune loss">'
        f'<text x="{left}" y="16" class="axis-title">finetune loss'
        f"{' (log scale)' if use_log else ''} against step</text>"
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>'
    ]
    for frac in (0.0, 0.5, 1.0):
        v = lo_l * (hi_l / lo_l) ** frac if use_log else lo_l + frac * (hi_l - lo_l)
        s = lo_s + frac * (hi_s - lo_s)
        out.append(
            f'<text x="{left - 6}" y="{ty(v) + 4:.1f}" class="tick" text-anchor="end">'
            f"{v:.3g}</text>"
            f'<text x="{tx(s):.1f}" y="{top + plot_h + 16}" class="tick" '
            f'text-anchor="middle">{s:.0f}</text>'
        )
    for i, log in logs:
        points = " ".join(
            f"{tx(float(s)):.1f},{ty(float(v)):.1f}"
            for s, v in zip(log["step"], log["loss"], strict=True)
            if math.isfinite(float(v))
        )
        out.append(
            f'<polyline class="loss-line" data-run="{_e(runs[i].label)}" points="{points}" '
            f'fill="none" stroke="{_color(i)}" stroke-width="2"/>'
        )
    x = left
    for i, _ in logs:
        out.append(
            f'<rect x="{x}" y="{height - 22}" width="12" height="12" fill="{_color(i)}"/>'
            f'<text x="{x + 16}" y="{height - 12}" class="legend">{_e(runs[i].label)}</text>'
        )
        x += 28 + 7 * len(runs[i].label)
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _swatch(i: int) -> str:
    return f'<span class="swatch" style="background:{_color(i)}"></span>'


def _summary_table(runs: Sequence[RunResult], summaries: Sequence[pd.DataFrame]) -> str:
    suites = suite_order({s for r in runs for s in r.suites})
    head = "".join(f"<th>{_swatch(i)}{_e(r.label)}</th>" for i, r in enumerate(runs))
    body = []
    for suite in suites:
        cells = []
        rates = []
        for summary in summaries:
            row = summary[(summary["level"] == "suite") & (summary["suite"] == suite)]
            rates.append(float(row["success_rate"].iloc[0]) if len(row) else math.nan)
        best = max((r for r in rates if not math.isnan(r)), default=math.nan)
        for summary, rate in zip(summaries, rates, strict=True):
            row = summary[(summary["level"] == "suite") & (summary["suite"] == suite)]
            if not len(row):
                cells.append("<td>–</td>")
                continue
            r = row.iloc[0]
            cls = ' class="best"' if len(runs) > 1 and rate == best else ""
            cells.append(
                f"<td{cls}><b>{_pct(rate)}</b> <span class='ci'>[{_pct(r['ci95_low'])}, "
                f"{_pct(r['ci95_high'])}]</span> <span class='n'>{int(r['successes'])}/"
                f"{int(r['episodes'])} episodes</span></td>"
            )
        body.append(f"<tr><th>{_e(suite)}</th>{''.join(cells)}</tr>")
    return (
        '<table class="summary"><thead><tr><th>suite</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        '<p class="note">rate [Wilson 95% interval], successes/episodes; bold cell: best rate.</p>'
    )


def _paired_section(
    runs: Sequence[RunResult], comparisons: Sequence[pd.DataFrame | None], errors: dict[int, str]
) -> str:
    parts = []
    for i in range(1, len(runs)):
        a, b = runs[0], runs[i]
        title = (
            f"<h3>{_swatch(i)}{_e(b.label)} vs {_swatch(0)}{_e(a.label)} (difference = B − A)</h3>"
        )
        comp = comparisons[i]
        if comp is None:
            parts.append(title + f'<p class="warn">{_e(errors.get(i, "no shared episodes"))}</p>')
            continue
        body = []
        for row in comp.to_dict("records"):
            diff, p = float(row["difference"]), float(row["p_value"])
            if diff == 0:
                verdict = "no difference"
                colour = NEUTRAL
            else:
                winner = i if diff > 0 else 0
                colour = _color(winner)
                verdict = f"{runs[winner].label} better" + ("" if p < ALPHA else " (n.s.)")
            task = "all" if row["level"] == "suite" else str(row["task_id"])
            text = row["instruction"] if row["level"] == "task" else "(all tasks, pooled)"
            cls = "suite-row" if row["level"] == "suite" else ""
            body.append(
                f'<tr class="{cls}"><td>{_e(row["suite"])}</td><td>{task}</td>'
                f"<td>{_e(text)}</td><td>{int(row['shared'])}</td>"
                f"<td>{_pct(row['rate_a'])}</td><td>{_pct(row['rate_b'])}</td>"
                f"<td>{int(row['only_a'])} / {int(row['only_b'])}</td>"
                f"<td><b>{100 * diff:+.1f}</b></td>"
                f"<td>[{100 * row['ci95_low']:+.1f}, {100 * row['ci95_high']:+.1f}]</td>"
                f"<td>{p:.3g}</td>"
                f'<td><span class="verdict" style="border-color:{colour};color:{colour}">'
                f"{_e(verdict)}</span></td></tr>"
            )
        lone_a, lone_b = int(comp["unpaired_a"].sum()), int(comp["unpaired_b"].sum())
        note = (
            f"<p class='note'>{lone_a} episodes of {_e(a.label)} and {lone_b} of {_e(b.label)} "
            "have no partner in the other run and are left out.</p>"
            if lone_a or lone_b
            else ""
        )
        parts.append(
            title + '<table class="paired sortable"><thead><tr><th>suite</th><th>task</th>'
            "<th>instruction</th><th>shared episodes</th>"
            f"<th>{_e(a.label)}</th><th>{_e(b.label)}</th><th>only A / only B solved</th>"
            "<th>B − A (points)</th><th>95% CI</th><th>McNemar p</th><th>verdict</th></tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table>{note}"
        )
    return "".join(parts)


def _value_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _config_table(runs: Sequence[RunResult], mismatches: Sequence[Mismatch]) -> str:
    flats = [flatten(r.meta) for r in runs]
    keys: dict[str, None] = {}
    for flat in flats:
        keys.update(dict.fromkeys(flat))
    differing = {m.key: m for m in mismatches}
    head = "".join(f"<th>{_swatch(i)}{_e(r.label)}</th>" for i, r in enumerate(runs))
    rows = []
    for key in keys:
        values = [_value_text(flat.get(key, "(absent)")) for flat in flats]
        m = differing.get(key)
        cls = "critical" if m is not None and m.critical else "diff" if m is not None else "same"
        flag = (
            '<span class="mismatch-flag">⚠ not comparable</span>'
            if m is not None and m.critical
            else ""
        )
        cells = "".join(f"<td>{_e(v)}</td>" for v in values)
        rows.append(f'<tr class="{cls}" data-key="{_e(key)}"><th>{_e(key)}{flag}</th>{cells}</tr>')
    return (
        '<label class="note"><input type="checkbox" id="only-diff"> show only entries that '
        "differ</label>"
        f'<table class="config"><thead><tr><th>run.json</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Yellow: differs between runs. Red: differs in the suite, protocol or '
        "simulator versions, so the success rates are not comparable.</p>"
    )


def _episode_table(runs: Sequence[RunResult], out_dir: Path) -> str:
    rows = []
    for i, run in enumerate(runs):
        df = run.episodes.sort_values(["suite", "task_id", "episode_index"], kind="mergesort")
        for r in df.to_dict("records"):
            video = run.videos.get((str(r["suite"]), int(r["task_id"]), int(r["episode_index"])))
            link = ""
            if video is not None:
                try:
                    href = Path(os.path.relpath(video.resolve(), out_dir.resolve())).as_posix()
                except ValueError:  # another drive on Windows
                    href = video.resolve().as_uri()
                link = f'<a href="{_e(href)}">video</a>'
            ok = bool(r["success"])
            wall = "" if pd.isna(r["wall_seconds"]) else f"{r['wall_seconds']:.1f}"
            rows.append(
                f"<tr><td data-sort='{i}'>{_swatch(i)}{_e(run.label)}</td>"
                f"<td>{_e(r['suite'])}</td><td>{int(r['task_id'])}</td>"
                f"<td>{_e(r['instruction'] or r['task_name'])}</td>"
                f"<td>{int(r['episode_index'])}</td><td>{int(r['init_state_index'])}</td>"
                f"<td>{int(r['seed'])}</td>"
                f"<td class='{'ok' if ok else 'fail'}'>{'✔ success' if ok else '✘ failure'}</td>"
                f"<td>{int(r['steps'])}</td><td>{_e(r['failure_reason'])}</td>"
                f"<td>{wall}</td>"
                f"<td>{link}</td></tr>"
            )
    return (
        '<table class="episodes sortable"><thead><tr><th>run</th><th>suite</th><th>task</th>'
        "<th>instruction</th><th>episode</th><th>init state</th><th>seed</th><th>outcome</th>"
        "<th>steps</th><th>failure reason</th><th>wall s</th><th>video</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Click a column header to sort. Video links are relative to this '
        "page; keep it next to the run directories when copying.</p>"
    )


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;
 max-width:1400px}
h1{margin:0 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.note{color:#555;font-size:13px}.warn{color:#a00}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:-1px;
 border-radius:2px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
thead th{background:#f4f4f4;position:sticky;top:0}
table.sortable thead th{cursor:pointer}
td.best{background:#eef6ee}.ci,.n{color:#555;font-size:12px}
tr.suite-row td{font-weight:bold;background:#fafafa}
tr.diff th,tr.diff td{background:#fff6d5}
tr.critical th,tr.critical td{background:#fde2e2;color:#a00000}
.mismatch-flag{color:#c00000;font-weight:bold;margin-left:8px}
#mismatch-banner{border:2px solid #c00000;background:#fde2e2;color:#a00000;padding:10px 14px;
 border-radius:6px;margin:14px 0}
#mismatch-banner ul{margin:6px 0 0 18px;padding:0}
.ok{color:#00704a;white-space:nowrap}.fail{color:#a33;white-space:nowrap}
.verdict{border:1.5px solid;border-radius:10px;padding:0 7px;font-weight:600;white-space:nowrap}
svg.chart{display:block;margin:10px 0;font-size:12px}
svg .grid{stroke:#e6e6e6}svg .zero{stroke:#444;stroke-width:1.2}
svg .separator{stroke:#bbb;stroke-dasharray:4 3}
svg .whisker,svg .whisker-cap{stroke:#222;stroke-width:1.4}
svg .diff-ci{stroke-width:2.5}
svg .tick{fill:#666;font-size:11px}svg .axis-title{fill:#333;font-size:12px;font-weight:600}
svg .legend{fill:#333;font-size:12px}
svg .task-label{fill:#222;font-size:12px}svg .frame{fill:none;stroke:#ccc}
.runs td,.runs th{font-size:13px}
nav a{margin-right:14px}
"""

_JS = """
(function(){
  function key(td){var v=td.getAttribute('data-sort');if(v===null){v=td.textContent.trim();}
    var n=parseFloat(v.replace(/[%+]/g,''));return isNaN(n)?v.toLowerCase():n;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('thead th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        var asc=th.getAttribute('data-asc')!=='1';th.setAttribute('data-asc',asc?'1':'0');
        rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
          if(typeof x!==typeof y){x=String(x);y=String(y);}
          return (x<y?-1:x>y?1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  var box=document.getElementById('only-diff');
  if(box){box.addEventListener('change',function(){
    document.querySelectorAll('table.config tbody tr.same').forEach(function(tr){
      tr.style.display=box.checked?'none':'';});});}
})();
"""


def _section(meta: dict[str, Any], key: str) -> dict[str, Any]:
    value = meta.get(key)
    return value if isinstance(value, dict) else {}


def _html_table(css_class: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _robustness_section(runs: Sequence[RunResult]) -> str:
    """The LIBERO-PRO layout (one row per run), then the paired statistics per axis and per
    perturbed suite, and what a pair shares on each axis."""
    held = [(r.label, r.episodes) for r in runs if has_robustness(r.episodes)]
    header, rows = leaderboard(held)
    axis_header, axis_rows = axis_statistics(held)
    suite_header, suite_rows = axis_statistics(held, level="suite")
    axes = sorted({row[1] for row in axis_rows})
    pairing = "".join(f"<li><b>{_e(a)}</b>: {_e(PAIRING.get(a, ''))}</li>" for a in axes)
    return (
        f"{_html_table('robustness leaderboard', header, rows)}"
        f'<p class="note">{_e(LEADERBOARD_CAPTION)}</p>'
        f"{_html_table('robustness axes', axis_header, axis_rows)}"
        f'<p class="note">{_e(STATISTICS_CAPTION)}</p>'
        f"{_html_table('robustness suites', suite_header, suite_rows)}"
        f'<p class="note">What a perturbed episode shares with its base partner:</p>'
        f'<ul class="note">{pairing}</ul>'
    )


def _runs_table(runs: Sequence[RunResult]) -> str:
    rows = []
    for i, run in enumerate(runs):
        meta = run.meta
        protocol, versions, config = (_section(meta, k) for k in ("protocol", "versions", "config"))
        rows.append(
            f"<tr><td>{_swatch(i)}<b>{_e(run.label)}</b>{' (baseline)' if i == 0 and len(runs) > 1 else ''}</td>"
            f"<td>{_e(meta.get('policy', ''))}</td><td>{_e(config.get('checkpoint', '') or '')}</td>"
            f"<td>{_e(', '.join(run.suites))}</td><td>{_e(protocol.get('name', ''))}</td>"
            f"<td>{_e(versions.get('mujoco', ''))}</td><td>{len(run.episodes)}</td>"
            f"<td>{_e(meta.get('status', ''))}</td><td>{_e(run.path)}</td></tr>"
        )
    return (
        '<table class="runs"><thead><tr><th>run</th><th>policy</th><th>checkpoint</th>'
        "<th>suite</th><th>protocol</th><th>MuJoCo</th><th>episodes</th><th>status</th>"
        f"<th>directory</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_dashboard(runs: Sequence[RunResult], out_dir: str | os.PathLike[str] = ".") -> str:
    """The dashboard page for ``runs`` (the first is the baseline) as one HTML string.

    ``out_dir`` is where the page will be saved; video links are made relative to it.
    """
    if not runs:
        raise ComparisonError("the dashboard needs at least one run directory")
    summaries = [r.summary() for r in runs]
    labels = task_labels(runs)
    comparisons: list[pd.DataFrame | None] = [None]
    errors: dict[int, str] = {}
    for i in range(1, len(runs)):
        try:
            comparisons.append(compare_runs(runs[0], runs[i]))
        except ComparisonError as exc:
            comparisons.append(None)
            errors[i] = str(exc)
    mismatches = run_differences(runs)
    critical = [m for m in mismatches if m.critical]
    run_labels = [r.label for r in runs]
    suites = suite_order({s for r in runs for s in r.suites})

    banner = ""
    scenes = scene_warnings(runs)
    if critical or scenes:
        items = "".join(f"<li>{_e(m.describe(run_labels))}</li>" for m in critical)
        items += "".join(f'<li class="scene-mismatch">{_e(w)}</li>' for w in scenes)
        banner = (
            '<div id="mismatch-banner" class="mismatch-flag" role="alert"><b>⚠ These runs are '
            "not directly comparable</b>: they differ in the suite, the protocol or the "
            f"simulator versions, or their paired episodes saw different scenes.<ul>{items}</ul>"
            "</div>"
        )
    charts = "".join(
        f"<h3>{_e(s)}</h3>{_task_chart(s, runs, summaries, comparisons, labels)}" for s in suites
    )
    lengths = "".join(f"<h3>{_e(s)}</h3>{_length_chart(s, runs)}" for s in suites)
    loss = _loss_chart(runs) or (
        '<p class="note">No run has a finetune log (train_log.csv in the run directory, or '
        "run.json's finetune.train_log).</p>"
    )
    paired = (
        _paired_section(runs, comparisons, errors)
        if len(runs) > 1
        else '<p class="note">Give two or more run directories to compare them.</p>'
    )
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = "evalharness: " + " vs ".join(run_labels)
    sections = [
        ("summary", "Suite summary", _summary_table(runs, summaries)),
        ("tasks", "Success rate per task", charts),
        ("paired", "Paired comparison", paired),
    ]
    if any(has_robustness(r.episodes) for r in runs):
        sections.append(("robustness", "Robustness (LIBERO-PRO)", _robustness_section(runs)))
    sections += [
        ("lengths", "Episode lengths", lengths),
        ("finetune", "Finetune loss", loss),
        ("config", "Protocol, versions and config", _config_table(runs, mismatches)),
        ("episodes", "Episodes", _episode_table(runs, Path(out_dir))),
    ]
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_e(name)}</h2>{content}</section>'
        for sid, name, content in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="note">Generated {generated} from episodes.csv and run.json of each run. '
        "Rates with Wilson 95% intervals; paired differences with Newcombe's 95% interval "
        "and the exact McNemar test.</p>"
        f"{_runs_table(runs)}{banner}<nav>{nav}</nav>{body}"
        f"<script>{_JS}</script></body></html>\n"
    )


def build_dashboard(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
) -> Path:
    """Read ``run_dirs`` and write the dashboard to ``out``; returns the path written."""
    from evalharness.results import atomic_write_text

    out_path = Path(out)
    runs = load_runs(run_dirs, labels)
    atomic_write_text(out_path, render_dashboard(runs, out_path.parent))
    return out_path
