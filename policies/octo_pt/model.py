"""Octo in ``torch.nn``: tokenizers, block-causal transformer, action heads.

The same computation as upstream's Flax modules (``octo/model/octo_module.py`` and
``octo/model/components/*``), written so a JAX checkpoint maps onto it leaf by leaf
(:mod:`.jax_weights`). Inputs are the same nested dicts upstream takes::

    observations: image_<k> (B, W, H, W, 3) uint8, timestep_pad_mask (B, W) bool,
                  pad_mask_dict {key: (B, W) bool}
    tasks:        image_<k> (B, H, W, 3) uint8, pad_mask_dict {key: (B,) bool},
                  language_instruction {input_ids, attention_mask} (B, L) int

Parity details (``shared/facts/OCTO.md`` §2, §4): GELU is the tanh approximation, LayerNorm and
GroupNorm use eps 1e-6, StdConv standardizes its kernel with eps 1e-5 on the (population) std,
queries are scaled by 1/sqrt(head_dim) before the dot product, and masked logits are *replaced*
by the dtype's minimum (not −inf), so a query whose keys are all padding attends uniformly
instead of producing NaN.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evalharness.policies.octo.config import (
    ContinuousHeadConfig,
    DiffusionHeadConfig,
    ImageEncoderConfig,
    ImageTokenizerConfig,
    LanguageTokenizerConfig,
    LowdimObsTokenizerConfig,
    OctoModelConfig,
)
from evalharness.policies.octo.text import T5EncoderConfig
from evalharness.policies.octo_pt.t5 import T5Encoder

Batch = Mapping[str, Any]

LN_EPS = 1e-6  # flax.linen.LayerNorm / GroupNorm default
STD_CONV_EPS = 1e-5  # octo vit_encoders.weight_standardize


@dataclass
class TokenGroup:
    """Tokens (..., n_tokens, E) and their validity mask (..., n_tokens) bool."""

    tokens: torch.Tensor
    mask: torch.Tensor


# --------------------------------------------------------------------------------------------
# attention rules


CAUSAL, CURRENT, STRICT_PAST, ALL, NEVER = "causal", "current", "strict_past", "all", "never"


@dataclass(frozen=True)
class GroupLayout:
    """One token group in the sequence: its name, token count and attention rules."""

    name: str
    num_tokens: int
    rules: tuple[tuple[str, str], ...]  # (fnmatch pattern, rule), first match wins
    prefix: bool


def _rule_for(layout: GroupLayout, other: str) -> str:
    for pattern, rule in layout.rules:
        if fnmatch.fnmatch(other, pattern):
            return rule
    return NEVER


def attention_rule_mask(
    prefix: Sequence[GroupLayout],
    timestep: Sequence[GroupLayout],
    horizon: int,
    use_correct_attention: bool,
) -> np.ndarray:
    """The (N, N) bool mask of which token (row) may attend to which (column).

    ``use_correct_attention=False`` reproduces the released v1.0 models: upstream attributed
    the first token of each group to the previous group (``searchsorted(..., side="left")``).
    """
    side: Literal["left", "right"] = "right" if use_correct_attention else "left"
    n_prefix = sum(g.num_tokens for g in prefix)
    per_step = sum(g.num_tokens for g in timestep)
    total = n_prefix + per_step * horizon
    index = np.arange(total)
    is_prefix = index < n_prefix
    group = np.empty(total, dtype=np.int64)
    step = np.full(total, -1, dtype=np.int64)
    if prefix:
        group[is_prefix] = np.searchsorted(
            np.cumsum([g.num_tokens for g in prefix]), index[is_prefix], side=side
        )
    rest = index[~is_prefix] - n_prefix
    step[~is_prefix], within = np.divmod(rest, per_step)
    group[~is_prefix] = len(prefix) + np.searchsorted(
        np.cumsum([g.num_tokens for g in timestep]), within, side=side
    )
    groups = list(prefix) + list(timestep)
    codes = {NEVER: 0, CAUSAL: 1, CURRENT: 2, STRICT_PAST: 3, ALL: 4}
    table = np.array([[codes[_rule_for(g, o.name)] for o in groups] for g in groups])
    rule = table[group[:, None], group[None, :]]
    t_self, t_other = step[:, None], step[None, :]
    return (
        ((rule == 1) & (t_other <= t_self))
        | ((rule == 2) & (t_other == t_self))
        | ((rule == 3) & (t_other < t_self))
        | (rule == 4)
    )


# --------------------------------------------------------------------------------------------
# transformer


class MultiHeadAttention(nn.Module):
    """flax ``MultiHeadDotProductAttention`` with separate q/k/v/out projections."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        kv_dim = dim if kv_dim is None else kv_dim
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, q_in: torch.Tensor, kv_in: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, n_q, _ = q_in.shape
        n_k = kv_in.shape[1]

        def split(t: torch.Tensor, n: int) -> torch.Tensor:
            return t.view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)

        # flax scales the query, not the logits; the order matters at the 1e-7 level only.
        q = split(self.query(q_in), n_q) / math.sqrt(self.head_dim)
        k = split(self.key(kv_in), n_k)
        v = split(self.value(kv_in), n_k)
        logits = torch.matmul(q, k.transpose(-1, -2))
        if mask is not None:
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        weights = F.softmax(logits, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, n_q, -1)
        return self.out(out)


class MlpBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class EncoderBlock(nn.Module):
    """Pre-LN ViT block (upstream ``Encoder1DBlock``); dropout is inference-only here (0)."""

    def __init__(self, dim: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attention = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MlpBlock(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, num_layers: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [EncoderBlock(dim, mlp_dim, num_heads) for _ in range(num_layers)]
        )
        self.encoder_norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.encoder_norm(x)


class MAPHead(nn.Module):
    """Multi-head attention pooling (big_vision), as upstream ``MAPHead``."""

    def __init__(
        self, dim: int, num_heads: int = 8, num_readouts: int = 1, mlp_dim: int | None = None
    ) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, num_readouts, dim))
        nn.init.xavier_uniform_(self.probe)
        self.attention = MultiHeadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MlpBlock(dim, mlp_dim or 4 * dim)

    def forward(self, group: TokenGroup) -> torch.Tensor:
        *batch_dims, length, dim = group.tokens.shape
        x = group.tokens.reshape(-1, length, dim)
        probe = self.probe.expand(x.shape[0], -1, -1)
        mask = group.mask.reshape(-1, 1, 1, length).bool()
        out = self.attention(probe, x, mask)
        out = out + self.mlp(self.norm(out))
        return out.reshape(*batch_dims, -1, dim)


# --------------------------------------------------------------------------------------------
# tokenizers


def normalize_images(images: torch.Tensor, norm_type: str = "default") -> torch.Tensor:
    """uint8 (..., C) → float; ``default`` = [-1, 1] as upstream, ``imagenet`` per RGB triple."""
    x = images.float()
    if norm_type == "default":
        return x / 127.5 - 1.0
    if norm_type == "imagenet":
        mean = torch.tensor([0.485, 0.456, 0.406], device=x.device)
        std = torch.tensor([0.229, 0.224, 0.225], device=x.device)
        tiles = x.shape[-1] // 3
        return (x / 255 - mean.repeat(tiles)) / std.repeat(tiles)
    raise ValueError(f"unknown img_norm_type {norm_type!r}; expected 'default' or 'imagenet'")


class StdConv2d(nn.Conv2d):
    """Conv with weight standardization at use time; the stored kernel stays raw (as in JAX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + STD_CONV_EPS)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class SmallStem(nn.Module):
    """Conv stem then patchify (upstream ``SmallStem``; ``SmallStem16`` = patch_size 16).

    Each stage is StdConv → GroupNorm(32 groups, eps 1e-6) → ReLU, then a ``patch_size // 16``
    conv named ``embedding`` to ``num_features``.
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 32,
        kernel_sizes: Sequence[int] = (3, 3, 3, 3),
        strides: Sequence[int] = (2, 2, 2, 2),
        features: Sequence[int] = (32, 96, 192, 384),
        padding: Sequence[int] = (1, 1, 1, 1),
        num_features: int = 512,
        img_norm_type: str = "default",
    ) -> None:
        super().__init__()
        self.img_norm_type = img_norm_type
        convs, norms = [], []
        channels = in_channels
        for kernel, stride, width, pad in zip(
            kernel_sizes, strides, features, padding, strict=True
        ):
            convs.append(StdConv2d(channels, width, kernel, stride=stride, padding=pad))
            norms.append(nn.GroupNorm(32, width, eps=LN_EPS))
            channels = width
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        patch = patch_size // 16
        self.embedding = nn.Conv2d(channels, num_features, patch, stride=patch)
        self._geometry = [(k, s, p) for k, s, p in zip(kernel_sizes, strides, padding, strict=True)]
        self._patch = patch

    def num_tokens(self, height: int, width: int) -> int:
        """How many tokens an image of this size becomes."""
        for kernel, stride, pad in self._geometry:
            height = (height + 2 * pad - kernel) // stride + 1
            width = (width + 2 * pad - kernel) // stride + 1
        return (height // self._patch) * (width // self._patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) uint8 → (N, h, w, num_features)."""
        x = normalize_images(images, self.img_norm_type).permute(0, 3, 1, 2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x)))
        return self.embedding(x).permute(0, 2, 3, 1)


