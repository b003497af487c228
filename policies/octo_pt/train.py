"""Finetune Octo in PyTorch: the ``octo_pt`` implementation of the finetune ``Trainer``.

The same recipe as ``octo_jax`` (``policies/octo_jax/train.py``, upstream
``scripts/finetune.py``), in torch, from either checkpoint layout (upstream JAX or octo_pt's
own safetensors)::

    checkpoint ─► config edited for the new data (action dim, horizon, window; image tokenizers
                  whose cameras the data lacks are dropped) ─► new torch model built on an
                  example batch made from the data ─► pretrained tensors copied wherever name
                  *and* shape agree (the compatibility report says what is fresh and why)
    optimizer:    clip to global norm → AdamW (warmup-cosine lr, weight decay only on what
                  upstream calls kernels: Linear/Conv weights, attention q/k/v/out, Fourier
                  kernel); frozen parameters get ``requires_grad=False`` (no backward pass,
                  not in the optimizer: they stay bit-identical)
    loss:         transformer → action head loss, masked by timestep_pad_mask × action_pad_mask
                  (diffusion head: ε-prediction MSE over ``n_diffusion_samples`` noise draws;
                  L1/MSE heads: on actions), × action_dim as upstream

Modes and frozen patterns are upstream's, matched (fnmatch) on each parameter's *Flax* path
(:func:`~evalharness.policies.octo_pt.jax_weights.jax_key_map`, dots for slashes), so both
families freeze exactly the same leaves::

    full            frozen: the checkpoint's optimizer.frozen_keys (default ("*hf_model*",))
    head_only       frozen: "octo_transformer.*"
    head_mlp_only   frozen: "octo_transformer.*", "heads_*.map_head.probe",
                            "heads_*.map_head.MultiHeadDotProductAttention_0.*"

The T5 encoder is always frozen; each distinct instruction is encoded once and cached. Task
conditioning is language only (goal images zeros with ``pad_mask_dict`` False), as evaluation
feeds. The saved checkpoint is octo_pt's torch layout (``OUT/<step>/model.safetensors`` +
``config.json`` + ``example_batch.msgpack`` + statistics + tokenizer), read by ``octo_pt:OUT``.

Options (``?key=value``): those of ``octo_jax`` (``step``, ``tokenizer``, ``window_size``,
``action_horizon``, ``normalization``, ``frozen_keys``, ``keep_action_dim``) plus ``device``
(``cpu`` default, ``cuda``). Randomness (fresh parameters, diffusion times and noise) comes
from torch generators seeded by ``--seed``, drawn on the CPU, so a run does not depend on the
device's RNG; fresh parameters use torch's default initializers, not Flax's.

Under ``torchrun`` (``evalharness finetune --nproc N``) each rank trains on its rows of the
global batch inside DistributedDataParallel, with the draws and the masked mean of the global
batch, so N ranks take the single-process steps (`evalharness.policies.common.distributed`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalharness.policies.common import distributed
from evalharness.policies.common.compat import CompatibilityReport, compare_shapes
from evalharness.policies.common.finetune import (
    DataRequest,
    FinetuneError,
    check_options,
    warmup_cosine,
)
from evalharness.policies.common.normalization import NormalizationType
from evalharness.policies.octo.checkpoint import parse_step
from evalharness.policies.octo.config import (
    ImageTokenizerConfig,
    OctoConfig,
)
from evalharness.policies.octo.explain import octo_explainer
from evalharness.policies.octo.finetune import (
    ALWAYS_FROZEN,
    FINETUNE_OPTIONS,
    FROZEN_KEYS,
    MODES,
    frozen_patterns,
    plan_finetune,
    training_observation,
)
from evalharness.policies.octo.inputs import OctoInputSpec, prepare_tasks
from evalharness.policies.octo.text import T5EncoderConfig, TextTokenizer, copy_tokenizer
from evalharness.policies.octo_pt.checkpoint import (
    LoadedOcto,
    load_octo_pt,
    save_torch_checkpoint,
)
from evalharness.policies.octo_pt.heads import ContinuousActionHead, DiffusionActionHead
from evalharness.policies.octo_pt.jax_weights import LeafMap, jax_key_map, to_jax_shape
from evalharness.policies.octo_pt.model import OctoModel, build_octo_model
from evalharness.policies.octo_pt.policy import to_torch
from evalharness.policies.octo_pt.tokenizers import LanguageTokenizer

log = logging.getLogger(__name__)

__all__ = [
    "ALWAYS_FROZEN",
    "FROZEN_KEYS",
    "MODES",
    "OctoPtTrainer",
    "from_pretrained",
    "frozen_parameters",
    "octo_loss",
]

_OPTIONS = (*FINETUNE_OPTIONS, "device")


# --------------------------------------------------------------------------------------------
# freezing, weight decay, the schedule


def _dotted(leaf: LeafMap) -> str:
    return leaf.jax_key.replace("/", ".")


def frozen_parameters(mapping: Mapping[str, LeafMap], patterns: Sequence[str]) -> list[str]:
    """Torch names of the parameters whose Flax path matches any fnmatch pattern."""
    return [k for k, leaf in mapping.items() if any(fnmatch(_dotted(leaf), p) for p in patterns)]


def _decays(leaf: LeafMap) -> bool:
    # optax's mask in octo_jax: every leaf whose path contains "kernel" (Dense/Conv kernels,
    # attention q/k/v/out kernels, the Fourier-features kernel); not biases, norms, embeddings.
    return "kernel" in leaf.jax_key


# --------------------------------------------------------------------------------------------
# the loss (upstream OctoModule loss_fn + action head .loss)


def _masked_mean(
    x: torch.Tensor, mask: torch.Tensor, shard: distributed.Shard | None = None
) -> torch.Tensor:
    mask = torch.broadcast_to(mask, x.shape).to(x.dtype)
    if shard is None or shard.world == 1:
        return torch.mean(x * mask) / torch.clamp(torch.mean(mask), min=1e-5)
    # Normalized by the global batch's mask count and scaled by the rank count, so the
    # gradient average over ranks is the gradient of the global batch's masked mean.
    numel = x.numel() * shard.world
    density = shard.all_sum(mask.sum()) / numel
    return shard.world * (torch.sum(x * mask) / numel) / torch.clamp(density, min=1e-5)


def octo_loss(
    model: OctoModel,
    head_config: Any,
    batch: Mapping[str, Any],
    generator: torch.Generator,
    shard: distributed.Shard | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Octo's training loss on a prepared batch of tensors (observation, task, action,
    action_pad_mask); diffusion times and noise are drawn from ``generator`` (CPU).

    Under data parallelism (``shard`` of several ranks) the batch is this rank's rows of the
    global batch: times and noise are drawn for the global batch and sliced, and the masked
    mean is the global batch's (`evalharness.policies.common.distributed`)."""
    shard = shard or distributed.Shard()
    obs = batch["observation"]
    pad = obs["timestep_pad_mask"]
    outputs = model.octo_transformer(obs, batch["task"], pad)
    head = model.heads["action"]
    actions = batch["action"]
    mask = pad[:, :, None, None] & batch["action_pad_mask"]
    if isinstance(head, DiffusionActionHead):
        b, w = pad.shape
        flat = torch.clamp(actions.reshape(b, w, -1), -head.max_action, head.max_action)
        n = int(getattr(head_config, "n_diffusion_samples", 1))
        rows = b * shard.world
        time = torch.randint(0, head.diffusion_steps, (n, rows, w, 1), generator=generator)
        noise = torch.randn((n, rows, *flat.shape[1:]), generator=generator)
        time, noise = shard.take(time, dim=1), shard.take(noise, dim=1)
        time, noise = time.to(flat.device), noise.to(flat.device, flat.dtype)
        alpha_hat = head.alpha_hats[time]
        noisy = torch.sqrt(alpha_hat) * flat[None] + torch.sqrt(1 - alpha_hat) * noise
        pred = head(outputs, time, noisy)
        target, mask = noise, mask.reshape(b, w, -1)[None]
    elif isinstance(head, ContinuousActionHead):
        pred = head(outputs)
        target = actions
    else:  # pragma: no cover - build_octo_model makes only these
        raise FinetuneError(f"octo_pt finetune: no loss for head {type(head).__name__}")
    sq = torch.square(pred - target)
    error = torch.abs(pred - target) if head_config.loss_type == "l1" else sq
    # Upstream sums over the action dims instead of averaging.
    loss = _masked_mean(error, mask, shard) * head.action_dim
    mse = _masked_mean(sq, mask, shard) * head.action_dim
    return loss, {"loss": loss.detach(), "mse": mse.detach()}


