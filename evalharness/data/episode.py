"""Standard episodes: what every reader yields, and the one function that builds them.

An episode is a plain dict of numpy arrays over T steps:

    image_primary         (T, H, W, 3) uint8, in the model's orientation (upright by default)
    image_wrist           (T, H, W, 3) uint8            (whichever image keys the spec maps)
    proprio               (T, D) float32                (absent when the spec maps none)
    action                (T, A) float32, gripper in the model's convention
    language_instruction  str
    episode_id            str, e.g. "libero_spatial/task_demo.hdf5:demo_3"
    source                str, the file it came from
    noops_removed         int, transitions dropped by the no-op filter

`standardize_episode` applies a spec to raw arrays in a fixed order: dtype/shape checks,
no-op filtering (on the file's actions, as OpenVLA filters them), orientation, resize, gripper
conversion. Each happens exactly once here, so no other module flips or converts anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from evalharness.data.checks import as_float32, as_uint8_images
from evalharness.data.errors import DatasetError
from evalharness.data.spec import DatasetSpec, apply_image_transform
from evalharness.policies.common.images import resize_images
from evalharness.policies.common.normalization import convert_gripper

Episode = dict[str, Any]


def noop_mask(actions: np.ndarray, threshold: float = 1e-4) -> np.ndarray:
    """(T,) bool, True for transitions OpenVLA's ``regenerate_libero_dataset.py`` drops.

    A step is a no-op when ``‖a[:-1]‖ < threshold`` and its gripper command equals that of the
    previous *kept* action; before any action is kept, the norm alone decides. The gripper
    check keeps steps where the arm is still but the gripper opens or closes.
    """
    actions = np.asarray(actions)
    drop = np.zeros(actions.shape[0], dtype=bool)
    previous: np.ndarray | None = None
    for t, action in enumerate(actions):
        still = bool(np.linalg.norm(action[:-1]) < threshold)
        if still and (previous is None or action[-1] == previous[-1]):
            drop[t] = True
        else:
            previous = action
    return drop


def standardize_episode(
    raw: Mapping[str, Any],
    language: str,
    spec: DatasetSpec,
    source: str,
    episode_id: str,
) -> Episode:
    """Build a standard episode from raw arrays keyed by the spec's *source* keys.

    ``raw`` holds the arrays of ``spec.image_keys.values()``, ``spec.proprio_keys`` and
    ``spec.action_key`` as read from the file. Errors name ``source`` (file and episode).
    """
    where = f"{source} [{episode_id}]"
    needed = [*spec.image_keys.values(), *spec.proprio_keys, spec.action_key]
    missing = [k for k in needed if k not in raw]
    if missing:
        raise DatasetError(
            f"{where}: no {missing[0]!r} (spec {spec.name!r}); available: "
            f"{', '.join(sorted(raw)) or 'nothing'}"
        )
    action = as_float32(raw[spec.action_key], where, spec.action_key)
    if action.ndim != 2 or action.shape[0] == 0:
        raise DatasetError(
            f"{where}: {spec.action_key!r} has shape {action.shape}; expected (T, action_dim) "
            "with T >= 1"
        )
    if spec.action_dim is not None and action.shape[1] != spec.action_dim:
        raise DatasetError(
            f"{where}: {spec.action_key!r} has {action.shape[1]} dims per step; the spec "
            f"{spec.name!r} expects action_dim={spec.action_dim}"
        )
    steps = action.shape[0]
    lengths = {spec.action_key: steps}

    images: dict[str, np.ndarray] = {}
    for key, src in spec.image_keys.items():
        images[key] = as_uint8_images(raw[src], where, src)
        lengths[src] = images[key].shape[0]

    proprio_parts = []
    for i, src in enumerate(spec.proprio_keys):
        part = as_float32(raw[src], where, src)
        if part.ndim == 1:
            part = part[:, None]
        expected = spec.proprio_dims[i] if spec.proprio_dims else None
        if part.ndim != 2 or (expected is not None and part.shape[1] != expected):
            raise DatasetError(
                f"{where}: {src!r} has shape {part.shape}; expected (T, {expected or 'D'})"
            )
        lengths[src] = part.shape[0]
        proprio_parts.append(part)

    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise DatasetError(f"{where}: keys disagree on the number of steps ({shown})")

    removed = 0
    keep = slice(None)
    if spec.filter_noops:
        # On the file's own values (float64 in LIBERO), as OpenVLA compares them.
        drop = noop_mask(np.asarray(raw[spec.action_key], np.float64), spec.noop_threshold)
        removed = int(drop.sum())
        keep = ~drop  # type: ignore[assignment]

    episode: Episode = {}
    for key, stack in images.items():
        stack = apply_image_transform(stack[keep], spec.image_transform)
        if key in spec.image_sizes and stack.shape[0]:
            stack = resize_images(stack, spec.image_sizes[key])
        episode[key] = stack
    if proprio_parts:
        episode["proprio"] = np.concatenate(proprio_parts, axis=1)[keep]
    action = action[keep].copy()
    if action.shape[0]:
        converted = convert_gripper(action[:, -1], spec.gripper_in_file, spec.gripper_for_model)
        action[:, -1] = converted.astype(np.float32)
    episode["action"] = action
    episode["language_instruction"] = language
    episode["episode_id"] = episode_id
    episode["source"] = source
    episode["noops_removed"] = removed
    return episode


def episode_length(episode: Mapping[str, Any]) -> int:
    """Number of transitions T of a standard episode."""
    return int(np.asarray(episode["action"]).shape[0])
