"""Octo in flax.linen, leaf-for-leaf compatible with upstream ``octo-models/octo`` checkpoints.

Module and parameter names are upstream's, so a released ``<step>/default/checkpoint`` loads
with no renaming (upstream ``OctoModule`` in ``octo/model/octo_module.py``)::

    octo_transformer/
      observation_tokenizers_<name>/SmallStem16_0/{StdConv_i, GroupNorm_i, embedding}
      task_tokenizers_language/hf_model/...          T5 encoder (t5.py)
      {obs,task}_<name>_projection, {obs,task}_<name>_pos_embedding, readout_<name>_pos_embedding
      BlockTransformer_0/Transformer_0/encoderblock_<i>/..., encoder_norm
    heads_action/diffusion_model/{time_preprocess, cond_encoder, reverse_network}
    heads_action/{map_head, mean_proj}               L1 / MSE heads

The sequence is [task tokens] + for each window step [obs tokens of every tokenizer,
(task tokens again if ``repeat_task_tokens``), readout tokens], with block-causal attention
rules per token group (``BlockTransformer``). Everything is built from the validated
:class:`~evalharness.policies.octo.config.OctoModelConfig`, never from raw config dicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from evalharness.policies.octo.config import (
    ContinuousHeadConfig,
    DiffusionHeadConfig,
    HeadConfig,
    ImageEncoderConfig,
    ImageTokenizerConfig,
    LanguageTokenizerConfig,
    LowdimObsTokenizerConfig,
    OctoModelConfig,
    TokenizerConfig,
    TransformerConfig,
)
from evalharness.policies.octo.text import T5EncoderConfig
from evalharness.policies.octo_jax.t5 import T5Encoder

Data = Mapping[str, Any]


@jax.tree_util.register_dataclass
@dataclass
class TokenGroup:
    """Tokens (..., n, d) and their validity mask (..., n)."""

    tokens: jax.Array
    mask: jax.Array


# --------------------------------------------------------------------------------------------
# image encoders (vit_encoders.py)


def normalize_images(images: jax.Array, kind: str = "default") -> jax.Array:
    """uint8 pixels → [-1, 1] ("default") or ImageNet-standardized ("imagenet")."""
    if kind == "default":
        return images.astype(jnp.float32) / 127.5 - 1.0
    x = images.astype(jnp.float32) / 255
    mean = jnp.tile(jnp.array([0.485, 0.456, 0.406]), images.shape[-1] // 3)
    std = jnp.tile(jnp.array([0.229, 0.224, 0.225]), images.shape[-1] // 3)
    return (x - mean) / std


class StdConv(nn.Module):
    """Convolution whose stored kernel is standardized per output channel at use time."""

    features: int
    kernel_size: int
    stride: int
    padding: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2))
        kernel = kernel / (jnp.std(kernel, axis=(0, 1, 2)) + 1e-5)
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(self.stride, self.stride),
            padding=((self.padding, self.padding), (self.padding, self.padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias


class ImageEncoder(nn.Module):
    """``SmallStem{,16,32}`` (conv stem, then patchify) or ``PatchEncoder`` (patchify only)."""

    config: ImageEncoderConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        x = normalize_images(images, c.img_norm_type)
        if c.kind == "PatchEncoder":
            patch = c.patch_size
        else:
            stages = zip(c.kernel_sizes, c.strides, c.features, c.padding, strict=True)
            for i, (kernel, stride, features, padding) in enumerate(stages):
                x = StdConv(features, kernel, stride, padding, name=f"StdConv_{i}")(x)
                x = nn.GroupNorm(num_groups=32, epsilon=1e-6, name=f"GroupNorm_{i}")(x)
                x = nn.relu(x)
            patch = c.patch_size // 16
        return nn.Conv(
            c.num_features,
            (patch, patch),
            strides=(patch, patch),
            padding="VALID",
            name="embedding",
        )(x)


# --------------------------------------------------------------------------------------------
# tokenizers (tokenizers.py)


def _regex_filter(patterns: Sequence[str], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if any(re.match(p, k) for p in patterns)]


def _pad_mask(tokens: jax.Array, pad_mask_dict: Data | None, keys: Sequence[str]) -> jax.Array:
    """Valid where any of ``keys`` is valid; everything valid when masks are absent (upstream)."""
    if pad_mask_dict is None or not all(k in pad_mask_dict for k in keys):
        return jnp.ones(tokens.shape[:-1])
    mask = jnp.any(jnp.stack([pad_mask_dict[k] for k in keys], axis=-1), axis=-1)
    return jnp.broadcast_to(mask[..., None], tokens.shape[:-1])


class ImageTokenizer(nn.Module):
    """Channel-stacks observation images (+ goal images: early fusion) and encodes each step."""

    config: ImageTokenizerConfig

    @nn.compact
    def __call__(self, observations: Data, tasks: Data, train: bool = False) -> TokenGroup | None:
        c = self.config
        obs_keys = _regex_filter(c.obs_stack_keys, sorted(observations))
        if not obs_keys:
            return None
        inputs = jnp.concatenate([observations[k] for k in obs_keys], axis=-1)
        if c.task_stack_keys:
            tasks = dict(tasks)
            # A goal image the task does not provide is zeros (−1 after normalization).
            for k in _regex_filter(c.task_stack_keys, list(observations)):
                if k not in tasks:
                    tasks[k] = jnp.zeros_like(observations[k][:, 0])
            task_keys = _regex_filter(c.task_stack_keys, sorted(tasks))
            if not task_keys:
                raise ValueError(f"no task inputs match task_stack_keys {c.task_stack_keys}")
            goal = jnp.concatenate([tasks[k] for k in task_keys], axis=-1)
            goal = jnp.repeat(goal[:, None], inputs.shape[1], axis=1)
            inputs = jnp.concatenate([inputs, goal], axis=-1)
        b, t, h, w, ch = inputs.shape
        tokens = ImageEncoder(c.encoder, name=f"{c.encoder.kind}_0")(
            inputs.reshape(b * t, h, w, ch)
        )
        tokens = tokens.reshape(b, t, -1, tokens.shape[-1])
        if c.proper_pad_mask:
            mask = _pad_mask(tokens, observations.get("pad_mask_dict"), obs_keys)
        else:
            mask = jnp.ones(tokens.shape[:-1])
        return TokenGroup(tokens, mask)


class LanguageTokenizer(nn.Module):
    """Instruction tokens from the T5 encoder (``hf_model``), or precomputed embeddings.

    ``tasks["language_instruction"]`` is either ``{input_ids, attention_mask}`` (encoded here)
    or an array of already-encoded tokens (B, n, d) — the adapter's per-instruction cache.
    The token mask ignores T5's attention mask, as upstream does (TODO there).
    """

    config: LanguageTokenizerConfig
    t5: T5EncoderConfig | None = None

    def setup(self) -> None:
        if self.config.encoder is not None:
            if not self.config.is_t5 or self.t5 is None:
                raise ValueError(
                    f"LanguageTokenizer encoder {self.config.encoder!r}: only T5 encoders are "
                    "supported, and their shape must come from the checkpoint's hf_model weights"
                )
            self.hf_model = T5Encoder(self.t5)

    def __call__(self, observations: Data, tasks: Data, train: bool = False) -> TokenGroup | None:
        if "language_instruction" not in tasks:
            return None
        lang = tasks["language_instruction"]
        if isinstance(lang, Mapping):
            if self.config.encoder is None:
                raise ValueError("received token ids but the LanguageTokenizer has no encoder")
            tokens = self.hf_model(lang["input_ids"], lang.get("attention_mask"))
        else:
            tokens = lang[:, None, :] if lang.ndim == 2 else lang
        if not self.config.finetune_encoder:
            tokens = jax.lax.stop_gradient(tokens)
        if self.config.proper_pad_mask:
            mask = _pad_mask(tokens, tasks.get("pad_mask_dict"), ("language_instruction",))
        else:
            mask = jnp.ones(tokens.shape[:-1])
        return TokenGroup(tokens, mask)


class LowdimObsTokenizer(nn.Module):
    """One token per dim of the concatenated low-dim keys: the value, or a one-hot bin."""

    config: LowdimObsTokenizerConfig

    @nn.compact
    def __call__(self, observations: Data, tasks: Data, train: bool = False) -> TokenGroup | None:
        c = self.config
        if not _regex_filter(c.obs_keys, sorted(observations)):
            return None
        parts = []
        for pattern in c.obs_keys:
            for key in sorted(observations):
                if re.match(pattern, key):
                    if observations[key].ndim != 3:
                        raise ValueError(
                            f"LowdimObsTokenizer takes (batch, window, dims) inputs; {key} has "
                            f"shape {observations[key].shape}"
                        )
                    parts.append(observations[key])
        x = jnp.concatenate(parts, axis=-1)
        tokens = jax.nn.one_hot(bin_tokenize(x, c), c.n_bins) if c.discretize else x[..., None]
        return TokenGroup(tokens, jnp.ones(tokens.shape[:-1]))


def bin_tokenize(x: jax.Array, c: LowdimObsTokenizerConfig) -> jax.Array:
    """Upstream ``BinTokenizer``: the bin index of each value (uniform or Gaussian bins)."""
    eps = 1e-6
    if c.bin_type == "uniform":
        thresholds = jnp.linspace(c.low, c.high, c.n_bins + 1)
        x = jnp.clip(x, c.low + eps, c.high - eps)
    else:
        thresholds = norm.ppf(jnp.linspace(eps, 1 - eps, c.n_bins + 1))
    x = x[..., None]
    one_hot = (x < thresholds[1:]) & (x >= thresholds[:-1])
    return jnp.argmax(one_hot, axis=-1)


def make_tokenizer(config: TokenizerConfig, name: str, t5: T5EncoderConfig | None) -> nn.Module:
    if isinstance(config, ImageTokenizerConfig):
        return ImageTokenizer(config, name=name)
    if isinstance(config, LanguageTokenizerConfig):
        return LanguageTokenizer(config, t5, name=name)
    return LowdimObsTokenizer(config, name=name)


# --------------------------------------------------------------------------------------------
# transformer (transformer.py, block_transformer.py)


class MlpBlock(nn.Module):
    mlp_dim: int
    dropout_rate: float = 0.0
    out_dim: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        dense = lambda n: nn.Dense(  # noqa: E731
            n, kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6)
        )
        y = nn.gelu(dense(self.mlp_dim)(x))  # tanh approximation, flax's default
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        y = dense(self.out_dim or x.shape[-1])(y)
        return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


class Encoder1DBlock(nn.Module):
    """Pre-LayerNorm ViT block: x + MHA(LN(x)), then + MLP(LN(·))."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.config
        y = nn.LayerNorm()(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=c.num_attention_heads,
            kernel_init=nn.initializers.xavier_uniform(),
            broadcast_dropout=False,
            dropout_rate=c.attention_dropout_rate,
            deterministic=deterministic,
        )(y, y, mask=mask)
        y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
        x = x + y
        y = nn.LayerNorm()(x)
        y = MlpBlock(c.mlp_dim, c.dropout_rate)(y, deterministic=deterministic)
        return x + y


