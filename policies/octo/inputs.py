"""Standard observations → Octo's input pytrees, and Octo's actions → the environment's.

Both Octo families (``octo_jax``, ``octo_pt``) call these; only the network call differs.
Everything here is numpy.

Octo's inputs (upstream ``OctoModel.sample_actions``)::

    observation: image_primary (B, W, 256, 256, 3) uint8, image_wrist (B, W, 128, 128, 3),
                 [proprio (B, W, D) normalized], timestep (B, W) int32,
                 timestep_pad_mask (B, W) bool, pad_mask_dict {key: (B, W) bool}
    task:        image_* (B, H, W, 3) zeros (no goal image), timestep (B,),
                 language_instruction {input_ids, attention_mask} (B, 16),
                 pad_mask_dict {key: (B,) bool}  (goal images False, language True)

Which keys and sizes a checkpoint takes is read from its ``example_batch.msgpack``
(:class:`OctoInputSpec`), so a model trained on other cameras or sizes needs no code change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalharness.errors import EvalharnessError
from evalharness.policies.common.images import resize_images
from evalharness.policies.common.normalization import (
    ArrayStatistics,
    Gripper,
    NormalizationType,
    gripper_to_env,
)

__all__ = [
    "InputError",
    "OctoInputSpec",
    "postprocess_actions",
    "prepare_observation",
    "prepare_tasks",
]

PAD_MASK = "timestep_pad_mask"


class InputError(EvalharnessError, ValueError):
    """An observation batch that does not fit what the checkpoint was trained on."""


@dataclass(frozen=True)
class OctoInputSpec:
    """What a checkpoint's model takes, read from its example batch.

    ``obs_images`` / ``task_images``: image key → (height, width); ``lowdim``: non-image
    observation key (e.g. ``proprio``) → dims; ``language``: whether tasks carry tokenized
    instructions (and of which length).
    """

    window_size: int
    obs_images: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    task_images: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    lowdim: Mapping[str, int] = field(default_factory=dict)
    language_length: int | None = None
    obs_timestep: bool = True
    task_timestep: bool = True

    @classmethod
    def from_example_batch(
        cls, batch: Mapping[str, Any], window_size: int | None = None, source: str = "example_batch"
    ) -> OctoInputSpec:
        """Read keys and shapes from ``example_batch.msgpack`` (already shimmed to 1.5 names)."""
        obs = batch.get("observation")
        task = batch.get("task", {})
        if not isinstance(obs, Mapping):
            raise InputError(f"{source}: has no 'observation' dict; keys: {sorted(batch)}")
        obs_images: dict[str, tuple[int, int]] = {}
        lowdim: dict[str, int] = {}
        windows: set[int] = set()
        for key, value in obs.items():
            if key in ("pad_mask_dict", PAD_MASK, "timestep", "task_completed", "pad_mask"):
                continue
            shape = np.shape(value)
            if key.startswith(("image_", "depth_")):
                if len(shape) != 5:
                    raise InputError(
                        f"{source}: observation/{key} has shape {shape}; expected (1, window, H, W, C)"
                    )
                obs_images[key] = (int(shape[2]), int(shape[3]))
                windows.add(int(shape[1]))
            elif len(shape) == 3:
                lowdim[key] = int(shape[2])
                windows.add(int(shape[1]))
        if PAD_MASK in obs:
            windows.add(int(np.shape(obs[PAD_MASK])[1]))
        task_images = {
            k: (int(np.shape(v)[1]), int(np.shape(v)[2]))
            for k, v in task.items()
            if k.startswith(("image_", "depth_")) and len(np.shape(v)) == 4
        }
        language_length = None
        lang = task.get("language_instruction")
        if isinstance(lang, Mapping) and "input_ids" in lang:
            language_length = int(np.shape(lang["input_ids"])[-1])
        if window_size is None:
            if len(windows) != 1:
                raise InputError(
                    f"{source}: cannot tell the window size; observation window dims are {sorted(windows)}"
                )
            window_size = windows.pop()
        return cls(
            window_size=int(window_size),
            obs_images=obs_images,
            task_images=task_images,
            lowdim=lowdim,
            language_length=language_length,
            obs_timestep="timestep" in obs,
            task_timestep="timestep" in task,
        )


def prepare_observation(
    obs: Mapping[str, np.ndarray],
    spec: OctoInputSpec,
    lowdim_statistics: Mapping[str, ArrayStatistics] | None = None,
    normalization: NormalizationType | str = NormalizationType.NORMAL,
) -> dict[str, Any]:
    """A windowed standard observation batch → Octo's ``observation`` dict (numpy).

    Images are resized to the checkpoint's sizes (lanczos3, antialiased, as Octo's
    ``ResizeImageWrapper``); a camera the env does not provide becomes zeros with
    ``pad_mask_dict[key]`` False. Low-dimensional keys the model tokenizes (``proprio``) are
    normalized with ``lowdim_statistics[key]`` when given (upstream ``NormalizeProprio``).
    """
    batch, window = _batch_window(obs, spec)
    out: dict[str, Any] = {}
    pad_mask_dict: dict[str, np.ndarray] = {}
    for key, (height, width) in spec.obs_images.items():
        if key in obs:
            images = np.asarray(obs[key])
            if images.ndim != 5 or images.shape[:2] != (batch, window) or images.shape[-1] != 3:
                raise InputError(
                    f"observation {key!r} has shape {images.shape}; expected (batch {batch}, "
                    f"window {window}, H, W, 3) uint8"
                )
            if images.dtype != np.uint8:
                raise InputError(
                    f"observation {key!r} has dtype {images.dtype}; expected uint8 images"
                )
            out[key] = resize_images(images, (height, width))
            pad_mask_dict[key] = np.ones((batch, window), dtype=bool)
        else:
            out[key] = np.zeros((batch, window, height, width, 3), dtype=np.uint8)
            pad_mask_dict[key] = np.zeros((batch, window), dtype=bool)
    for key, dim in spec.lowdim.items():
        if key not in obs:
            raise InputError(
                f"the checkpoint's model tokenizes observation {key!r} ({dim} dims) but the "
                f"environment provides only {sorted(obs)}"
            )
        values = np.asarray(obs[key], dtype=np.float32)
        if values.shape != (batch, window, dim):
            raise InputError(
                f"observation {key!r} has shape {values.shape}; the checkpoint was trained on "
                f"(batch, window, {dim}) = ({batch}, {window}, {dim})"
            )
        stats = (lowdim_statistics or {}).get(key)
        if stats is not None:
            values = stats.normalize(values, normalization).astype(np.float32)
        out[key] = values
        pad_mask_dict[key] = np.ones((batch, window), dtype=bool)
    if spec.obs_timestep:
        if "timestep" in obs:
            out["timestep"] = np.asarray(obs["timestep"], dtype=np.int32)
        else:
            # Octo's model never reads observation timesteps; the key is kept for shape parity.
            out["timestep"] = np.zeros((batch, window), dtype=np.int32)
        pad_mask_dict["timestep"] = np.ones((batch, window), dtype=bool)
    if PAD_MASK in obs:
        out[PAD_MASK] = np.asarray(obs[PAD_MASK], dtype=bool).reshape(batch, window)
    else:
        out[PAD_MASK] = np.ones((batch, window), dtype=bool)
    out["pad_mask_dict"] = pad_mask_dict
    return out


def _batch_window(obs: Mapping[str, np.ndarray], spec: OctoInputSpec) -> tuple[int, int]:
    if PAD_MASK in obs:
        shape = np.shape(obs[PAD_MASK])
        if len(shape) != 2:
            raise InputError(
                f"observation {PAD_MASK!r} has shape {shape}; expected (batch, window)"
            )
        batch, window = int(shape[0]), int(shape[1])
    else:
        first = next((np.shape(obs[k]) for k in spec.obs_images if k in obs), None)
        if first is None or len(first) < 2:
            raise InputError(
                f"observation batch has none of the checkpoint's image keys {sorted(spec.obs_images)} "
                f"and no {PAD_MASK!r}; got keys {sorted(obs)}"
            )
        batch, window = int(first[0]), int(first[1])
    if window != spec.window_size:
        raise InputError(
            f"observations have a window of {window} steps but the checkpoint's model takes "
            f"{spec.window_size}; wrap the env in History(window={spec.window_size}) (the runner "
            "does this from the policy spec)"
        )
    return batch, window


def prepare_tasks(
    batch_size: int,
    spec: OctoInputSpec,
    language: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Octo's ``task`` dict for language-conditioned evaluation (upstream ``create_tasks(texts=)``).

    Goal images are zeros with ``pad_mask_dict`` False; ``language`` is the tokenizer's output
    (``input_ids``, ``attention_mask``), marked valid.
    """
    task: dict[str, Any] = {}
    pad_mask_dict: dict[str, np.ndarray] = {}
    for key, (height, width) in spec.task_images.items():
        task[key] = np.zeros((batch_size, height, width, 3), dtype=np.uint8)
        pad_mask_dict[key] = np.zeros(batch_size, dtype=bool)
    if spec.task_timestep:
        task["timestep"] = np.zeros(batch_size, dtype=np.int32)
        pad_mask_dict["timestep"] = np.zeros(batch_size, dtype=bool)
    if language is not None:
        ids = np.asarray(language["input_ids"])
        if ids.shape[0] != batch_size:
            raise InputError(f"language ids have batch {ids.shape[0]}; expected {batch_size}")
        if spec.language_length is not None and ids.shape[-1] != spec.language_length:
            raise InputError(
                f"instructions tokenize to {ids.shape[-1]} tokens; the checkpoint was trained on "
                f"{spec.language_length} (text_processor max_length)"
            )
        task["language_instruction"] = {
            "input_ids": ids,
            "attention_mask": np.asarray(language["attention_mask"]),
        }
        pad_mask_dict["language_instruction"] = np.ones(batch_size, dtype=bool)
    task["pad_mask_dict"] = pad_mask_dict
    return task


