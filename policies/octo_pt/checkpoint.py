"""octo_pt checkpoints: read the upstream JAX layout or our torch layout; write the torch one.

Two layouts, told apart by what the directory holds (:func:`detect_format`):

- ``jax`` (upstream octo-models/octo, as ``OctoModel.load_pretrained`` in
  ``octo/model/octo_model.py`` reads it)::

      CKPT/config.json, example_batch.msgpack, dataset_statistics.json
      CKPT/<step>/default/checkpoint        flax msgpack params (read without JAX)

- ``torch`` (written by :func:`save_torch_checkpoint`, e.g. after finetuning in torch)::

      CKPT/config.json                      the same Octo config, plus an "octo_pt" entry
                                            (format version, T5 encoder shape)
      CKPT/example_batch.msgpack            the same flax msgpack (input keys and shapes)
      CKPT/dataset_statistics.json
      CKPT/model.safetensors                the torch state dict (or CKPT/<step>/model.safetensors)

Both build the model from the same parsed config (``policies/octo/config.py``), so a torch
checkpoint of a finetuned model stays readable by anyone who can read an Octo config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from evalharness.policies.common.compat import (
    CheckpointError,
    CompatibilityReport,
    check_dtypes,
    check_finite,
    compare_shapes,
    mark_partial,
)
from evalharness.policies.octo.checkpoint import (
    HF_PREFIX,
    OctoCheckpoint,
    available_steps,
    check_module_specs,
    load_checkpoint,
    msgpack_restore,
    resolve_checkpoint_dir,
    shim_config,
    shim_example_batch,
    write_checkpoint_files,
)
from evalharness.policies.octo.config import ImageTokenizerConfig, OctoConfig
from evalharness.policies.octo.explain import octo_explainer
from evalharness.policies.octo.inputs import OctoInputSpec
from evalharness.policies.octo.text import T5EncoderConfig, t5_config_from_params
from evalharness.policies.octo_pt.jax_weights import (
    check_report,
    compile_patterns,
    jax_key_map,
    load_jax_params,
    matches,
    to_jax_shape,
)
from evalharness.policies.octo_pt.model import OctoModel, build_octo_model
from evalharness.policies.octo_pt.tokenizers import LanguageTokenizer

__all__ = [
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "LoadedOcto",
    "detect_format",
    "load_octo_pt",
    "read_safetensors",
    "save_torch_checkpoint",
]

WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class LoadedOcto:
    """A torch Octo and everything loaded with it."""

    model: OctoModel
    config: OctoConfig
    raw_config: dict[str, Any]
    example_batch: dict[str, Any]
    dataset_statistics: dict[str, Any]
    report: CompatibilityReport
    directory: Path
    format: str
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        step = f" (step {self.step})" if self.step is not None else ""
        return f"{self.directory}{step} [{self.format}]"


def detect_format(directory: Path) -> str:
    """``"torch"`` or ``"jax"``, from the files present; a teaching error when neither."""
    if (directory / WEIGHTS_FILE).is_file() or any(
        (directory / str(s) / WEIGHTS_FILE).is_file() for s in available_steps(directory)
    ):
        return "torch"
    if any((directory / str(s) / "default").is_dir() for s in available_steps(directory)):
        return "jax"
    found = sorted(p.name for p in directory.iterdir())[:12]
    raise CheckpointError(
        f"{directory}: neither an Octo JAX checkpoint (<step>/default/checkpoint) nor an octo_pt "
        f"torch checkpoint ({WEIGHTS_FILE}); found {found or 'nothing'}"
    )


def _encoder_names(config: OctoConfig) -> dict[str, str]:
    return {
        name: tok.encoder.kind
        for name, tok in config.model.observation_tokenizers
        if isinstance(tok, ImageTokenizerConfig)
    }


def _language_name(config: OctoConfig) -> str | None:
    for name, tok in config.model.task_tokenizers:
        if getattr(tok, "is_t5", False):
            return name
    return None


def _t5_from_jax(
    config: OctoConfig, flat: Mapping[str, Any], hf_config: Mapping[str, Any] | None, source: str
) -> T5EncoderConfig | None:
    name = _language_name(config)
    if name is None:
        return None
    prefix = f"octo_transformer/task_tokenizers_{name}/hf_model"
    try:
        return t5_config_from_params(flat, prefix=prefix, hf_config=hf_config, source=source)
    except KeyError as exc:
        raise CheckpointError(
            f"{source}: the config's language tokenizer {name!r} is a T5 encoder but the "
            f"checkpoint has no weights under {prefix}/ ({exc}); octo_pt takes the encoder "
            "from the checkpoint, never from the hub"
        ) from None


def _parse_config(raw: dict[str, Any], source: str) -> OctoConfig:
    try:
        return OctoConfig.from_checkpoint_config(raw, source=source)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, refusing a truncated or corrupted file and NaN/inf.

    Errors name the file and, for a truncated one, the first tensor whose bytes are cut off.
    """
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})"
            f"{_safetensors_diagnosis(path)} — the file is truncated or corrupted; copy or "
            "save it again"
        ) from exc
    check_finite(tensors, str(path))
    return tensors