class Transformer(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.config.num_layers):
            x = Encoder1DBlock(self.config, name=f"encoderblock_{i}")(x, mask, not train)
        return nn.LayerNorm(name="encoder_norm")(x)


# Attention rules, as upstream's AttentionRule enum values.
NEVER, CAUSAL, CURRENT, STRICT_PAST, ALL = range(5)


@dataclass(frozen=True)
class Group:
    """A named token group: prefix (tokens (B, n, d)) or timestep (tokens (B, T, n, d))."""

    name: str
    tokens: jax.Array
    mask: jax.Array
    rules: tuple[tuple[str, int], ...]

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[-2])


def _rule(rules: tuple[tuple[str, int], ...], other: str) -> int:
    """First fnmatch-ing pattern wins; no match = NEVER (upstream ``find_match``)."""
    for pattern, rule in rules:
        if fnmatch(other, pattern):
            return rule
    return NEVER


def rule_mask(
    prefix: Sequence[Group], timestep: Sequence[Group], horizon: int, use_correct_attention: bool
) -> np.ndarray:
    """The (N, N) token-to-token attention pattern implied by the groups' rules.

    Token i's group is found with ``searchsorted(cumsum(sizes), i, side)``. Upstream's
    pre-1.5 code used side="left", which attributes the first token of each group to the
    previous group (obs tokens then see the readout); ``use_correct_attention`` selects "right".
    """
    side: Literal["left", "right"] = "right" if use_correct_attention else "left"
    groups = [*prefix, *timestep]
    n_prefix = sum(g.n_tokens for g in prefix)
    per_step = sum(g.n_tokens for g in timestep)
    total = n_prefix + per_step * horizon
    index = np.arange(total)
    group_of = np.empty(total, dtype=np.int64)
    time_of = np.empty(total, dtype=np.int64)
    if prefix:
        cum = np.cumsum([g.n_tokens for g in prefix])
        group_of[:n_prefix] = np.searchsorted(cum, index[:n_prefix], side=side)
    time_of[:n_prefix] = -1
    rest = index[n_prefix:] - n_prefix
    step, within = np.divmod(rest, per_step)
    cum = np.cumsum([g.n_tokens for g in timestep])
    group_of[n_prefix:] = len(prefix) + np.searchsorted(cum, within, side=side)
    time_of[n_prefix:] = step
    table = np.array([[_rule(g.rules, o.name) for o in groups] for g in groups], dtype=np.int64)
    rule = table[group_of[:, None], group_of[None, :]]
    ti, tj = time_of[:, None], time_of[None, :]
    return (
        ((rule == CAUSAL) & (tj <= ti))
        | ((rule == CURRENT) & (tj == ti))
        | ((rule == STRICT_PAST) & (tj < ti))
        | (rule == ALL)
    )


