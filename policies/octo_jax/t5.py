"""The T5 encoder in flax.linen, parameter-compatible with ``transformers``' ``FlaxT5EncoderModel``.

``transformers`` 5 dropped its Flax models, but every released Octo checkpoint carries the T5
encoder weights under ``octo_transformer/task_tokenizers_language/hf_model`` in Flax layout.
This module reads exactly that subtree::

    shared/embedding                                          (vocab, d_model)
    encoder/block/<i>/layer/0/SelfAttention/{q,k,v,o}/kernel  (d_model, heads·d_kv) / (heads·d_kv, d_model)
    encoder/block/0/layer/0/SelfAttention/relative_attention_bias/embedding  (buckets, heads)
    encoder/block/<i>/layer/0/layer_norm/weight               (d_model,)
    encoder/block/<i>/layer/1/DenseReluDense/{wi,wo}/kernel   (wi_0 + wi_1 when gated)
    encoder/block/<i>/layer/1/layer_norm/weight
    encoder/final_layer_norm/weight

Numerics follow the Flax original: RMS layer norm in float32, no 1/sqrt(d) attention scaling
(T5 folds it into the weights), relative position buckets computed once in block 0 and shared
by every block, masked keys get −1e4 added before the softmax.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evalharness.policies.octo.text import T5EncoderConfig

__all__ = ["T5Encoder", "relative_position_bucket"]


class T5LayerNorm(nn.Module):
    """Root-mean-square norm with a learned scale (``weight``), no bias, no mean subtraction."""

    size: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.ones, (self.size,))
        variance = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        return weight * (x / jnp.sqrt(variance + self.eps))


def relative_position_bucket(
    relative_position: jax.Array, num_buckets: int = 32, max_distance: int = 128
) -> jax.Array:
    """Bidirectional T5 bucket of ``memory − query`` positions (exact below num_buckets/4, log above)."""
    num_buckets //= 2
    buckets = (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log(0) at distance 0 is discarded by the where below.
    large = max_exact + (
        jnp.log(distance / max_exact)
        / jnp.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    )
    large = jnp.minimum(large, num_buckets - 1)
    return (buckets + jnp.where(is_small, distance, large)).astype(jnp.int32)


class T5SelfAttention(nn.Module):
    config: T5EncoderConfig
    has_relative_bias: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask_bias: jax.Array, position_bias: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        c = self.config
        dense = lambda n, name: nn.Dense(n, use_bias=False, name=name)  # noqa: E731
        batch, length = x.shape[:2]
        q = dense(c.inner_dim, "q")(x).reshape(batch, length, c.num_heads, c.d_kv)
        k = dense(c.inner_dim, "k")(x).reshape(batch, length, c.num_heads, c.d_kv)
        v = dense(c.inner_dim, "v")(x).reshape(batch, length, c.num_heads, c.d_kv)
        if position_bias is None:
            table = nn.Embed(
                c.relative_attention_num_buckets, c.num_heads, name="relative_attention_bias"
            )
            positions = jnp.arange(length, dtype=jnp.int32)
            buckets = relative_position_bucket(
                positions[None, :] - positions[:, None],
                c.relative_attention_num_buckets,
                c.relative_attention_max_distance,
            )
            position_bias = table(buckets).transpose(2, 0, 1)[None] + mask_bias
        # The Flax original multiplies q by sqrt(d_kv) and lets flax's attention divide it
        # back out; doing the same keeps float rounding identical.
        depth = q.shape[-1]
        q = q * jnp.sqrt(depth).astype(q.dtype)
        q = q / jnp.sqrt(depth).astype(q.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) + position_bias
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, c.inner_dim)
        return dense(c.d_model, "o")(out), position_bias


class T5LayerSelfAttention(nn.Module):
    config: T5EncoderConfig
    has_relative_bias: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask_bias: jax.Array, position_bias: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        normed = T5LayerNorm(
            self.config.d_model, self.config.layer_norm_epsilon, name="layer_norm"
        )(x)
        out, position_bias = T5SelfAttention(
            self.config, self.has_relative_bias, name="SelfAttention"
        )(normed, mask_bias, position_bias)
        return x + out, position_bias


class T5DenseReluDense(nn.Module):
    config: T5EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        if c.gated:
            gate = jax.nn.gelu(nn.Dense(c.d_ff, use_bias=False, name="wi_0")(x), approximate=True)
            h = gate * nn.Dense(c.d_ff, use_bias=False, name="wi_1")(x)
        else:
            h = jax.nn.relu(nn.Dense(c.d_ff, use_bias=False, name="wi")(x))
        return nn.Dense(c.d_model, use_bias=False, name="wo")(h)


class T5LayerFF(nn.Module):
    config: T5EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        normed = T5LayerNorm(
            self.config.d_model, self.config.layer_norm_epsilon, name="layer_norm"
        )(x)
        return x + T5DenseReluDense(self.config, name="DenseReluDense")(normed)


class T5Block(nn.Module):
    """``encoder/block/<i>/layer/{0: self-attention, 1: feed-forward}``."""

    config: T5EncoderConfig
    has_relative_bias: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask_bias: jax.Array, position_bias: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        layer = _Layers(self.config, self.has_relative_bias, name="layer")
        return layer(x, mask_bias, position_bias)


class _Layers(nn.Module):
    config: T5EncoderConfig
    has_relative_bias: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask_bias: jax.Array, position_bias: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        x, position_bias = T5LayerSelfAttention(self.config, self.has_relative_bias, name="0")(
            x, mask_bias, position_bias
        )
        return T5LayerFF(self.config, name="1")(x), position_bias


class _Stack(nn.Module):
    config: T5EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
        blocks = _Blocks(self.config, name="block")
        x = blocks(x, mask_bias)
        return T5LayerNorm(
            self.config.d_model, self.config.layer_norm_epsilon, name="final_layer_norm"
        )(x)


class _Blocks(nn.Module):
    config: T5EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
        position_bias = None
        for i in range(self.config.num_layers):
            x, position_bias = T5Block(self.config, has_relative_bias=i == 0, name=str(i))(
                x, mask_bias, position_bias
            )
        return x


class T5Encoder(nn.Module):
    """``FlaxT5EncoderModel.module``: ``(input_ids, attention_mask) → last_hidden_state``.

    Dropout is omitted: Octo always runs its text encoder deterministically (frozen).
    """

    config: T5EncoderConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        c = self.config
        shared = nn.Embed(c.vocab_size, c.d_model, name="shared")
        x = shared(input_ids.astype(jnp.int32))
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, dtype=jnp.int32)
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e4).astype(jnp.float32)
        return _Stack(c, name="encoder")(x, mask_bias)
