"""The Python API: one call that evaluates a policy, one that finetunes it.

    import evalharness

    result = evalharness.evaluate("NAME[:CHECKPOINT]", "libero_spatial", tasks=[0])
    result.success_rate   # e.g. 0.8
    result.summary        # the table `evalharness run` prints, as a pandas DataFrame
    result.episodes       # episodes.csv, one row per episode
    result.run_dir        # results/libero_spatial-NAME-<time>/

`evaluate` is `evalharness run` (the command line calls it): the same run directory
(episodes.csv, summary.csv, run.json), the same resume check, the same table. It also takes a
`Policy` object, so a training loop can evaluate the model it holds in memory. `finetune` is
`evalharness finetune`. See docs/python-api.md for a notebook-style walk-through.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from evalharness import logs, tracking
from evalharness import progress as progress_view
from evalharness.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from evalharness.finetune import FinetuneConfig, FinetuneResult
    from evalharness.policies.base import Policy
    from evalharness.protocols import Protocol
    from evalharness.run_config import RunConfig

__all__ = [
    "DEFAULT_RESULTS",
    "EvalResult",
    "default_run_dir",
    "evaluate",
    "finetune",
    "parse_option_items",
    "policy_with_options",
    "run_finetune",
]

#: where runs go when no output directory is given.
DEFAULT_RESULTS = "results"

# Characters left as they are in an option value, so that recorded policy strings stay readable
# (paths, devices like cuda:0, lists like 0,1); everything else is %-encoded, which the policy
# string parser decodes again.
_SAFE = "/:,.-_~@"


def parse_option_items(items: Iterable[str], flag: str = "--option") -> dict[str, str]:
    """``["device=cuda", "ema=false"]`` -> ``{"device": "cuda", "ema": "false"}``.

    A later item overrides an earlier one with the same key; an item without ``=`` or with an
    empty key is an error naming the flag and the item.
    """
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r} must be KEY=VALUE, e.g. {flag} device=cuda")
        options[key.strip()] = value.strip()
    return options


def policy_with_options(policy: str, options: Mapping[str, str]) -> str:
    """The policy string with ``options`` merged into its ``?key=value`` part.

    Options given here override those already in the string, as ``finetune --option`` does.
    Without options the string is returned unchanged, so what a run records stays what the
    user typed.

    >>> policy_with_options("NAME:/ckpt?stats=bridge", {"device": "cuda:0"})
    'NAME:/ckpt?stats=bridge&device=cuda:0'
    """
    if not options:
        return policy
    from evalharness.policies.registry import parse_policy_string

    ref = parse_policy_string(policy)
    merged = {**ref.options, **{str(k): str(v) for k, v in options.items()}}
    head = ref.name if ref.path is None else f"{ref.name}:{ref.path}"
    query = "&".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in merged.items())
    return f"{head}?{query}"


def default_run_dir(suite: str, policy: str, unique: bool = False) -> Path:
    """``results/<suite>-<policy name and path>``, as `evalharness run` names a run without
    ``--out``; ``unique`` appends the local time (and a counter if that exists too), so that
    repeated calls from a notebook or a training loop never collide."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in policy.split("?")[0])
    base = Path(DEFAULT_RESULTS) / f"{suite}-{name.strip('_')}"
    if not unique:
        return base
    stamped = base.with_name(f"{base.name}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    candidate, n = stamped, 1
    while candidate.exists():
        n += 1
        candidate = stamped.with_name(f"{stamped.name}-{n}")
    return candidate


@dataclass(frozen=True, eq=False)
class EvalResult:
    """What one evaluation produced: its tables, where it wrote them, and its identity.

    ``summary`` has one ``level == "task"`` row per task and one ``level == "suite"`` row
    (columns of `evalharness.results.SUMMARY_COLUMNS`); ``episodes`` is episodes.csv, one row
    per episode. ``identity`` is everything that changes outcomes (suite, policy string,
    checkpoint content and hub revision, protocol, env settings, package versions) and
    ``identity_hash`` its sha256, as `run.json` records them; ``run`` is all of run.json.
    """

    summary: pd.DataFrame
    episodes: pd.DataFrame
    run_dir: Path
    policy: str
    identity: dict[str, Any] = field(repr=False)
    identity_hash: str
    run: dict[str, Any] = field(repr=False)

    @property
    def success_rate(self) -> float:
        """The suite's success rate over every recorded episode (harness failures excluded);
        for several suites the average of their rates (the summary's average row)."""
        levels = self.summary["level"]
        row = self.summary[levels == ("average" if (levels == "average").any() else "suite")]
        return float(row["success_rate"].iloc[0]) if len(row) else float("nan")

    def table(self) -> str:
        """The summary as the text table `evalharness run` prints."""
        from evalharness.results import format_table

        return format_table(self.summary)


def _task_ids(tasks: Sequence[int] | int | str | None) -> tuple[int, ...] | None:
    from evalharness.run_config import parse_task_ids

    if tasks is None:
        return None
    if isinstance(tasks, str):
        return parse_task_ids(tasks)
    if isinstance(tasks, int):
        return (tasks,)
    ids = tuple(tasks)
    if not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise UsageError(f"tasks={tasks!r}: expected task ids (ints), e.g. [0, 3] or '0,3,5-7'")
    return tuple(dict.fromkeys(ids))


def _recorded_policy_string(policy: Policy, given: str | None) -> str:
    """What run.json and episodes.csv record for a policy object: ``given``, or the spec's
    name with the checkpoint it reports."""
    from evalharness.policies.registry import PolicyStringError, parse_policy_string

    text = given or (
        f"{policy.spec.name}:{policy.checkpoint}" if policy.checkpoint else policy.spec.name
    )
    try:
        parse_policy_string(text)
    except PolicyStringError as exc:
        raise UsageError(
            f"policy object {type(policy).__name__} would be recorded as {text!r}, which is not "
            f"a policy string ({exc}); pass policy_string='NAME[:CHECKPOINT]' to name it"
        ) from None
    return text


def evaluate(
    policy: str | Policy,
    suite: str,
    *,
    tasks: Sequence[int] | int | str | None = None,
    episodes_per_task: int | None = None,
    protocol: str | Protocol = "openvla",
    out: str | os.PathLike[str] | None = None,
    options: Mapping[str, str] | None = None,
    num_envs: int | None = None,
    seed: int | None = None,
    seeding: str | None = None,
    env_seed: int | None = None,
    max_steps: int | None = None,
    num_steps_wait: int | None = None,
    wait_action: Sequence[float] | None = None,
    camera_size: int | None = None,
    exec_horizon: int | None = None,
    temporal_ensemble: float | None = None,
    video: int = 0,
    resume: bool = False,
    progress: bool = True,
    episode_timeout: float | None = None,
    pipeline: bool | None = None,
    envs_per_worker: int | None = None,
    policy_string: str | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    ray_envs_per_worker: int = 1,
    ray_gpus_per_worker: float = 0.0,
    wandb: str | None = None,
    tensorboard: str | os.PathLike[str] | None = None,
    progress_every: int = progress_view.EPISODE_EVERY,
) -> EvalResult:
    """Evaluate ``policy`` on a LIBERO ``suite``; what `evalharness run` does, as one call.

    ``policy`` is a policy string (``"NAME"``, ``"NAME:/ckpt/dir?device=cuda"``,
    ``"NAME:hf://org/model@<sha>"``; `evalharness policies` lists them) or a `Policy` object, e.g. the
    model a training loop is finetuning (run.json then records ``policy_string``, by default
    the spec's name and the object's ``checkpoint``; the identity cannot see weights held in
    memory). ``options`` are the policy string's ``?key=value`` options (they override those in
    the string). ``tasks`` are ids (``[0, 3]``, ``"0,3,5-7"``; default: all tasks of the
    suite). ``protocol`` is a preset name or a `Protocol`; ``episodes_per_task``, ``seed``,
    ``seeding`` (``"task_stream"`` or ``"per_episode"``), ``env_seed``, ``max_steps``,
    ``num_steps_wait``, ``wait_action`` and ``camera_size`` override it.

    ``out`` is the run directory (default: a new ``results/<suite>-<policy>-<time>``); with
    ``resume`` an interrupted run there is finished, refused if anything that changes outcomes
    differs. ``progress`` shows a bar on a terminal, tqdm's widget in a notebook, and
    elsewhere (a batch job's log) a line through `logging` every ``progress_every`` episodes or
    60 s (`evalharness.progress`). ``num_envs`` is the number of worker processes (default:
    one per core), each hosting ``envs_per_worker`` envs (default: 2 when pipelining, else 1),
    all stepped in lockstep; ``pipeline`` (default: for remote policies) splits the envs into
    two groups, one stepping while the other's actions are computed
    (`evalharness.executors`); ``False``: lockstep.
    ``video`` saves mp4s of the first N episodes of each task. ``executor="ray"`` runs the
    envs on Ray actors (``ray_*`` as ``evalharness run --ray-*``). ``wandb`` (a W&B project)
    and ``tensorboard`` (a log directory) log each finished episode, the final tables and the
    videos (`evalharness.tracking`).

    Returns an `EvalResult` (summary and episodes as DataFrames, run directory, identity).
    Raises an `evalharness.errors.EvalharnessError` (a ``UsageError``, a ``ValueError``) for
    bad arguments before anything starts, and the
    runner's errors (`evalharness.runner.RunError`) for a run that cannot go on; episodes
    finished before a failure or an interrupt are kept in the run directory.
    """
    from evalharness.policies.base import Policy
    from evalharness.policies.registry import load_policy
    from evalharness.protocols import Protocol, get_protocol
    from evalharness.results import read_episodes
    from evalharness.run_config import RunConfig
    from evalharness.run_dir import EPISODES_CSV, RUN_JSON, VIDEOS_DIR
    from evalharness.runner import Runner

    if progress_every < 1:
        raise UsageError(f"progress_every={progress_every}: must be >= 1 (episodes per line)")
    logs.ensure_handler()  # messages and progress lines show unless logging is set up
    display = progress_view.mode(progress)
    if executor not in ("local", "ray"):
        raise UsageError(f"executor={executor!r}: expected 'local' or 'ray'")
    if executor == "ray" and envs_per_worker is not None:
        raise UsageError(
            f"envs_per_worker={envs_per_worker} (--envs-per-worker) sets local worker processes; "
            "Ray actors take ray_envs_per_worker (--ray-envs-per-worker)"
        )
    base = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    resolved_protocol = base.with_overrides(
        episodes_per_task=episodes_per_task,
        max_steps=max_steps,
        num_steps_wait=num_steps_wait,
        wait_action=tuple(wait_action) if wait_action is not None else None,
        camera_size=camera_size,
        seed=seed,
        seeding=seeding,
        env_seed=env_seed,
    )
    if isinstance(policy, Policy):
        if options:
            raise UsageError(
                "options= only applies to a policy string; a Policy object is already built"
            )
        text = _recorded_policy_string(policy, policy_string)
        loaded: Policy | None = policy
    elif isinstance(policy, str):
        text = policy_with_options(policy, options or {})
        loaded = None
    else:
        raise TypeError(
            f"policy must be a policy string or an evalharness Policy, got {type(policy).__name__}"
        )
    config = RunConfig(
        suite=suite,
        policy=text,
        out_dir=Path(out) if out is not None else default_run_dir(suite, text, unique=True),
        protocol=resolved_protocol,
        task_ids=_task_ids(tasks),
        num_envs=num_envs if num_envs is not None else (os.cpu_count() or 1),
        video_episodes=video,
        resume=resume,
        exec_horizon=exec_horizon,
        temporal_ensemble_weight=temporal_ensemble,
        progress=display == "bar",  # the runner's own tqdm line; the others follow the CSV
        episode_timeout=episode_timeout,
        pipeline=pipeline,
        envs_per_worker=envs_per_worker,
    )
    config.tasks()  # validates task ids before a checkpoint loads or a process starts
    if loaded is None:
        # Statistics named after the suite: its base suite's for a perturbation suite, none
        # to pick when the run's suites have different bases (the checkpoint must say).
        loaded = load_policy(text, suite=config.statistics_suite)
    if executor == "ray":
        from evalharness.ray_executor import RayRunner

        built = loaded
        runner: Runner = RayRunner(
            config,
            loaded,
            address=ray_address,
            envs_per_worker=ray_envs_per_worker,
            gpus_per_worker=ray_gpus_per_worker,
            # An object has no string to rebuild it from: each actor gets a pickled copy.
            make_policy=(lambda: built) if isinstance(policy, Policy) else None,
        )
    else:
        runner = Runner(config, loaded)
    run_dir = Path(config.out_dir)
    total = len(config.tasks()) * config.protocol.episodes_per_task
    with tracking.open_trackers(
        wandb_project=wandb,
        tensorboard_dir=tensorboard,
        name=run_dir.name,
        config=_tracking_config(config),
        directory=run_dir,
        job_type="eval",
    ) as tracker:
        with (
            tracking.follow_episodes(tracker, run_dir / EPISODES_CSV, total),
            progress_view.follow_episodes(
                run_dir / EPISODES_CSV, total, display, every=progress_every
            ),
        ):
            summary = runner.run()
        info = json.loads((run_dir / RUN_JSON).read_text())
        episodes = read_episodes(run_dir / EPISODES_CSV)
        tracker.update_config(
            {k: info.get(k) for k in ("identity_hash", "versions", "git", "render_backend")}
            | {"checkpoint_hub": (info.get("identity") or {}).get("checkpoint_hub")}
        )
        tracker.log_tables(summary, episodes)
        tracker.log_videos(sorted((run_dir / VIDEOS_DIR).rglob("*.mp4")))
    return EvalResult(
        summary=summary,
        episodes=episodes,
        run_dir=run_dir,
        policy=text,
        identity=dict(info.get("identity") or {}),
        identity_hash=str(info.get("identity_hash", "")),
        run=info,
    )


def _tracking_config(config: RunConfig) -> dict[str, Any]:
    """What a tracker shows as the run's settings before run.json exists."""
    return {
        "suite": config.suite,
        "policy": config.policy,
        "protocol": config.protocol.to_dict(),
        "tasks": list(config.task_ids) if config.task_ids is not None else "all",
        "num_envs": config.num_envs,
        "envs_per_worker": config.envs_per_worker,
        "exec_horizon": config.exec_horizon,
        "temporal_ensemble_weight": config.temporal_ensemble_weight,
        "run_dir": str(config.out_dir),
    }


def finetune(
    policy: str,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset_spec: str = "libero",
    mode: str = "full",
    steps: int = 1000,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    clip_gradient: float = 1.0,
    seed: int = 0,
    options: Mapping[str, str] | None = None,
    save_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    wandb: str | None = None,
    tensorboard: str | os.PathLike[str] | None = None,
) -> FinetuneResult:
    """Finetune the checkpoint ``policy`` names (``FAMILY:CHECKPOINT[?options]``) on ``data``
    and write the new checkpoint to ``out``; what `evalharness finetune` does, as one call.

    ``data`` is a LIBERO ``.hdf5`` file or folder, or RLDS, read with ``dataset_spec`` (a
    preset such as ``libero``/``libero_rlds`` or a ``.json`` DatasetSpec). ``mode`` is
    ``full``, ``head_only`` or ``head_mlp_only``; the optimizer settings are those of
    ``evalharness finetune --help``; ``options`` are the family trainer's (like ``--option``).
    Returns a `evalharness.finetune.FinetuneResult`: ``policy`` is the string that evaluates
    the new checkpoint (pass it to `evaluate`), ``train_log`` the per-step CSV, ``losses``.
    ``wandb`` (a W&B project) and ``tensorboard`` (a log directory) log every step's row of
    train_log.csv and the finetune's settings (`evalharness.tracking`).
    """
    from evalharness.finetune import FinetuneConfig, FinetuneOptions

    config = FinetuneConfig(
        policy=policy,
        data=data if isinstance(data, str) else Path(data),
        out_dir=Path(out),
        dataset_spec=dataset_spec,
        options=FinetuneOptions(
            mode=mode,
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            clip_gradient=clip_gradient,
            seed=seed,
            family_options=dict(options or {}),
        ),
        save_every=save_every,
        resume=resume,
        progress=progress,
    )
    return run_finetune(config, wandb=wandb, tensorboard=tensorboard)


def run_finetune(
    config: FinetuneConfig,
    *,
    wandb: str | None = None,
    tensorboard: str | os.PathLike[str] | None = None,
) -> FinetuneResult:
    """`evalharness.finetune.finetune` with the trackers asked for following its train log,
    and progress shown as `evaluate` shows it (what `finetune` and the command line call)."""
    from evalharness.finetune import FINETUNE_JSON, TRAIN_LOG
    from evalharness.finetune import finetune as finetune_loop
    from evalharness.policies.common.distributed import launched_rank

    if launched_rank() != 0:  # under torchrun rank 0 alone shows progress and logs to trackers
        return finetune_loop(dataclasses.replace(config, progress=False))
    logs.ensure_handler()
    display = progress_view.mode(config.progress)
    config = dataclasses.replace(config, progress=display == "bar")
    out_dir = Path(config.out_dir)
    with tracking.open_trackers(
        wandb_project=wandb,
        tensorboard_dir=tensorboard,
        name=out_dir.name,
        config={"policy": config.policy, "data": str(config.data)} | config.options.to_dict(),
        directory=out_dir,
        job_type="finetune",
    ) as tracker:
        with (
            tracking.follow_train_log(tracker, out_dir / TRAIN_LOG),
            progress_view.follow_train_log(out_dir / TRAIN_LOG, config.options.steps, display),
        ):
            result = finetune_loop(config)
        if (out_dir / FINETUNE_JSON).is_file():
            tracker.update_config(json.loads((out_dir / FINETUNE_JSON).read_text()))
    return result