class BlockTransformer(nn.Module):
    """Runs the transformer over prefix + timestep groups with the block-causal mask."""

    config: TransformerConfig
    use_correct_attention: bool = False

    @nn.compact
    def __call__(
        self, prefix: Sequence[Group], timestep: Sequence[Group], train: bool = False
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        batch, horizon = timestep[0].tokens.shape[:2]
        dim = timestep[0].tokens.shape[-1]
        prefix_tokens = (
            jnp.concatenate([g.tokens for g in prefix], axis=1)
            if prefix
            else jnp.zeros((batch, 0, dim), dtype=jnp.float32)
        )
        step_tokens = jnp.concatenate([g.tokens for g in timestep], axis=2)
        tokens = jnp.concatenate([prefix_tokens, step_tokens.reshape(batch, -1, dim)], axis=1)

        prefix_mask = (
            jnp.concatenate([g.mask for g in prefix], axis=1)
            if prefix
            else jnp.zeros((batch, 0), dtype=bool)
        )
        step_mask = jnp.concatenate([g.mask for g in timestep], axis=2).reshape(batch, -1)
        pad = jnp.concatenate([prefix_mask, step_mask], axis=1)
        rules = rule_mask(prefix, timestep, horizon, self.use_correct_attention)
        mask = jnp.logical_and(rules[None, None], pad[:, None, None, :])

        out = Transformer(self.config, name="Transformer_0")(tokens, mask, train=train)

        n_prefix = prefix_tokens.shape[1]
        prefix_out, step_out = out[:, :n_prefix], out[:, n_prefix:]
        prefix_split = np.cumsum([g.n_tokens for g in prefix])[:-1]
        step_out = step_out.reshape(batch, horizon, -1, dim)
        step_split = np.cumsum([g.n_tokens for g in timestep])[:-1]
        return (
            list(jnp.split(prefix_out, prefix_split, axis=1)) if prefix else [],
            list(jnp.split(step_out, step_split, axis=2)),
        )


class OctoTransformer(nn.Module):
    """Tokenizers → projections + position embeddings → block transformer → named outputs."""

    config: OctoModelConfig
    t5: T5EncoderConfig | None = None

    @nn.compact
    def __call__(
        self,
        observations: Data,
        tasks: Data,
        timestep_pad_mask: jax.Array,
        readouts: Sequence[str] | None = None,
        train: bool = False,
    ) -> dict[str, TokenGroup]:
        c = self.config
        readouts = list(dict(c.readouts)) if readouts is None else list(readouts)
        horizon = timestep_pad_mask.shape[1]
        batch = timestep_pad_mask.shape[0]
        if horizon > c.max_horizon:
            raise ValueError(
                f"window of {horizon} steps exceeds the model's max_horizon {c.max_horizon}"
            )
        task_rules = (("task_*", CAUSAL),)
        obs_rules = (("task_*", CAUSAL), ("obs_*", CAUSAL))
        prefix: list[Group] = []
        steps: list[Group] = []
        for name, tok_config in c.task_tokenizers:
            group = f"task_{name}"
            out = make_tokenizer(tok_config, f"task_tokenizers_{name}", self.t5)(
                observations, tasks, train=train
            )
            if out is None:
                continue
            tokens = nn.Dense(c.token_embedding_size, name=f"{group}_projection")(out.tokens)
            tokens = tokens + self._pos_embedding(group, tokens)
            prefix.append(Group(group, tokens, out.mask, task_rules))
        for name, tok_config in c.observation_tokenizers:
            group = f"obs_{name}"
            out = make_tokenizer(tok_config, f"observation_tokenizers_{name}", self.t5)(
                observations, tasks, train=train
            )
            if out is None:
                continue
            tokens = nn.Dense(c.token_embedding_size, name=f"{group}_projection")(out.tokens)
            tokens = tokens + self._pos_embedding(group, tokens)
            mask = jnp.logical_and(timestep_pad_mask[:, :, None], out.mask)
            steps.append(Group(group, tokens, mask, obs_rules))
        if not steps:
            raise ValueError(
                "no observation tokenizer found its inputs; observation keys: "
                f"{sorted(observations)}"
            )
        if c.repeat_task_tokens:
            window = steps[0].tokens.shape[1]
            for g in list(prefix):
                tokens = jnp.tile(g.tokens[:, None], (1, window, 1, 1))
                mask = jnp.tile(g.mask[:, None], (1, window, 1))
                steps.append(Group(f"obs_{g.name}", tokens, mask, obs_rules))
        counts = dict(c.readouts)
        for name in readouts:
            group = f"readout_{name}"
            tokens = jnp.zeros((batch, horizon, counts[name], c.token_embedding_size))
            tokens = tokens + self._pos_embedding(group, tokens)
            rules = (("task_*", CAUSAL), ("obs_*", CAUSAL), (group, CAUSAL))
            steps.append(Group(group, tokens, jnp.ones((batch, horizon, counts[name])), rules))

        prefix_out, step_out = BlockTransformer(
            c.transformer, c.use_correct_attention, name="BlockTransformer_0"
        )(prefix, steps, train=train)
        outputs = {g.name: TokenGroup(t, g.mask) for g, t in zip(prefix, prefix_out, strict=True)}
        outputs.update(
            {g.name: TokenGroup(t, g.mask) for g, t in zip(steps, step_out, strict=True)}
        )
        if prefix:
            outputs["task"] = TokenGroup(
                jnp.concatenate(prefix_out, axis=-2),
                jnp.concatenate([g.mask for g in prefix], axis=-1),
            )
        obs_pairs = [
            (g, t) for g, t in zip(steps, step_out, strict=True) if g.name.startswith("obs_")
        ]
        outputs["obs"] = TokenGroup(
            jnp.concatenate([t for _, t in obs_pairs], axis=-2),
            jnp.concatenate([g.mask for g, _ in obs_pairs], axis=-1),
        )
        return outputs

    def _pos_embedding(self, group: str, tokens: jax.Array) -> jax.Array:
        if tokens.ndim == 3:
            shape: tuple[int, ...] = (1, *tokens.shape[-2:])
        else:
            shape = (1, self.config.max_horizon, *tokens.shape[-2:])
        embedding = self.param(f"{group}_pos_embedding", nn.initializers.normal(0.02), shape)
        if tokens.ndim == 4:
            embedding = embedding[:, : tokens.shape[1]]
        return jnp.broadcast_to(embedding, tokens.shape)


# --------------------------------------------------------------------------------------------
# heads (action_heads.py, diffusion.py)


class MAPHead(nn.Module):
    """Multi-head attention pooling with a learned probe (big_vision)."""

    num_heads: int = 8
    num_readouts: int = 1

    @nn.compact
    def __call__(self, group: TokenGroup, train: bool = False) -> jax.Array:
        x, mask = group.tokens, group.mask
        *batch_dims, n, d = x.shape
        x = x.reshape(-1, n, d)
        probe = self.param(
            "probe", nn.initializers.xavier_uniform(), (1, self.num_readouts, d), x.dtype
        )
        probe = jnp.tile(probe, [x.shape[0], 1, 1])
        mask = jnp.broadcast_to(
            mask.reshape(-1, n)[:, None, None, :], (x.shape[0], 1, self.num_readouts, n)
        )
        out = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform()
        )(probe, x, mask=mask)
        y = nn.LayerNorm()(out)
        out = out + MlpBlock(4 * d)(y, deterministic=not train)
        return out.reshape(*batch_dims, self.num_readouts, d)


