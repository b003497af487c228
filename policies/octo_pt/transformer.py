"""Octo's block-causal transformer in torch: attention rules, ViT blocks, MAP pooling.

Parity with upstream's Flax modules (``octo/model/components/block_transformer.py``,
``transformer.py``): GELU is the tanh approximation, LayerNorm eps is 1e-6, queries are scaled
by 1/sqrt(head_dim) before the dot product, and masked logits are *replaced* by the dtype's
minimum (not −inf), so a query whose keys are all padding attends uniformly instead of
producing NaN.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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
