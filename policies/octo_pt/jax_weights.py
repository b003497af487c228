"""JAX (Flax) Octo parameters → the torch model, leaf by leaf, with a full report.

Every torch parameter has one upstream leaf (:func:`jax_key_map`), with the layout change it
needs:

=============  ====================================  ======================================
transform      Flax layout                           torch layout
=============  ====================================  ======================================
``dense``      Dense kernel (in, out)                Linear weight (out, in)
``conv``       Conv kernel HWIO                      Conv2d weight OIHW
``qkv``        attention q/k/v kernel (E, H, Dh)     Linear weight (H·Dh, E)
``qkv_bias``   attention q/k/v bias (H, Dh)          Linear bias (H·Dh,)
``attn_out``   attention out kernel (H, Dh, E)       Linear weight (E, H·Dh)
``squeeze0``   position embedding (1, ...)           (...)
``copy``       LayerNorm/GroupNorm scale, biases,    same (LayerNorm ``scale`` → ``weight``)
               embeddings, Fourier kernel, probe
=============  ====================================  ======================================

The T5 encoder inside the checkpoint (``task_tokenizers_<name>/hf_model``) maps too, so no hub
weights are needed. :func:`load_jax_params` compares both sides with the shared
:func:`~evalharness.policies.common.compat.compare_shapes` (torch names as model keys, the
Flax path as ``source_key``): every JAX leaf ends up loaded, skipped or unexpected, every torch
parameter loaded, partial, skipped or missing (fresh). ``skip`` and ``non_strict`` are
regular expressions (``re.search``) tried on both the torch name and the Flax path, like
octo-pytorch's ``skip_keys_regex`` / ``non_strict_keys_regex``: a skipped parameter keeps its
fresh value; a non-strict one with another shape gets the overlapping leading slice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from evalharness.policies.common.compat import (
    CheckpointMismatchError,
    CompatibilityReport,
    LeafReport,
    check_dtypes,
    compare_shapes,
    dtype_category,
    mark_partial,
    overlap_copy,
)
from evalharness.policies.octo_pt.heads import (
    ContinuousActionHead,
    DiffusionActionHead,
    MLPResNetBlock,
)
from evalharness.policies.octo_pt.model import OctoModel
from evalharness.policies.octo_pt.t5 import T5Encoder
from evalharness.policies.octo_pt.tokenizers import (
    ImageTokenizer,
    LanguageTokenizer,
    PatchEncoder,
    SmallStem,
)
from evalharness.policies.octo_pt.transformer import (
    EncoderBlock,
    MAPHead,
    MlpBlock,
    MultiHeadAttention,
)

Shape = tuple[int, ...]
Explainer = Callable[[str, "Shape | None", "Shape | None"], "str | None"]

__all__ = [
    "LeafMap",
    "check_report",
    "compile_patterns",
    "jax_key_map",
    "load_jax_params",
    "matches",
    "to_jax_shape",
    "to_torch_layout",
]


@dataclass(frozen=True)
class LeafMap:
    """Where a torch parameter comes from: the Flax path and the layout change."""

    jax_key: str
    transform: str
    num_heads: int = 0  # for qkv / qkv_bias / attn_out, to invert shapes in reports


def to_torch_layout(array: np.ndarray, leaf: LeafMap) -> np.ndarray:
    """Apply ``leaf.transform`` to a Flax array (raises ValueError on a rank it cannot take)."""
    a = np.asarray(array)
    t = leaf.transform
    if t == "copy":
        return a
    if t == "dense":
        _need_rank(a, 2, leaf)
        return a.T
    if t == "conv":
        _need_rank(a, 4, leaf)
        return a.transpose(3, 2, 0, 1)
    if t == "qkv":
        _need_rank(a, 3, leaf)
        return a.reshape(a.shape[0], -1).T
    if t == "qkv_bias":
        _need_rank(a, 2, leaf)
        return a.reshape(-1)
    if t == "attn_out":
        _need_rank(a, 3, leaf)
        return a.reshape(-1, a.shape[-1]).T
    if t == "squeeze0":
        if a.ndim < 1 or a.shape[0] != 1:
            raise ValueError(f"{leaf.jax_key}: expected a leading dim of 1, got {a.shape}")
        return a[0]
    raise ValueError(f"unknown transform {t!r}")


def to_jax_shape(shape: Shape, leaf: LeafMap) -> Shape:
    """The Flax shape a torch parameter of ``shape`` corresponds to (for explanations)."""
    t, h = leaf.transform, leaf.num_heads
    if t == "dense" and len(shape) == 2:
        return (shape[1], shape[0])
    if t == "conv" and len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    if t == "qkv" and len(shape) == 2 and h:
        return (shape[1], h, shape[0] // h)
    if t == "qkv_bias" and len(shape) == 1 and h:
        return (h, shape[0] // h)
    if t == "attn_out" and len(shape) == 2 and h:
        return (h, shape[1] // h, shape[0])
    if t == "squeeze0":
        return (1, *shape)
    return shape


def _need_rank(a: np.ndarray, rank: int, leaf: LeafMap) -> None:
    if a.ndim != rank:
        raise ValueError(
            f"{leaf.jax_key}: expected a rank-{rank} array for a {leaf.transform!r} leaf, "
            f"got shape {a.shape}"
        )


# --------------------------------------------------------------------------------------------
# the name map


def _linear(out: dict[str, LeafMap], torch_prefix: str, jax_prefix: str, module: nn.Linear) -> None:
    out[f"{torch_prefix}.weight"] = LeafMap(f"{jax_prefix}/kernel", "dense")
    if module.bias is not None:
        out[f"{torch_prefix}.bias"] = LeafMap(f"{jax_prefix}/bias", "copy")


def _norm(out: dict[str, LeafMap], torch_prefix: str, jax_prefix: str) -> None:
    out[f"{torch_prefix}.weight"] = LeafMap(f"{jax_prefix}/scale", "copy")
    out[f"{torch_prefix}.bias"] = LeafMap(f"{jax_prefix}/bias", "copy")


def _attention(out: dict[str, LeafMap], tp: str, jp: str, attn: MultiHeadAttention) -> None:
    h = attn.num_heads
    for name in ("query", "key", "value"):
        out[f"{tp}.{name}.weight"] = LeafMap(f"{jp}/{name}/kernel", "qkv", h)
        out[f"{tp}.{name}.bias"] = LeafMap(f"{jp}/{name}/bias", "qkv_bias", h)
    out[f"{tp}.out.weight"] = LeafMap(f"{jp}/out/kernel", "attn_out", h)
    out[f"{tp}.out.bias"] = LeafMap(f"{jp}/out/bias", "copy", h)


def _mlp(out: dict[str, LeafMap], tp: str, jp: str, mlp: MlpBlock) -> None:
    _linear(out, f"{tp}.fc1", f"{jp}/Dense_0", mlp.fc1)
    _linear(out, f"{tp}.fc2", f"{jp}/Dense_1", mlp.fc2)


def _map_head(out: dict[str, LeafMap], tp: str, jp: str, head: MAPHead) -> None:
    out[f"{tp}.probe"] = LeafMap(f"{jp}/probe", "copy")
    _attention(out, f"{tp}.attention", f"{jp}/MultiHeadDotProductAttention_0", head.attention)
    _norm(out, f"{tp}.norm", f"{jp}/LayerNorm_0")
    _mlp(out, f"{tp}.mlp", f"{jp}/MlpBlock_0", head.mlp)


def _image_encoder(out: dict[str, LeafMap], tp: str, jp: str, enc: nn.Module) -> None:
    if isinstance(enc, SmallStem):
        for i in range(len(enc.convs)):
            out[f"{tp}.convs.{i}.weight"] = LeafMap(f"{jp}/StdConv_{i}/kernel", "conv")
            out[f"{tp}.convs.{i}.bias"] = LeafMap(f"{jp}/StdConv_{i}/bias", "copy")
            _norm(out, f"{tp}.norms.{i}", f"{jp}/GroupNorm_{i}")
    elif not isinstance(enc, PatchEncoder):
        raise TypeError(f"no JAX mapping for image encoder {type(enc).__name__}")
    out[f"{tp}.embedding.weight"] = LeafMap(f"{jp}/embedding/kernel", "conv")
    out[f"{tp}.embedding.bias"] = LeafMap(f"{jp}/embedding/bias", "copy")


def _t5(out: dict[str, LeafMap], tp: str, jp: str, t5: T5Encoder) -> None:
    # transformers' torch names mirror the Flax tree: dots ↔ slashes, Linear weight ↔ kernel.
    for name, module in t5.named_modules():
        if not name:
            continue
        jname = name.replace(".", "/")
        if isinstance(module, nn.Linear):
            out[f"{tp}.{name}.weight"] = LeafMap(f"{jp}/{jname}/kernel", "dense")
        elif isinstance(module, nn.Embedding):
            out[f"{tp}.{name}.weight"] = LeafMap(f"{jp}/{jname}/embedding", "copy")
        elif type(module).__name__ == "T5LayerNorm":
            out[f"{tp}.{name}.weight"] = LeafMap(f"{jp}/{jname}/weight", "copy")


def jax_key_map(
    model: OctoModel, encoder_names: Mapping[str, str] | None = None
) -> dict[str, LeafMap]:
    """torch state-dict name → :class:`LeafMap` for every parameter of ``model``.

    ``encoder_names`` gives each observation tokenizer's upstream encoder class name
    (``SmallStem16``), which Flax uses to name the encoder's scope (``SmallStem16_0``).
    """
    out: dict[str, LeafMap] = {}
    ot = model.octo_transformer
    J = "octo_transformer"
    for name, tok in ot.task_tokenizers.items():
        if isinstance(tok, LanguageTokenizer) and tok.t5 is not None:
            _t5(
                out,
                f"octo_transformer.task_tokenizers.{name}.t5",
                f"{J}/task_tokenizers_{name}/hf_model",
                tok.t5,
            )
    for name, tok in ot.observation_tokenizers.items():
        if isinstance(tok, ImageTokenizer):
            kind = (encoder_names or {}).get(name, "SmallStem16")
            _image_encoder(
                out,
                f"octo_transformer.observation_tokenizers.{name}.encoder",
                f"{J}/observation_tokenizers_{name}/{kind}_0",
                tok.encoder,
            )
    for group, proj in ot.projections.items():
        assert isinstance(proj, nn.Linear)
        _linear(out, f"octo_transformer.projections.{group}", f"{J}/{group}_projection", proj)
    for group in ot.pos_embeddings:
        out[f"octo_transformer.pos_embeddings.{group}"] = LeafMap(
            f"{J}/{group}_pos_embedding", "squeeze0"
        )
    blocks = f"{J}/BlockTransformer_0/Transformer_0"
    for i, block in enumerate(ot.transformer.blocks):
        assert isinstance(block, EncoderBlock)
        tp, jp = f"octo_transformer.transformer.blocks.{i}", f"{blocks}/encoderblock_{i}"
        _norm(out, f"{tp}.norm1", f"{jp}/LayerNorm_0")
        _attention(out, f"{tp}.attention", f"{jp}/MultiHeadDotProductAttention_0", block.attention)
        _norm(out, f"{tp}.norm2", f"{jp}/LayerNorm_1")
        _mlp(out, f"{tp}.mlp", f"{jp}/MlpBlock_0", block.mlp)
    _norm(out, "octo_transformer.transformer.encoder_norm", f"{blocks}/encoder_norm")
    for name, head in model.heads.items():
        tp, jp = f"heads.{name}", f"heads_{name}"
        if (
            isinstance(head, (DiffusionActionHead, ContinuousActionHead))
            and head.map_head is not None
        ):
            _map_head(out, f"{tp}.map_head", f"{jp}/map_head", head.map_head)
        if isinstance(head, DiffusionActionHead):
            net, tp, jp = head.diffusion_model, f"{tp}.diffusion_model", f"{jp}/diffusion_model"
            out[f"{tp}.time_preprocess.weight"] = LeafMap(f"{jp}/time_preprocess/kernel", "copy")
            _linear(out, f"{tp}.cond_fc1", f"{jp}/cond_encoder/Dense_0", net.cond_fc1)
            _linear(out, f"{tp}.cond_fc2", f"{jp}/cond_encoder/Dense_1", net.cond_fc2)
            _linear(out, f"{tp}.input_proj", f"{jp}/reverse_network/Dense_0", net.input_proj)
            for i, blk in enumerate(net.blocks):
                assert isinstance(blk, MLPResNetBlock)
                bp, bj = f"{tp}.blocks.{i}", f"{jp}/reverse_network/MLPResNetBlock_{i}"
                if isinstance(blk.norm, nn.LayerNorm):
                    _norm(out, f"{bp}.norm", f"{bj}/LayerNorm_0")
                _linear(out, f"{bp}.fc1", f"{bj}/Dense_0", blk.fc1)
                _linear(out, f"{bp}.fc2", f"{bj}/Dense_1", blk.fc2)
            _linear(out, f"{tp}.output_proj", f"{jp}/reverse_network/Dense_1", net.output_proj)
        elif isinstance(head, ContinuousActionHead):
            _linear(out, f"{tp}.mean_proj", f"{jp}/mean_proj", head.mean_proj)
        else:
            raise TypeError(f"no JAX mapping for head {name!r} ({type(head).__name__})")
    params = dict(model.named_parameters())
    unmapped = sorted(set(params) - set(out))
    if unmapped:  # a programming error: a module gained a parameter the map does not know
        raise AssertionError(f"torch parameters without a JAX mapping: {unmapped}")
    return out


# --------------------------------------------------------------------------------------------
# loading


def compile_patterns(patterns: str | Sequence[str] | None) -> list[re.Pattern[str]]:
    """``skip`` / ``non_strict`` option values → compiled regexes (a bad one names itself)."""
    if patterns is None or patterns == "":
        return []
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    try:
        return [re.compile(p) for p in items]
    except re.error as exc:
        raise ValueError(f"invalid regular expression in {items!r}: {exc}") from None


def matches(patterns: list[re.Pattern[str]], *names: str) -> bool:
    """Whether any pattern is found (``re.search``) in any of the names."""
    return any(p.search(n) for p in patterns for n in names)


def load_jax_params(
    model: OctoModel,
    flat_params: Mapping[str, np.ndarray],
    *,
    encoder_names: Mapping[str, str] | None = None,
    skip: str | Sequence[str] | None = None,
    non_strict: str | Sequence[str] | None = None,
    strict: bool = True,
    explain: Explainer | None = None,
    source: str = "JAX checkpoint",
) -> CompatibilityReport:
    """Copy a flat Flax parameter dict (``"a/b/kernel" -> array``) into ``model``.

    Returns the report; with ``strict`` (default) raises
    :class:`~evalharness.policies.common.compat.CheckpointMismatchError` (whose message is
    the report) unless every parameter is loaded or deliberately skipped. ``explain`` is the
    JAX family's callback (Flax names and layouts); it is called with the Flax path and the
    torch shapes mapped back, so both families explain a mismatch in the same words.

    A leaf whose dtype is not a float (an int32 or a string where a kernel belongs) raises
    :class:`~evalharness.policies.common.compat.CheckpointError` naming ``source`` and the
    Flax path, strict or not; floats of another width (bfloat16, float64) are cast to the
    parameter's dtype. NaN/inf weights are refused where the file is read
    (:func:`~evalharness.policies.octo.checkpoint.read_params`).
    """
    mapping = jax_key_map(model, encoder_names)
    skip_re, lax_re = compile_patterns(skip), compile_patterns(non_strict)
    state = model.state_dict()
    check_dtypes(
        flat_params,
        {k: state[k] for k in mapping},
        source,
        key_map={k: leaf.jax_key for k, leaf in mapping.items()},
    )
    model_shapes = {k: tuple(state[k].shape) for k in mapping}
    converted: dict[str, Any] = {}
    failed: dict[str, str] = {}
    by_jax = {leaf.jax_key: (key, leaf) for key, leaf in mapping.items()}
    for jkey, value in flat_params.items():
        if jkey in by_jax:
            try:
                converted[jkey] = to_torch_layout(value, by_jax[jkey][1])
            except ValueError as exc:
                converted[jkey] = np.asarray(value)
                failed[jkey] = str(exc)
        else:
            converted[jkey] = tuple(np.shape(value))
    skips: dict[str, str] = {}
    if skip_re:
        for key, leaf in mapping.items():
            if matches(skip_re, key, leaf.jax_key):
                skips[key] = "matches skip pattern: keeps its fresh initialization"
        for jkey in flat_params:
            if jkey not in by_jax and matches(skip_re, jkey):
                skips[jkey] = "matches skip pattern"

    def explain_torch(key: str, ckpt: Shape | None, shape: Shape | None) -> str | None:
        if explain is None:
            return None
        if key in mapping:
            leaf = mapping[key]
            jkey = leaf.jax_key
            ckpt_j = tuple(np.shape(flat_params[jkey])) if jkey in flat_params else None
            model_j = to_jax_shape(shape, leaf) if shape is not None else None
            return explain(jkey, ckpt_j, model_j)
        return explain(key, ckpt, shape)

    report = compare_shapes(
        converted,
        model_shapes,
        explain=explain_torch,
        source=source,
        target="octo_pt model",
        key_map={k: leaf.jax_key for k, leaf in mapping.items()},
        skip=skips,
    )
    if lax_re:
        selected = [
            e
            for e in report.entries
            if e.status == "shape_mismatch" and matches(lax_re, e.key, e.source_key or "")
        ]
        relaxed = {e.key: e for e in mark_partial(CompatibilityReport(selected)).entries}
        report = CompatibilityReport(
            [relaxed.get(e.key, e) for e in report.entries],
            source=report.source,
            target=report.target,
        )
    if failed:
        report = CompatibilityReport(
            [_note_failure(e, failed) for e in report.entries],
            source=report.source,
            target=report.target,
        )
    check_report(
        report,
        strict,
        hint="To load every tensor that fits and keep the rest freshly initialized, pass "
        "strict=False (`?strict=false`); to copy the overlapping slice of mismatched tensors, "
        "non_strict=REGEX; to leave parameters at their fresh values, skip=REGEX.",
    )
    with torch.no_grad():
        for entry in report.entries:
            if entry.key not in state or entry.source_key is None:
                continue
            target = state[entry.key]
            if entry.status == "loaded":
                value = converted[entry.source_key]
            elif entry.status == "partial":
                value = overlap_copy(np.asarray(converted[entry.source_key]), target.cpu().numpy())
            else:
                continue
            array = np.array(value)
            if array.dtype.kind != "f" and dtype_category(array.dtype) == "float":
                array = array.astype(np.float32)  # bfloat16: torch cannot read ml_dtypes arrays
            target.copy_(torch.tensor(array, dtype=target.dtype))
    return report


def check_report(report: CompatibilityReport, strict: bool, hint: str = "") -> None:
    """Strict loading: refuse missing, unexpected or mismatched tensors.

    ``partial`` entries pass: they exist only where the caller asked for them (``non_strict``).
    """
    refused = ("missing", "unexpected", "shape_mismatch")
    if strict and any(e.status in refused for e in report.entries):
        raise CheckpointMismatchError(report, hint)


def _note_failure(entry: LeafReport, failed: Mapping[str, str]) -> LeafReport:
    if entry.source_key is not None and entry.source_key in failed and entry.status != "skipped":
        why = failed[entry.source_key]
        text = f"{entry.explanation}; {why}" if entry.explanation else why
        return LeafReport(
            entry.key,
            "shape_mismatch",
            entry.checkpoint_shape,
            entry.model_shape,
            entry.source_key,
            text,
        )
    return entry