def _pool(group: TokenGroup, map_head: nn.Module | None, train: bool) -> jax.Array:
    if map_head is not None:
        return map_head(group, train=train)[:, :, 0]
    return group.tokens.mean(axis=-2)


class FourierFeatures(nn.Module):
    output_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param(
            "kernel", nn.initializers.normal(0.2), (self.output_size // 2, x.shape[-1]), jnp.float32
        )
        f = 2 * jnp.pi * x.astype(jnp.float32) @ w.T
        return jnp.concatenate([jnp.cos(f), jnp.sin(f)], axis=-1)


class MLP(nn.Module):
    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=nn.initializers.xavier_uniform())(x)
            if i + 1 < len(self.hidden_dims):
                x = nn.swish(x)
        return x


class MLPResNetBlock(nn.Module):
    features: int
    dropout_rate: float = 0.0
    use_layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        residual = x
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        if self.use_layer_norm:
            x = nn.LayerNorm()(x)
        # Two statements: flax numbers Dense_0/Dense_1 in creation order.
        x = nn.swish(nn.Dense(self.features * 4)(x))
        x = nn.Dense(self.features)(x)
        return residual + x


class MLPResNet(nn.Module):
    num_blocks: int
    out_dim: int
    hidden_dim: int
    dropout_rate: float = 0.0
    use_layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Dense(self.hidden_dim, kernel_init=nn.initializers.xavier_uniform())(x)
        for _ in range(self.num_blocks):
            x = MLPResNetBlock(self.hidden_dim, self.dropout_rate, self.use_layer_norm)(x, train)
        x = nn.swish(x)
        return nn.Dense(self.out_dim, kernel_init=nn.initializers.xavier_uniform())(x)


