"""Finetune a JAX Octo checkpoint: the ``octo_jax`` implementation of the finetune ``Trainer``.

Upstream's ``scripts/finetune.py`` top to bottom, on evalharness data::

    checkpoint ─► config edited for the new data (action dim, horizon, window; image tokenizers
                  whose cameras the data lacks are dropped) ─► new model built on an example
                  batch made from the data ─► pretrained leaves merged wherever name *and*
                  shape agree (the compatibility report says what is fresh and why)
    optimizer:    clip_by_global_norm → AdamW(warmup-cosine lr, weight decay on kernels only),
                  frozen leaves (fnmatch on dotted paths) → optax.set_to_zero via multi_transform
    loss:         transformer(train) → action head loss, masked by timestep_pad_mask ×
                  action_pad_mask (diffusion head: ε-prediction MSE; L1/MSE heads: on actions),
                  × action_dim as upstream

Modes (upstream ``finetune_config.py``)::

    full            frozen: the checkpoint's optimizer.frozen_keys (default ("*hf_model*",))
    head_only       frozen: "octo_transformer.*"
    head_mlp_only   frozen: "octo_transformer.*", "heads_*.map_head.probe",
                            "heads_*.map_head.MultiHeadDotProductAttention_0.*"

The T5 encoder (``*hf_model*``) is always frozen; instructions are encoded once per distinct
string and cached, as the policy adapter does. Frozen leaves additionally get a
``stop_gradient`` in the loss, so XLA drops their backward pass (``head_only`` is much cheaper
than ``full``) — set_to_zero alone would still compute their gradients.

Task conditioning is language only (upstream's ``language_conditioned``): goal images are
zeros with ``pad_mask_dict`` False, which is what evaluation feeds.

Options (``?key=value`` on the policy string or ``--option key=value``): ``step`` (checkpoint
step to start from), ``tokenizer`` (folder with tokenizer.json), ``window_size``,
``action_horizon``, ``normalization`` (``normal`` | ``bounds``), ``frozen_keys`` (extra
comma-separated fnmatch patterns), ``keep_action_dim`` (``true``: pad narrower data actions to
the checkpoint's dim instead of building a new head; the default pads narrower and rebuilds
for wider).

Data parallel over every ``jax.devices()``, as upstream's finetune script: each batch is
sharded along its batch axis over a device mesh, parameters and optimizer state replicated
(`evalharness.policies.common.distributed.JaxMesh`); one device runs without a mesh.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from evalharness.policies.common import distributed
from evalharness.policies.common.compat import (
    CompatibilityReport,
    compare_shapes,
    flatten_tree,
    merge_params,
    unflatten_tree,
)
from evalharness.policies.common.finetune import DataRequest, FinetuneError, check_options
from evalharness.policies.common.normalization import NormalizationType
from evalharness.policies.octo.checkpoint import parse_step
from evalharness.policies.octo.config import (
    DiffusionHeadConfig,
    OctoConfig,
)
from evalharness.policies.octo.explain import octo_explainer
from evalharness.policies.octo.finetune import (
    FINETUNE_OPTIONS,
    FROZEN_KEYS,
    MODES,
    frozen_patterns,
    plan_finetune,
    training_observation,
)
from evalharness.policies.octo.inputs import OctoInputSpec, prepare_tasks
from evalharness.policies.octo.text import TextTokenizer, copy_tokenizer
from evalharness.policies.octo_jax.loader import (
    LoadedOcto,
    build_module,
    init_params,
    load_octo,
    param_shapes,
    save_octo,
)
from evalharness.policies.octo_jax.model import (
    ContinuousActionHead,
    DiffusionActionHead,
    OctoModule,
    cosine_beta_schedule,
    make_head,
)
from evalharness.policies.octo_jax.t5 import T5Encoder

log = logging.getLogger(__name__)

__all__ = [
    "FROZEN_KEYS",
    "MODES",
    "OctoJaxTrainer",
    "OptimizerConfig",
    "from_pretrained",
    "frozen_mask",
    "make_optimizer",
    "octo_loss",
]

_OPTIONS = FINETUNE_OPTIONS


# --------------------------------------------------------------------------------------------
# freezing and the optimizer


def _dotted(path: Sequence[Any]) -> str:
    return ".".join(str(getattr(p, "key", p)) for p in path)


def frozen_mask(params: Any, patterns: Sequence[str]) -> Any:
    """A bool tree: True where the leaf's dotted path matches any fnmatch pattern."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(fnmatch(_dotted(path), p) for p in patterns), params
    )