class PatchEncoder(nn.Module):
    """Patchify only (upstream ``PatchEncoder``)."""

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 32,
        num_features: int = 512,
        img_norm_type: str = "default",
    ) -> None:
        super().__init__()
        self.img_norm_type = img_norm_type
        self._patch = patch_size
        self.embedding = nn.Conv2d(in_channels, num_features, patch_size, stride=patch_size)

    def num_tokens(self, height: int, width: int) -> int:
        return (height // self._patch) * (width // self._patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_images(images, self.img_norm_type).permute(0, 3, 1, 2)
        return self.embedding(x).permute(0, 2, 3, 1)


def _regex_filter(patterns: Sequence[str], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if any(re.match(p, k) for p in patterns)]


def _pad_mask(
    pad_mask_dict: Mapping[str, torch.Tensor] | None,
    keys: Sequence[str],
    shape: torch.Size,
    device: torch.device,
) -> torch.Tensor:
    """Upstream ``generate_proper_pad_mask``: valid if any stacked key is; all valid if unknown."""
    if pad_mask_dict is None or not all(k in pad_mask_dict for k in keys):
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.stack([pad_mask_dict[k].bool() for k in keys], dim=-1).any(dim=-1)
    return mask[..., None].expand(shape)


class ImageTokenizer(nn.Module):
    """Stacks obs images (and the task's goal images, early fusion) on channels, then encodes."""

    def __init__(
        self,
        encoder: nn.Module,
        obs_stack_keys: Sequence[str],
        task_stack_keys: Sequence[str] = (),
        proper_pad_mask: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.obs_stack_keys = tuple(obs_stack_keys)
        self.task_stack_keys = tuple(task_stack_keys)
        self.proper_pad_mask = proper_pad_mask

    def stack_keys(self, observations: Batch) -> list[str]:
        return _regex_filter(self.obs_stack_keys, sorted(observations))

    def forward(self, observations: Batch, tasks: Batch) -> TokenGroup | None:
        obs_keys = self.stack_keys(observations)
        if not obs_keys:
            return None  # upstream skips the tokenizer and drops its group
        inputs = torch.cat([observations[k] for k in obs_keys], dim=-1)
        if self.task_stack_keys:
            tasks = dict(tasks)
            for key in _regex_filter(self.task_stack_keys, list(observations)):
                if key not in tasks:  # no goal image: zeros, as upstream
                    tasks[key] = torch.zeros_like(observations[key][:, 0])
            task_keys = _regex_filter(self.task_stack_keys, sorted(tasks))
            if not task_keys:
                raise ValueError(f"no task inputs match task_stack_keys {self.task_stack_keys}")
            goal = torch.cat([tasks[k] for k in task_keys], dim=-1)
            goal = goal[:, None].expand(-1, inputs.shape[1], *goal.shape[1:])
            inputs = torch.cat([inputs, goal], dim=-1)
        b, t = inputs.shape[:2]
        features = self.encoder(inputs.reshape(b * t, *inputs.shape[2:]))
        tokens = features.reshape(b, t, -1, features.shape[-1])
        if self.proper_pad_mask:
            mask = _pad_mask(
                observations.get("pad_mask_dict"), obs_keys, tokens.shape[:-1], tokens.device
            )
        else:
            mask = torch.ones(tokens.shape[:-1], dtype=torch.bool, device=tokens.device)
        return TokenGroup(tokens, mask)


class LanguageTokenizer(nn.Module):
    """T5-encodes ``language_instruction`` token ids; or passes precomputed embeddings through.

    The mask ignores T5's attention mask (upstream TODO): all tokens are valid iff
    ``pad_mask_dict["language_instruction"]``.
    """

    def __init__(self, t5: T5Encoder | None, proper_pad_mask: bool = True) -> None:
        super().__init__()
        self.t5 = t5
        self.proper_pad_mask = proper_pad_mask

    def forward(self, observations: Batch, tasks: Batch) -> TokenGroup | None:
        if "language_instruction" not in tasks:
            return None
        language = tasks["language_instruction"]
        if isinstance(language, Mapping):
            if self.t5 is None:
                raise ValueError("got language token ids but this tokenizer has no encoder")
            tokens = self.t5(language["input_ids"], language.get("attention_mask"))
        else:
            tokens = language[:, None, :] if language.ndim == 2 else language
        if self.proper_pad_mask:
            mask = _pad_mask(
                tasks.get("pad_mask_dict"),
                ("language_instruction",),
                tokens.shape[:-1],
                tokens.device,
            )
        else:
            mask = torch.ones(tokens.shape[:-1], dtype=torch.bool, device=tokens.device)
        return TokenGroup(tokens, mask)


class LowdimObsTokenizer(nn.Module):
    """One token per low-dimensional observation value (e.g. ``proprio``).

    Raw values as 1-feature tokens by default; with ``discretize`` a one-hot over ``n_bins``
    bins (uniform in [low, high], or Gaussian quantiles), as upstream's ``BinTokenizer``.
    """

    thresholds: torch.Tensor

    def __init__(
        self,
        obs_keys: Sequence[str],
        discretize: bool = False,
        n_bins: int = 256,
        bin_type: str = "uniform",
        low: float = 0.0,
        high: float = 1.0,
    ) -> None:
        super().__init__()
        self.obs_keys = tuple(obs_keys)
        self.discretize = discretize
        self.n_bins = n_bins
        self.bin_type = bin_type
        self.low, self.high = low, high
        if bin_type == "uniform":
            thresholds = np.linspace(low, high, n_bins + 1, dtype=np.float32)
        else:
            from statistics import NormalDist

            quantiles = np.linspace(1e-6, 1 - 1e-6, n_bins + 1, dtype=np.float32)
            thresholds = np.array([NormalDist().inv_cdf(float(q)) for q in quantiles], np.float32)
        self.register_buffer("thresholds", torch.as_tensor(thresholds), persistent=False)

    def keys(self, observations: Batch) -> list[str]:
        # Upstream's order: pattern by pattern, matching keys sorted within each pattern.
        return [k for p in self.obs_keys for k in sorted(observations) if re.match(p, k)]

    def forward(self, observations: Batch, tasks: Batch) -> TokenGroup | None:
        keys = self.keys(observations)
        if not keys:
            return None
        values = torch.cat([observations[k].float() for k in keys], dim=-1)
        if self.discretize:
            if self.bin_type == "uniform":
                values = values.clamp(self.low + 1e-6, self.high - 1e-6)
            v = values[..., None]
            hot = (v < self.thresholds[1:]) & (v >= self.thresholds[:-1])
            tokens = F.one_hot(hot.to(torch.uint8).argmax(-1), self.n_bins).to(values.dtype)
        else:
            tokens = values[..., None]
        mask = torch.ones(tokens.shape[:-1], dtype=torch.bool, device=tokens.device)
        return TokenGroup(tokens, mask)


# --------------------------------------------------------------------------------------------
# Octo transformer


@dataclass(frozen=True)
class TransformerSizes:
    """What the block transformer needs from ``config["model"]``."""

    token_embedding_size: int
    num_layers: int
    mlp_dim: int
    num_attention_heads: int
    max_horizon: int = 10
    repeat_task_tokens: bool = False
    use_correct_attention: bool = False


class OctoTransformer(nn.Module):
    """Tokenize, project, add position embeddings, run the block-causal transformer.

    ``task_tokens`` / ``obs_tokens`` give each tokenizer's token count (from the example batch,
    as upstream sizes its position embeddings by ``jax.eval_shape``); ``tokenizer_dims`` its
    output width (the projection's input).
    """

    def __init__(
        self,
        sizes: TransformerSizes,
        task_tokenizers: Mapping[str, nn.Module],
        observation_tokenizers: Mapping[str, nn.Module],
        readouts: Mapping[str, int],
        task_tokens: Mapping[str, int],
        obs_tokens: Mapping[str, int],
        tokenizer_dims: Mapping[str, int],
    ) -> None:
        super().__init__()
        e = sizes.token_embedding_size
        self.sizes = sizes
        self.task_tokenizers = nn.ModuleDict(dict(task_tokenizers))
        self.observation_tokenizers = nn.ModuleDict(dict(observation_tokenizers))
        self.readouts = dict(readouts)
        self.projections = nn.ModuleDict()
        self.pos_embeddings = nn.ParameterDict()
        for name in self.task_tokenizers:
            self.projections[f"task_{name}"] = nn.Linear(tokenizer_dims[f"task_{name}"], e)
            self.pos_embeddings[f"task_{name}"] = nn.Parameter(
                0.02 * torch.randn(task_tokens[name], e)
            )
        for name in self.observation_tokenizers:
            self.projections[f"obs_{name}"] = nn.Linear(tokenizer_dims[f"obs_{name}"], e)
            self.pos_embeddings[f"obs_{name}"] = nn.Parameter(
                0.02 * torch.randn(sizes.max_horizon, obs_tokens[name], e)
            )
        for name, count in self.readouts.items():
            self.pos_embeddings[f"readout_{name}"] = nn.Parameter(
                0.02 * torch.randn(sizes.max_horizon, count, e)
            )
        self.transformer = Transformer(
            e, sizes.num_layers, sizes.mlp_dim, sizes.num_attention_heads
        )
        self._mask_cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def tokenize(self, observations: Batch, tasks: Batch) -> dict[str, TokenGroup]:
        """Raw tokenizer outputs, before projection (``tokenizer_outputs`` in the reference)."""
        out: dict[str, TokenGroup] = {}
        for name, tok in self.task_tokenizers.items():
            group = tok(observations, tasks)
            if group is not None:
                out[f"task_{name}"] = group
        for name, tok in self.observation_tokenizers.items():
            group = tok(observations, tasks)
            if group is not None:
                out[f"obs_{name}"] = group
        return out

    def _rule_mask(
        self,
        prefix: list[GroupLayout],
        steps: list[GroupLayout],
        horizon: int,
        device: torch.device,
    ) -> torch.Tensor:
        key = (tuple(prefix), tuple(steps), horizon, str(device))
        if key not in self._mask_cache:
            mask = attention_rule_mask(prefix, steps, horizon, self.sizes.use_correct_attention)
            self._mask_cache[key] = torch.as_tensor(mask, device=device)
        return self._mask_cache[key]

    def forward(
        self,
        observations: Batch,
        tasks: Batch,
        timestep_pad_mask: torch.Tensor,
        readouts: Sequence[str] | None = None,
    ) -> dict[str, TokenGroup]:
        readouts = list(self.readouts) if readouts is None else list(readouts)
        unknown = set(readouts) - set(self.readouts)
        if unknown:
            raise ValueError(
                f"readouts {sorted(unknown)} are not in the model's {sorted(self.readouts)}"
            )
        horizon = timestep_pad_mask.shape[1]
        if horizon > self.sizes.max_horizon:
            raise ValueError(
                f"window {horizon} exceeds the model's max_horizon {self.sizes.max_horizon}"
            )
        batch = timestep_pad_mask.shape[0]
        e = self.sizes.token_embedding_size
        task_rules = (("task_*", CAUSAL),)
        obs_rules = (("task_*", CAUSAL), ("obs_*", CAUSAL))

        raw = self.tokenize(observations, tasks)
        prefix: list[tuple[GroupLayout, TokenGroup]] = []
        steps: list[tuple[GroupLayout, TokenGroup]] = []
        for name, group in raw.items():
            tokens = self.projections[name](group.tokens)
            pos = self.pos_embeddings[name]
            if name.startswith("task_"):
                tokens = tokens + pos
                prefix.append(
                    (
                        GroupLayout(name, tokens.shape[1], task_rules, True),
                        TokenGroup(tokens, group.mask),
                    )
                )
            else:
                tokens = tokens + pos[:horizon]
                mask = timestep_pad_mask[:, :, None].bool() & group.mask
                steps.append(
                    (GroupLayout(name, tokens.shape[2], obs_rules, False), TokenGroup(tokens, mask))
                )
        if self.sizes.repeat_task_tokens:
            for layout, group in list(prefix):
                tokens = group.tokens[:, None].expand(-1, horizon, -1, -1)
                mask = group.mask[:, None].expand(-1, horizon, -1)
                steps.append(
                    (
                        GroupLayout(f"obs_{layout.name}", layout.num_tokens, obs_rules, False),
                        TokenGroup(tokens, mask),
                    )
                )
        device = timestep_pad_mask.device
        for name in readouts:
            count = self.readouts[name]
            tokens = self.pos_embeddings[f"readout_{name}"][:horizon].expand(batch, -1, -1, -1)
            mask = torch.ones(batch, horizon, count, dtype=torch.bool, device=device)
            group_name = f"readout_{name}"
            rules = (("task_*", CAUSAL), ("obs_*", CAUSAL), (group_name, CAUSAL))
            steps.append((GroupLayout(group_name, count, rules, False), TokenGroup(tokens, mask)))
        if not steps:
            raise ValueError(
                "no observation tokens: none of the model's observation keys are present"
            )

        prefix_tokens = [g.tokens for _, g in prefix] or [torch.zeros(batch, 0, e, device=device)]
        step_tokens = torch.cat([g.tokens for _, g in steps], dim=2).reshape(batch, -1, e)
        x = torch.cat([*prefix_tokens, step_tokens], dim=1)
        prefix_mask = [g.mask for _, g in prefix] or [
            torch.zeros(batch, 0, dtype=torch.bool, device=device)
        ]
        step_mask = torch.cat([g.mask for _, g in steps], dim=2).reshape(batch, -1)
        pad = torch.cat([*prefix_mask, step_mask], dim=1)
        rule = self._rule_mask([p for p, _ in prefix], [s for s, _ in steps], horizon, device)
        mask = rule[None, None] & pad[:, None, None, :]

        out = self.transformer(x, mask)

        outputs: dict[str, TokenGroup] = {}
        n_prefix = sum(p.num_tokens for p, _ in prefix)
        start = 0
        for layout, group in prefix:
            outputs[layout.name] = TokenGroup(out[:, start : start + layout.num_tokens], group.mask)
            start += layout.num_tokens
        step_out = out[:, n_prefix:].reshape(batch, horizon, -1, e)
        start = 0
        for layout, group in steps:
            outputs[layout.name] = TokenGroup(
                step_out[:, :, start : start + layout.num_tokens], group.mask
            )
            start += layout.num_tokens
        if prefix:
            names = [p.name for p, _ in prefix]
            outputs["task"] = TokenGroup(
                torch.cat([outputs[n].tokens for n in names], dim=1),
                torch.cat([outputs[n].mask for n in names], dim=1),
            )
        obs_names = [s.name for s, _ in steps if s.name.startswith("obs_")]
        if obs_names:
            outputs["obs"] = TokenGroup(
                torch.cat([outputs[n].tokens for n in obs_names], dim=2),
                torch.cat([outputs[n].mask for n in obs_names], dim=2),
            )
        return outputs


# --------------------------------------------------------------------------------------------
# heads


def cosine_beta_schedule(steps: int, s: float = 0.008) -> np.ndarray:
    """Upstream's schedule, computed in float32 like ``jnp`` does."""
    t = np.linspace(0, steps, steps + 1, dtype=np.float32) / np.float32(steps)
    alphas_cumprod = (
        np.cos((t + np.float32(s)) / np.float32(1 + s) * np.float32(np.pi) * np.float32(0.5)) ** 2
    )
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return np.clip(betas, 0, 0.999).astype(np.float32)


class FourierFeatures(nn.Module):
    """Learnable Fourier time features: ``[cos 2π t Wᵀ, sin 2π t Wᵀ]``; W stored (out/2, in)."""

    def __init__(self, output_size: int, input_dim: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.2 * torch.randn(output_size // 2, input_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t @ self.weight.T
        return torch.cat([torch.cos(f), torch.sin(f)], dim=-1)


class MLPResNetBlock(nn.Module):
    def __init__(self, features: int, use_layer_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(features, eps=LN_EPS) if use_layer_norm else nn.Identity()
        self.fc1 = nn.Linear(features, 4 * features)
        self.fc2 = nn.Linear(4 * features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.silu(self.fc1(self.norm(x))))


class ScoreNetwork(nn.Module):
    """Upstream ``ScoreActor``: Fourier time → MLP cond; [cond, obs, noisy actions] → MLPResNet."""

    def __init__(
        self,
        obs_dim: int,
        out_dim: int,
        time_dim: int,
        num_blocks: int,
        hidden_dim: int,
        use_layer_norm: bool,
    ) -> None:
        super().__init__()
        self.time_preprocess = FourierFeatures(time_dim)
        self.cond_fc1 = nn.Linear(time_dim, 2 * time_dim)
        self.cond_fc2 = nn.Linear(2 * time_dim, time_dim)
        self.input_proj = nn.Linear(time_dim + obs_dim + out_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            [MLPResNetBlock(hidden_dim, use_layer_norm) for _ in range(num_blocks)]
        )
        self.output_proj = nn.Linear(hidden_dim, out_dim)

    def forward(
        self, obs_enc: torch.Tensor, actions: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        cond = self.cond_fc2(F.silu(self.cond_fc1(self.time_preprocess(time.to(obs_enc.dtype)))))
        obs_enc = obs_enc.expand(*cond.shape[:-1], obs_enc.shape[-1])
        x = self.input_proj(torch.cat([cond, obs_enc, actions], dim=-1))
        for block in self.blocks:
            x = block(x)
        return self.output_proj(F.silu(x))


def _pool(readout: TokenGroup, map_head: MAPHead | None) -> torch.Tensor:
    if map_head is not None:
        return map_head(readout)[:, :, 0]
    return readout.tokens.mean(dim=-2)


class DiffusionActionHead(nn.Module):
    """DDPM head over the pooled readout: 20 cosine-schedule steps, clipped to ±max_action."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_hats: torch.Tensor

    def __init__(
        self,
        readout_key: str,
        embedding_dim: int,
        action_horizon: int = 1,
        action_dim: int = 7,
        use_map: bool = False,
        max_action: float = 5.0,
        time_dim: int = 32,
        num_blocks: int = 3,
        hidden_dim: int = 256,
        use_layer_norm: bool = True,
        diffusion_steps: int = 20,
    ) -> None:
        super().__init__()
        self.readout_key = readout_key
        self.action_horizon = action_horizon
        self.action_dim = action_dim
        self.max_action = max_action
        self.diffusion_steps = diffusion_steps
        self.map_head = MAPHead(embedding_dim) if use_map else None
        self.diffusion_model = ScoreNetwork(
            embedding_dim,
            action_horizon * action_dim,
            time_dim,
            num_blocks,
            hidden_dim,
            use_layer_norm,
        )
        betas = torch.as_tensor(cosine_beta_schedule(diffusion_steps))
        alphas = 1 - betas
        # Non-persistent: a function of the config, not weights to save.
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas", alphas, persistent=False)
        self.register_buffer("alpha_hats", torch.cumprod(alphas, 0), persistent=False)

    def embeddings(self, outputs: Mapping[str, TokenGroup]) -> torch.Tensor:
        return _pool(outputs[self.readout_key], self.map_head)

    def forward(
        self, outputs: Mapping[str, TokenGroup], time: torch.Tensor, noisy_actions: torch.Tensor
    ) -> torch.Tensor:
        """One score-network call: predicted noise (B, W, H·A)."""
        return self.diffusion_model(self.embeddings(outputs), noisy_actions, time)

    def predict_action(
        self,
        outputs: Mapping[str, TokenGroup],
        generator: torch.Generator | None = None,
        embodiment_action_dim: int | None = None,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Denoise to actions (B, H, A) for the last window step.

        ``noise`` = (initial noise (B, W, H·A), per-iteration noise (steps, B, W, H·A)) replaces
        drawing from ``generator``, e.g. to replay upstream's JAX draws. ``trajectory``, if given,
        receives x after every iteration.
        """
        emb = self.embeddings(outputs)
        batch, window = emb.shape[:2]
        flat = self.action_horizon * self.action_dim
        shape = (batch, window, flat)
        if noise is None:
            x = torch.randn(shape, generator=generator, device=emb.device, dtype=emb.dtype)
        else:
            x = noise[0].to(emb.device, emb.dtype)
        keep = torch.ones(self.action_horizon, self.action_dim, dtype=torch.bool, device=emb.device)
        if embodiment_action_dim is not None:
            keep[:, embodiment_action_dim:] = False
        keep = keep.reshape(flat)
        for i, t in enumerate(range(self.diffusion_steps - 1, -1, -1)):
            time = torch.full((batch, window, 1), float(t), device=emb.device, dtype=emb.dtype)
            eps = self.diffusion_model(emb, x, time)
            alpha_1 = 1 / torch.sqrt(self.alphas[t])
            alpha_2 = (1 - self.alphas[t]) / torch.sqrt(1 - self.alpha_hats[t])
            x = alpha_1 * (x - alpha_2 * eps)
            if noise is None:
                z = torch.randn(shape, generator=generator, device=emb.device, dtype=emb.dtype)
            else:
                z = noise[1][i].to(emb.device, emb.dtype)
            if t > 0:
                x = x + torch.sqrt(self.betas[t]) * z
            x = torch.clamp(x, -self.max_action, self.max_action)
            # Dimensions the embodiment lacks get the noise seen in training, as upstream.
            x = torch.where(keep, x, torch.sqrt(1 - self.alpha_hats[t]) * z)
            if trajectory is not None:
                trajectory.append(x)
        return x.reshape(batch, window, self.action_horizon, self.action_dim)[:, -1]


class ContinuousActionHead(nn.Module):
    """``tanh(Dense(pooled) / max) · max`` (upstream ``L1ActionHead`` / ``MSEActionHead``)."""

    def __init__(
        self,
        readout_key: str,
        embedding_dim: int,
        action_horizon: int = 1,
        action_dim: int = 7,
        use_map: bool = True,
        max_action: float = 5.0,
    ) -> None:
        super().__init__()
        self.readout_key = readout_key
        self.action_horizon = action_horizon
        self.action_dim = action_dim
        self.max_action = max_action
        self.map_head = MAPHead(embedding_dim) if use_map else None
        self.mean_proj = nn.Linear(embedding_dim, action_horizon * action_dim)

    def forward(self, outputs: Mapping[str, TokenGroup]) -> torch.Tensor:
        mean = self.mean_proj(_pool(outputs[self.readout_key], self.map_head))
        mean = mean.reshape(*mean.shape[:2], self.action_horizon, self.action_dim)
        return torch.tanh(mean / self.max_action) * self.max_action

    def predict_action(
        self,
        outputs: Mapping[str, TokenGroup],
        generator: torch.Generator | None = None,
        embodiment_action_dim: int | None = None,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self(outputs)[:, -1]


ActionHead = DiffusionActionHead | ContinuousActionHead


class OctoModel(nn.Module):
    """Octo: ``octo_transformer`` + ``heads`` (one per head name, e.g. ``action``)."""

    def __init__(self, octo_transformer: OctoTransformer, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.octo_transformer = octo_transformer
        self.heads = nn.ModuleDict(dict(heads))

    def forward(
        self, observations: Batch, tasks: Batch, timestep_pad_mask: torch.Tensor
    ) -> dict[str, TokenGroup]:
        return self.octo_transformer(observations, tasks, timestep_pad_mask)

    def sample_actions(
        self,
        observations: Batch,
        tasks: Batch,
        generator: torch.Generator | None = None,
        embodiment_action_dim: int | None = None,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        head: str = "action",
    ) -> torch.Tensor:
        """Normalized actions (B, action_horizon, action_dim) for the last window step."""
        outputs = self.octo_transformer(observations, tasks, observations["timestep_pad_mask"])
        action_head = self.heads[head]
        assert isinstance(action_head, (DiffusionActionHead, ContinuousActionHead))
        return action_head.predict_action(
            outputs, generator=generator, embodiment_action_dim=embodiment_action_dim, noise=noise
        )


# --------------------------------------------------------------------------------------------
# building from the config


def _np_shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(value))


def _image_tokenizer(
    name: str, cfg: ImageTokenizerConfig, obs: Mapping[str, Any], task: Mapping[str, Any]
) -> tuple[ImageTokenizer, int, int] | None:
    obs_keys = _regex_filter(cfg.obs_stack_keys, sorted(obs))
    if not obs_keys:
        return None  # upstream creates no parameters for a tokenizer without inputs
    channels = sum(_np_shape(obs[k])[-1] for k in obs_keys)
    if cfg.task_stack_keys:
        available = dict(task)
        for key in _regex_filter(cfg.task_stack_keys, list(obs)):
            available.setdefault(key, obs[key][:, 0])
        task_keys = _regex_filter(cfg.task_stack_keys, sorted(available))
        channels += sum(_np_shape(available[k])[-1] for k in task_keys)
    height, width = _np_shape(obs[obs_keys[0]])[2:4]
    enc: ImageEncoderConfig = cfg.encoder
    encoder: SmallStem | PatchEncoder
    if enc.kind == "PatchEncoder":
        encoder = PatchEncoder(channels, enc.patch_size, enc.num_features, enc.img_norm_type)
    else:
        encoder = SmallStem(
            channels,
            enc.patch_size,
            enc.kernel_sizes,
            enc.strides,
            enc.features,
            enc.padding,
            enc.num_features,
            enc.img_norm_type,
        )
    tok = ImageTokenizer(encoder, cfg.obs_stack_keys, cfg.task_stack_keys, cfg.proper_pad_mask)
    return tok, encoder.num_tokens(height, width), enc.num_features


def build_octo_model(
    config: OctoModelConfig,
    example_batch: Mapping[str, Any],
    t5_config: T5EncoderConfig | None = None,
) -> OctoModel:
    """The torch Octo a config describes, sized by its example batch (as upstream's init).

    Token counts (hence position-embedding shapes) come from the example batch's image sizes
    and instruction length, exactly as ``jax.eval_shape(module.init, example_batch)`` sizes
    them upstream. ``t5_config`` is required when the model has a T5 language tokenizer.
    """
    obs = example_batch.get("observation", {})
    task = example_batch.get("task", {})
    e = config.token_embedding_size
    task_tokenizers: dict[str, nn.Module] = {}
    obs_tokenizers: dict[str, nn.Module] = {}
    task_tokens: dict[str, int] = {}
    obs_tokens: dict[str, int] = {}
    dims: dict[str, int] = {}
    for name, tcfg in config.task_tokenizers:
        if not isinstance(tcfg, LanguageTokenizerConfig):
            raise ValueError(
                f"task tokenizer {name!r} ({tcfg.kind}) is not supported by octo_pt; "
                "released Octo models use a LanguageTokenizer (goal images are fused early)"
            )
        language = task.get("language_instruction")
        if language is None:
            continue
        if isinstance(language, Mapping):
            if not tcfg.is_t5 or t5_config is None:
                raise ValueError(
                    f"task tokenizer {name!r} encodes token ids with {tcfg.encoder!r}; octo_pt "
                    "needs a T5 encoder config (read from the checkpoint's weights)"
                )
            task_tokenizers[name] = LanguageTokenizer(T5Encoder(t5_config), tcfg.proper_pad_mask)
            task_tokens[name] = _np_shape(language["input_ids"])[-1]
            dims[f"task_{name}"] = t5_config.d_model
        else:
            shape = _np_shape(language)
            task_tokenizers[name] = LanguageTokenizer(None, tcfg.proper_pad_mask)
            task_tokens[name] = 1 if len(shape) == 2 else shape[-2]
            dims[f"task_{name}"] = shape[-1]
    for name, ocfg in config.observation_tokenizers:
        if isinstance(ocfg, ImageTokenizerConfig):
            built = _image_tokenizer(name, ocfg, obs, task)
            if built is None:
                continue
            obs_tokenizers[name], obs_tokens[name], dims[f"obs_{name}"] = built
        elif isinstance(ocfg, LowdimObsTokenizerConfig):
            tok = LowdimObsTokenizer(
                ocfg.obs_keys, ocfg.discretize, ocfg.n_bins, ocfg.bin_type, ocfg.low, ocfg.high
            )
            keys = tok.keys(obs)
            if not keys:
                continue
            obs_tokenizers[name] = tok
            obs_tokens[name] = sum(_np_shape(obs[k])[-1] for k in keys)
            dims[f"obs_{name}"] = ocfg.token_features
        else:
            raise ValueError(
                f"observation tokenizer {name!r} ({ocfg.kind}) is not supported by octo_pt"
            )
    sizes = TransformerSizes(
        token_embedding_size=e,
        num_layers=config.transformer.num_layers,
        mlp_dim=config.transformer.mlp_dim,
        num_attention_heads=config.transformer.num_attention_heads,
        max_horizon=config.max_horizon,
        repeat_task_tokens=config.repeat_task_tokens,
        use_correct_attention=config.use_correct_attention,
    )
    transformer = OctoTransformer(
        sizes, task_tokenizers, obs_tokenizers, dict(config.readouts), task_tokens, obs_tokens, dims
    )
    heads: dict[str, nn.Module] = {}
    for name, hcfg in config.heads:
        if isinstance(hcfg, DiffusionHeadConfig):
            heads[name] = DiffusionActionHead(
                hcfg.readout_key,
                e,
                hcfg.action_horizon,
                hcfg.action_dim,
                hcfg.use_map,
                hcfg.max_action,
                hcfg.time_dim,
                hcfg.num_blocks,
                hcfg.hidden_dim,
                hcfg.use_layer_norm,
                hcfg.diffusion_steps,
            )
        elif isinstance(hcfg, ContinuousHeadConfig):
            heads[name] = ContinuousActionHead(
                hcfg.readout_key,
                e,
                hcfg.action_horizon,
                hcfg.action_dim,
                hcfg.use_map,
                hcfg.max_action,
            )
    return OctoModel(transformer, heads)


__all__ = [
    "ContinuousActionHead",
    "DiffusionActionHead",
    "ImageTokenizer",
    "LanguageTokenizer",
    "LowdimObsTokenizer",
    "OctoModel",
    "OctoTransformer",
    "PatchEncoder",
    "SmallStem",
    "T5Encoder",
    "T5EncoderConfig",
    "TokenGroup",
    "TransformerSizes",
    "attention_rule_mask",
    "build_octo_model",
    "cosine_beta_schedule",
]
