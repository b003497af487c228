"""From the network's normalized action vectors to LIBERO's 7-d delta actions.

1. Split the vector by action key (``train.action_keys`` order) and un-normalize each slice
   with robomimic's ``x * scale + offset`` (float64, as ``RolloutPolicy`` does).
2. A 7-d action without rotation keys is LIBERO's own space (delta xyz, delta axis-angle,
   gripper -1 open / +1 close) and is returned as is.
3. DROID's 10-d actions ``[abs_pos 3, abs_rot_6d 6, gripper_position 1]`` are absolute
   end-effector targets. They become LIBERO deltas against the current pose (from proprio):
   rot6d -> rotation matrix (Gram-Schmidt on the two stored rows), position and rotation
   differences scaled by LIBERO's OSC limits (0.05 m and 0.5 rad per unit action) and
   clipped to [-1, 1], gripper 0..1 (closed) -> -1..+1. Consecutive chunk steps are differenced
   against the previous target, because the controller applies each delta to the pose the
   previous step reached.

No Euler angles are involved on the way to LIBERO: the rotation goes matrix -> axis-angle.
When Euler angles are wanted (DROID's own 7-d robot command, :func:`droid_euler_action`), they
use scipy's extrinsic ``"xyz"``, the convention DROID's training data was encoded with
(``tensorflow_graphics from_euler`` = Rz·Ry·Rx). robomimic's runtime ``rot_euler`` conversion
decodes with PyTorch3D's intrinsic ``"XYZ"`` instead, which does not invert that encoding
(0.3, -0.5, 1.2) comes back as (0.567, 0.110, 1.245); we do not reproduce that bug.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evalharness.policies.common.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    rot6d_to_axis_angle,
    rot6d_to_euler,
    rot6d_to_matrix,
)
from evalharness.policies.diffusion.config import ActionKey

__all__ = [
    "LIBERO_MAX_DELTA_POS",
    "LIBERO_MAX_DELTA_ROT",
    "decode_to_libero",
    "droid_euler_action",
    "split_unnormalize",
]

#: robosuite OSC_POSE ``output_max`` in LIBERO: a unit action moves 0.05 m / turns 0.5 rad.
LIBERO_MAX_DELTA_POS = 0.05
LIBERO_MAX_DELTA_ROT = 0.5

ActionParts = dict[str, np.ndarray]


def split_unnormalize(actions: np.ndarray, keys: Sequence[ActionKey]) -> ActionParts:
    """(..., D) normalized -> {key: (..., d) raw}, un-normalized per key in float64."""
    actions = np.asarray(actions, dtype=np.float64)
    total = sum(k.dim for k in keys)
    if actions.shape[-1] != total:
        raise ValueError(
            f"actions have {actions.shape[-1]} dims; action keys {[k.name for k in keys]} need {total}"
        )
    parts: ActionParts = {}
    start = 0
    for key in keys:
        part = actions[..., start : start + key.dim]
        if key.scale is not None and key.offset is not None:
            part = part * np.asarray(key.scale) + np.asarray(key.offset)
        parts[key.name] = part
        start += key.dim
    return parts


def _find(keys: Sequence[ActionKey], dim: int, rotation: bool) -> ActionKey | None:
    for key in keys:
        if key.dim == dim and (key.rotation_format == "rot_6d") == rotation:
            return key
    return None


def decode_to_libero(
    parts: ActionParts, keys: Sequence[ActionKey], proprio: np.ndarray | None = None
) -> np.ndarray:
    """Raw action parts (B, T, d) per key -> LIBERO actions (B, T, 7).

    `proprio` is the latest standard proprio (B, 8): eef pos, axis-angle, gripper qpos; it is
    needed only for absolute-pose actions.
    """
    rot_key = _find(keys, 6, rotation=True)
    if rot_key is None:
        vector = np.concatenate([parts[k.name] for k in keys], axis=-1)
        if vector.shape[-1] != 7:
            raise ValueError(
                f"the checkpoint predicts {vector.shape[-1]}-d actions {[k.name for k in keys]} "
                "without a rot_6d key; LIBERO needs 7-d (delta xyz, delta axis-angle, gripper)"
            )
        return vector
    pos_key, grip_key = _find(keys, 3, rotation=False), _find(keys, 1, rotation=False)
    if pos_key is None or grip_key is None:
        raise ValueError(
            f"a rot_6d action needs a 3-d position key and a 1-d gripper key beside it; got "
            f"{[(k.name, k.dim) for k in keys]}"
        )
    pos, rot6d, grip = parts[pos_key.name], parts[rot_key.name], parts[grip_key.name]
    absolute = "abs" in rot_key.name or "abs" in pos_key.name
    if not absolute:
        # Relative rot6d: the rotation itself is the delta (robomimic's rot_axis_angle).
        return np.concatenate([pos, rot6d_to_axis_angle(rot6d), grip], axis=-1)
    if proprio is None:
        raise ValueError("absolute-pose actions need the current proprio to become LIBERO deltas")
    cur_pos = np.asarray(proprio, dtype=np.float64)[:, None, 0:3]
    cur_rot = axis_angle_to_matrix(np.asarray(proprio, dtype=np.float64)[:, 3:6])[:, None]
    targets = rot6d_to_matrix(rot6d)  # (B, T, 3, 3)
    prev_pos = np.concatenate([cur_pos, pos[:, :-1]], axis=1)
    prev_rot = np.concatenate([cur_rot, targets[:, :-1]], axis=1)
    d_pos = (pos - prev_pos) / LIBERO_MAX_DELTA_POS
    d_rot = matrix_to_axis_angle(targets @ np.swapaxes(prev_rot, -1, -2)) / LIBERO_MAX_DELTA_ROT
    gripper = 2.0 * np.clip(grip, 0.0, 1.0) - 1.0
    return np.concatenate([np.clip(d_pos, -1, 1), np.clip(d_rot, -1, 1), gripper], axis=-1)


def droid_euler_action(parts: ActionParts, keys: Sequence[ActionKey]) -> np.ndarray:
    """DROID's 7-d robot command ``[xyz, Euler "xyz" (extrinsic), gripper]`` from raw parts."""
    rot_key = _find(keys, 6, rotation=True)
    pos_key, grip_key = _find(keys, 3, rotation=False), _find(keys, 1, rotation=False)
    if rot_key is None or pos_key is None or grip_key is None:
        raise ValueError(f"not a DROID action layout: {[(k.name, k.dim) for k in keys]}")
    euler = rot6d_to_euler(parts[rot_key.name], "xyz")
    return np.concatenate([parts[pos_key.name], euler, parts[grip_key.name]], axis=-1)