class ScoreActor(nn.Module):
    """ε(noisy actions, step, embedding): Fourier time features → MLP, concat, MLP-ResNet."""

    config: DiffusionHeadConfig

    def setup(self) -> None:
        c = self.config
        self.time_preprocess = FourierFeatures(c.time_dim)
        self.cond_encoder = MLP((2 * c.time_dim, c.time_dim))
        self.reverse_network = MLPResNet(
            c.num_blocks,
            c.action_dim * c.action_horizon,
            c.hidden_dim,
            c.dropout_rate,
            c.use_layer_norm,
        )

    def __call__(
        self, obs_enc: jax.Array, actions: jax.Array, time: jax.Array, train: bool = False
    ) -> jax.Array:
        cond = self.cond_encoder(self.time_preprocess(time), train=train)
        obs_enc = jnp.broadcast_to(obs_enc, (*cond.shape[:-1], obs_enc.shape[-1]))
        return self.reverse_network(jnp.concatenate([cond, obs_enc, actions], axis=-1), train=train)


def cosine_beta_schedule(steps: int, s: float = 0.008) -> np.ndarray:
    """Upstream's cosine schedule in float32.

    Computed with numpy: XLA's float32 ``cos`` changed since jax 0.4.20 and lands further from
    upstream's numbers (1.2e-6) than numpy's float32 does (1.8e-7).
    """
    t = np.linspace(0, steps, steps + 1, dtype=np.float32) / np.float32(steps)
    alphas_cumprod = np.cos((t + s) / (1 + s) * np.pi * 0.5).astype(np.float32) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return np.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999).astype(np.float32)