# --------------------------------------------------------------------------------------------
# the config for the new data (framework-free; mirrors octo_jax.train, which needs JAX)


def _encoder_names(config: OctoConfig) -> dict[str, str]:
    return {
        name: tok.encoder.kind
        for name, tok in config.model.observation_tokenizers
        if isinstance(tok, ImageTokenizerConfig)
    }


# --------------------------------------------------------------------------------------------
# the trainer


class _OctoLoss(torch.nn.Module):
    """The model with `octo_loss` as its forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: OctoModel, head_config: Any, shard: distributed.Shard) -> None:
        super().__init__()
        self.model = model
        self.head_config = head_config
        self.shard = shard

    def forward(
        self, batch: Mapping[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return octo_loss(self.model, self.head_config, batch, generator, self.shard)


class OctoPtTrainer:
    """The ``octo_pt`` finetune trainer (see the module docstring and ``evalharness.finetune``)."""

    family = "octo_pt"
    #: Data parallel under torchrun (`evalharness.policies.common.distributed`).
    data_parallel = "torchrun"

    def __init__(
        self,
        model: OctoModel,
        config: dict[str, Any],
        parsed: OctoConfig,
        example_batch: dict[str, Any],
        t5: T5EncoderConfig | None,
        report: CompatibilityReport,
        statistics: Mapping[str, Any],
        tokenizer: TextTokenizer | None,
        mode: str,
        frozen_patterns: tuple[str, ...],
        options: Any,
        normalization: NormalizationType,
        changes: list[str],
        device: str = "cpu",
    ) -> None:
        self.config = config
        self.parsed = parsed
        self.example_batch = example_batch
        self.t5 = t5
        self.report = report
        self.statistics = dict(statistics)
        self.tokenizer = tokenizer
        self.mode = mode
        self.frozen_patterns = frozen_patterns
        self.changes = changes
        self.shard = distributed.current()
        self.device = torch.device(distributed.device_for(device, self.shard))
        self.model = model.to(self.device).train()
        self.inputs = OctoInputSpec.from_example_batch(example_batch, parsed.window_size)
        head = parsed.model.action_head
        self.head_config = head
        self.data = DataRequest(
            window_size=self.inputs.window_size,
            action_horizon=head.action_horizon,
            action_dim=head.action_dim,
            normalization=normalization.value,
        )
        self.learning_rate = float(options.learning_rate)
        self.warmup_steps = int(options.warmup_steps)
        self.total_steps = int(options.steps)
        self.clip_gradient = float(options.clip_gradient)
        mapping = jax_key_map(model, _encoder_names(parsed))
        self._frozen = frozen_parameters(mapping, frozen_patterns)
        frozen = set(self._frozen)
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, param in self.model.named_parameters():
            if name in frozen:
                param.requires_grad_(False)
            else:
                (decay if _decays(mapping[name]) else no_decay).append(param)
        self.trainable = decay + no_decay
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": float(options.weight_decay)},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=0.0,
            betas=(0.9, 0.999),
            eps=1e-8,
        )
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(options.seed))
        # After freezing: DDP averages the gradients of the parameters that require them.
        self._loss = distributed.wrap_ddp(_OctoLoss(self.model, head, self.shard), self.shard)
        self.step = 0
        self._language: dict[str, torch.Tensor] = {}

    # -- the protocol -------------------------------------------------------------------------

    def frozen_keys(self) -> list[str]:
        """Torch names of the frozen parameters."""
        return list(self._frozen)

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimizer step on a data-layer batch; returns loss, grad_norm, learning_rate."""
        prepared = self.prepare_batch(batch)
        lr = warmup_cosine(self.step, self.learning_rate, self.warmup_steps, self.total_steps)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = self._loss(prepared, self.generator)
        loss.backward()
        grads = [p.grad for p in self.trainable if p.grad is not None]
        norm = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            if grads
            else torch.zeros(())
        )
        if float(norm) >= self.clip_gradient:  # optax.clip_by_global_norm
            scale = self.clip_gradient / norm
            for g in grads:
                g.mul_(scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        out = {k: self.shard.mean(float(v)) for k, v in metrics.items()}
        out.update(grad_norm=float(norm), learning_rate=float(lr))
        return out

    @torch.no_grad()
    def eval_loss(self, batch: Mapping[str, Any], seed: int = 0) -> float:
        """The loss on ``batch`` with the current parameters, without updating them."""
        prepared = self.prepare_batch(batch)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        self.model.eval()
        try:
            return float(octo_loss(self.model, self.head_config, prepared, generator)[0])
        finally:
            self.model.train()

    def save(self, directory: str | Path, step: int) -> Path:
        """Write octo_pt's torch layout (``directory/<step>/model.safetensors`` + config,
        example batch, statistics) and the tokenizer, so ``octo_pt:directory`` loads strictly
        and offline."""
        directory = Path(directory)
        save_torch_checkpoint(
            directory,
            self.model,
            self.config,
            self.example_batch,
            self.statistics,
            step=step,
            t5_config=self.t5,
        )
        copy_tokenizer(self.tokenizer, self.parsed.text_processor, directory)
        return directory

    def state_dict(self) -> bytes:
        """Parameters, optimizer state, generator state and step, for ``--resume``."""
        buffer = io.BytesIO()
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "step": self.step,
            },
            buffer,
        )
        return buffer.getvalue()

    def load_state_dict(self, data: bytes) -> None:
        state = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.step = int(state["step"])

    def policy_string(self, directory: str | Path) -> str:
        """How evaluation loads the saved checkpoint."""
        return f"octo_pt:{directory}"

    # -- batches -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_instructions(self, instructions: Sequence[str]) -> torch.Tensor:
        """(B, tokens, d) T5 embeddings on the device; each distinct instruction encoded once."""
        new = [s for s in dict.fromkeys(instructions) if s not in self._language]
        if new:
            tokenizers = self.model.octo_transformer.task_tokenizers.values()
            t5 = next(
                (t.t5 for t in tokenizers if isinstance(t, LanguageTokenizer) and t.t5 is not None),
                None,
            )
            if self.tokenizer is None or t5 is None:
                raise FinetuneError("the model has no language encoder but the data has text")
            ids = self.tokenizer.encode(new)
            out = t5(
                torch.as_tensor(ids["input_ids"], device=self.device),
                torch.as_tensor(ids["attention_mask"], device=self.device),
            )
            self._language.update(zip(new, out, strict=True))
        return torch.stack([self._language[s] for s in instructions])

    def prepare_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A data-layer batch (``evalharness.data.windows``) → the model's input tensors."""
        observation = training_observation(batch["observation"], self.inputs)
        size = observation["timestep_pad_mask"].shape[0]
        task = prepare_tasks(size, self.inputs)
        if self.parsed.model.language_tokenizer is not None:
            task["pad_mask_dict"]["language_instruction"] = np.ones(size, bool)
        prepared = to_torch(
            {
                "observation": observation,
                "task": task,
                "action": np.asarray(batch["action"], np.float32),
                "action_pad_mask": np.asarray(batch["action_pad_mask"], bool),
            },
            self.device,
        )
        if self.parsed.model.language_tokenizer is not None:
            texts = [str(t) for t in batch["task"]["language_instruction"]]
            prepared["task"]["language_instruction"] = self.encode_instructions(texts)
        return prepared


