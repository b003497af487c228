"""Rotation conversions for policy adapters: rot6d, Euler angles, axis-angle, quaternions.

All functions take NumPy arrays with any leading batch shape and work in float64. Conventions
are stated once here so that every adapter means the same thing:

- **Rotation matrices** act on column vectors (``v_world = R @ v_local``).
- **rot6d** (Zhou et al. 2019, as in PyTorch3D and robomimic's ``torch_utils``) is the first two
  **rows** of the matrix, ``[R00, R01, R02, R10, R11, R12]``; decoding is Gram-Schmidt on those
  two rows, the third row being their cross product.
- **Euler angles** use scipy's spelling: lower-case ``"xyz"`` is *extrinsic* (rotate about the
  fixed x, then y, then z axis: ``R = Rz(c) @ Ry(b) @ Rx(a)``); upper-case ``"XYZ"`` is
  *intrinsic* (``R = Rx(a) @ Ry(b) @ Rz(c)``), which is also PyTorch3D's ``"XYZ"``.
  DROID's training data and robot stack use extrinsic ``"xyz"``; robomimic's runtime
  ``rot_6d_to_euler_angles(convention="XYZ")`` decodes with the intrinsic one, which does not
  invert the training encoding (see `docs/families/diffusion.md`, "Actions").
- **Axis-angle** is a 3-vector, unit axis times angle in radians, angle in [0, pi].
- **Quaternions** are (x, y, z, w), scalar last, as in robosuite and scipy.

The env keeps its own ``evalharness.envs.rotations.quat2axisangle`` for proprio, which
reproduces robosuite's unnormalized-angle quirk; these functions are the exact math.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "EULER_CONVENTIONS",
    "axis_angle_to_matrix",
    "euler_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_quat",
    "matrix_to_rot6d",
    "quat_to_matrix",
    "rot6d_to_axis_angle",
    "rot6d_to_euler",
    "rot6d_to_matrix",
]

F64 = NDArray[np.float64]

#: Euler conventions these helpers implement (scipy spelling).
EULER_CONVENTIONS = ("xyz", "XYZ")

_EPS = 1e-12


def _last_dim(x: ArrayLike, n: int, what: str) -> F64:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim < 1 or array.shape[-1] != n:
        raise ValueError(f"{what} must have a last axis of size {n}, got shape {array.shape}")
    return array


def _matrices(m: ArrayLike) -> F64:
    array = np.asarray(m, dtype=np.float64)
    if array.ndim < 2 or array.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (..., 3, 3), got {array.shape}")
    return array


def _normalize(v: F64, what: str) -> F64:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    if np.any(norm < _EPS):
        raise ValueError(f"{what} has a zero-length vector; cannot normalize it")
    return v / norm


def rot6d_to_matrix(rot6d: ArrayLike) -> F64:
    """(..., 6) rot6d (first two rows) -> (..., 3, 3) rotation matrices via Gram-Schmidt."""
    r = _last_dim(rot6d, 6, "rot6d")
    a1, a2 = r[..., :3], r[..., 3:]
    b1 = _normalize(a1, "rot6d first row")
    b2 = _normalize(a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1, "rot6d second row")
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-2)


def matrix_to_rot6d(matrix: ArrayLike) -> F64:
    """(..., 3, 3) rotation matrices -> (..., 6): the first two rows, flattened."""
    m = _matrices(matrix)
    return m[..., :2, :].reshape(*m.shape[:-2], 6)


def _rx(a: F64) -> F64:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([o, z, z, z, c, -s, z, s, c], axis=-1).reshape(*a.shape, 3, 3)


def _ry(a: F64) -> F64:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([c, z, s, z, o, z, -s, z, c], axis=-1).reshape(*a.shape, 3, 3)


def _rz(a: F64) -> F64:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(*a.shape, 3, 3)


def _check_convention(convention: str) -> None:
    if convention not in EULER_CONVENTIONS:
        raise ValueError(
            f"Euler convention {convention!r} is not supported; expected one of "
            f"{EULER_CONVENTIONS} (scipy spelling: 'xyz' extrinsic, 'XYZ' intrinsic)"
        )


def euler_to_matrix(angles: ArrayLike, convention: str = "xyz") -> F64:
    """(..., 3) Euler angles (a, b, c) in radians -> (..., 3, 3).

    ``"xyz"`` (extrinsic): ``Rz(c) @ Ry(b) @ Rx(a)``; ``"XYZ"`` (intrinsic): ``Rx(a) @ Ry(b) @ Rz(c)``.
    """
    _check_convention(convention)
    e = _last_dim(angles, 3, "Euler angles")
    rx, ry, rz = _rx(e[..., 0]), _ry(e[..., 1]), _rz(e[..., 2])
    if convention == "xyz":
        return rz @ ry @ rx
    return rx @ ry @ rz


def matrix_to_euler(matrix: ArrayLike, convention: str = "xyz") -> F64:
    """(..., 3, 3) -> (..., 3) Euler angles in the given convention; the middle angle is in
    [-pi/2, pi/2] and the others in (-pi, pi]. At gimbal lock the third angle is set to 0."""
    _check_convention(convention)
    m = _matrices(matrix)
    if convention == "xyz":
        # R = Rz(c) Ry(b) Rx(a): R20 = -sin b, R21 = cos b sin a, R22 = cos b cos a,
        # R10 = sin c cos b, R00 = cos c cos b.
        sin_b = np.clip(-m[..., 2, 0], -1.0, 1.0)
        cos_b = np.hypot(m[..., 0, 0], m[..., 1, 0])
        a = np.arctan2(m[..., 2, 1], m[..., 2, 2])
        c = np.arctan2(m[..., 1, 0], m[..., 0, 0])
        # Gimbal lock (cos b = 0): only a -/+ c is defined; fix c = 0 and solve for a.
        locked = cos_b < 1e-9
        a_locked = np.arctan2(-m[..., 1, 2], m[..., 1, 1])
        a = np.where(locked, a_locked, a)
        c = np.where(locked, 0.0, c)
        return np.stack([a, np.arcsin(sin_b), c], axis=-1)
    # R = Rx(a) Ry(b) Rz(c): R02 = sin b, R12 = -sin a cos b, R22 = cos a cos b,
    # R01 = -cos b sin c, R00 = cos b cos c.
    sin_b = np.clip(m[..., 0, 2], -1.0, 1.0)
    cos_b = np.hypot(m[..., 0, 0], m[..., 0, 1])
    a = np.arctan2(-m[..., 1, 2], m[..., 2, 2])
    c = np.arctan2(-m[..., 0, 1], m[..., 0, 0])
    locked = cos_b < 1e-9
    a_locked = np.arctan2(m[..., 2, 1], m[..., 1, 1])
    a = np.where(locked, a_locked, a)
    c = np.where(locked, 0.0, c)
    return np.stack([a, np.arcsin(sin_b), c], axis=-1)


def quat_to_matrix(quat: ArrayLike) -> F64:
    """(..., 4) quaternions (x, y, z, w), normalized first -> (..., 3, 3)."""
    q = _normalize(_last_dim(quat, 4, "quaternion"), "quaternion")
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return np.stack(rows, axis=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(matrix: ArrayLike) -> F64:
    """(..., 3, 3) -> (..., 4) unit quaternions (x, y, z, w) with w >= 0.

    Shepperd's method: build the quaternion from whichever of w, x, y, z is largest, which
    keeps the division well conditioned for every rotation (angles near pi included).
    """
    m = _matrices(matrix)
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    diag = np.stack([m[..., 0, 0], m[..., 1, 1], m[..., 2, 2], trace], axis=-1)
    choice = np.argmax(diag, axis=-1)
    # One candidate per largest component (w, x, y, z); pick per rotation below.
    cands = []
    s = np.sqrt(np.maximum(1.0 + trace, _EPS)) * 2  # s = 4w
    cands.append(
        np.stack(
            [
                (m[..., 2, 1] - m[..., 1, 2]) / s,
                (m[..., 0, 2] - m[..., 2, 0]) / s,
                (m[..., 1, 0] - m[..., 0, 1]) / s,
                0.25 * s,
            ],
            axis=-1,
        )
    )
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        s = np.sqrt(np.maximum(1.0 + m[..., i, i] - m[..., j, j] - m[..., k, k], _EPS)) * 2
        cand = np.empty((*m.shape[:-2], 4))
        cand[..., i] = 0.25 * s
        cand[..., j] = (m[..., j, i] + m[..., i, j]) / s
        cand[..., k] = (m[..., k, i] + m[..., i, k]) / s
        cand[..., 3] = (m[..., k, j] - m[..., j, k]) / s
        cands.append(cand)
    stacked = np.stack(cands, axis=0)  # (4 candidates: w, x, y, z, ..., 4)
    order = np.where(choice == 3, 0, choice + 1)
    q = np.take_along_axis(stacked, order[None, ..., None], axis=0)[0]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def matrix_to_axis_angle(matrix: ArrayLike) -> F64:
    """(..., 3, 3) -> (..., 3) axis * angle, angle in [0, pi] (the shortest rotation)."""
    q = matrix_to_quat(matrix)
    xyz, w = q[..., :3], q[..., 3]
    sin_half = np.linalg.norm(xyz, axis=-1)
    angle = 2.0 * np.arctan2(sin_half, w)
    # angle / sin(angle/2) -> 2 as the angle -> 0; use the series to avoid 0/0.
    small = sin_half < 1e-8
    scale = np.where(small, 2.0 + angle**2 / 12.0, angle / np.where(small, 1.0, sin_half))
    return xyz * scale[..., None]


def axis_angle_to_matrix(axis_angle: ArrayLike) -> F64:
    """(..., 3) axis * angle -> (..., 3, 3) via Rodrigues' formula."""
    v = _last_dim(axis_angle, 3, "axis-angle")
    angle = np.linalg.norm(v, axis=-1)
    safe = np.where(angle < 1e-12, 1.0, angle)
    k = v / safe[..., None]
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    z = np.zeros_like(kx)
    cross = np.stack([z, -kz, ky, kz, z, -kx, -ky, kx, z], axis=-1).reshape(*v.shape[:-1], 3, 3)
    s, c = np.sin(angle)[..., None, None], np.cos(angle)[..., None, None]
    eye = np.broadcast_to(np.eye(3), cross.shape)
    return eye + s * cross + (1 - c) * (cross @ cross)


def rot6d_to_euler(rot6d: ArrayLike, convention: str = "xyz") -> F64:
    """(..., 6) rot6d -> (..., 3) Euler angles; ``"xyz"`` (extrinsic) inverts DROID's encoding."""
    return matrix_to_euler(rot6d_to_matrix(rot6d), convention)


def rot6d_to_axis_angle(rot6d: ArrayLike) -> F64:
    """(..., 6) rot6d -> (..., 3) axis-angle (robomimic's default ``rot_axis_angle``)."""
    return matrix_to_axis_angle(rot6d_to_matrix(rot6d))
