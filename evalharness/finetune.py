"""Finetune a pretrained policy on a dataset, family-neutrally: the driver and the ``Trainer``.

    evalharness finetune --policy FAMILY:/ckpts/pretrained --data demos/ --dataset-spec libero \\
        --mode head_only --steps 5000 --batch-size 64 --out ckpts/finetuned
    evalharness run --suite libero_spatial --policy FAMILY:ckpts/finetuned

The driver owns everything that is the same for every model family: reading the data
(`evalharness.data`), the loop and its tqdm bar, ``train_log.csv``, periodic checkpoints,
``--resume``, and the files written beside the checkpoint. A family owns its model, optimizer,
loss and checkpoint format behind the small :class:`Trainer` protocol.

Output directory::

    OUT/<family's checkpoint files>      what the family's strict loader reads (Octo's layout:
                                         OUT/<step>/default/checkpoint, config.json, ...)
    OUT/dataset_statistics.json          statistics of the training data (Octo's layout)
    OUT/dataset_spec.json                the DatasetSpec (key map, image transform, gripper):
                                         evaluation applies ``eval_image_transform`` again
    OUT/compatibility_report.json        what was transferred from the pretrained checkpoint,
                                         what was freshly initialized, and why
    OUT/finetune.json                    the finetune config, data, versions, final metrics
    OUT/train_log.csv                    step, loss, learning_rate, grad_norm (one row per step)
    OUT/train_state/<step>.bin           optimizer state etc. for --resume (latest.json points)
    OUT/open_loop.json                   the saved policy replayed on held-out demos
                                         (`evalharness.openloop`), also in finetune.json

Adding a family
---------------
Write ``from_pretrained(checkpoint, dataset, options) -> Trainer`` in the family's folder and
name it in the family's registry entry (``trainer="package.module:from_pretrained"``, see
``docs/adding-a-policy-family.md``); the driver finds it there. The contract, which the driver
relies on and the families' tests check:

1. ``from_pretrained(checkpoint: str, dataset: evalharness.data.Dataset, options:
   FinetuneOptions)`` builds the model *for the new data*: observation keys the data lacks are
   dropped, the action head takes the data's action dim (``dataset.statistics()["action"]``)
   and ``options.family_options`` (the ``?key=value`` of ``--policy``) may change window and
   horizon. Pretrained weights are merged wherever name *and* shape agree
   (``policies.common.compat.compare_shapes`` + ``merge_params``) and the resulting
   ``CompatibilityReport`` is the trainer's ``report``. ``options.mode`` is one of ``full``,
   ``head_only``, ``head_mlp_only`` (a family without some mode raises ``FinetuneError``).
2. ``trainer.data`` is a :class:`DataRequest`: the window, action horizon, action dim (data
   actions are zero-padded to it with ``action_pad_mask`` False) and normalization the driver
   uses to cut batches from the dataset (``Dataset.batches``). Batches arrive in the data
   layer's layout (``evalharness.data.windows``: ``observation/image_*`` uint8 at the stored
   size, ``proprio``, ``timestep_pad_mask``; ``task/language_instruction`` strings; ``action``,
   ``action_pad_mask``); the trainer resizes images, tokenizes text, etc.
3. ``trainer.train_step(batch) -> {"loss", "grad_norm", "learning_rate", ...}`` (floats) does
   one optimizer step, deterministic given ``options.seed``.
4. ``trainer.save(directory, step)`` writes a checkpoint that the family's normal *strict*
   loader reads (``load_policy(trainer.policy_string(directory))``), including its dataset
   statistics, and everything needed offline (e.g. the tokenizer).
5. ``trainer.state_dict() -> bytes`` / ``load_state_dict(bytes)``: parameters, optimizer
   state, RNG and step, so that ``--resume`` continues exactly.
6. ``trainer.family`` (the policy name), ``trainer.changes`` (plain-language list of config
   edits made for the data, may be empty) and ``trainer.frozen_keys()`` (frozen parameter names).
7. Optionally ``trainer.input_orientation``: the orientation of the camera frames the saved
   policy expects at ``act()`` (``upright``, the env's frames, or ``raw``). Default: the
   dataset spec's ``model_orientation`` (the model saw the frames as the data layer reads
   them). A family whose adapter turns frames itself (the robomimic UNet adapter shows
   LIBERO-named cameras raw frames) trains on what its adapter shows and says ``upright``.
   The driver writes it to ``dataset_spec.json`` as ``evaluation_orientation``;
   ``load_policy`` reads it back.

Data parallel: under ``torchrun`` (or ``evalharness finetune --nproc N``, which launches it) a
family whose trainer says ``data_parallel = "torchrun"`` trains on N ranks: each builds its
rows of the same seeded global batch of ``--batch-size`` samples, rank 0 alone writes, and
``train_state`` resumes under any N (`evalharness.policies.common.distributed`). JAX families
shard each batch over ``jax.devices()`` in one process instead.

Learning rate: AdamW with a linear warmup from 0 to ``learning_rate`` over ``warmup_steps``,
then cosine decay to 0 at ``steps`` (upstream Octo's finetune schedule), weight decay 0.01 on
kernels/weights, gradients clipped to global norm 1.0.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from evalharness.data import DatasetSpec, open_dataset, write_statistics
from evalharness.data.dataset import Dataset
from evalharness.policies.common import distributed, hub
from evalharness.policies.common.finetune import DataRequest, FinetuneError
from evalharness.policies.registry import EVALUATION_ORIENTATION
from evalharness.run_dir import TRAIN_LOG_CSV

__all__ = [
    "DataRequest",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneOptions",
    "FinetuneResult",
    "Trainer",
    "TrainerFactory",
    "finetune",
    "finished_finetune",
    "get_trainer_factory",
    "known_trainers",
    "register_trainer",
]

logger = logging.getLogger(__name__)

TRAIN_LOG = TRAIN_LOG_CSV
TRAIN_LOG_COLUMNS = ("step", "loss", "learning_rate", "grad_norm", "time_s")
REPORT_JSON = "compatibility_report.json"
SPEC_JSON = "dataset_spec.json"
FINETUNE_JSON = "finetune.json"
OPEN_LOOP_JSON = "open_loop.json"
STATE_DIR = "train_state"
MODES = ("full", "head_only", "head_mlp_only")


@dataclass(frozen=True)
class FinetuneOptions:
    """Optimization settings every family honours (validated here, once)."""

    mode: str = "full"
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-4
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    clip_gradient: float = 1.0
    seed: int = 0
    family_options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def fail(name: str, value: Any, expected: str) -> FinetuneError:
            return FinetuneError(f"finetune option {name}={value!r}: expected {expected}")

        if self.mode not in MODES:
            raise fail("mode", self.mode, f"one of {', '.join(MODES)}")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fail(name, value, "an integer >= 1")
        if not self.learning_rate > 0:
            raise fail("learning_rate", self.learning_rate, "a number > 0")
        if self.weight_decay < 0 or not self.clip_gradient > 0:
            raise fail(
                "weight_decay/clip_gradient",
                (self.weight_decay, self.clip_gradient),
                "weight_decay >= 0 and clip_gradient > 0",
            )
        if self.warmup_steps is None:
            # Upstream warms up over 2000 of 50k steps; short runs warm up over 5%.
            object.__setattr__(self, "warmup_steps", min(2000, max(1, self.steps // 20)))
        elif self.warmup_steps < 0:
            raise fail("warmup_steps", self.warmup_steps, "an integer >= 0")
        object.__setattr__(self, "family_options", dict(self.family_options))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"family_options": dict(self.family_options)}


@runtime_checkable
class Trainer(Protocol):
    """What the driver needs from a family (see the module docstring for the full contract)."""

    family: str
    report: Any  # policies.common.compat.CompatibilityReport
    data: DataRequest
    changes: list[str]

    def train_step(self, batch: Mapping[str, Any]) -> Mapping[str, float]: ...

    def save(self, directory: str | Path, step: int) -> Path: ...

    def state_dict(self) -> bytes: ...

    def load_state_dict(self, data: bytes) -> None: ...

    def policy_string(self, directory: str | Path) -> str: ...

    def frozen_keys(self) -> list[str]: ...


TrainerFactory = Callable[[str, Dataset, FinetuneOptions], Trainer]


def register_trainer(name: str, factory: TrainerFactory | str) -> None:
    """Give the registered policy family ``name`` a trainer ``factory(checkpoint, dataset,
    options) -> Trainer`` (or a lazy ``"package.module:function"``). A family declares its
    trainer in its registry entry; this is for notebooks and tests."""
    from evalharness.policies.registry import get_family, register_family, unregister_family

    family = get_family(name)
    if family.trainer is not None and family.trainer != factory:
        raise ValueError(f"a trainer for {name!r} is already registered")
    unregister_family(name)
    register_family(dataclasses.replace(family, trainer=factory))


def known_trainers() -> list[str]:
    """The registered families that can be finetuned (their entry names a trainer)."""
    from evalharness.policies.registry import families

    return [name for name, family in families().items() if family.trainer is not None]


def get_trainer_factory(name: str) -> TrainerFactory:
    """The trainer factory of family ``name``, from the policy registry, imported on first use."""
    from evalharness.policies.registry import families

    family = families().get(name)
    if family is None or family.trainer is None:
        raise FinetuneError(
            f"no trainer for policy family {name!r}; families that can be finetuned: "
            f"{', '.join(known_trainers())}"
        )
    try:
        factory: TrainerFactory = family.load("trainer")
    except ImportError as exc:
        raise FinetuneError(str(exc)) from exc
    return factory


@dataclass(frozen=True)
class FinetuneConfig:
    """One ``evalharness finetune``: from which checkpoint, on which data, to where."""

    policy: str  # FAMILY:CKPT[?family options]
    data: Path | str  # a local path, or hf://[datasets/]ORG/NAME[@REV][/PATH]
    out_dir: Path
    dataset_spec: str | DatasetSpec = "libero"
    options: FinetuneOptions = field(default_factory=FinetuneOptions)
    save_every: int | None = None
    resume: bool = False
    progress: bool = True
    #: demos held out of training and replayed open loop through the saved policy at the end
    #: (the last ones; with fewer than 4x as many demos they stay in training and the check
    #: replays the last training demos instead). 0 skips the check.
    open_loop_demos: int = 3

    def __post_init__(self) -> None:
        if self.save_every is not None and self.save_every < 1:
            raise FinetuneError(f"--save-every must be >= 1, got {self.save_every}")
        if self.open_loop_demos < 0:
            raise FinetuneError(f"--open-loop-demos must be >= 0, got {self.open_loop_demos}")


@dataclass
class FinetuneResult:
    """What a finished finetune produced."""

    out_dir: Path
    policy: str  # the string that loads the finetuned checkpoint
    step: int
    train_log: Path
    report: Any
    losses: list[float]


def parse_family(policy: str) -> tuple[str, str, dict[str, str]]:
    """``FAMILY:CKPT[?k=v]`` → (family, checkpoint, options)."""
    from evalharness.policies.registry import parse_policy_string

    ref = parse_policy_string(policy)
    if not ref.path:
        raise FinetuneError(
            f"--policy {policy!r} names no checkpoint; expected FAMILY:CHECKPOINT[?options] "
            f"with FAMILY one of {', '.join(known_trainers())}"
        )
    return ref.name, ref.path, dict(ref.options)


# -------------------------------------------------------------------------------------------
# resume bookkeeping


def _latest_state(out: Path) -> tuple[int, Path] | None:
    latest = out / STATE_DIR / "latest.json"
    if not latest.is_file():
        return None
    entry = json.loads(latest.read_text())
    path = out / STATE_DIR / entry["file"]
    if not path.is_file():
        raise FinetuneError(f"{latest} points to {path}, which is missing; cannot --resume")
    return int(entry["step"]), path


def _write_state(out: Path, trainer: Trainer, step: int) -> None:
    folder = out / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{step}.bin"
    tmp = folder / f"{name}.tmp"
    tmp.write_bytes(trainer.state_dict())
    tmp.replace(folder / name)
    # Older states are superseded: keep only the newest, they hold the whole model.
    for old in folder.glob("*.bin"):
        if old.name != name:
            old.unlink()
    (folder / "latest.json.tmp").write_text(json.dumps({"step": step, "file": name}))
    (folder / "latest.json.tmp").replace(folder / "latest.json")


def _truncate_log(path: Path, step: int) -> None:
    """Keep the header and rows up to ``step``: steps after the resumed state are redone."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


