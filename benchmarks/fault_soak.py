"""Fault soak: a run whose env workers are SIGKILLed from outside every ~N episodes must end
with every episode recorded and outcomes identical to an undisturbed run of the same seed.

    python benchmarks/fault_soak.py                      # 200 episodes: 4 tasks x 50, no-op policy
    python benchmarks/fault_soak.py --tasks 0 --episodes-per-task 8 --max-steps 5 --kill-every 3

It runs `evalharness run` twice (the reference, then the disturbed run), each in its own
process. While the disturbed run goes, this script watches its `episodes.csv` and, each time
about `--kill-every` more rows have landed (jittered +-30 %), SIGKILLs one of its env worker
processes picked at random. Episodes in flight on a killed worker are rescheduled on a fresh
worker (and recorded as `worker_died` only if that one dies too). It prints rows, kills,
worker_died rows, whether outcomes match (all columns but wall_seconds) and the wall times,
and exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from evalharness.policies.registry import NO_OP_POLICY
from evalharness.results import TIMING_COLUMNS, read_episodes
from evalharness.run_dir import EPISODES_CSV, RUN_JSON

#: The checkout this script belongs to: default output goes under its `results/`, whatever the
#: working directory.
REPO = Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _env_workers(pid: int) -> list[int]:
    """The run's spawned env workers (not multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(child)
    return workers


def _rows(csv: Path) -> int:
    try:
        return max(csv.read_bytes().count(b"\n") - 1, 0)
    except FileNotFoundError:
        return 0


def _command(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "evalharness.cli", "run", "--suite", args.suite,
        "--policy", args.policy, "--tasks", args.tasks,
        "--episodes-per-task", str(args.episodes_per_task), "--max-steps", str(args.max_steps),
        "--camera-size", str(args.camera_size), "--num-envs", str(args.num_envs),
        "--seed", str(args.seed), "--no-progress", "--out", str(out),
    ]  # fmt: skip


def run(
    args: argparse.Namespace, out: Path, kill_every: int | None, rng: random.Random
) -> tuple[float, list[tuple[int, int]], int]:
    """One run; returns (wall seconds, [(rows when killed, pid)], exit code)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        _command(args, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    kills: list[tuple[int, int]] = []
    next_kill = None if kill_every is None else _jitter(kill_every, rng)
    while proc.poll() is None:
        time.sleep(0.2)
        if next_kill is None:
            continue
        rows = _rows(out / EPISODES_CSV)
        if rows >= next_kill:
            workers = _env_workers(proc.pid)
            if workers:
                victim = rng.choice(workers)
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append((rows, victim))
                    print(f"  killed env worker {victim} after {rows} rows", flush=True)
                except ProcessLookupError:
                    pass
                next_kill = rows + _jitter(kill_every, rng)
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        print(stderr, file=sys.stderr)
    return time.monotonic() - started, kills, proc.returncode


def _jitter(every: int, rng: random.Random) -> int:
    return max(1, round(every * rng.uniform(0.7, 1.3)))


def _outcomes(run_dir: Path) -> pd.DataFrame:
    df = read_episodes(run_dir / EPISODES_CSV).drop(columns=list(TIMING_COLUMNS))
    return df.sort_values(["task_id", "episode_index"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--policy", default=NO_OP_POLICY)
    parser.add_argument("--tasks", default="0-3")
    parser.add_argument("--episodes-per-task", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--camera-size", type=int, default=64)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kill-every", type=int, default=30, help="episodes between kills")
    parser.add_argument("--rng", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--out", default=str(REPO / "results" / "fault_soak"))
    parser.add_argument(
        "--concurrent", action="store_true", help="run the reference alongside, not before"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        parser.error(f"{root} is not empty; pass another --out")
    rng = random.Random(args.rng)

    if args.concurrent:
        # Both at once (a loaded machine, little time): wall times are then not comparable.
        print("reference and disturbed runs, concurrently ...", flush=True)
        results: dict[str, tuple[float, list[tuple[int, int]], int]] = {}
        thread = threading.Thread(
            target=lambda: results.__setitem__("ref", run(args, root / "reference", None, rng))
        )
        thread.start()
        dis_s, kills, dis_rc = run(args, root / "disturbed", args.kill_every, rng)
        thread.join()
        ref_s, _, ref_rc = results["ref"]
    else:
        print("reference run (undisturbed) ...", flush=True)
        ref_s, _, ref_rc = run(args, root / "reference", None, rng)
        print(
            f"disturbed run (a worker SIGKILLed every ~{args.kill_every} episodes) ...", flush=True
        )
        dis_s, kills, dis_rc = run(args, root / "disturbed", args.kill_every, rng)
    if ref_rc or dis_rc:
        print(f"FAILED: exit codes reference {ref_rc}, disturbed {dis_rc}")
        return 1

    ref, dis = _outcomes(root / "reference"), _outcomes(root / "disturbed")
    info = json.loads((root / "disturbed" / RUN_JSON).read_text())
    rescheduled = sum(1 for i in info["incidents"] if i["action"].startswith("rescheduled"))
    died = int((dis["failure_reason"] == "worker_died").sum())
    identical = ref.equals(dis)
    print(f"episodes expected      {info['episodes_total']}")
    print(f"rows reference         {len(ref)}")
    print(f"rows disturbed         {len(dis)}")
    print(f"worker kills           {len(kills)} (after rows {[r for r, _ in kills]})")
    print(f"episodes rescheduled   {rescheduled}")
    print(f"worker_died rows       {died}")
    print(f"outcomes identical     {identical}")
    print(f"wall time reference    {ref_s:.1f} s")
    print(f"wall time disturbed    {dis_s:.1f} s")
    if not identical:
        merged = ref.merge(dis, on=["task_id", "episode_index"], suffixes=("_ref", "_dis"))
        diff = merged[
            (merged["success_ref"] != merged["success_dis"])
            | (merged["steps_ref"] != merged["steps_dis"])
            | (merged["failure_reason_ref"] != merged["failure_reason_dis"])
        ]
        print(diff.to_string())
    ok = identical and len(dis) == info["episodes_total"] and len(kills) > 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
