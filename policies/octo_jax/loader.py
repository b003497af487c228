"""Load an Octo checkpoint into the Flax model: build from config, compare, report, merge.

Mirrors upstream ``OctoModel.load_pretrained``: the model is built from ``config.json``,
its parameter shapes come from ``jax.eval_shape(module.init)`` on the checkpoint's example
batch, and the stored tree must match leaf for leaf. Where upstream fails with an orbax
shape error, this loader prints a compatibility report that says *why*::

    heads_action/diffusion_model/reverse_network/Dense_0/kernel: checkpoint (124, 64), model (110, 64)
      — checkpoint 124 rows = time 32 + embedding 64 + action 7 × horizon 4;
        this config 110 = 32 + 64 + 7 × 2 → action_horizon changed 4 → 2

``strict=True`` (default) refuses any mismatch; ``strict=False`` loads every leaf that fits,
initializes the rest fresh (seeded) and keeps the report on the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from evalharness.policies.common.compat import (
    CheckpointError,
    CompatibilityReport,
    check_dtypes,
    compare_shapes,
    flatten_tree,
    merge_params,
    unflatten_tree,
)
from evalharness.policies.octo.checkpoint import OctoCheckpoint, load_checkpoint, save_checkpoint
from evalharness.policies.octo.config import ConfigError, OctoConfig
from evalharness.policies.octo.explain import octo_explainer
from evalharness.policies.octo.inputs import OctoInputSpec
from evalharness.policies.octo.text import T5_PREFIX, T5EncoderConfig, t5_config_from_params
from evalharness.policies.octo_jax.model import OctoModule

__all__ = ["LoadedOcto", "build_module", "init_params", "load_octo", "param_shapes", "save_octo"]


@dataclass
class LoadedOcto:
    """A built model with its parameters, and everything read from the checkpoint."""

    module: OctoModule
    params: dict[str, Any]
    config: OctoConfig
    inputs: OctoInputSpec
    checkpoint: OctoCheckpoint
    report: CompatibilityReport
    t5: T5EncoderConfig | None


def _init_args(example_batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    obs = example_batch["observation"]
    task = example_batch.get("task", {})
    if "timestep_pad_mask" not in obs:
        raise CheckpointError(
            "example_batch.msgpack: observation has no timestep_pad_mask (nor the v1.0 pad_mask)"
        )
    return obs, task, obs["timestep_pad_mask"]


def build_module(config: OctoConfig, t5: T5EncoderConfig | None) -> OctoModule:
    """The Flax module for a parsed config (the T5 shape comes from the checkpoint's weights)."""
    return OctoModule(config.model, t5)


def _param_structs(module: OctoModule, example_batch: dict[str, Any]) -> dict[str, Any]:
    """Flattened ``ShapeDtypeStruct`` of every parameter, without computing anything."""
    obs, task, pad = _init_args(example_batch)
    structs = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), obs, task, pad, train=False)
    )["params"]
    return flatten_tree(structs)


def param_shapes(module: OctoModule, example_batch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Flattened parameter shapes of ``module`` on the example batch, without computing anything."""
    return {k: tuple(v.shape) for k, v in _param_structs(module, example_batch).items()}


def init_params(module: OctoModule, example_batch: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Freshly initialized parameters (numpy), upstream's initializers, seeded."""
    obs, task, pad = _init_args(example_batch)
    init = jax.jit(lambda rng: module.init(rng, obs, task, pad, train=False)["params"])
    return jax.tree.map(np.asarray, init(jax.random.PRNGKey(seed)))


def t5_config(
    ckpt: OctoCheckpoint, config: OctoConfig, hf_config: dict[str, Any] | None
) -> T5EncoderConfig | None:
    """The T5 encoder config of the model's language tokenizer, read from the checkpoint's
    weights (None when the model takes no language)."""
    lang = config.model.language_tokenizer
    if lang is None or lang.encoder is None:
        return None
    if not lang.is_t5:
        raise ConfigError(
            f"{ckpt.directory / 'config.json'}: LanguageTokenizer encoder {lang.encoder!r} is not "
            "a T5 model; evalharness implements Octo's T5 language encoder only"
        )
    try:
        return t5_config_from_params(
            ckpt.flat_params, hf_config=hf_config, source=str(ckpt.directory)
        )
    except KeyError as exc:
        raise CheckpointError(
            f"{exc.args[0]}. Released Octo checkpoints carry their T5 encoder under {T5_PREFIX}; "
            "this one does not, and loading T5 weights from elsewhere is not implemented"
        ) from None


def load_octo(
    path: str | Path,
    step: int | None = None,
    strict: bool = True,
    seed: int = 0,
    hf_config: dict[str, Any] | None = None,
) -> LoadedOcto:
    """Load ``path`` (a directory or ``hf://org/name``) at ``step`` (default: the latest).

    Raises :class:`~evalharness.policies.common.compat.CheckpointMismatchError` (its message
    is the compatibility report) when strict and anything does not fit, and
    :class:`~evalharness.policies.common.compat.CheckpointError` naming the file and key for
    corrupted weights (unreadable file, NaN/inf, a dtype that is not a float), strict or not.
    Float weights of another width (bfloat16, float64) are cast to the model's float32.
    """
    ckpt = load_checkpoint(path, step)
    source = str(ckpt.directory / "config.json")
    config = OctoConfig.from_checkpoint_config(ckpt.config, source=source)
    inputs = OctoInputSpec.from_example_batch(
        ckpt.example_batch, config.window_size, source=str(ckpt.directory / "example_batch.msgpack")
    )
    t5 = t5_config(ckpt, config, hf_config)
    module = build_module(config, t5)
    try:
        structs = _param_structs(module, ckpt.example_batch)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{ckpt.name}: cannot build the model from config.json on example_batch.msgpack "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    shapes = {k: tuple(v.shape) for k, v in structs.items()}
    dtypes = {k: np.dtype(v.dtype) for k, v in structs.items()}
    stored = ckpt.flat_params
    check_dtypes(stored, dtypes, str(ckpt.params_file))
    report = compare_shapes(
        stored,
        shapes,
        explain=octo_explainer(config.model, inputs),
        source=ckpt.name,
        target="octo_jax model from config.json",
    )
    report.check(strict=strict)
    if report.compatible:
        params = {k: np.asarray(stored[k]) for k in shapes}
    else:  # the caller reports it (policies.common.compat.report_non_strict_load)
        fresh = flatten_tree(init_params(module, ckpt.example_batch, seed))
        params = merge_params(stored, fresh, report)
    for key, value in params.items():
        if value.dtype != dtypes[key]:  # same category (checked above), another width
            params[key] = value.astype(dtypes[key])
    return LoadedOcto(module, unflatten_tree(params), config, inputs, ckpt, report, t5)


def save_octo(
    directory: str | Path,
    step: int,
    params: Any,
    config: dict[str, Any],
    example_batch: dict[str, Any],
    dataset_statistics: dict[str, Any],
) -> Path:
    """Write params (jax or numpy) in upstream's layout (``save_pretrained``), loadable by both."""
    numpy_params = jax.tree.map(np.asarray, params)
    return save_checkpoint(directory, step, numpy_params, config, example_batch, dataset_statistics)