@dataclass(frozen=True)
class OptimizerConfig:
    """The static part of the optimizer (the learning rate is fed per step)."""

    frozen_patterns: tuple[str, ...]
    weight_decay: float = 0.01
    clip_gradient: float = 1.0


def make_optimizer(params: Any, config: OptimizerConfig) -> optax.GradientTransformation:
    """Upstream ``create_optimizer`` + ``freeze_weights``, without the learning-rate factor.

    ``clip_by_global_norm → scale_by_adam → add_decayed_weights`` is ``optax.adamw`` minus its
    final ``scale_by_learning_rate``; the train step multiplies by ``-learning_rate`` itself,
    so one compiled step serves every schedule (mu is kept in float32, not bfloat16). Weight
    decay applies only to leaves whose path contains "kernel"; frozen leaves get
    ``set_to_zero`` so they stay bit-identical.
    """
    decay = jax.tree_util.tree_map_with_path(lambda path, _: "kernel" in _dotted(path), params)
    trainable = optax.chain(
        optax.clip_by_global_norm(config.clip_gradient),
        optax.scale_by_adam(),
        optax.add_decayed_weights(config.weight_decay, mask=decay),
    )
    labels = jax.tree.map(
        lambda frozen: "frozen" if frozen else "trainable",
        frozen_mask(params, config.frozen_patterns),
    )
    return optax.multi_transform({"trainable": trainable, "frozen": optax.set_to_zero()}, labels)


# --------------------------------------------------------------------------------------------
# the loss (upstream OctoModule loss_fn + action head .loss)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = jnp.broadcast_to(mask, x.shape)
    return jnp.mean(x * mask) / jnp.clip(jnp.mean(mask), 1e-5, None)


def octo_loss(
    module: OctoModule,
    params: Any,
    batch: Mapping[str, Any],
    rng: jax.Array,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Octo's training loss on a prepared batch (observation, task, action, action_pad_mask)."""
    config = module.config
    head = config.action_head
    obs = batch["observation"]
    pad = obs["timestep_pad_mask"]
    dropout_rng, noise_rng = jax.random.split(rng)
    outputs = module.apply(
        {"params": params},
        obs,
        batch["task"],
        pad,
        train=train,
        rngs={"dropout": dropout_rng},
        method=OctoModule.run_transformer,
    )
    actions = batch["action"]
    mask = pad[:, :, None, None] & batch["action_pad_mask"]
    head_params = {"params": params["heads_action"]}
    if isinstance(head, DiffusionHeadConfig):
        b, w = pad.shape
        flat = actions.reshape(b, w, -1)
        flat = jnp.clip(flat, -head.max_action, head.max_action)
        alpha_hats = jnp.cumprod(1 - jnp.asarray(cosine_beta_schedule(head.diffusion_steps)))
        time_key, eps_key = jax.random.split(noise_rng)
        n = head.n_diffusion_samples
        time = jax.random.randint(time_key, (n, b, w, 1), 0, head.diffusion_steps)
        noise = jax.random.normal(eps_key, (n, *flat.shape))
        noisy = jnp.sqrt(alpha_hats[time]) * flat[None] + jnp.sqrt(1 - alpha_hats[time]) * noise
        pred: jax.Array = DiffusionActionHead(head).apply(  # type: ignore[assignment]
            head_params, outputs, time, noisy, train=train, rngs={"dropout": dropout_rng}
        )
        target, mask = noise, mask.reshape(b, w, -1)[None]
    else:
        pred = ContinuousActionHead(head).apply(  # type: ignore[assignment]
            head_params, outputs, train=train, rngs={"dropout": dropout_rng}
        )
        target = actions
    error = jnp.abs(pred - target) if head.loss_type == "l1" else jnp.square(pred - target)
    # Upstream sums over the action dims instead of averaging.
    loss = _masked_mean(error, mask) * head.action_dim
    mse = _masked_mean(jnp.square(pred - target), mask) * head.action_dim
    return loss, {"loss": loss, "mse": mse}


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    rng: jax.Array
    step: jax.Array


@partial(jax.jit, static_argnums=(0, 1))
def _train_step(
    module: OctoModule,
    optimizer: OptimizerConfig,
    state: TrainState,
    batch: Mapping[str, Any],
    learning_rate: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    # Module-level and keyed on hashable configs: trainers for the same model share one
    # compiled step (tests, --resume, benchmarks) instead of recompiling.
    tx = make_optimizer(state.params, optimizer)
    frozen = frozen_mask(state.params, optimizer.frozen_patterns)
    rng, key = jax.random.split(state.rng)

    def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        # Frozen leaves are constants here: no backward pass is built for them.
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
        return octo_loss(module, params, batch, key, train=True)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: -learning_rate * u, updates)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=learning_rate)
    return TrainState(params, opt_state, rng, state.step + 1), metrics


