"""``octo_jax``: a released or finetuned Octo checkpoint behind the policy contract.

    evalharness run --suite libero_spatial --policy "octo_jax:hf://rail-berkeley/octo-small-1.5?stats=bridge_dataset"
    evalharness run --suite libero_spatial --policy "octo_jax:/ckpts/octo_libero?step=50000"

Options: :class:`~evalharness.policies.octo.options.OctoOptions` (shared by both Octo families;
``evalharness policies`` lists them).

Per call: images resized to the checkpoint's sizes, instructions tokenized and T5-encoded
once per distinct instruction (cached), one jitted forward + DDPM sampling per batch size,
actions un-normalized and the gripper converted to LIBERO's convention.

Noise: each episode draws from its own PRNG stream, ``fold_in(fold_in(PRNGKey(seed),
episode_seed), query)`` for its n-th query (``query`` restarts at ``episode_start``), so an
episode's actions do not depend on the batch it shares, on ``--num-envs``, on the executor or
on resuming. Without ``episode_seed`` (direct calls) one key is split per call, upstream's
``supply_rng``; ``sample_normalized(..., PRNGKey(0))`` reproduces upstream's draws exactly.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evalharness.policies.base import EpisodeStreams, Policy, PolicySpec
from evalharness.policies.common.compat import report_non_strict_load
from evalharness.policies.common.normalization import (
    DatasetStatistics,
    Gripper,
    NormalizationType,
    select_statistics,
)
from evalharness.policies.common.options import OptionError, parse_options
from evalharness.policies.octo.inputs import (
    postprocess_actions,
    prepare_observation,
    prepare_tasks,
)
from evalharness.policies.octo.options import OctoOptions
from evalharness.policies.octo.text import TextTokenizer, instruction_tokenizer
from evalharness.policies.octo_jax.loader import LoadedOcto, load_octo
from evalharness.policies.octo_jax.model import OctoModule, predict_actions
from evalharness.policies.octo_jax.t5 import T5Encoder

log = logging.getLogger(__name__)

__all__ = ["OctoJaxPolicy", "make_octo_jax_policy"]

_OWNER = "policy 'octo_jax'"


class OctoJaxPolicy(Policy):
    """Batched Octo inference in JAX; see the module docstring for options."""

    def __init__(
        self,
        loaded: LoadedOcto,
        statistics: DatasetStatistics | None,
        tokenizer: TextTokenizer | None,
        normalization: NormalizationType = NormalizationType.NORMAL,
        gripper: Gripper | None = Gripper.OCTO,
        seed: int = 0,
        exec_horizon: int | None = None,
        temporal_ensemble_weight: float | None = None,
        resize_in_env: bool = False,
    ) -> None:
        self.loaded = loaded
        self.statistics = statistics
        self.tokenizer = tokenizer
        self.normalization = normalization
        self.gripper = gripper
        self.seed = seed
        head = loaded.config.model.action_head
        self.embodiment_action_dim = statistics.action.dim if statistics else None
        action_dim = min(head.action_dim, statistics.action.dim) if statistics else head.action_dim
        inputs = loaded.inputs
        self.spec = PolicySpec(
            name="octo_jax",
            window_size=inputs.window_size,
            action_horizon=head.action_horizon,
            action_dim=action_dim,
            image_sizes=dict(inputs.obs_images) if resize_in_env else {},
            needs_language=loaded.config.model.language_tokenizer is not None,
            needs_goal_image=False,
            exec_horizon=exec_horizon,
            temporal_ensemble_weight=temporal_ensemble_weight,
            dataset_statistics=_stats_summary(statistics),
        )
        ckpt = loaded.checkpoint
        self.checkpoint = f"{ckpt.directory}@{ckpt.step}"
        self._params = jax.device_put(loaded.params)
        self._rng = jax.random.PRNGKey(seed)
        # Each episode counts its queries; the n-th draws from fold_in(episode key, n).
        self.episodes: EpisodeStreams[Iterator[int]] = EpisodeStreams(
            lambda seed: itertools.count()
        )
        self._language_cache: dict[str, np.ndarray] = {}
        self._sample = jax.jit(
            partial(_sample, loaded.module, self.embodiment_action_dim),
        )
        t5 = loaded.t5
        self._encode = (
            jax.jit(lambda p, ids, mask: T5Encoder(t5).apply({"params": p}, ids, mask))
            if t5 is not None
            else None
        )

    @property
    def model_image_sizes(self) -> dict[str, tuple[int, int]]:
        """The (height, width) per camera the checkpoint was trained on."""
        return dict(self.loaded.inputs.obs_images)

    def encode_instructions(self, instructions: Sequence[str]) -> np.ndarray:
        """(B, tokens, d) language embeddings; each distinct instruction is encoded once, ever."""
        new = [s for s in dict.fromkeys(instructions) if s not in self._language_cache]
        if new:
            if self.tokenizer is None or self._encode is None:
                raise RuntimeError("this checkpoint's model has no text encoder")
            ids = self.tokenizer.encode(new)
            t5_params = self._params["octo_transformer"]["task_tokenizers_language"]["hf_model"]
            embeddings = np.asarray(
                self._encode(t5_params, ids["input_ids"], ids["attention_mask"])
            )
            for text, emb in zip(new, embeddings, strict=True):
                self._language_cache[text] = emb
        return np.stack([self._language_cache[s] for s in instructions])

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        instructions = [str(s) for s in tasks["language_instruction"]]
        batch = len(instructions)
        inputs = self.loaded.inputs
        lowdim_stats = {}
        if self.statistics is not None and self.statistics.proprio is not None:
            lowdim_stats = {"proprio": self.statistics.proprio}
        observation = prepare_observation(obs, inputs, lowdim_stats, self.normalization)
        if observation["timestep_pad_mask"].shape[0] != batch:
            raise ValueError(
                f"observations have batch {observation['timestep_pad_mask'].shape[0]} but "
                f"{batch} instructions were given"
            )
        task = prepare_tasks(batch, inputs)
        if self.spec.needs_language:
            task["language_instruction"] = self.encode_instructions(instructions)
            task["pad_mask_dict"]["language_instruction"] = np.ones(batch, dtype=bool)
        actions = self.sample_normalized(observation, task, self._keys(tasks, batch))
        action_stats = self.statistics.action if self.statistics else None
        out = postprocess_actions(actions, action_stats, self.normalization, self.gripper)
        return out[..., : self.spec.action_dim]

    def reset(self, batch_size: int) -> None:
        self.episodes.clear()

    def _keys(self, tasks: Mapping[str, Sequence[Any] | np.ndarray], batch: int) -> jax.Array:
        """One PRNG key per row from its episode's stream, or one key split off per call."""
        if "episode_seed" not in tasks:
            self._rng, key = jax.random.split(self._rng)
            return key
        seeds = np.asarray(tasks["episode_seed"], dtype=np.int64).reshape(-1)
        queries = [next(counter) for counter in self.episodes.rows(tasks)]
        with jax.threefry_partitionable(False):
            return _episode_keys(
                jax.random.PRNGKey(self.seed),
                jnp.asarray(seeds & 0xFFFFFFFF, jnp.uint32),
                jnp.asarray(queries, jnp.uint32),
            )

    def sample_normalized(self, observation: Any, task: Any, key: jax.Array) -> np.ndarray:
        """Normalized action chunks (B, H, A) from prepared inputs, upstream's RNG stream."""
        # Upstream's draws need the pre-0.5 threefry; scoped to this call, not set globally.
        with jax.threefry_partitionable(False):
            return np.asarray(self._sample(self._params, observation, task, key))