def postprocess_actions(
    actions: np.ndarray,
    statistics: ArrayStatistics | None,
    normalization: NormalizationType | str = NormalizationType.NORMAL,
    gripper: Gripper | str | None = Gripper.OCTO,
) -> np.ndarray:
    """Model actions (B, H, A) → environment actions.

    Un-normalizes with the checkpoint's action statistics (upstream ``sample_actions``:
    truncate to the statistics' dims, NORMAL ``a·std + mean`` / BOUNDS
    ``(a + 1)(p99 − p01)/2 + p01``, only where ``mask``), then converts the last dim from the
    model's gripper convention (Octo: 1 = open, 0 = close) to LIBERO's (−1 open, +1 close).
    ``gripper=None`` leaves it as is.
    """
    out = np.asarray(actions, dtype=np.float64)
    if out.ndim != 3:
        raise InputError(f"expected model actions (batch, horizon, dim), got shape {out.shape}")
    if statistics is not None:
        out = statistics.unnormalize(out, normalization)
    if gripper is not None:
        out = gripper_to_env(out, gripper)
    return out


def distinct(items: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct strings in first-seen order and the index of each item among them."""
    order: dict[str, int] = {}
    index = np.array([order.setdefault(s, len(order)) for s in items], dtype=np.int64)
    return list(order), index
