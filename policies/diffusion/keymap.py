"""Where each checkpoint observation key comes from in the harness' standard observation.

One declarative table (:data:`STANDARD_SOURCES`) for the key spellings robomimic, LIBERO's HDF5
datasets and DROID use. A checkpoint key that the batch already carries under its own name
passes through unchanged (useful for replaying recorded robomimic observations); any other key
must have a row here, or the adapter refuses the checkpoint and names the key.

Orientation: LIBERO's HDF5 demos (``agentview_rgb``, ``eye_in_hand_rgb``) and robosuite's raw
renders (``agentview_image``, ``robot0_eye_in_hand_image``) are upside down, while the harness'
env hands out upright frames (as OpenVLA/openpi/LeRobot). Policies trained on those keys saw
raw frames, so their rows rotate the image back by 180°. DROID's cameras are real and upright.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from evalharness.envs.rotations import rotate180
from evalharness.policies.common.rotations import (
    axis_angle_to_matrix,
    matrix_to_euler,
    matrix_to_quat,
)

__all__ = ["STANDARD_SOURCES", "TRANSFORMS", "ObsSource", "gather"]

#: Finger joint travel of the Panda gripper in LIBERO (qpos ±0.04 m when fully open).
PANDA_GRIPPER_WIDTH = 0.08


def _euler_xyz_pose(x: np.ndarray) -> np.ndarray:
    # DROID's cartesian_position = [xyz, Euler angles, scipy extrinsic "xyz"].
    return np.concatenate(
        [x[..., :3], matrix_to_euler(axis_angle_to_matrix(x[..., 3:6]), "xyz")], -1
    )


def _quat_from_axis_angle(x: np.ndarray) -> np.ndarray:
    return matrix_to_quat(axis_angle_to_matrix(x))


def _gripper_closed_fraction(qpos: np.ndarray) -> np.ndarray:
    # DROID's gripper_position is 0 (open) .. 1 (closed); LIBERO reports two finger joints.
    width = qpos[..., 0:1] - qpos[..., 1:2]
    return np.clip(1.0 - width / PANDA_GRIPPER_WIDTH, 0.0, 1.0)


#: Named conversions a table row may apply after slicing (numpy, last axis).
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "axis_angle_pose_to_euler_xyz_pose": _euler_xyz_pose,
    "axis_angle_to_quat_xyzw": _quat_from_axis_angle,
    "gripper_qpos_to_closed_fraction": _gripper_closed_fraction,
}


@dataclass(frozen=True)
class ObsSource:
    """A standard key, an optional slice of its last axis, and what to do with it."""

    key: str
    start: int | None = None
    stop: int | None = None
    flip: bool = False  # rotate images by 180° (back to a raw robosuite render)
    transform: str | None = None

    def __post_init__(self) -> None:
        if self.transform is not None and self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; known: {sorted(TRANSFORMS)}")

    def describe(self) -> str:
        text = self.key
        if self.start is not None or self.stop is not None:
            text += f"[..., {self.start or ''}:{self.stop or ''}]"
        if self.flip:
            text += " rotated 180°"
        if self.transform:
            text += f" -> {self.transform}"
        return text


_PRIMARY_RAW = ObsSource("image_primary", flip=True)
_WRIST_RAW = ObsSource("image_wrist", flip=True)

#: Checkpoint observation key -> where the LIBERO standard observation holds it.
STANDARD_SOURCES: Mapping[str, ObsSource] = {
    # LIBERO HDF5 datasets (LIBERO's own robomimic configs).
    "agentview_rgb": _PRIMARY_RAW,
    "eye_in_hand_rgb": _WRIST_RAW,
    "gripper_states": ObsSource("proprio", 6, 8),
    "joint_states": ObsSource("joint_states"),
    "ee_pos": ObsSource("proprio", 0, 3),
    "ee_ori": ObsSource("proprio", 3, 6),
    "ee_states": ObsSource("proprio", 0, 6),
    # robosuite / robomimic naming.
    "agentview_image": _PRIMARY_RAW,
    "robot0_eye_in_hand_image": _WRIST_RAW,
    "robot0_eef_pos": ObsSource("proprio", 0, 3),
    "robot0_eef_quat": ObsSource("proprio", 3, 6, transform="axis_angle_to_quat_xyzw"),
    "robot0_gripper_qpos": ObsSource("proprio", 6, 8),
    "robot0_joint_pos": ObsSource("joint_states"),
    # DROID (RLDS keys): two exterior cameras; here the third-person and the wrist camera.
    "camera/image/varied_camera_1_left_image": ObsSource("image_primary"),
    "camera/image/varied_camera_2_left_image": ObsSource("image_wrist"),
    "robot_state/cartesian_position": ObsSource(
        "proprio", 0, 6, transform="axis_angle_pose_to_euler_xyz_pose"
    ),
    "robot_state/gripper_position": ObsSource(
        "proprio", 6, 8, transform="gripper_qpos_to_closed_fraction"
    ),
}


def gather(obs: Mapping[str, np.ndarray], key: str, source: ObsSource) -> np.ndarray:
    """The array for checkpoint key `key` from a batch of standard observations."""
    value = np.asarray(obs[source.key])
    if source.start is not None or source.stop is not None:
        value = value[..., source.start : source.stop]
    if source.flip:
        value = rotate180(value)
    if source.transform is not None:
        value = TRANSFORMS[source.transform](value.astype(np.float64))
    return value