@jax.jit
def _episode_keys(base: jax.Array, seeds: jax.Array, queries: jax.Array) -> jax.Array:
    fold = jax.random.fold_in
    return jax.vmap(lambda s, q: fold(fold(base, s), q))(seeds, queries)


def _sample(
    module: OctoModule,
    embodiment_action_dim: int | None,
    params: Any,
    observation: Any,
    task: Any,
    key: jax.Array,
) -> jax.Array:
    outputs: dict[str, Any] = module.apply(  # type: ignore[assignment]
        {"params": params},
        observation,
        task,
        jnp.asarray(observation["timestep_pad_mask"]),
        method=OctoModule.run_transformer,
    )
    return predict_actions(
        module.config, params["heads_action"], outputs, key, embodiment_action_dim
    )


def _stats_summary(statistics: DatasetStatistics | None) -> dict[str, Any] | None:
    if statistics is None:
        return None
    summary: dict[str, Any] = {"key": statistics.key, "action": statistics.action.to_dict()}
    if statistics.proprio is not None:
        summary["proprio"] = statistics.proprio.to_dict()
    return summary


def make_octo_jax_policy(path: str | None = None, **options: str) -> OctoJaxPolicy:
    """Factory for ``octo_jax:PATH[?options]`` (:class:`OctoOptions`)."""
    if not path:
        raise OptionError(
            "octo_jax needs a checkpoint: octo_jax:/path/to/checkpoint or octo_jax:hf://org/name"
        )
    opts = parse_options(OctoOptions, options, _OWNER, family="octo_jax")
    loaded = load_octo(path, step=opts.step, strict=opts.strict, seed=opts.seed)
    report_non_strict_load(f"octo_jax {loaded.checkpoint.name}", loaded.report)

    ckpt = loaded.checkpoint
    stats_source = str(ckpt.directory / "dataset_statistics.json")
    statistics = (
        select_statistics(ckpt.dataset_statistics, opts.stats, stats_source)
        if ckpt.dataset_statistics
        else None
    )
    if statistics is None:
        log.warning("%s has no dataset statistics: actions are returned normalized", ckpt.name)

    tokenizer = instruction_tokenizer(
        loaded.config.model.language_tokenizer is not None,
        loaded.config.text_processor,
        ckpt.directory,
        opts.tokenizer,
    )
    default_norm = (ckpt.config.get("dataset_kwargs") or {}).get(
        "action_proprio_normalization_type", "normal"
    )
    return OctoJaxPolicy(
        loaded,
        statistics,
        tokenizer,
        normalization=NormalizationType.parse(opts.normalization or default_norm),
        gripper=None if opts.gripper == "none" else Gripper.parse(opts.gripper),
        seed=opts.seed,
        exec_horizon=opts.exec_horizon,
        temporal_ensemble_weight=opts.temporal_ensemble,
        resize_in_env=opts.resize == "env",
    )
