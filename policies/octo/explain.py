"""Plain-language reasons for Octo checkpoint/model mismatches (framework-free).

:func:`octo_explainer` returns the ``explain`` callback of
:func:`evalharness.policies.common.compat.compare_shapes`. It knows how Octo's shapes follow
from its config, e.g. the diffusion head's first layer::

    reverse_network/Dense_0/kernel rows = time_dim + token_embedding_size + action_dim × action_horizon
    checkpoint 444 rows = time 32 + embedding 384 + action 7 × horizon 4;
    this config 430 = 32 + 384 + 7 × 2 → action_horizon changed 4 → 2

Keys and shapes are upstream's (Flax names, Flax layouts: Dense kernels are (in, out)). The
torch family maps its names and transposed shapes back to those before calling it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from evalharness.policies.octo.config import (
    ContinuousHeadConfig,
    DiffusionHeadConfig,
    ImageTokenizerConfig,
    LanguageTokenizerConfig,
    LowdimObsTokenizerConfig,
    OctoModelConfig,
)
from evalharness.policies.octo.inputs import OctoInputSpec

Shape = tuple[int, ...]
Explainer = Callable[[str, "Shape | None", "Shape | None"], "str | None"]

__all__ = ["explain_leaf", "octo_explainer"]


def octo_explainer(config: OctoModelConfig, inputs: OctoInputSpec | None = None) -> Explainer:
    """An ``explain(key, checkpoint_shape, model_shape)`` for models built from ``config``."""

    def explain(key: str, ckpt: Shape | None, model: Shape | None) -> str | None:
        return explain_leaf(key, ckpt, model, config, inputs)

    return explain


def explain_leaf(
    key: str,
    ckpt: Shape | None,
    model: Shape | None,
    config: OctoModelConfig,
    inputs: OctoInputSpec | None = None,
) -> str | None:
    """Why leaf ``key`` differs (None when there is nothing specific to say)."""
    if ckpt is None or model is None:
        return _presence(key, ckpt is None, config)
    for rule in (_diffusion, _action_outputs, _pos_embedding, _projection, _stem, _transformer):
        text = rule(key, ckpt, model, config, inputs)
        if text:
            return text
    return None


# --------------------------------------------------------------------------------------------


def _head(key: str, config: OctoModelConfig) -> DiffusionHeadConfig | ContinuousHeadConfig | None:
    match = re.search(r"heads_([^/]+)/", key)
    if not match:
        return None
    return dict(config.heads).get(match.group(1))


def _diffusion(key, ckpt, model, config, inputs) -> str | None:
    if not key.endswith("reverse_network/Dense_0/kernel"):
        return None
    head = _head(key, config)
    if not isinstance(head, DiffusionHeadConfig) or len(ckpt) != 2:
        return None
    t, e = head.time_dim, config.token_embedding_size
    a, h = head.action_dim, head.action_horizon
    rows_c, rows_m = ckpt[0], model[0]
    parts = []
    if rows_c != rows_m:
        rest = rows_c - t - e
        if rest > 0 and rest % a == 0 and rest // a != h:
            h_c = rest // a
            parts.append(
                f"checkpoint {rows_c} rows = time {t} + embedding {e} + action {a} × horizon "
                f"{h_c}; this config {rows_m} = {t} + {e} + {a} × {h} → action_horizon "
                f"changed {h_c} → {h}"
            )
        elif rest > 0 and rest % h == 0 and rest // h != a:
            a_c = rest // h
            parts.append(
                f"checkpoint {rows_c} rows = time {t} + embedding {e} + action {a_c} × horizon "
                f"{h}; this config {rows_m} = {t} + {e} + {a} × {h} → action_dim changed "
                f"{a_c} → {a}"
            )
        else:
            parts.append(
                f"checkpoint {rows_c} rows ≠ this config's {rows_m} = time {t} + embedding {e} "
                f"+ action {a} × horizon {h}: time_dim, token_embedding_size or "
                "action_dim × action_horizon changed"
            )
    if ckpt[1] != model[1]:
        parts.append(f"hidden_dim changed {ckpt[1]} → {model[1]}")
    return "; ".join(parts) or None


def _action_outputs(key, ckpt, model, config, inputs) -> str | None:
    is_out = re.search(r"reverse_network/Dense_1/(kernel|bias)$|mean_proj/(kernel|bias)$", key)
    if not is_out:
        return None
    head = _head(key, config)
    if head is None or ckpt[-1] == model[-1]:
        return None
    a, h = head.action_dim, head.action_horizon
    out_c, out_m = ckpt[-1], model[-1]
    if out_c % a == 0 and out_c // a != h:
        change = f"action_horizon changed {out_c // a} → {h}"
        return f"checkpoint outputs {out_c} = action {a} × horizon {out_c // a}; this config {out_m} = {a} × {h} → {change}"
    if out_c % h == 0 and out_c // h != a:
        change = f"action_dim changed {out_c // h} → {a}"
        return f"checkpoint outputs {out_c} = action {out_c // h} × horizon {h}; this config {out_m} = {a} × {h} → {change}"
    return f"checkpoint outputs {out_c} actions values per step, this config {out_m} = action {a} × horizon {h}"


def _tokenizer_for_group(group: str, config: OctoModelConfig):
    if group.startswith("obs_"):
        return dict(config.observation_tokenizers).get(group[4:])
    if group.startswith("task_"):
        return dict(config.task_tokenizers).get(group[5:])
    return None


def _image_key(tok: ImageTokenizerConfig, inputs: OctoInputSpec | None) -> tuple[str, str]:
    """(name, size text) of the first observation image this tokenizer stacks."""
    keys = list(inputs.obs_images) if inputs else []
    for pattern in tok.obs_stack_keys:
        for k in keys:
            if re.match(pattern, k):
                h, w = inputs.obs_images[k]  # type: ignore[union-attr]
                return k, f"{h} × {w}"
    return (tok.obs_stack_keys[0] if tok.obs_stack_keys else "image"), "?"


def _pos_embedding(key, ckpt, model, config, inputs) -> str | None:
    match = re.search(r"(?:^|/)([a-z]+_[A-Za-z0-9_]+?)_pos_embedding$", key)
    if not match:
        return None
    group = match.group(1)
    parts = []
    if ckpt[-1] != model[-1]:
        parts.append(f"token_embedding_size changed {ckpt[-1]} → {model[-1]}")
    if len(ckpt) == 4 and len(model) == 4 and ckpt[1] != model[1]:
        parts.append(f"max_horizon changed {ckpt[1]} → {model[1]}")
    if ckpt[-2] != model[-2]:
        n_c, n_m = ckpt[-2], model[-2]
        tok = _tokenizer_for_group(group, config)
        if isinstance(tok, ImageTokenizerConfig):
            name, size = _image_key(tok, inputs)
            d = tok.encoder.downsample
            side = round(n_c**0.5)
            was = (
                f" (e.g. {side * d} × {side * d} at {d} px per token)" if side * side == n_c else ""
            )
            parts.append(
                f"checkpoint {n_c} {group} tokens per step{was}; this model {n_m} from "
                f"{name} at {size} (example batch) → {name}'s image size changed"
            )
        elif isinstance(tok, LanguageTokenizerConfig):
            parts.append(
                f"checkpoint {n_c} language tokens; this model {n_m} → the text processor's "
                f"max_length changed {n_c} → {n_m}"
            )
        elif isinstance(tok, LowdimObsTokenizerConfig):
            parts.append(
                f"checkpoint {n_c} tokens (one per dim of {', '.join(tok.obs_keys)}); this model "
                f"{n_m} → the low-dim input's size changed {n_c} → {n_m}"
            )
        elif group.startswith("readout_"):
            parts.append(f"readout {group[8:]} token count changed {n_c} → {n_m}")
        else:
            parts.append(f"{group} token count changed {n_c} → {n_m}")
    return "; ".join(parts) or None


def _projection(key, ckpt, model, config, inputs) -> str | None:
    match = re.search(r"(?:^|/)([a-z]+_[A-Za-z0-9_]+?)_projection/(kernel|bias)$", key)
    if not match:
        return None
    group = match.group(1)
    if ckpt[-1] != model[-1]:
        return f"token_embedding_size changed {ckpt[-1]} → {model[-1]}"
    if len(ckpt) != 2 or ckpt[0] == model[0]:
        return None
    tok = _tokenizer_for_group(group, config)
    if isinstance(tok, ImageTokenizerConfig):
        return f"image encoder features (num_features) changed {ckpt[0]} → {model[0]}"
    if isinstance(tok, LanguageTokenizerConfig):
        return f"text encoder width (T5 d_model) changed {ckpt[0]} → {model[0]}: a different language model"
    if isinstance(tok, LowdimObsTokenizerConfig):
        return (
            f"features per low-dim token changed {ckpt[0]} → {model[0]} (1 = raw values, "
            "n_bins = discretize)"
        )
    return None


def _stem(key, ckpt, model, config, inputs) -> str | None:
    if "/StdConv_0/kernel" in key and len(ckpt) == 4 and ckpt[2] != model[2]:
        return (
            f"first conv takes {ckpt[2]} channels in the checkpoint, {model[2]} here: 3 per "
            "stacked image (observation + goal images from task_stack_keys) → which images "
            "are stacked (obs_stack_keys / task_stack_keys) changed"
        )
    if re.search(r"/(StdConv_\d+|GroupNorm_\d+|embedding)/", key):
        return f"image encoder layer widths (features / num_features) changed {ckpt} → {model}"
    return None


def _transformer(key, ckpt, model, config, inputs) -> str | None:
    if "BlockTransformer_0" not in key and "map_head" not in key:
        return None
    e = config.token_embedding_size
    if "MultiHeadDotProductAttention" in key and len(ckpt) == len(model) == 3:
        if ckpt[0] != model[0] and "out" not in key:
            return f"token_embedding_size changed {ckpt[0]} → {model[0]}"
        if ckpt[-1] != model[-1] and "out" in key:
            return f"token_embedding_size changed {ckpt[-1]} → {model[-1]}"
        return f"num_attention_heads × head width changed {ckpt[:2] if 'out' in key else ckpt[1:]} → {model[:2] if 'out' in key else model[1:]}"
    if "MlpBlock_0/Dense_0" in key and ckpt[-1] != model[-1]:
        return f"transformer mlp_dim changed {ckpt[-1]} → {model[-1]}"
    if ckpt[-1] != model[-1] and model[-1] == e:
        return f"token_embedding_size changed {ckpt[-1]} → {model[-1]}"
    return None


def _presence(key: str, missing: bool, config: OctoModelConfig) -> str | None:
    where = "not in the checkpoint" if missing else "in the checkpoint but not in this config"
    match = re.search(r"encoderblock_(\d+)/", key)
    if match:
        layers = config.transformer.num_layers
        if missing:
            return f"the checkpoint has fewer transformer layers than num_layers={layers}"
        return f"the checkpoint has more transformer layers than num_layers={layers}"
    if "hf_model/" in key:
        if missing:
            return "the checkpoint has no text encoder (T5) weights for the language tokenizer"
        return "text encoder (T5) weights of a language tokenizer this config does not have"
    if "/map_head/" in key or (key.startswith("heads_") and "map_head" in key):
        return f"MAP pooling (use_map) {where}: the head's use_map changed"
    match = re.search(r"(observation|task)_tokenizers_([^/]+)/", key) or re.search(
        r"(?:^|/)(obs|task)_([A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)_(?:projection|pos_embedding)", key
    )
    if match:
        kind = "observation" if match.group(1) in ("observation", "obs") else "task"
        return f"{kind} tokenizer {match.group(2)!r} is {where}"
    match = re.search(r"readout_([^/]+)_pos_embedding", key)
    if match:
        return f"readout {match.group(1)!r} is {where}"
    match = re.match(r"heads_([^/]+)/", key)
    if match:
        head = dict(config.heads).get(match.group(1))
        kind = f" ({head.kind})" if head else ""
        return f"head {match.group(1)!r}{kind}: this leaf is {where} — the head type or its options changed"
    return None