@partial(jax.jit, static_argnums=0)
def _eval_loss(module: OctoModule, params: Any, batch: Mapping[str, Any], rng: jax.Array) -> Any:
    return octo_loss(module, params, batch, rng, train=False)[0]


@partial(jax.jit, static_argnums=0)
def _encode_text(t5: Any, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return T5Encoder(t5).apply({"params": params}, ids, mask)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# the config for the new data


# --------------------------------------------------------------------------------------------
# the trainer


class OctoJaxTrainer:
    """A JAX Octo model being finetuned; implements ``evalharness.finetune.Trainer``."""

    family = "octo_jax"

    def __init__(
        self,
        pretrained: LoadedOcto,
        config: dict[str, Any],
        parsed: OctoConfig,
        example_batch: dict[str, Any],
        params: Any,
        report: CompatibilityReport,
        statistics: Mapping[str, Any],
        tokenizer: TextTokenizer | None,
        mode: str,
        frozen_patterns: tuple[str, ...],
        options: Any,
        normalization: NormalizationType,
        changes: list[str],
    ) -> None:
        self.pretrained = pretrained
        self.config = config
        self.parsed = parsed
        self.example_batch = example_batch
        self.report = report
        self.statistics = dict(statistics)
        self.tokenizer = tokenizer
        self.mode = mode
        self.frozen_patterns = frozen_patterns
        self.changes = changes
        self.module = build_module(parsed, pretrained.t5)
        self.inputs = OctoInputSpec.from_example_batch(example_batch, parsed.window_size)
        head = parsed.model.action_head
        self.data = DataRequest(
            window_size=self.inputs.window_size,
            action_horizon=head.action_horizon,
            action_dim=head.action_dim,
            normalization=normalization.value,
        )
        self.schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=options.learning_rate,
            warmup_steps=options.warmup_steps,
            decay_steps=max(options.steps, options.warmup_steps + 1),
            end_value=0.0,
        )
        params = jax.tree.map(jnp.asarray, params)
        self.frozen = frozen_mask(params, frozen_patterns)
        self.optimizer = OptimizerConfig(
            tuple(frozen_patterns), float(options.weight_decay), float(options.clip_gradient)
        )
        self.state = TrainState(
            params,
            make_optimizer(params, self.optimizer).init(params),
            jax.random.PRNGKey(options.seed),
            jnp.asarray(0, dtype=jnp.int32),
        )
        # Data parallel over jax.devices(): batches sharded, the train state replicated.
        self.mesh = distributed.JaxMesh.create(int(options.batch_size))
        if self.mesh is not None:
            self.state = self.mesh.replicate(self.state)
        self._language: dict[str, np.ndarray] = {}

    # -- the protocol -------------------------------------------------------------------------

    @property
    def params(self) -> Any:
        return self.state.params

    def frozen_keys(self) -> list[str]:
        """Flattened keys of the frozen leaves (``a/b/kernel``)."""
        return [k for k, f in flatten_tree(self.frozen).items() if f]

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimizer step on a data-layer batch; returns loss, grad_norm, learning_rate."""
        prepared = self.prepare_batch(batch)
        if self.mesh is not None:
            prepared = self.mesh.shard_batch(prepared)
        lr = jnp.asarray(self.schedule(int(self.state.step)), jnp.float32)
        self.state, metrics = _train_step(self.module, self.optimizer, self.state, prepared, lr)
        return {k: float(v) for k, v in metrics.items()}

    def eval_loss(self, batch: Mapping[str, Any], seed: int = 0) -> float:
        """The loss on ``batch`` with the current parameters, without updating them."""
        prepared = self.prepare_batch(batch)
        return float(_eval_loss(self.module, self.state.params, prepared, jax.random.PRNGKey(seed)))

    def save(self, directory: str | Path, step: int) -> Path:
        """Write ``directory/<step>/default/checkpoint`` + config, example batch, statistics,
        and the tokenizer files, so ``octo_jax:directory`` loads strictly and offline."""
        directory = Path(directory)
        params = jax.tree.map(np.asarray, self.state.params)
        save_octo(directory, step, params, self.config, self.example_batch, self.statistics)
        copy_tokenizer(self.tokenizer, self.parsed.text_processor, directory)
        return directory

    def state_dict(self) -> bytes:
        """Parameters, optimizer state, PRNG key and step, for ``--resume``."""
        return flax.serialization.to_bytes(self.state)

    def load_state_dict(self, data: bytes) -> None:
        self.state = flax.serialization.from_bytes(self.state, data)
        if self.mesh is not None:
            self.state = self.mesh.replicate(self.state)

    def policy_string(self, directory: str | Path) -> str:
        """How evaluation loads the saved checkpoint."""
        return f"octo_jax:{directory}"

    # -- batches -------------------------------------------------------------------------------

    def encode_instructions(self, instructions: Sequence[str]) -> np.ndarray:
        """(B, tokens, d) T5 embeddings; each distinct instruction is encoded once."""
        new = [s for s in dict.fromkeys(instructions) if s not in self._language]
        if new:
            if self.tokenizer is None or self.pretrained.t5 is None:
                raise ValueError("the model has no language encoder but the data has instructions")
            ids = self.tokenizer.encode(new)
            t5 = self.state.params["octo_transformer"]["task_tokenizers_language"]["hf_model"]
            out = np.asarray(
                _encode_text(self.pretrained.t5, t5, ids["input_ids"], ids["attention_mask"])
            )
            self._language.update(zip(new, out, strict=True))
        return np.stack([self._language[s] for s in instructions])

    def prepare_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A data-layer batch (``evalharness.data.windows``) → the model's input pytree."""
        observation = training_observation(batch["observation"], self.inputs)
        size = observation["timestep_pad_mask"].shape[0]
        task = prepare_tasks(size, self.inputs)
        if self.parsed.model.language_tokenizer is not None:
            texts = [str(t) for t in batch["task"]["language_instruction"]]
            task["language_instruction"] = self.encode_instructions(texts)
            task["pad_mask_dict"]["language_instruction"] = np.ones(size, bool)
        return {
            "observation": observation,
            "task": task,
            "action": np.asarray(batch["action"], np.float32),
            "action_pad_mask": np.asarray(batch["action_pad_mask"], bool),
        }


