"""Framework-free pieces of finetuning Octo, shared by the JAX and torch trainers.

What a finetune changes in ``config.json`` for the new data (upstream ``update_config`` /
``config_delete_keys``), the example batch that sizes the new model, and upstream's frozen-key
patterns per mode. Both ``octo_jax.train`` and ``octo_pt.train`` use these, so the two families
build the same model for the same data and freeze the same parameters.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from evalharness.policies.common.finetune import FinetuneError, option_bool, option_int
from evalharness.policies.common.images import resize_images
from evalharness.policies.common.normalization import NormalizationType
from evalharness.policies.octo.config import (
    ConfigError,
    ImageTokenizerConfig,
    LowdimObsTokenizerConfig,
    OctoConfig,
)
from evalharness.policies.octo.inputs import OctoInputSpec, prepare_tasks
from evalharness.policies.octo.text import TextTokenizer, instruction_tokenizer

#: Upstream's frozen-key patterns per finetune mode (fnmatch on ".".join(path)).
FROZEN_KEYS: dict[str, tuple[str, ...]] = {
    "full": (),
    "head_only": ("octo_transformer.*",),
    "head_mlp_only": (
        "octo_transformer.*",
        "heads_*.map_head.probe",
        "heads_*.map_head.MultiHeadDotProductAttention_0.*",
    ),
}
MODES = tuple(FROZEN_KEYS)
#: Frozen in every mode: the T5 text encoder (upstream's pretrained frozen_keys).
ALWAYS_FROZEN = ("*hf_model*",)
#: ``?key=value`` options of both Octo trainers (``plan_finetune``, ``frozen_patterns``, the
#: checkpoint ``step``); a family adds its own (octo_pt: ``device``).
FINETUNE_OPTIONS = (
    "step",
    "tokenizer",
    "window_size",
    "action_horizon",
    "normalization",
    "frozen_keys",
    "keep_action_dim",
    "action_head",
)
#: ``?action_head=`` → upstream's head class. ``l1`` is what upstream's own example for a new
#: action space uses (``examples/02_finetune_new_observation_action.py``): no DDPM chain, so
#: nothing amplifies an under-trained head's error (``docs/learning-from-demos.md``).
ACTION_HEADS = {"diffusion": "DiffusionActionHead", "l1": "L1ActionHead", "mse": "MSEActionHead"}
#: The kwargs an L1/MSE head accepts (``ContinuousHeadConfig``); diffusion-only ones are dropped.
_CONTINUOUS_KWARGS = ("readout_key", "use_map", "action_horizon", "action_dim", "max_action")


class DataFacts(NamedTuple):
    """What the new data offers, as far as the model's config depends on it."""

    image_keys: tuple[str, ...]
    lowdim_keys: tuple[str, ...]
    action_dim: int


