"""`evalharness` command line: run, suites, protocols, summarize, dashboard, compare.

Exit status: 0 done; 2 an error the user can fix (an `EvalharnessError`, printed as one
`error: ...` line); 1 a bug (any other exception, printed with its traceback); 128 + signal
when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from evalharness.errors import EvalharnessError, UsageError

if TYPE_CHECKING:
    from evalharness.finetune import FinetuneConfig

DEFAULT_OUT = "results"


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="evaluate a policy on a LIBERO suite",
        description=(
            "Roll a policy out on a LIBERO suite with batched worker envs and write "
            "episodes.csv, summary.csv and run.json. Every protocol field can be overridden; "
            "the resolved values are recorded."
        ),
        epilog=(
            "example: evalharness run --suite libero_spatial --policy NAME[:CHECKPOINT] --tasks "
            "0,1 --episodes-per-task 2  (`evalharness policies` lists the names and options)"
        ),
    )
    p.add_argument(
        "--suite",
        required=True,
        help="libero_spatial, libero_object, libero_goal, libero_10 or libero_90",
    )
    p.add_argument(
        "--policy",
        required=True,
        help="NAME[:PATH][?key=value&...]; `evalharness policies` lists names and options",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy option (same as ?key=value on --policy, which it overrides); repeatable",
    )
    p.add_argument(
        "--protocol",
        default="openvla",
        help="preset: openvla (default), openpi, libero, lerobot (`evalharness protocols`)",
    )
    p.add_argument("--tasks", default=None, help="task ids, e.g. 0,3,5-7 (default: all)")
    p.add_argument(
        "--episodes-per-task", type=int, default=None, help="override the protocol's count"
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="step limit for every suite (wait steps not counted)",
    )
    p.add_argument(
        "--num-steps-wait", type=int, default=None, help="no-op warm-up steps after reset"
    )
    p.add_argument(
        "--wait-action",
        default=None,
        help="7 comma-separated numbers for the warm-up action, e.g. 0,0,0,0,0,0,-1",
    )
    p.add_argument("--camera-size", type=int, default=None, help="render size in pixels (square)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="base seed of the policy's sampling (and of the env seeds, unless the protocol "
        "has its own env seed)",
    )
    p.add_argument(
        "--seeding",
        choices=("task_stream", "per_episode"),
        default=None,
        help="how scenes are seeded: task_stream (one RNG stream per task, episodes in order: "
        "openvla, openpi) or per_episode (episode i's reset seeded env-seed + i: lerobot, libero)",
    )
    p.add_argument(
        "--env-seed",
        type=int,
        default=None,
        help="the scenes' seed: the task stream's, or the base of the per-episode seeds",
    )
    p.add_argument(
        "--num-envs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: number of cores), each hosting --envs-per-worker "
        "envs: a run has NUM_ENVS x that many envs (--executor ray: Ray actors)",
    )
    p.add_argument(
        "--envs-per-worker",
        type=int,
        default=None,
        metavar="N",
        help="envs each local worker process hosts, stepping one while another waits for "
        "actions (default: 2 when pipelining, one per group; else 1)",
    )
    p.add_argument("--exec-horizon", type=int, default=None, help="actions executed per chunk")
    p.add_argument(
        "--temporal-ensemble",
        type=float,
        default=None,
        metavar="EXP_WEIGHT",
        help="ensemble overlapping chunks (ACT/Octo) with this exponential weight",
    )
    p.add_argument(
        "--out", default=None, help=f"result directory (default: {DEFAULT_OUT}/<suite>-<policy>)"
    )
    p.add_argument(
        "--video",
        type=int,
        default=0,
        metavar="N",
        help="save mp4s of the first N episodes per task",
    )
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in --out")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (terminal) or lines (logs)"
    )
    p.add_argument(
        "--progress-every",
        type=int,
        default=10,
        metavar="N",
        help="without a terminal, a progress line every N episodes or 60 s (default: %(default)s)",
    )
    p.add_argument(
        "--episode-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="env wall-clock limit per episode, recorded as episode_timeout when exceeded "
        "(default: 120 + 2 per step)",
    )
    p.add_argument(
        "--pipeline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="split the envs into two groups, one stepping while the other's actions are "
        "computed (default: on for remote policies, which alone support it; outcomes equal "
        "lockstep's)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local worker processes (default) or Ray actors, --num-envs of them",
    )
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: start Ray locally)"
    )
    p.add_argument(
        "--ray-envs-per-worker", type=int, default=1, help="envs per Ray actor (one policy each)"
    )
    _add_tracking_arguments(p)
    p.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs each Ray actor reserves, e.g. 0.25 packs four on a GPU (default 0)",
    )


def _add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wandb",
        default=None,
        metavar="PROJECT",
        help="log to this Weights & Biases project (extra [wandb]; WANDB_MODE=offline works)",
    )
    p.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="write TensorBoard event files under DIR/<run name> (extra [tensorboard])",
    )


def _wait_action(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--wait-action {text!r} must be 7 comma-separated numbers") from None
    if len(values) != 7:
        raise UsageError(f"--wait-action needs 7 numbers, got {len(values)}: {text!r}")
    return values


def _default_out(suite: str, policy: str) -> Path:
    from evalharness.api import default_run_dir

    return default_run_dir(suite, policy)


def cmd_run(args: argparse.Namespace) -> int:
    from evalharness.api import evaluate, parse_option_items

    evaluate(
        args.policy,
        args.suite,
        tasks=args.tasks,
        episodes_per_task=args.episodes_per_task,
        protocol=args.protocol,
        out=args.out or _default_out(args.suite, args.policy),
        options=parse_option_items(args.option),
        num_envs=args.num_envs,
        seed=args.seed,
        seeding=args.seeding,
        env_seed=args.env_seed,
        max_steps=args.max_steps,
        num_steps_wait=args.num_steps_wait,
        wait_action=_wait_action(args.wait_action),
        camera_size=args.camera_size,
        exec_horizon=args.exec_horizon,
        temporal_ensemble=args.temporal_ensemble,
        video=args.video,
        resume=args.resume,
        progress=not args.no_progress,
        progress_every=args.progress_every,
        episode_timeout=args.episode_timeout,
        pipeline=args.pipeline,
        envs_per_worker=args.envs_per_worker,
        executor=args.executor,
        ray_address=args.ray_address,
        ray_envs_per_worker=args.ray_envs_per_worker,
        ray_gpus_per_worker=args.ray_gpus_per_worker,
        wandb=args.wandb,
        tensorboard=args.tensorboard,
    )
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    from evalharness import suites as catalogue
    from evalharness.envs.libero import list_tasks
    from evalharness.envs.suites import classify, resolve_suites
    from evalharness.protocols import get_protocol
    from evalharness.run_config import parse_task_ids

    names = list(resolve_suites(args.suite)) if args.suite else None
    if args.fingerprints:
        return _print_fingerprints(args, names)
    if args.audit:
        audit_tasks = parse_task_ids(args.audit_tasks) if args.audit_tasks else None
        targets = names or [a.suite for a in catalogue.catalogue() if not a.static_problem]
        for suite in targets:
            catalogue.sim_audit(
                suite, audit_tasks, progress=lambda line: print(line, file=sys.stderr)
            )
    if names is None or args.audit:
        every = names or catalogue.catalogue_suites(include_other=args.all)
        print(catalogue.format_catalogue(catalogue.catalogue(every)), end="")
        return 0
    protocol = get_protocol(args.protocol)
    for suite in names:
        kind = classify(suite)
        tasks = list_tasks(suite)
        limit = protocol.max_steps_for(suite)
        print(f"{suite}: {len(tasks)} tasks, step limit {limit} (protocol {protocol.name})")
        if kind is not None and kind.axis is not None:
            print(
                f"  perturbs {kind.base} ({kind.axis}); 'fed' is where each instruction comes "
                "from, 'base' the base task it perturbs"
            )
            print(f"  {'id':>3}  {'init':>4}  {'limit':>5}  {'fed':<9}  base  instruction  [name]")
            for t in tasks:
                base = "-" if t.base_task_id is None else str(t.base_task_id)
                print(
                    f"  {t.task_id:>3}  {t.num_init_states:>4}  {limit:>5}  "
                    f"{t.instruction_source:<9}  {base:>4}  {t.instruction}  [{t.name}]"
                )
            continue
        print(f"  {'id':>3}  {'init':>4}  {'limit':>5}  instruction  [name]")
        for t in tasks:
            print(
                f"  {t.task_id:>3}  {t.num_init_states:>4}  {limit:>5}  {t.instruction}  [{t.name}]"
            )
    return 0


def _print_fingerprints(args: argparse.Namespace, suites: list[str] | None) -> int:
    from evalharness.protocols import get_protocol
    from evalharness.run_config import parse_task_ids
    from evalharness.scenes import format_fingerprints, suite_fingerprints
    from evalharness.versions import package_versions

    if not suites or len(suites) != 1:
        raise UsageError("--fingerprints needs one suite: --suite NAME")
    if args.episodes is not None and args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}")
    protocol = get_protocol(args.protocol).with_overrides(
        seeding=args.seeding, env_seed=args.env_seed
    )
    tasks = parse_task_ids(args.tasks) if args.tasks else None
    table = suite_fingerprints(suites[0], protocol, tasks, args.episodes)
    print(format_fingerprints(table, suites[0], protocol, package_versions()), end="")
    return 0


def cmd_protocols(args: argparse.Namespace) -> int:
    from evalharness.protocols import PROTOCOLS

    for p in PROTOCOLS.values():
        steps = "/".join(str(v) for v in p.max_steps.values())
        print(
            f"{p.name:8}  episodes/task {p.episodes_per_task:>3}  max steps {steps}  "
            f"wait {p.num_steps_wait} x {list(p.wait_action)}  {p.camera_size} px  seed {p.seed}  "
            f"scenes {p.seeding} (env seed {p.resolved_env_seed})"
        )
        print(f"          {p.notes}  [{p.source}]")
        if args.semantics:
            for key, text in p.semantics.items():
                print(f"          {key + ':':13} {text}")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from evalharness.results import format_table, read_episodes
    from evalharness.robustness import format_robustness, has_robustness, robustness
    from evalharness.run_dir import EPISODES_CSV, RESULTS_JSON, SUMMARY_CSV, regenerate_summary

    summary = regenerate_summary(args.run_dir)
    print(format_table(summary))
    episodes = read_episodes(Path(args.run_dir) / EPISODES_CSV)
    if has_robustness(episodes):
        print(format_robustness(robustness(episodes), "robustness (LIBERO-PRO perturbations)"))
    print(f"wrote {Path(args.run_dir) / SUMMARY_CSV} and {RESULTS_JSON}")
    return 0


def _labels(text: str | None, count: int) -> list[str] | None:
    if text is None:
        return None
    labels = [x.strip() for x in text.split(",")]
    if len(labels) != count or not all(labels):
        raise UsageError(f"--labels {text!r} must name each of the {count} runs, comma-separated")
    return labels


def _add_report_parsers(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "dashboard",
        help="one self-contained HTML report from run directories",
        description=(
            "Write one offline HTML page from run directories (episodes.csv + run.json): suite "
            "table, per-task bars with Wilson intervals, paired comparisons against the first "
            "run, episode lengths, finetune loss, run.json side by side, episodes with videos."
        ),
        epilog="example: evalharness dashboard results/base results/finetuned --out report.html",
    )
    d.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="first one is the baseline")
    d.add_argument("--out", default="report.html", help="HTML file to write (default: %(default)s)")
    d.add_argument("--labels", default=None, help="comma-separated run names (default: dir names)")
    c = sub.add_parser(
        "compare",
        help="paired comparison of two runs on their shared episodes",
        description=(
            "Compare RUN_B against RUN_A on the episodes both ran (same task, init state, episode "
            "index): rates, difference B - A with Newcombe's paired 95% interval and the exact "
            "McNemar p-value, per task and per suite. --format markdown|latex prints the "
            "OpenVLA-style suite table (rate ± standard error) and the paired table; csv the "
            "paired rows."
        ),
        epilog="example: evalharness compare results/base results/finetuned --format markdown",
    )
    c.add_argument("run_a", metavar="RUN_A", help="baseline run directory")
    c.add_argument("run_b", metavar="RUN_B", help="run directory compared against RUN_A")
    c.add_argument(
        "--format", default="text", choices=["text", "markdown", "latex", "csv"], dest="fmt"
    )
    c.add_argument("--labels", default=None, help="two comma-separated names (default: dir names)")


def cmd_dashboard(args: argparse.Namespace) -> int:
    from evalharness.compare import load_runs, mismatch_warnings
    from evalharness.dashboard import render_dashboard
    from evalharness.results import atomic_write_text

    runs = load_runs(args.run_dirs, _labels(args.labels, len(args.run_dirs)))
    for w in mismatch_warnings(runs):
        print(f"warning: {w}", file=sys.stderr)
    path = Path(args.out)
    atomic_write_text(path, render_dashboard(runs, path.parent))
    print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from evalharness.compare import (
        compare_runs,
        format_comparison,
        load_runs,
        mismatch_warnings,
        paired_table,
        suite_table,
    )
    from evalharness.robustness import (
        format_robustness,
        has_robustness,
        robustness,
        robustness_table,
    )

    a, b = load_runs([args.run_a, args.run_b], _labels(args.labels, 2))
    warnings = mismatch_warnings([a, b])
    comparison = compare_runs(a, b)
    robust = [r for r in (a, b) if has_robustness(r.episodes)]
    if args.fmt == "text":
        print(format_comparison(a, b, comparison, warnings), end="")
        for run in robust:
            title = f"\nrobustness of {run.label} (LIBERO-PRO perturbations)"
            print(format_robustness(robustness(run.episodes), title), end="")
        return 0
    # Tables go to stdout for pasting; warnings to stderr so they do not end up in a paper.
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.fmt == "csv":
        print(paired_table(comparison, a.label, b.label, "csv"), end="")
    else:
        print(suite_table([a, b], args.fmt))
        print(paired_table(comparison, a.label, b.label, args.fmt), end="")
        if robust:
            table = robustness_table([(r.label, r.episodes) for r in robust], args.fmt)
            print("\n" + table, end="")
    return 0


# -- finetune, finetune-then-eval, doctor (evalharness.finetune, evalharness.doctor) ----------


def _add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        required=True,
        help="FAMILY:CHECKPOINT[?key=value...] to start from (options go to the family's "
        "trainer, e.g. ?action_horizon=8; `evalharness policies` says which families finetune)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="dataset: a LIBERO .hdf5 file/folder or RLDS, local or hf://datasets/ORG/NAME@REV",
    )
    p.add_argument(
        "--dataset-spec",
        default="libero",
        help="preset (libero, libero_rlds) or a .json DatasetSpec (default: %(default)s)",
    )
    p.add_argument(
        "--mode", default="full", choices=["full", "head_only", "head_mlp_only"], help="what trains"
    )
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument(
        "--lr", type=float, default=3e-4, help="peak learning rate (default: %(default)s)"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="linear warmup (default: 5%% of --steps, ≤ 2000)",
    )
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW, kernels only")
    p.add_argument("--clip-gradient", type=float, default=1.0, help="global-norm clip")
    p.add_argument(
        "--save-every", type=int, default=None, metavar="N", help="checkpoint every N steps"
    )
    p.add_argument(
        "--open-loop-demos",
        type=int,
        default=3,
        metavar="N",
        help="hold out the last N demos and replay them through the saved policy at the end "
        "(open_loop.json); 0 skips (default: %(default)s)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="family trainer option (same as ?key=value on --policy); repeatable",
    )
    _add_tracking_arguments(p)


def _add_finetune_parsers(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "finetune",
        help="finetune a policy checkpoint on a dataset",
        description=(
            "Build the family's model for the dataset (observation keys, action dim, horizon, "
            "window), merge the pretrained weights wherever name and shape agree (the "
            "compatibility report says what is fresh and why), train, and write a checkpoint "
            "the family's strict loader reads, with train_log.csv, dataset_statistics.json and "
            "dataset_spec.json beside it."
        ),
        epilog=(
            "example: evalharness finetune --policy FAMILY:ckpts/pretrained --data demos/ "
            "--dataset-spec libero --mode head_only --steps 5000 --batch-size 64 --out ckpts/ft"
        ),
    )
    _add_finetune_arguments(f)
    f.add_argument("--out", required=True, help="checkpoint directory to write")
    f.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    f.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --out"
    )
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N processes (torchrun, DistributedDataParallel: gloo on CPU, NCCL on "
        "GPU; --batch-size stays the global batch); for torch families (default: 1)",
    )

    e = sub.add_parser(
        "finetune-then-eval",
        help="finetune, then evaluate the new checkpoint",
        description=(
            "Exactly `evalharness finetune`, then `evalharness run` with the new checkpoint "
            "(FAMILY:OUT) and the run flags given here. The finetune log is copied into the run "
            "directory and recorded in its run.json, so dashboards show the loss curve."
        ),
        epilog=(
            "example: evalharness finetune-then-eval --policy FAMILY:ckpts/pretrained --data "
            "demos/ --mode head_only --steps 2000 --out ckpts/ft --suite libero_spatial --tasks 0"
        ),
    )
    _add_finetune_arguments(e)
    e.add_argument("--out", required=True, help="checkpoint directory to write")
    e.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    e.add_argument("--resume", action="store_true", help="continue the finetune and the run")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--eval-out", default=None, help="run directory (default: as `run` names it)")
    e.add_argument("--eval-seed", type=int, default=None, help="the run's --seed")
    e.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="finetune on N processes, as `finetune --nproc`; the run that follows is one "
        "run, as `run` makes it (default: 1)",
    )
    # What `--nproc` relaunches under torchrun: the ranks finetune, the launcher evaluates.
    e.add_argument("--finetune-only", action="store_true", help=argparse.SUPPRESS)
    # Every other `run` flag, taken from the run parser itself so the two never drift apart.
    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    _add_run_parser(scratch)
    # `--option` here is the trainer's; the finetuned checkpoint's string carries what it needs.
    # The trackers log the finetune and the run alike (two runs in one W&B project).
    shared = {"help", "policy", "out", "seed", "resume", "no_progress", "option"}
    shared |= {"wandb", "tensorboard"}
    for action in scratch.choices["run"]._actions:
        if action.dest not in shared:
            e._add_action(action)

    d = sub.add_parser(
        "doctor",
        help="check a checkpoint against a dataset and the environment, without training",
        description=(
            "Report every mismatch between a checkpoint, a dataset and the LIBERO environment "
            "(observation keys, image sizes, window, action dim and horizon, statistics, "
            "gripper convention, orientation), each with its fix. Exit status 1 on errors."
        ),
        epilog="example: evalharness doctor --policy FAMILY:ckpts/ft --data demos/ --suite libero_spatial",
    )
    d.add_argument("--policy", required=True, help="FAMILY:CHECKPOINT[?options]")
    d.add_argument("--data", default=None, help="a dataset to finetune on")
    d.add_argument("--dataset-spec", default="libero", help="default: %(default)s")
    d.add_argument("--suite", default=None, help="a LIBERO suite to evaluate on")
    d.add_argument(
        "--protocol",
        default=None,
        help="list the conventions the policy uses under this protocol (image rotation, "
        "resize, gripper, proprio, un-normalization, replan), next to its reference's; also "
        "the env's camera size for --suite (default: openvla)",
    )
    d.add_argument(
        "--open-loop",
        action="store_true",
        help="replay --data's demos through the policy's act() and compare with their actions",
    )
    d.add_argument("--demos", default=None, help="demos to replay, e.g. 0,7,21 (default: all)")


def _finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    from evalharness.api import parse_option_items
    from evalharness.finetune import FinetuneConfig, FinetuneOptions

    family_options = parse_option_items(args.option)
    options = FinetuneOptions(
        mode=args.mode,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        clip_gradient=args.clip_gradient,
        seed=args.seed,
        family_options=family_options,
    )
    return FinetuneConfig(
        policy=args.policy,
        data=args.data,
        out_dir=Path(args.out),
        dataset_spec=args.dataset_spec,
        options=options,
        save_every=args.save_every,
        open_loop_demos=args.open_loop_demos,
        resume=args.resume,
        progress=not args.no_progress,
    )


def _launch_ranks(args: argparse.Namespace, extra: Sequence[str] = ()) -> int | None:
    """`--nproc N` > 1 outside torchrun: run this command (without --nproc, plus `extra`) as N
    torchrun ranks and return their exit status; None: this process trains."""
    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc == 1 or "WORLD_SIZE" in os.environ:
        return None
    import importlib.util
    import subprocess

    if importlib.util.find_spec("torch") is None:
        raise UsageError(f"--nproc {args.nproc} launches torchrun, which needs torch")

    from evalharness.policies.common.distributed import launch_command

    # torchrun starts N copies of this command (without --nproc), one per rank.
    return subprocess.call(launch_command(args.nproc, [*args.argv, *extra]))


def cmd_finetune(args: argparse.Namespace) -> int:
    from evalharness.api import run_finetune

    status = _launch_ranks(args)
    if status is not None:
        return status
    run_finetune(_finetune_config(args), wandb=args.wandb, tensorboard=args.tensorboard)
    return 0


def cmd_finetune_then_eval(args: argparse.Namespace) -> int:
    from evalharness.api import run_finetune
    from evalharness.finetune import finished_finetune, record_finetune_in_run
    from evalharness.policies.common.distributed import launched_rank

    # The ranks finetune; the run happens once, here, outside torchrun (its workers and
    # threads as `run` sets them, not one OpenMP thread per rank).
    status = _launch_ranks(args, ["--finetune-only"])
    if status is not None:
        if status != 0:
            return status
        result = finished_finetune(Path(args.out))
    else:
        config = _finetune_config(args)
        result = run_finetune(config, wandb=args.wandb, tensorboard=args.tensorboard)
        if args.finetune_only or launched_rank() != 0:
            return 0  # under a torchrun started by hand, rank 0 alone runs the evaluation
    run_args = argparse.Namespace(**vars(args))
    run_args.policy = result.policy
    run_args.option = []
    run_args.seed = args.eval_seed
    run_args.out = str(args.eval_out or _default_out(args.suite, result.policy))
    status = cmd_run(run_args)
    record_finetune_in_run(Path(run_args.out), result)
    return status


def cmd_doctor(args: argparse.Namespace) -> int:
    from evalharness.doctor import doctor, format_findings

    findings = doctor(
        args.policy,
        args.data,
        args.dataset_spec,
        args.suite,
        args.protocol or "openvla",
        open_loop=args.open_loop,
        demos=args.demos,
        list_conventions=args.protocol is not None,
    )
    print(format_findings(findings))
    return 1 if any(f.severity == "error" for f in findings) else 0


def _add_record_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "record",
        help="record a policy's rollouts as LIBERO demonstration HDF5 files",
        description=(
            "Roll a policy out (any policy, e.g. an expert reading simulator state) and write one "
            "<task_name>_demo.hdf5 per task in LIBERO's dataset layout, frames in LIBERO's raw "
            "orientation. Episodes follow the protocol (init states, warm-up, step limit)."
        ),
        epilog="example: evalharness record --policy NAME --suite libero_object --out demos/",
    )
    r.add_argument("--suite", required=True, help="LIBERO suite, e.g. libero_object")
    r.add_argument(
        "--policy", required=True, help="NAME[:PATH][?key=value&...] (`evalharness policies`)"
    )
    r.add_argument("--out", required=True, help="directory for the <task_name>_demo.hdf5 files")
    r.add_argument("--tasks", default=None, help="task ids, e.g. 0,3,5-7 (default: all)")
    r.add_argument("--protocol", default="openvla", help="protocol preset (step limits, warm-up)")
    r.add_argument(
        "--episodes-per-task", type=int, default=None, help="default: the protocol's (50)"
    )
    r.add_argument("--max-steps", type=int, default=None, help="step limit for every suite")
    r.add_argument(
        "--seed",
        type=int,
        default=None,
        help="as `run --seed`: the policy's sampling seeds (and the env seeds, unless the "
        "protocol has its own env seed)",
    )
    r.add_argument(
        "--seeding",
        choices=("task_stream", "per_episode"),
        default=None,
        help="as `run --seeding`: demo i shows the scene run episode i shows",
    )
    r.add_argument("--env-seed", type=int, default=None, help="as `run --env-seed`")
    r.add_argument(
        "--camera-size", type=int, default=128, help="frame size in pixels (LIBERO's: 128)"
    )
    r.add_argument("--only-success", action="store_true", help="keep successful episodes only")
    r.add_argument(
        "--num-envs",
        type=int,
        default=1,
        help="worker processes recording episodes in parallel (the files do not depend on it)",
    )


def cmd_record(args: argparse.Namespace) -> int:
    from evalharness.protocols import get_protocol
    from evalharness.record import RecordConfig, record
    from evalharness.runner import parse_task_ids

    protocol = get_protocol(args.protocol).with_overrides(
        episodes_per_task=args.episodes_per_task,
        max_steps=args.max_steps,
        seed=args.seed,
        seeding=args.seeding,
        env_seed=args.env_seed,
    )
    config = RecordConfig(
        suite=args.suite,
        policy=args.policy,
        out_dir=Path(args.out),
        protocol=protocol,
        task_ids=parse_task_ids(args.tasks) if args.tasks else None,
        camera_size=args.camera_size,
        only_success=args.only_success,
        num_envs=args.num_envs,
    )
    config.tasks()  # validates task ids before building anything
    record(config)
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "serve",
        help="serve a policy over WebSocket (openpi and evalharness protocols)",
        description=(
            "Serve any registered policy to openpi clients (one observation per request) and to "
            "'evalharness run --policy remote:ws://HOST:PORT' (whole batches). Concurrent "
            "requests are batched; GET /health answers once the policy is loaded."
        ),
        epilog="example: evalharness serve --policy NAME:/ckpt --port 8000 --max-batch 16",
    )
    v.add_argument("--policy", required=True, help="NAME[:PATH][?key=value&...] to serve")
    v.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)",
    )
    v.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    v.add_argument(
        "--max-batch", type=int, default=8, help="most observations in one act() (default 8)"
    )
    v.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its act() (default 5)",
    )
    v.add_argument(
        "--token",
        default=None,
        help="shared token clients must send (default: $EVALHARNESS_TOKEN; none: no check)",
    )
    v.add_argument(
        "--max-message-mb", type=float, default=64.0, help="largest message accepted (default 64)"
    )
    v.add_argument(
        "--suite", default=None, help="suite whose statistics a multi-dataset checkpoint uses"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from evalharness.policies.remote.client import TOKEN_ENV
    from evalharness.serve import ServeConfig, serve

    config = ServeConfig(
        policy=args.policy,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        max_message_bytes=int(args.max_message_mb * 2**20),
        suite=args.suite,
    )
    serve(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evalharness",
        description="Evaluate generalist robot policies on MuJoCo LIBERO suites.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_parser(sub)
    s = sub.add_parser(
        "suites",
        help="list suites (LIBERO and LIBERO-PRO) and their tasks",
        description="Without --suite: every LIBERO suite and LIBERO-PRO perturbation suite with "
        "its base suite, perturbation axis, tasks, init states, which instruction it feeds and "
        "whether it can run here (audited; --audit builds and steps their envs, cached). With "
        "--suite: its tasks (id, init states, step limit, instruction, name).",
    )
    s.add_argument("--suite", default=None, help="only these suites (comma-separated, or a group)")
    s.add_argument("--protocol", default="openvla", help="protocol whose step limits to show")
    s.add_argument(
        "--fingerprints",
        action="store_true",
        help="print each episode's scene fingerprint under --protocol, with the simulator "
        "versions (resets every episode), so two machines can diff their tables",
    )
    s.add_argument("--tasks", default=None, help="with --fingerprints: task ids (default: all)")
    s.add_argument(
        "--episodes", type=int, default=None, help="with --fingerprints: episodes per task"
    )
    s.add_argument(
        "--seeding",
        choices=("task_stream", "per_episode"),
        default=None,
        help="with --fingerprints: override the protocol's seeding",
    )
    s.add_argument(
        "--env-seed", type=int, default=None, help="with --fingerprints: the scenes' seed"
    )
    s.add_argument(
        "--audit",
        action="store_true",
        help="build, reset and step the envs of --suite (default: every suite whose files are "
        "complete) and cache what happened",
    )
    s.add_argument("--audit-tasks", default=None, help="tasks the audit builds (default: all)")
    s.add_argument(
        "--all", action="store_true", help="also list registered suites that perturb no base suite"
    )
    pr = sub.add_parser(
        "protocols",
        help="list protocol presets",
        description="List protocol presets and their values (--semantics: each reference's "
        "env semantics, with where upstream they come from).",
    )
    pr.add_argument(
        "--semantics", action="store_true", help="also print each reference's env semantics"
    )
    m = sub.add_parser(
        "summarize",
        help="rebuild summary.csv from episodes.csv",
        description="Recompute summary.csv (per task and suite, Wilson 95%% CI) from episodes.csv alone.",
    )
    m.add_argument("run_dir", help="a run directory holding episodes.csv")
    _add_report_parsers(sub)
    _add_finetune_parsers(sub)
    _add_record_parser(sub)
    _add_serve_parser(sub)
    o = sub.add_parser(
        "policies",
        help="list policy families, their options, and whether their extra is installed",
        description="Every registered policy family (this package's and installed plugins'): "
        "what it loads, whether its pip extra is installed, finetune and doctor support, and "
        "its ?key=value options with defaults.",
    )
    o.add_argument("names", nargs="*", metavar="NAME", help="only these families")
    for command in sub.choices.values():
        _add_logging_arguments(command)
    return parser


def _add_logging_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more messages (debug detail)"
    )
    p.add_argument(
        "-q", "--quiet", action="count", default=0, help="warnings and errors only (no progress)"
    )


def cmd_policies(args: argparse.Namespace) -> int:
    from evalharness.policies.registry import format_families

    print(format_families(args.names or None))
    return 0


COMMANDS = {
    "run": cmd_run,
    "suites": cmd_suites,
    "protocols": cmd_protocols,
    "summarize": cmd_summarize,
    "dashboard": cmd_dashboard,
    "compare": cmd_compare,
    "finetune": cmd_finetune,
    "finetune-then-eval": cmd_finetune_then_eval,
    "doctor": cmd_doctor,
    "record": cmd_record,
    "serve": cmd_serve,
    "policies": cmd_policies,
}


def main(argv: Sequence[str] | None = None) -> int:
    from evalharness import logs

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `finetune --nproc` relaunches
    logs.configure(logs.level_for(args.verbose, args.quiet))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        print(
            "interrupted: finished episodes are in episodes.csv; rerun with --resume",
            file=sys.stderr,
        )
        # 130 for Ctrl-C (SIGINT), 143 for SIGTERM: the shell's 128 + signal convention.
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except EvalharnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Not an error a user can fix: the traceback is what a bug report needs.
        traceback.print_exc()
        print(
            f"evalharness {args.command}: this is a bug (an unexpected {type(exc).__name__}); "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