class DiffusionActionHead(nn.Module):
    """Predicts the noise ε for (time, noisy actions) from the pooled readout embedding."""

    config: DiffusionHeadConfig

    def setup(self) -> None:
        if self.config.use_map:
            self.map_head = MAPHead()
        self.diffusion_model = ScoreActor(self.config)

    def __call__(
        self,
        transformer_outputs: Mapping[str, TokenGroup],
        time: jax.Array | None = None,
        noisy_actions: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        c = self.config
        group = transformer_outputs[c.readout_key]
        embeddings = _pool(group, self.map_head if c.use_map else None, train)
        if time is None or noisy_actions is None:
            # Initialization only (upstream feeds zeros, too).
            time = jnp.zeros((*embeddings.shape[:2], 1), dtype=jnp.float32)
            noisy_actions = jnp.zeros(
                (*embeddings.shape[:2], c.action_dim * c.action_horizon), dtype=jnp.float32
            )
        return self.diffusion_model(embeddings, noisy_actions, time, train=train)


class ContinuousActionHead(nn.Module):
    """``L1ActionHead`` / ``MSEActionHead``: tanh-squashed linear actions (B, W, H, A)."""

    config: ContinuousHeadConfig

    def setup(self) -> None:
        c = self.config
        if c.use_map:
            self.map_head = MAPHead()
        self.mean_proj = nn.Dense(c.action_horizon * c.action_dim)

    def __call__(
        self, transformer_outputs: Mapping[str, TokenGroup], train: bool = False
    ) -> jax.Array:
        c = self.config
        group = transformer_outputs[c.readout_key]
        mean = self.mean_proj(_pool(group, self.map_head if c.use_map else None, train))
        mean = mean.reshape(*mean.shape[:2], c.action_horizon, c.action_dim)
        return jnp.tanh(mean / c.max_action) * c.max_action


def make_head(config: HeadConfig, name: str | None = None) -> nn.Module:
    if isinstance(config, DiffusionHeadConfig):
        return DiffusionActionHead(config, name=name)
    return ContinuousActionHead(config, name=name)


class OctoModule(nn.Module):
    """Transformer + heads in one parameter tree (``octo_transformer``, ``heads_<name>``)."""

    config: OctoModelConfig
    t5: T5EncoderConfig | None = None

    def setup(self) -> None:
        self.octo_transformer = OctoTransformer(self.config, self.t5)
        self.heads = {name: make_head(cfg) for name, cfg in self.config.heads}

    def __call__(
        self, observations: Data, tasks: Data, timestep_pad_mask: jax.Array, train: bool = False
    ) -> tuple[dict[str, TokenGroup], dict[str, jax.Array]]:
        outputs = self.octo_transformer(observations, tasks, timestep_pad_mask, train=train)
        return outputs, {name: head(outputs, train=train) for name, head in self.heads.items()}

    def run_transformer(
        self, observations: Data, tasks: Data, timestep_pad_mask: jax.Array, train: bool = False
    ) -> dict[str, TokenGroup]:
        return self.octo_transformer(observations, tasks, timestep_pad_mask, train=train)


# --------------------------------------------------------------------------------------------
# sampling (DiffusionActionHead.predict_action, ContinuousActionHead.predict_action)


def diffusion_sample(
    head: DiffusionHeadConfig,
    head_params: Any,
    transformer_outputs: Mapping[str, TokenGroup],
    rng: jax.Array,
    embodiment_action_dim: int | None = None,
) -> jax.Array:
    """DDPM sampling exactly as upstream, including its RNG stream: (B, H, A), last window step.

    ``rng`` → (rng, key) = split; x_T = normal(key); then for t = T−1 … 0: ε = net(x, t);
    x = (x − (1−α_t)/√(1−ᾱ_t) ε)/√α_t; (rng, key) = split; x += [t > 0] √β_t z; clip ±max;
    dims ≥ ``embodiment_action_dim`` get the training-time noise √(1−ᾱ_t) z.

    ``rng`` is one key (upstream: the whole batch's noise from one stream) or one key per row,
    shape (B, 2): then each row's noise is that row's own stream (the same split/normal
    recursion per row), so a row's actions do not depend on what else is in the batch.
    """
    module = DiffusionActionHead(head)
    batch, window = transformer_outputs[head.readout_key].tokens.shape[:2]
    flat = head.action_horizon * head.action_dim
    betas = jnp.asarray(cosine_beta_schedule(head.diffusion_steps))
    alphas = 1 - betas
    alpha_hats = jnp.cumprod(alphas)
    mask = jnp.ones((batch, window, head.action_horizon, head.action_dim), dtype=bool)
    if embodiment_action_dim is not None:
        mask = mask.at[..., embodiment_action_dim:].set(False)
    mask = mask.reshape(batch, window, flat)

    per_row = rng.ndim == 2

    def draw(key_chain: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        if per_row:
            pairs = jax.vmap(jax.random.split)(key_chain)
            return pairs[:, 0], jax.vmap(lambda k: jax.random.normal(k, shape[1:]))(pairs[:, 1])
        key_chain, key = jax.random.split(key_chain)
        return key_chain, jax.random.normal(key, shape=shape)

    def step(
        carry: tuple[jax.Array, jax.Array], time: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], None]:
        x, key_chain = carry
        t_input = jnp.broadcast_to(time, (*x.shape[:-1], 1))
        eps: jax.Array = module.apply({"params": head_params}, transformer_outputs, t_input, x)  # type: ignore[assignment]
        x = (1 / jnp.sqrt(alphas[time])) * (
            x - (1 - alphas[time]) / jnp.sqrt(1 - alpha_hats[time]) * eps
        )
        key_chain, z = draw(key_chain, x.shape)
        x = x + (time > 0) * (jnp.sqrt(betas[time]) * z)
        x = jnp.clip(x, -head.max_action, head.max_action)
        x = jnp.where(mask, x, jnp.sqrt(1 - alpha_hats[time]) * z)
        return (x, key_chain), None

    rng, noise = draw(rng, (batch, window, flat))
    (x, _), _ = jax.lax.scan(step, (noise, rng), jnp.arange(head.diffusion_steps - 1, -1, -1))
    return x.reshape(batch, window, head.action_horizon, head.action_dim)[:, -1]


def predict_actions(
    config: OctoModelConfig,
    head_params: Any,
    transformer_outputs: Mapping[str, TokenGroup],
    rng: jax.Array,
    embodiment_action_dim: int | None = None,
) -> jax.Array:
    """Normalized action chunks (B, H, A) for the last window step, for any supported head."""
    head = config.action_head
    if isinstance(head, DiffusionHeadConfig):
        return diffusion_sample(head, head_params, transformer_outputs, rng, embodiment_action_dim)
    mean: jax.Array = ContinuousActionHead(head).apply({"params": head_params}, transformer_outputs)  # type: ignore[assignment]
    return mean[:, -1]