def training_batches(
    dataset: Dataset,
    request: DataRequest,
    options: FinetuneOptions,
    skip: int = 0,
    shard: distributed.Shard | None = None,
) -> Iterator[dict[str, Any]]:
    """The batches the driver feeds ``trainer.train_step`` (``request`` is ``trainer.data``):
    from the start, fast-forwarded by ``skip`` batches without building them, so a resumed run
    sees exactly the batches an uninterrupted one would. With several ranks (``shard``) each
    builds only its rows of every global batch."""
    shard = shard or distributed.Shard()
    rows = shard.rows(options.batch_size)
    sampler = dataset.sampler(
        request.window_size,
        request.action_horizon,
        options.batch_size,
        options.seed,
        normalization=request.normalization,
        action_dim=request.action_dim,
        statistics=dataset.statistics() if request.normalization else None,
    )
    if skip == 0 and shard.world == 1:
        return iter(sampler)
    order = sampler._order()
    for _ in range(skip * options.batch_size):
        next(order)

    def stream() -> Iterator[dict[str, Any]]:
        from evalharness.data.windows import stack_samples

        while True:
            picks = [int(next(order)) for _ in range(options.batch_size)][rows]
            batch = stack_samples([sampler._sample(*sampler.index[i]) for i in picks])
            yield sampler.transform(batch) if sampler.transform is not None else batch

    return stream()


