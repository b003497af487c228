"""Tiny, valid datasets for tests and smoke runs: LIBERO HDF5 and OpenVLA-style RLDS.

The data has learnable structure so a finetuning test can watch the loss fall: the
end-effector moves towards a fixed target, and each action is a deterministic function of
the proprio state (move towards the target, rotate back to zero, close the gripper near the
target) plus small noise. The images show the same state: a square at the end-effector's x/y
in the primary camera, a colour for the gripper in the wrist camera. A 2×2 red marker sits in
the top-left corner of every *upright* primary frame, so orientation bugs are visible in
tests.

Conventions are those of the real data: LIBERO HDF5 stores frames upside down (raw render)
and gripper −1 open / +1 close, float64 low-dim arrays; the RLDS copy stores upright frames,
``state`` = ee_states 6 + gripper_states 2, raw LIBERO gripper actions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from evalharness.data.rlds import write_rlds
from evalharness.envs.rotations import rotate180

TARGET = np.array([0.1, -0.1, 0.05])
MARKER = np.array([255, 0, 0], dtype=np.uint8)
DEFAULT_INSTRUCTION = "put the tiny red block on the target"


def tiny_trajectory(
    rng: np.random.Generator, steps: int, image_size: int, action_dim: int = 7
) -> dict[str, np.ndarray]:
    """One synthetic episode: upright images, proprio parts and LIBERO-convention actions."""
    if action_dim < 2:
        raise ValueError(f"action_dim must be >= 2 (arm dims + gripper), got {action_dim}")
    if steps < 1 or image_size < 4:
        raise ValueError(f"need steps >= 1 and image_size >= 4, got {steps}, {image_size}")
    pos = rng.uniform(-0.2, 0.2, 3)
    rot = rng.uniform(-0.3, 0.3, 3)
    arm = action_dim - 1
    out: dict[str, list[Any]] = {k: [] for k in ("pos", "rot", "grip", "joints", "action")}
    for _ in range(steps):
        near = np.linalg.norm(pos - TARGET) < 0.08
        gripper_cmd = 1.0 if near else -1.0  # LIBERO: +1 close, -1 open
        move = np.clip((TARGET - pos) * 4.0, -1.0, 1.0)
        turn = np.clip(-rot * 2.0, -1.0, 1.0)
        base = np.concatenate([move, turn])
        extra = 0.3 * np.sin(np.arange(1, max(arm - 6, 0) + 1) * pos[0] * 10.0)
        action = np.concatenate([base, extra])[:arm] + rng.normal(0.0, 0.01, arm)
        out["pos"].append(pos.copy())
        out["rot"].append(rot.copy())
        out["grip"].append(np.array([0.0, 0.0]) if near else np.array([0.04, -0.04]))
        out["joints"].append(rng.normal(0.0, 0.1, 7))
        out["action"].append(np.concatenate([action, [gripper_cmd]]))
        pos = pos + 0.05 * move
        rot = rot + 0.05 * turn
    traj = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    traj["image_primary"], traj["image_wrist"] = _render(traj, image_size)
    return traj


def _render(traj: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    steps = len(traj["pos"])
    ramp = np.linspace(40, 120, size, dtype=np.float64)
    primary = np.empty((steps, size, size, 3), dtype=np.uint8)
    primary[:] = np.stack([ramp[None, :].repeat(size, 0)] * 3, axis=-1).astype(np.uint8)
    wrist = np.zeros((steps, size, size, 3), dtype=np.uint8)
    half = max(1, size // 8)
    for t in range(steps):
        # x → column, y → row (y up), over the workspace [-0.3, 0.3]
        col = int(np.clip((traj["pos"][t, 0] + 0.3) / 0.6 * (size - 1), half, size - 1 - half))
        row = int(np.clip((0.3 - traj["pos"][t, 1]) / 0.6 * (size - 1), half, size - 1 - half))
        primary[t, row - half : row + half + 1, col - half : col + half + 1] = (30, 200, 60)
        primary[t, :2, :2] = MARKER
        closed = traj["grip"][t, 0] < 0.02
        wrist[t] = (200, 60, 60) if closed else (60, 60, 200)
    return primary, wrist


def write_tiny_libero_hdf5(
    path: str | Path,
    num_demos: int = 3,
    steps: int = 12,
    image_size: int = 32,
    action_dim: int = 7,
    seed: int = 0,
    language_instruction: str = DEFAULT_INSTRUCTION,
) -> Path:
    """Write a LIBERO-layout demo file (``data/demo_i/...`` and LIBERO's attributes).

    ``path`` is the .hdf5 file to create (parents are made). Returns it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Simulator states come from their own stream, so trajectories equal write_tiny_rlds's.
    state_rng = np.random.default_rng([seed, 1])
    problem_info = {
        "domain_name": "robosuite",
        "problem_name": "libero_tabletop_manipulation",
        "language_instruction": language_instruction,
    }
    bddl = f"{path.stem.removesuffix('_demo')}.bddl"
    with h5py.File(path, "w") as handle:
        data = handle.create_group("data")
        total = 0
        for i in range(num_demos):
            traj = tiny_trajectory(rng, steps, image_size, action_dim)
            demo = data.create_group(f"demo_{i}")
            obs = demo.create_group("obs")
            # LIBERO keeps frames as rendered (upside down): store the 180° rotation.
            obs["agentview_rgb"] = rotate180(traj["image_primary"])
            obs["eye_in_hand_rgb"] = rotate180(traj["image_wrist"])
            obs["ee_pos"] = traj["pos"]
            obs["ee_ori"] = traj["rot"]
            obs["ee_states"] = np.concatenate([traj["pos"], traj["rot"]], axis=1)
            obs["gripper_states"] = traj["grip"]
            obs["joint_states"] = traj["joints"]
            demo["actions"] = traj["action"]
            demo["states"] = state_rng.normal(0.0, 1.0, (steps, 10))
            demo["robot_states"] = np.concatenate(
                [traj["grip"], traj["pos"], np.tile([0.0, 0.0, 0.0, 1.0], (steps, 1))], axis=1
            )
            flags = np.zeros(steps, dtype=np.uint8)
            flags[-1] = 1
            demo["rewards"] = flags
            demo["dones"] = flags
            demo.attrs["num_samples"] = steps
            demo.attrs["model_file"] = "<mujoco model='tiny'/>"
            demo.attrs["init_state"] = demo["states"][0]
            total += steps
        data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
        data.attrs["problem_info"] = json.dumps(problem_info)
        data.attrs["macros_image_convention"] = "opengl"
        data.attrs["bddl_file_name"] = bddl
        data.attrs["bddl_file_content"] = "(define (problem tiny))"
        data.attrs["env_args"] = json.dumps(
            {
                "type": 1,
                "env_name": "Libero_Tabletop_Manipulation",
                "problem_name": problem_info["problem_name"],
                "bddl_file": bddl,
                "env_kwargs": {},
            }
        )
        data.attrs["num_demos"] = num_demos
        data.attrs["total"] = total
        data.attrs["tag"] = "libero-v1"
    return path


def write_tiny_rlds(
    path: str | Path,
    num_episodes: int = 3,
    steps: int = 12,
    image_size: int = 32,
    action_dim: int = 7,
    seed: int = 0,
    name: str = "tiny_libero_no_noops",
    language_instruction: str = DEFAULT_INSTRUCTION,
    image_encoding: str = "png",
) -> Path:
    """Write an RLDS dataset laid out like OpenVLA's ``libero_*_no_noops`` under
    ``path/name/1.0.0``; returns that version folder."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(num_episodes):
        traj = tiny_trajectory(rng, steps, image_size, action_dim)
        reward = np.zeros(steps, dtype=np.float32)
        reward[-1] = 1.0
        episodes.append(
            {
                "steps": {
                    "observation": {
                        "image": traj["image_primary"],  # already upright, as OpenVLA's
                        "wrist_image": traj["image_wrist"],
                        "state": np.concatenate(
                            [traj["pos"], traj["rot"], traj["grip"]], axis=1
                        ).astype(np.float32),
                        "joint_state": traj["joints"].astype(np.float32),
                    },
                    "action": traj["action"].astype(np.float32),
                    "language_instruction": [language_instruction] * steps,
                    "reward": reward,
                    "discount": np.ones(steps, dtype=np.float32),
                },
                "episode_metadata": {"file_path": f"tiny/demo_{i}.hdf5"},
            }
        )
    return write_rlds(path, name, episodes, image_encoding=image_encoding)