def _fresh_params(
    module: OctoModule, example: Mapping[str, Any], keys: Sequence[str], seed: int
) -> dict[str, Any]:
    """Fresh values (flattened) covering ``keys``: only the heads when only head leaves are
    needed (a new action head compiles in a second; initializing the whole model with its T5
    takes far longer), else the whole model."""
    if not keys:
        return {}
    if not all(k.startswith("heads_") for k in keys):
        return flatten_tree(init_params(module, dict(example), seed))
    obs, task = example["observation"], example["task"]
    outputs, _ = jax.eval_shape(
        lambda: module.init_with_output(
            jax.random.PRNGKey(0),
            obs,
            task,
            obs["timestep_pad_mask"],
            train=False,
            method=OctoModule.run_transformer,
        )
    )
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), outputs)
    fresh: dict[str, Any] = {}
    for name, config in module.config.heads:
        head = make_head(config)
        params = jax.jit(lambda rng, head=head: head.init(rng, zeros)["params"])(
            jax.random.PRNGKey(seed)
        )
        fresh[f"heads_{name}"] = jax.tree.map(np.asarray, params)
    return flatten_tree(fresh)


def from_pretrained(checkpoint: str, dataset: Any, options: Any) -> OctoJaxTrainer:
    """Build the finetune model for ``dataset`` from ``checkpoint`` (see the module docstring).

    ``options`` is an ``evalharness.finetune.FinetuneOptions``; its ``family_options`` are
    this module's options.
    """
    family = dict(options.family_options)
    check_options(family, _OPTIONS, "octo_jax")
    if options.mode not in FROZEN_KEYS:
        raise FinetuneError(f"--mode {options.mode!r}: expected one of {', '.join(MODES)}")
    pretrained = load_octo(checkpoint, step=parse_step(family.get("step")), strict=True)
    ckpt = pretrained.checkpoint
    plan = plan_finetune(
        ckpt.config, pretrained.config, pretrained.inputs, ckpt.directory, dataset, family
    )
    parsed, example, window = plan.parsed, plan.example, plan.inputs.window_size
    module = build_module(parsed, pretrained.t5)
    shapes = param_shapes(module, example)
    new_inputs = OctoInputSpec.from_example_batch(example, window)
    stored = ckpt.flat_params
    report = compare_shapes(
        stored,
        shapes,
        explain=octo_explainer(parsed.model, new_inputs),
        source=ckpt.name,
        target=f"octo_jax model for {dataset.path}",
    )
    needed = [e.key for e in report.entries if e.key in shapes and e.status != "loaded"]
    fresh = _fresh_params(module, example, needed, options.seed)
    # merge_params takes the model's whole key set from its `fresh` argument; leaves that
    # load need no fresh values, so they are seeded with the stored ones.
    loaded = {e.key: stored[e.source_key] for e in report.loaded if e.source_key in stored}
    merged = merge_params(stored, {**loaded, **fresh}, report)
    params = unflatten_tree({k: np.asarray(v, np.float32) for k, v in merged.items()})

    patterns = frozen_patterns(ckpt.config, options.mode, family)
    stuck = [k for k in needed if any(fnmatch(k.replace("/", "."), p) for p in patterns)]
    changes = plan.changes
    if stuck:
        changes.append(
            f"warning: {len(stuck)} freshly initialized leaves are frozen in mode "
            f"{options.mode!r} and stay random (e.g. {stuck[0]}); use --mode full"
        )
    return OctoJaxTrainer(
        pretrained,
        plan.config,
        parsed,
        example,
        params,
        report,
        plan.statistics,
        plan.tokenizer,
        options.mode,
        patterns,
        options,
        plan.normalization,
        changes,
    )


def checkpoint_report(path: str | Path, step: int | None = None) -> tuple[Any, CompatibilityReport]:
    """The loader's non-strict comparison of a checkpoint's weights with the model its own
    ``config.json`` builds, without initializing anything: ``(OctoCheckpoint, report)``.

    For ``evalharness doctor``: on a config whose action_horizon was edited the report explains
    ``444 = 32 + 384 + 7 × 4``.
    """
    from evalharness.policies.octo.checkpoint import load_checkpoint
    from evalharness.policies.octo_jax.loader import t5_config

    ckpt = load_checkpoint(path, step)
    config = OctoConfig.from_checkpoint_config(ckpt.config, source=str(ckpt.directory))
    inputs = OctoInputSpec.from_example_batch(ckpt.example_batch, config.window_size)
    module = build_module(config, t5_config(ckpt, config, None))
    shapes = param_shapes(module, ckpt.example_batch)
    report = compare_shapes(
        ckpt.flat_params,
        shapes,
        explain=octo_explainer(config.model, inputs),
        source=ckpt.name,
        target="octo_jax model from config.json",
    )
    return ckpt, report