# -------------------------------------------------------------------------------------------
# the loop


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("evalharness", "jax", "flax", "optax", "torch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_trainer(
    config: FinetuneConfig, dataset: Dataset | None = None
) -> tuple[Trainer, Dataset]:
    """Open the data (or take ``dataset``) and build the family's trainer for it (no
    training)."""
    family, checkpoint, family_options = parse_family(config.policy)
    if dataset is None:
        dataset = open_dataset(config.data, config.dataset_spec)
    options = dataclasses.replace(
        config.options, family_options={**family_options, **config.options.family_options}
    )
    factory = get_trainer_factory(family)
    trainer = factory(checkpoint, dataset, options)
    return trainer, dataset


def finetune(config: FinetuneConfig, log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Run a finetune (or finish one with ``resume``); see the module docstring."""
    say = log or logger.info
    shard = distributed.init_from_env(_device_option(config))
    if not shard.is_main:
        say = _silent
    out = Path(config.out_dir)
    log_path = out / TRAIN_LOG
    if not config.resume and (log_path.exists() or (out / STATE_DIR).exists()):
        raise FinetuneError(
            f"{out} already holds a finetune ({TRAIN_LOG} or {STATE_DIR}/ exists); pass --resume "
            "to continue it, or choose another --out"
        )
    shard.rows(config.options.batch_size)  # a batch the ranks cannot split: refused up front
    shard.barrier()  # every rank has checked --out before rank 0 writes there
    out.mkdir(parents=True, exist_ok=True)
    dataset, check_demos, held_out = _hold_out(
        open_dataset(config.data, config.dataset_spec), config.open_loop_demos
    )
    trainer, dataset = build_trainer(config, dataset)
    if shard.world > 1 and getattr(trainer, "data_parallel", None) != "torchrun":
        raise FinetuneError(
            f"{trainer.family} does not train under torchrun (WORLD_SIZE={shard.world}); run "
            "it in one process (a JAX family uses every jax.devices() by itself)"
        )
    options = config.options
    report = trainer.report
    say(report.format())
    for change in trainer.changes:
        say(f"  changed for the data: {change}")
    if shard.is_main:
        report.write_json(out / REPORT_JSON)
        write_statistics(dataset.statistics(), out)
    spec_record = dataset.spec.to_dict()
    spec_record[EVALUATION_ORIENTATION] = getattr(
        trainer, "input_orientation", dataset.spec.model_orientation
    )
    if shard.is_main:
        (out / SPEC_JSON).write_text(json.dumps(spec_record, indent=2) + "\n")

    start = 0
    if config.resume:
        found = _latest_state(out)
        if found is not None:
            start, path = found
            trainer.load_state_dict(path.read_bytes())
            say(f"resuming {out} from step {start}")
        if shard.is_main:
            _truncate_log(log_path, start)
    info: dict[str, Any] = {
        "policy": config.policy,
        "family": trainer.family,
        "data": str(config.data),
        # The commits hub references resolved to (None for local paths).
        "hub": {
            "policy": hub.describe(parse_family(config.policy)[1]),
            "data": hub.describe(str(config.data), default_repo_type="dataset"),
        },
        "dataset_spec": dataset.spec.name,
        "options": options.to_dict(),
        "data_request": dataclasses.asdict(trainer.data),
        "save_every": config.save_every,
        "frozen_keys": len(trainer.frozen_keys()),
        "changes": list(trainer.changes),
        "versions": _versions(),
        "processes": shard.world,
        "status": "running",
    }
    if shard.is_main:
        (out / FINETUNE_JSON).write_text(json.dumps(info, indent=2) + "\n")

    batches = training_batches(dataset, trainer.data, options, start, shard)
    new_log = not log_path.is_file()
    losses: list[float] = []
    step = start
    bar = None
    if config.progress and shard.is_main:
        from tqdm import tqdm

        bar = tqdm(
            total=options.steps, initial=start, desc="finetune", unit="step", file=sys.stderr
        )
    t0 = time.perf_counter()
    try:
        with (log_path if shard.is_main else Path(os.devnull)).open("a", newline="") as f:
            writer = csv.writer(f)
            if new_log:
                writer.writerow(TRAIN_LOG_COLUMNS)
            while step < options.steps:
                metrics = trainer.train_step(next(batches))
                step += 1
                loss = float(metrics["loss"])
                losses.append(loss)
                elapsed = time.perf_counter() - t0
                writer.writerow(
                    [
                        step,
                        f"{loss:.6g}",
                        f"{float(metrics.get('learning_rate', float('nan'))):.6g}",
                        f"{float(metrics.get('grad_norm', float('nan'))):.6g}",
                        f"{elapsed:.3f}",
                    ]
                )
                f.flush()
                if bar is not None:
                    bar.update(1)
                    rate = (step - start) / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{rate:.2f}")
                if (
                    config.save_every
                    and step % config.save_every == 0
                    and step < options.steps
                    and shard.is_main
                ):
                    trainer.save(out, step)
                    _write_state(out, trainer, step)
    finally:
        if bar is not None:
            bar.close()
    if not shard.is_main:
        shard.barrier()  # returns with rank 0, once its files are written
        return FinetuneResult(out, trainer.policy_string(out), step, log_path, report, losses)
    trainer.save(out, step)
    _write_state(out, trainer, step)
    # The family's save may have written its own statistics; the data's are the truth.
    write_statistics(dataset.statistics(), out)
    elapsed = time.perf_counter() - t0
    if check_demos:
        info["open_loop"] = _final_open_loop(config, trainer, check_demos, held_out, say)
    info.update(
        status="finished",
        step=step,
        final_loss=losses[-1] if losses else None,
        steps_per_s=round((step - start) / max(elapsed, 1e-9), 3),
        policy_string=trainer.policy_string(out),
    )
    (out / FINETUNE_JSON).write_text(json.dumps(info, indent=2) + "\n")
    say(f"finetuned {step} steps → {out} (evaluate with --policy {trainer.policy_string(out)})")
    shard.barrier()
    return FinetuneResult(out, trainer.policy_string(out), step, log_path, report, losses)


def finished_finetune(out_dir: str | os.PathLike[str]) -> FinetuneResult:
    """The result of a finetune that finished in other processes, read from its files
    (`finetune-then-eval --nproc N` evaluates once its torchrun ranks have exited)."""
    out = Path(out_dir)
    path = out / FINETUNE_JSON
    info = json.loads(path.read_text()) if path.is_file() else {}
    if info.get("status") != "finished":
        raise FinetuneError(
            f"{path} does not record a finished finetune (status {info.get('status')!r}, "
            "expected 'finished'); see the ranks' output above"
        )
    log_path = out / TRAIN_LOG
    with log_path.open(newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    report_path = out / REPORT_JSON
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    return FinetuneResult(
        out, str(info["policy_string"]), int(info["step"]), log_path, report, losses
    )


def _hold_out(dataset: Dataset, count: int) -> tuple[Dataset, list[int], bool]:
    """(training data, demos for the open-loop check, whether they are held out)."""
    if count == 0:
        return dataset, [], False
    total = len(dataset)
    if total >= 4 * count:
        return dataset.subset(range(total - count)), list(range(total - count, total)), True
    return dataset, list(range(max(0, total - count), total)), False


def _final_open_loop(
    config: FinetuneConfig,
    trainer: Trainer,
    demos: list[int],
    held_out: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Replay ``demos`` through the saved policy; the report as a dict (an error is recorded,
    not raised: the checkpoint is written and usable either way)."""
    from evalharness.openloop import open_loop, replay_episodes
    from evalharness.policies.registry import load_policy

    out = Path(config.out_dir)
    try:
        policy = load_policy(trainer.policy_string(out))
        report = open_loop(policy, replay_episodes(config.data, demos), name=policy.spec.name)
    except Exception as exc:  # a failed check must not lose the finetune
        say(f"open-loop check skipped: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "demos": demos, "held_out": held_out}
    which = "held-out" if held_out else "training (too few demos to hold any out)"
    say(f"{report.format()}\n  ({which} demos {demos})")
    report.write_json(out / OPEN_LOOP_JSON)
    return report.to_dict() | {"demos": demos, "held_out": held_out}


def _silent(text: str) -> None:
    """Logging of ranks other than 0: nothing (rank 0 reports for all)."""


def _device_option(config: FinetuneConfig) -> str:
    """The family's ``device`` option (policy string or --option), for the process group."""
    options = {**parse_family(config.policy)[2], **config.options.family_options}
    return str(options.get("device", "cpu"))


def record_finetune_in_run(run_dir: Path, result: FinetuneResult) -> None:
    """Copy ``train_log.csv`` into ``run_dir`` and record the finetune in its ``run.json``
    (``finetune.checkpoint``, ``finetune.train_log``), where dashboards look for it
    (``evalharness.compare.find_train_log``). A copy, not a link: a copied run keeps it."""
    from evalharness.results import atomic_write_json
    from evalharness.run_dir import RUN_JSON

    run_dir = Path(run_dir)
    shutil.copyfile(result.train_log, run_dir / TRAIN_LOG_CSV)
    run_json = run_dir / RUN_JSON
    info = json.loads(run_json.read_text()) if run_json.is_file() else {}
    info["finetune"] = {
        "checkpoint": str(Path(result.out_dir).resolve()),
        "policy": result.policy,
        "step": result.step,
        "train_log": TRAIN_LOG_CSV,
        "source_train_log": str(Path(result.train_log).resolve()),
        "final_loss": result.losses[-1] if result.losses else None,
    }
    atomic_write_json(run_json, info)


class _CallableModule(types.ModuleType):
    """This module, callable: ``evalharness.finetune(...)`` is `evalharness.api.finetune`.

    Importing a submodule sets the package attribute of its name to the module, so the
    package's ``finetune`` must be this module whichever was imported first.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> FinetuneResult:
        from evalharness.api import finetune as api_finetune

        return api_finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
