"""Rotation conversions shared by the env (proprio) and the policy families.

Quaternions follow robosuite / MuJoCo-binding observations: (x, y, z, w), scalar last.
"""

from __future__ import annotations

import numpy as np

#: ``upright``: the env's frames (rotated 180° from robosuite's render, as OpenVLA/Octo/LeRobot
#: LIBERO data). ``raw``: robosuite's upside-down render, as LIBERO's own HDF5 files store it.
ORIENTATIONS = ("upright", "raw")


def rotate180(images: np.ndarray) -> np.ndarray:
    """Rotate images (..., H, W, C) by 180°: raw robosuite frames ↔ upright ones.

    The single implementation behind the env's upright frames (`envs.libero.upright`), the
    data layer's `rot180` transform and the `ImageOrientation` wrapper.
    """
    return np.ascontiguousarray(images[..., ::-1, ::-1, :])


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) = unit axis * angle in radians, from an (x, y, z, w) quaternion.

    The same convention as robosuite's `transform_utils.quat2axisangle`, which OpenVLA, openpi
    and LeRobot use to build LIBERO's 8-d proprio: the angle is taken as 2*acos(w) without
    flipping to the shortest rotation, so policies trained on their data see the same numbers.

    >>> quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0]))
    array([0., 0., 0.])
    """
    q = np.asarray(quat, dtype=np.float64)
    if q.shape != (4,):
        raise ValueError(
            f"quat2axisangle expects a (4,) quaternion (x, y, z, w), got shape {q.shape}"
        )
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * np.arccos(w) / den