# --------------------------------------------------------------------------------------------
# building the trainer


def _report(
    pretrained: LoadedOcto,
    model: OctoModel,
    parsed: OctoConfig,
    inputs: OctoInputSpec,
    target: str,
) -> CompatibilityReport:
    """Pretrained torch tensors vs the new model's, by torch name; explanations in upstream's
    names and layouts (as the loader's), from whichever side knows the parameter."""
    old_map = jax_key_map(pretrained.model, _encoder_names(pretrained.config))
    new_map = jax_key_map(model, _encoder_names(parsed))
    explain = octo_explainer(parsed.model, inputs)

    def explain_torch(key: str, ckpt: Any, shape: Any) -> str | None:
        leaf = new_map.get(key) or old_map.get(key)
        if leaf is None:
            return None
        return explain(
            leaf.jax_key,
            to_jax_shape(ckpt, old_map.get(key, leaf)) if ckpt is not None else None,
            to_jax_shape(shape, leaf) if shape is not None else None,
        )

    return compare_shapes(
        {k: tuple(v.shape) for k, v in pretrained.model.state_dict().items()},
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
        explain=explain_torch,
        source=pretrained.name,
        target=target,
    )


def from_pretrained(checkpoint: str, dataset: Any, options: Any) -> OctoPtTrainer:
    """Build the torch finetune model for ``dataset`` from ``checkpoint`` (either layout).

    ``options`` is an ``evalharness.finetune.FinetuneOptions``; its ``family_options`` are this
    module's options (module docstring).
    """
    family = dict(options.family_options)
    check_options(family, _OPTIONS, "octo_pt")
    if options.mode not in FROZEN_KEYS:
        raise FinetuneError(f"--mode {options.mode!r}: expected one of {', '.join(MODES)}")
    pretrained = load_octo_pt(checkpoint, step=parse_step(family.get("step")), strict=True)
    parsed_old = pretrained.config
    old_inputs = OctoInputSpec.from_example_batch(pretrained.example_batch, parsed_old.window_size)
    plan = plan_finetune(
        # save_torch_checkpoint writes its own "octo_pt" entry
        {k: v for k, v in pretrained.raw_config.items() if k != "octo_pt"},
        parsed_old,
        old_inputs,
        pretrained.directory,
        dataset,
        family,
    )
    parsed, example, window = plan.parsed, plan.example, plan.inputs.window_size
    t5 = pretrained.extra.get("t5")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(options.seed))
        model = build_octo_model(parsed.model, example, t5)
    new_inputs = OctoInputSpec.from_example_batch(example, window)
    report = _report(pretrained, model, parsed, new_inputs, f"octo_pt model for {dataset.path}")
    stored = pretrained.model.state_dict()
    state = model.state_dict()
    with torch.no_grad():
        for entry in report.loaded:
            if entry.key in state and entry.source_key in stored:
                state[entry.key].copy_(stored[entry.source_key])
    needed = [e.key for e in report.entries if e.key in state and e.status != "loaded"]

    patterns = frozen_patterns(pretrained.raw_config, options.mode, family)
    frozen = set(frozen_parameters(jax_key_map(model, _encoder_names(parsed)), patterns))
    stuck = [k for k in needed if k in frozen]
    changes = plan.changes
    if stuck:
        changes.append(
            f"warning: {len(stuck)} freshly initialized parameters are frozen in mode "
            f"{options.mode!r} and stay random (e.g. {stuck[0]}); use --mode full"
        )
    return OctoPtTrainer(
        model,
        plan.config,
        parsed,
        example,
        t5,
        report,
        plan.statistics,
        plan.tokenizer,
        options.mode,
        patterns,
        options,
        plan.normalization,
        changes,
        device=family.get("device", "cpu"),
    )