def adapt_config(
    config: Mapping[str, Any],
    parsed: OctoConfig,
    data: DataFacts,
    window_size: int,
    action_horizon: int,
    action_dim: int,
    normalization: str,
    action_head: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """``config.json`` edited for the new data (upstream ``update_config`` /
    ``config_delete_keys``) and a plain-language list of the changes."""
    new = copy.deepcopy(dict(config))
    model = new["model"]
    changes: list[str] = []
    for name, tok in parsed.model.observation_tokenizers:
        if isinstance(tok, ImageTokenizerConfig):
            patterns, keys = tok.obs_stack_keys, data.image_keys
        elif isinstance(tok, LowdimObsTokenizerConfig):
            patterns, keys = tok.obs_keys, data.lowdim_keys
        else:
            continue
        if not any(matches_key(p, k) for p in patterns for k in keys):
            del model["observation_tokenizers"][name]
            changes.append(
                f"observation tokenizer {name!r} removed: the data has no key matching "
                f"{list(patterns)} (it has {list(keys)})"
            )
    head = parsed.model.action_head
    kwargs = model["heads"]["action"].setdefault("kwargs", {})
    kwargs.pop("pred_horizon", None)
    if head.action_dim != action_dim:
        changes.append(
            f"action head rebuilt: action_dim {head.action_dim} → {action_dim} (the data's)"
        )
    if head.action_horizon != action_horizon:
        changes.append(
            f"action head rebuilt: action_horizon {head.action_horizon} → {action_horizon}"
        )
    kwargs["action_dim"] = action_dim
    kwargs["action_horizon"] = action_horizon
    if action_head is not None and ACTION_HEADS[action_head] != head.kind:
        spec = model["heads"]["action"]
        spec["name"] = ACTION_HEADS[action_head]
        if action_head == "diffusion":
            kwargs.pop("loss_type", None)
        else:
            for key in list(kwargs):
                if key not in _CONTINUOUS_KWARGS:
                    del kwargs[key]
            kwargs.pop("use_map", None)  # upstream's L1/MSE default: MAP pooling
        changes.append(
            f"action head {head.kind} → {spec['name']} (freshly initialized, "
            f"?action_head={action_head})"
        )
    if (parsed.window_size or window_size) != window_size:
        changes.append(f"window_size {parsed.window_size} → {window_size}")
    new["window_size"] = window_size
    dataset_kwargs = new.setdefault("dataset_kwargs", {})
    traj = dataset_kwargs.setdefault("traj_transform_kwargs", {})
    traj.update(window_size=window_size, action_horizon=action_horizon, max_action_dim=action_dim)
    # The policy adapter reads this to un-normalize actions the way they were trained.
    dataset_kwargs["action_proprio_normalization_type"] = normalization
    return new, changes


def matches_key(pattern: str, key: str) -> bool:
    """Octo's tokenizer key patterns are regexes matched at the start (``re.match``)."""
    return re.match(pattern, key) is not None


def example_batch(
    batch: Mapping[str, Any],
    inputs: OctoInputSpec,
    tokenizer: TextTokenizer | None,
    has_language: bool,
) -> dict[str, Any]:
    """An upstream-style example batch (batch 1) from the first data sample, at the model's
    image sizes; it fixes the new model's input shapes and is saved with the checkpoint."""
    obs = batch["observation"]
    pad = np.asarray(obs["timestep_pad_mask"], bool)[:1]
    window = pad.shape[1]
    observation: dict[str, Any] = {}
    masks: dict[str, np.ndarray] = {}
    for key, size in inputs.obs_images.items():
        if key in obs:
            observation[key] = resize_images(np.asarray(obs[key])[:1], size)
            masks[key] = np.ones((1, window), bool)
    for key in inputs.lowdim:
        if key in obs:
            observation[key] = np.asarray(obs[key], np.float32)[:1]
            masks[key] = np.ones((1, window), bool)
    observation["timestep"] = np.zeros((1, window), np.int32)
    masks["timestep"] = np.ones((1, window), bool)
    observation["timestep_pad_mask"] = pad
    observation["task_completed"] = ~np.asarray(batch["action_pad_mask"], bool)[:1, ..., 0]
    observation["pad_mask_dict"] = masks
    task_inputs = OctoInputSpec(
        window_size=window,
        obs_images=inputs.obs_images,
        task_images={k: v for k, v in inputs.task_images.items() if k in observation},
        language_length=inputs.language_length,
    )
    language = None
    if has_language and tokenizer is not None:
        ids = tokenizer.encode([str(batch["task"]["language_instruction"][0])])
        language = {k: v.astype(np.int32) for k, v in ids.items()}
    task = prepare_tasks(1, task_inputs, language)
    return {
        "observation": observation,
        "task": task,
        "action": np.asarray(batch["action"], np.float32)[:1],
        "action_pad_mask": np.asarray(batch["action_pad_mask"], bool)[:1],
    }


def training_observation(obs: Mapping[str, Any], inputs: OctoInputSpec) -> dict[str, Any]:
    """A data-layer batch's ``observation`` → Octo's observation dict at the model's sizes.

    Images are resized to the example batch's sizes; a camera the data lacks is zeros with
    its pad mask False; ``timestep`` is added when the model has one.
    """
    pad = np.asarray(obs["timestep_pad_mask"], dtype=bool)
    size, window = pad.shape
    masks = obs.get("pad_mask_dict", {})
    observation: dict[str, Any] = {}
    pad_mask_dict: dict[str, np.ndarray] = {}
    for key, (height, width) in inputs.obs_images.items():
        if key in obs:
            observation[key] = resize_images(np.asarray(obs[key]), (height, width))
            pad_mask_dict[key] = np.asarray(masks.get(key, pad), dtype=bool)
        else:
            observation[key] = np.zeros((size, window, height, width, 3), np.uint8)
            pad_mask_dict[key] = np.zeros((size, window), bool)
    for key in inputs.lowdim:
        observation[key] = np.asarray(obs[key], np.float32)
        pad_mask_dict[key] = np.asarray(masks.get(key, pad), dtype=bool)
    if inputs.obs_timestep:
        observation["timestep"] = np.zeros((size, window), np.int32)
        pad_mask_dict["timestep"] = np.ones((size, window), bool)
    observation["timestep_pad_mask"] = pad
    observation["pad_mask_dict"] = pad_mask_dict
    return observation


@dataclass(frozen=True)
class FinetunePlan:
    """What an Octo finetune builds for new data, the same for the JAX and torch trainers:
    the checkpoint's config edited for the data, its inputs, and an example batch that fixes
    the new model's input shapes. Each family then builds its model from it and merges."""

    config: dict[str, Any]  # config.json edited for the data (what the output saves)
    parsed: OctoConfig
    changes: list[str]  # the edits in plain language
    inputs: OctoInputSpec  # cameras and low-dim keys the new model reads, the new window
    example: dict[str, Any]  # upstream-style example batch (batch 1)
    tokenizer: TextTokenizer | None
    statistics: dict[str, Any]  # of the training data
    normalization: NormalizationType


def plan_finetune(
    raw_config: Mapping[str, Any],
    parsed_old: OctoConfig,
    old_inputs: OctoInputSpec,
    directory: Path,
    dataset: Any,
    family: Mapping[str, str],
) -> FinetunePlan:
    """Edit a pretrained Octo's config for ``dataset`` (an ``evalharness.data.Dataset``).

    ``family`` are the trainer's ``?key=value`` options: ``window_size``, ``action_horizon``,
    ``keep_action_dim``, ``normalization``, ``tokenizer``. Image sizes and the instruction
    length stay the checkpoint's; cameras and low-dim keys the data lacks are dropped; the
    action head takes the data's action dim unless it fits in the checkpoint's
    (``keep_action_dim``, or a narrower dataset: actions are padded).
    """
    head = parsed_old.model.action_head
    statistics = dataset.statistics()
    data_dim = len(statistics["action"]["mean"])
    window = option_int(family, "window_size", old_inputs.window_size)
    horizon = option_int(family, "action_horizon", head.action_horizon)
    keep = option_bool(family, "keep_action_dim")
    if keep and data_dim > head.action_dim:
        raise FinetuneError(
            f"keep_action_dim=true but the data has {data_dim} action dims and the checkpoint's "
            f"head {head.action_dim}; drop the option to build a {data_dim}-dim head"
        )
    action_dim = head.action_dim if data_dim <= head.action_dim else data_dim
    normalization = NormalizationType.parse(family.get("normalization", "normal"))
    action_head = family.get("action_head")
    if action_head is not None and action_head not in ACTION_HEADS:
        raise FinetuneError(
            f"finetune option action_head={action_head!r}: expected one of "
            f"{', '.join(ACTION_HEADS)}"
        )

    first = dataset.load()[0]
    image_keys = tuple(k for k in first if k.startswith("image_"))
    lowdim = tuple(k for k in ("proprio",) if k in first)
    config, changes = adapt_config(
        raw_config,
        parsed_old,
        DataFacts(image_keys, lowdim, data_dim),
        window,
        horizon,
        action_dim,
        normalization.value,
        action_head,
    )
    source = f"{directory / 'config.json'} (edited for {dataset.path})"
    try:
        parsed = OctoConfig.from_checkpoint_config(config, source=source)
    except ConfigError as exc:
        raise FinetuneError(str(exc)) from None

    tokenizer = instruction_tokenizer(
        parsed.model.language_tokenizer is not None,
        parsed.text_processor,
        directory,
        family.get("tokenizer"),
    )

    image_patterns = [
        p
        for _, t in parsed.model.observation_tokenizers
        if isinstance(t, ImageTokenizerConfig)
        for p in t.obs_stack_keys
    ]
    inputs = OctoInputSpec(
        window_size=window,
        obs_images={
            k: v
            for k, v in old_inputs.obs_images.items()
            if any(matches_key(p, k) for p in image_patterns)
        },
        task_images=old_inputs.task_images,
        lowdim={
            k: int(np.shape(first[k])[-1])
            for k in lowdim
            if any(matches_key(p, k) for _, t in parsed.model.lowdim_tokenizers for p in t.obs_keys)
        },
        language_length=old_inputs.language_length,
    )
    sample = next(dataset.batches(window, horizon, 1, seed=0, action_dim=action_dim))
    has_language = parsed.model.language_tokenizer is not None
    return FinetunePlan(
        config=config,
        parsed=parsed,
        changes=changes,
        inputs=inputs,
        example=example_batch(sample, inputs, tokenizer, has_language),
        tokenizer=tokenizer,
        statistics=statistics,
        normalization=normalization,
    )


def frozen_patterns(
    raw_config: Mapping[str, Any], mode: str, family: Mapping[str, str]
) -> tuple[str, ...]:
    """The frozen-key patterns of a finetune: T5 always, the checkpoint's own
    ``optimizer.frozen_keys``, the mode's (``FROZEN_KEYS``) and ``?frozen_keys=a,b``."""
    base = tuple((raw_config.get("optimizer") or {}).get("frozen_keys") or ()) or ALWAYS_FROZEN
    extra = tuple(p for p in family.get("frozen_keys", "").split(",") if p)
    return tuple(dict.fromkeys((*ALWAYS_FROZEN, *base, *FROZEN_KEYS[mode], *extra)))
