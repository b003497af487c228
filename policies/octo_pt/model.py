"""Octo in ``torch.nn``: tokenizers, block-causal transformer, action heads.

The same computation as upstream's Flax modules (``octo/model/octo_module.py`` and
``octo/model/components/*``), written so a JAX checkpoint maps onto it leaf by leaf
(:mod:`.jax_weights`). Inputs are the same nested dicts upstream takes::

    observations: image_<k> (B, W, H, W, 3) uint8, timestep_pad_mask (B, W) bool,
                  pad_mask_dict {key: (B, W) bool}
    tasks:        image_<k> (B, H, W, 3) uint8, pad_mask_dict {key: (B,) bool},
                  language_instruction {input_ids, attention_mask} (B, L) int

Parity details (upstream octo-models/octo with flax 0.7.5's defaults): GELU is the tanh
approximation, LayerNorm and GroupNorm use eps 1e-6, StdConv standardizes its kernel with eps
1e-5 on the (population) std, queries are scaled by 1/sqrt(head_dim) before the dot product, and
masked logits are *replaced* by the dtype's minimum (not −inf), so a query whose keys are all
padding attends uniformly instead of producing NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

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
from evalharness.policies.octo_pt.heads import ContinuousActionHead, DiffusionActionHead
from evalharness.policies.octo_pt.t5 import T5Encoder
from evalharness.policies.octo_pt.tokenizers import (
    ImageTokenizer,
    LanguageTokenizer,
    LowdimObsTokenizer,
    PatchEncoder,
    SmallStem,
    regex_filter,
)
from evalharness.policies.octo_pt.transformer import (
    CAUSAL,
    Batch,
    GroupLayout,
    TokenGroup,
    Transformer,
    attention_rule_mask,
)

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
    obs_keys = regex_filter(cfg.obs_stack_keys, sorted(obs))
    if not obs_keys:
        return None  # upstream creates no parameters for a tokenizer without inputs
    channels = sum(_np_shape(obs[k])[-1] for k in obs_keys)
    if cfg.task_stack_keys:
        available = dict(task)
        for key in regex_filter(cfg.task_stack_keys, list(obs)):
            available.setdefault(key, obs[key][:, 0])
        task_keys = regex_filter(cfg.task_stack_keys, sorted(available))
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


__all__ = ["OctoModel", "OctoTransformer", "TransformerSizes", "build_octo_model"]
