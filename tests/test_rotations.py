"""Rotation conversions in `policies/common/rotations.py`, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from evalharness.policies.common import rotations as rot

ROTATIONS = Rotation.random(500, random_state=7)


@pytest.mark.parametrize("convention", ["xyz", "XYZ"])
def test_euler_matches_scipy_both_ways(convention: str) -> None:
    m = ROTATIONS.as_matrix()
    np.testing.assert_allclose(
        rot.matrix_to_euler(m, convention), ROTATIONS.as_euler(convention), atol=1e-9
    )
    np.testing.assert_allclose(
        rot.euler_to_matrix(ROTATIONS.as_euler(convention), convention), m, atol=1e-12
    )


def test_rot6d_is_the_first_two_rows_and_round_trips_to_droid_euler_angles() -> None:
    # DROID encodes Euler "xyz" (extrinsic, scipy) -> matrix -> first two rows; decoding with the
    # documented convention returns the same angles.
    angles = ROTATIONS.as_euler("xyz")
    r6 = rot.matrix_to_rot6d(Rotation.from_euler("xyz", angles).as_matrix())
    np.testing.assert_allclose(r6[:, :3], ROTATIONS.as_matrix()[:, 0, :], atol=1e-12)
    np.testing.assert_allclose(rot.rot6d_to_euler(r6, "xyz"), angles, atol=1e-9)
    np.testing.assert_allclose(rot.rot6d_to_matrix(r6), ROTATIONS.as_matrix(), atol=1e-12)


def test_upstream_runtime_xyz_decoding_does_not_invert_droid_encoding() -> None:
    # The facts' example: robomimic's rot_6d_to_euler_angles(convention="XYZ") on DROID data.
    r6 = rot.matrix_to_rot6d(Rotation.from_euler("xyz", [0.3, -0.5, 1.2]).as_matrix())
    np.testing.assert_allclose(rot.rot6d_to_euler(r6, "XYZ"), [0.567, 0.110, 1.245], atol=1e-3)
    np.testing.assert_allclose(rot.rot6d_to_euler(r6, "xyz"), [0.3, -0.5, 1.2], atol=1e-12)


def test_rot6d_decoding_orthonormalizes_a_perturbed_pair_of_rows() -> None:
    r6 = rot.matrix_to_rot6d(ROTATIONS.as_matrix()) * 3.0 + 0.01
    m = rot.rot6d_to_matrix(r6)
    np.testing.assert_allclose(
        m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="zero-length"):
        rot.rot6d_to_matrix(np.zeros(6))


def test_axis_angle_and_quaternions_match_scipy_including_angles_near_pi() -> None:
    near_pi = Rotation.from_rotvec(np.array([[np.pi - 1e-7, 0, 0], [0, 0, np.pi], [1e-9, 0, 0]]))
    for r in (ROTATIONS, near_pi):
        m = r.as_matrix()
        np.testing.assert_allclose(rot.axis_angle_to_matrix(r.as_rotvec()), m, atol=1e-12)
        np.testing.assert_allclose(
            rot.axis_angle_to_matrix(rot.matrix_to_axis_angle(m)), m, atol=1e-9
        )
        q = r.as_quat()
        q = np.where(q[..., 3:] < 0, -q, q)
        np.testing.assert_allclose(rot.quat_to_matrix(q), m, atol=1e-12)
        np.testing.assert_allclose(np.abs(rot.matrix_to_quat(m) @ q.T).diagonal(), 1.0, atol=1e-9)
    np.testing.assert_allclose(
        rot.matrix_to_axis_angle(ROTATIONS.as_matrix()), ROTATIONS.as_rotvec(), atol=1e-9
    )


def test_bad_shapes_and_conventions_are_named() -> None:
    with pytest.raises(ValueError, match="last axis of size 6"):
        rot.rot6d_to_matrix(np.zeros(5))
    with pytest.raises(ValueError, match="'zyx' is not supported"):
        rot.euler_to_matrix(np.zeros(3), "zyx")
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        rot.matrix_to_quat(np.eye(4))