def _safetensors_diagnosis(path: Path) -> str:
    """Which tensor a damaged file cuts off, read from its JSON header; "" when unknown."""
    data = path.read_bytes()
    if len(data) < 8:
        return f"; the file has {len(data)} bytes, fewer than the 8-byte header length"
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return f"; its header claims {size} bytes but the file has {len(data)}"
    try:
        header = json.loads(data[8 : 8 + size])
        entries = sorted(
            (int(v["data_offsets"][0]), int(v["data_offsets"][1]), k, v)
            for k, v in header.items()
            if k != "__metadata__"
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return "; its JSON header is unreadable"
    available = len(data) - 8 - size
    for begin, end, key, value in entries:
        if end > available:
            return (
                f"; tensor {key!r} {tuple(value.get('shape', ()))} {value.get('dtype', '?')} "
                f"needs data bytes [{begin}, {end}) but the file holds {available}"
            )
    if entries and entries[-1][1] < available:
        return f"; {available - entries[-1][1]} unexpected bytes after the last tensor"
    return ""


def load_octo_pt(
    path: str | Path,
    *,
    step: int | None = None,
    strict: bool = True,
    skip: str | Sequence[str] | None = None,
    non_strict: str | Sequence[str] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    hf_config: Mapping[str, Any] | None = None,
) -> LoadedOcto:
    """Load either layout into a torch Octo (on CPU, eval mode).

    ``config_overrides`` edits ``config["model"]`` before the model is built (nested dicts
    merge), e.g. ``{"heads": {"action": {"kwargs": {"action_horizon": 2}}}}``: the checkpoint
    is then loaded into that model and the report explains every mismatch.

    Corrupted weights (an unreadable file, NaN/inf, a tensor whose dtype is not a float where
    the model's is) raise :class:`CheckpointError` naming the file and key, with
    ``strict=False`` too. Floats of another width (float64, bfloat16) are cast to the
    model's dtype.
    """
    if step is not None and str(path).startswith(HF_PREFIX):
        raise CheckpointError(f"{path}: a step cannot be chosen for a hub checkpoint")
    directory = resolve_checkpoint_dir(path)
    fmt = detect_format(directory)
    if fmt == "jax":
        ckpt = load_checkpoint(directory, step=step)
        return _load_jax(ckpt, strict, skip, non_strict, config_overrides, hf_config)
    return _load_torch(directory, step, strict, skip, non_strict, config_overrides)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    return override


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    if not overrides:
        return raw
    out = dict(raw)
    out["model"] = _merge(raw["model"], overrides)
    return out


def _load_jax(
    ckpt: OctoCheckpoint,
    strict: bool,
    skip: str | Sequence[str] | None,
    non_strict: str | Sequence[str] | None,
    overrides: Mapping[str, Any] | None,
    hf_config: Mapping[str, Any] | None,
) -> LoadedOcto:
    source = str(ckpt.directory / "config.json")
    raw = _apply_overrides(ckpt.config, overrides)
    config = _parse_config(raw, source)
    flat = ckpt.flat_params
    t5 = _t5_from_jax(config, flat, hf_config, ckpt.name)
    model = build_octo_model(config.model, ckpt.example_batch, t5)
    inputs = OctoInputSpec.from_example_batch(ckpt.example_batch, config.window_size)
    report = load_jax_params(
        model,
        flat,
        encoder_names=_encoder_names(config),
        skip=skip,
        non_strict=non_strict,
        strict=strict,
        explain=octo_explainer(config.model, inputs),
        source=str(ckpt.params_file),
    )
    return LoadedOcto(
        model=model.eval(),
        config=config,
        raw_config=raw,
        example_batch=ckpt.example_batch,
        dataset_statistics=ckpt.dataset_statistics,
        report=report,
        directory=ckpt.directory,
        format="jax",
        step=ckpt.step,
        extra={"t5": t5},
    )


def _weights_path(directory: Path, step: int | None) -> tuple[Path, int | None]:
    if step is not None:
        path = directory / str(step) / WEIGHTS_FILE
        if not path.is_file():
            steps = [
                s
                for s in available_steps(directory)
                if (directory / str(s) / WEIGHTS_FILE).is_file()
            ]
            raise CheckpointError(
                f"{directory} has no step {step}; available steps: {steps or 'none'}"
            )
        return path, step
    if (directory / WEIGHTS_FILE).is_file():
        return directory / WEIGHTS_FILE, None
    steps = [s for s in available_steps(directory) if (directory / str(s) / WEIGHTS_FILE).is_file()]
    return directory / str(steps[-1]) / WEIGHTS_FILE, steps[-1]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; an octo_pt checkpoint directory needs it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def _load_torch(
    directory: Path,
    step: int | None,
    strict: bool,
    skip: str | Sequence[str] | None,
    non_strict: str | Sequence[str] | None,
    overrides: Mapping[str, Any] | None,
) -> LoadedOcto:
    source = str(directory / "config.json")
    stored = shim_config(_read_json(directory / "config.json"))
    meta = stored.get("octo_pt") or {}
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: octo_pt format_version {version!r}; this evalharness reads version "
            f"{FORMAT_VERSION}"
        )
    check_module_specs(stored, source)
    raw = _apply_overrides(stored, overrides)
    config = _parse_config(raw, source)
    batch_path = directory / "example_batch.msgpack"
    if not batch_path.is_file():
        raise CheckpointError(f"{batch_path} is missing; it gives the model's input shapes")
    example_batch = shim_example_batch(msgpack_restore(batch_path.read_bytes(), str(batch_path)))
    stats_path = directory / "dataset_statistics.json"
    statistics = _read_json(stats_path) if stats_path.is_file() else {}
    t5 = T5EncoderConfig(**meta["t5"]) if meta.get("t5") else None
    model = build_octo_model(config.model, example_batch, t5)
    weights, chosen = _weights_path(directory, step)
    tensors = read_safetensors(weights)
    state = model.state_dict()
    check_dtypes(tensors, state, str(weights))
    skip_re, lax_re = compile_patterns(skip), compile_patterns(non_strict)
    skips = {
        k: "matches skip pattern: keeps its fresh initialization"
        for k in state
        if matches(skip_re, k)
    }
    inputs = OctoInputSpec.from_example_batch(example_batch, config.window_size)
    explain = octo_explainer(config.model, inputs)
    mapping = jax_key_map(model, _encoder_names(config))

    def explain_torch(key: str, ckpt: Any, shape: Any) -> str | None:
        # Explanations speak upstream's names and layouts, whichever format was read.
        leaf = mapping.get(key)
        if leaf is None:
            return None
        return explain(
            leaf.jax_key,
            to_jax_shape(ckpt, leaf) if ckpt is not None else None,
            to_jax_shape(shape, leaf) if shape is not None else None,
        )

    report = compare_shapes(
        {k: tuple(v.shape) for k, v in tensors.items()},
        {k: tuple(v.shape) for k, v in state.items()},
        explain=explain_torch,
        source=str(weights),
        target="octo_pt model",
        skip=skips,
    )
    if lax_re:
        selected = [
            e for e in report.entries if e.status == "shape_mismatch" and matches(lax_re, e.key)
        ]
        relaxed = {e.key: e for e in mark_partial(CompatibilityReport(selected)).entries}
        report = CompatibilityReport(
            [relaxed.get(e.key, e) for e in report.entries], report.source, report.target
        )
    check_report(report, strict)
    with torch.no_grad():  # copy_ casts another float width to the parameter's dtype
        for entry in report.entries:
            if entry.key not in state:
                continue
            if entry.status == "loaded":
                state[entry.key].copy_(tensors[entry.key])
            elif entry.status == "partial":
                src, dst = tensors[entry.key], state[entry.key]
                region = tuple(
                    slice(0, min(a, b)) for a, b in zip(src.shape, dst.shape, strict=True)
                )
                dst[region].copy_(src[region])
    return LoadedOcto(
        model=model.eval(),
        config=config,
        raw_config=raw,
        example_batch=example_batch,
        dataset_statistics=statistics,
        report=report,
        directory=directory,
        format="torch",
        step=chosen,
        extra={"t5": t5},
    )


