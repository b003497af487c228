"""A T5 encoder in plain torch: Octo's language tokenizer, without `transformers`.

Octo encodes the instruction with the encoder half of T5 (``FlaxT5EncoderModel`` upstream) and
stores its weights inside the Octo checkpoint, so nothing needs the hub. The parameter names
follow transformers' torch ``T5EncoderModel`` (``shared.weight``,
``encoder.block.0.layer.0.SelfAttention.q.weight``, ...), so a torch T5 state dict loads as is.
The encoder's shape (:class:`~evalharness.policies.octo.text.T5EncoderConfig`) is read from
the checkpoint's weights by the shared text module.

T5 specifics that matter for parity: RMS layer norm (no mean, no bias), unscaled attention
logits, one relative-position bias computed in block 0 and shared by every block, padding as
an additive bias of the dtype's minimum.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evalharness.policies.octo.text import T5EncoderConfig


class T5LayerNorm(nn.Module):
    """RMS norm: scale only, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bidirectional bucket of every (query, key) offset, (length, length) int64.

    Computed in float64 numpy, as the Flax encoder does, so bucket edges cannot flip.
    """
    context = np.arange(length)[:, None]
    memory = np.arange(length)[None, :]
    relative = memory - context
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    relative = np.abs(relative)
    max_exact = half // 2
    is_small = relative < max_exact
    with np.errstate(divide="ignore"):
        large = max_exact + (
            np.log(np.maximum(relative, 1) / max_exact)
            / math.log(max_distance / max_exact)
            * (half - max_exact)
        ).astype(np.int64)
    large = np.minimum(large, half - 1)
    return buckets + np.where(is_small, relative, large)


class T5Attention(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_relative_bias: bool) -> None:
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.num_heads = config.num_heads
        self.d_kv = config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_heads)

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        index = torch.as_tensor(buckets, device=device)
        bias = self.relative_attention_bias(index)  # (L, L, H)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, H, L, L)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, self.d_kv).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) + bias  # T5 does not scale logits
        weights = F.softmax(scores.float(), dim=-1).to(scores.dtype)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, length, -1)
        return self.o(out)


class T5SelfAttentionLayer(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_relative_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_bias)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseReluDense(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(F.relu(self.wi(x)))


class T5DenseGatedGeluDense(nn.Module):
    """T5 v1.1 / FLAN feed-forward: ``wo(gelu_tanh(wi_0 x) * wi_1 x)``."""

    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class T5FeedForwardLayer(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.DenseReluDense: nn.Module = (
            T5DenseGatedGeluDense(config) if config.gated else T5DenseReluDense(config)
        )
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_relative_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [T5SelfAttentionLayer(config, has_relative_bias), T5FeedForwardLayer(config)]
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.layer[1](self.layer[0](x, bias))


class T5Stack(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            [T5Block(config, has_relative_bias=i == 0) for i in range(config.num_layers)]
        )
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)


class T5Encoder(nn.Module):
    """``last_hidden_state = T5Encoder(config)(input_ids, attention_mask)``, (B, L, d_model)."""

    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"T5 input_ids must be integer token ids, got {input_ids.dtype}")
        x = self.shared(input_ids)
        length = input_ids.shape[1]
        block0 = self.encoder.block[0]
        assert isinstance(block0, T5Block)
        layer0 = block0.layer[0]
        assert isinstance(layer0, T5SelfAttentionLayer)
        first = layer0.SelfAttention
        bias = first.position_bias(length, x.device).to(x.dtype)
        if attention_mask is not None:
            # Additive minimum, as upstream: a padded key gets zero weight, and a row whose
            # keys are all padding stays finite (uniform) instead of NaN.
            pad = torch.where(
                attention_mask[:, None, None, :].bool(),
                torch.zeros((), dtype=x.dtype, device=x.device),
                torch.full((), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device),
            )
            bias = bias + pad
        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)

    def load_state_dict_compat(self, state: dict[str, torch.Tensor]) -> None:
        """Load a transformers ``T5EncoderModel`` state dict (its tied embedding copy is dropped)."""
        state = {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}
        self.load_state_dict(state, strict=True)