def save_torch_checkpoint(
    directory: str | Path,
    model: OctoModel,
    config: Mapping[str, Any],
    example_batch: Mapping[str, Any],
    dataset_statistics: Mapping[str, Any],
    step: int | None = None,
    t5_config: T5EncoderConfig | None = None,
) -> Path:
    """Write the torch layout; loading it back with :func:`load_octo_pt` is bit-exact.

    ``config`` is the whole Octo ``config.json`` dict the model was built from;
    ``t5_config`` the language encoder's shape when the model has one.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    has_t5 = any(
        isinstance(tok, LanguageTokenizer) and tok.t5 is not None
        for tok in model.octo_transformer.task_tokenizers.values()
    )
    if has_t5 and t5_config is None:
        raise ValueError("the model has a T5 language encoder; pass its t5_config to save it")
    directory.mkdir(parents=True, exist_ok=True)
    stored = dict(config)
    stored["octo_pt"] = {
        "format_version": FORMAT_VERSION,
        "t5": asdict(t5_config) if t5_config is not None else None,
    }
    write_checkpoint_files(directory, stored, example_batch, dataset_statistics)
    target = directory / WEIGHTS_FILE if step is None else directory / str(step) / WEIGHTS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = target.with_suffix(".tmp")
    save_file(
        state, str(tmp), metadata={"format": "pt", "octo_pt_format_version": str(FORMAT_VERSION)}
    )
    tmp.replace(target)  # a crash mid-write never leaves a truncated weights file
    return directory
