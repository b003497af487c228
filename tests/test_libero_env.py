"""Spec tests for evalharness.envs.libero (LiberoEnv, task lookup) and envs.rotations.

Tests marked `sim` build real LIBERO environments (software rendering, seconds each). They share
one env per module at a small, non-square render size (32 x 40 catches a transposition that a
square frame would hide) and reset it at the start of every test.

Only one env is alive at a time: robosuite renders through whichever EGL context was made
current last, so building a second env and closing it while the first lives on leaves the
first one rendering wrong frames (a robosuite limitation the env does not guard against).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

from evalharness.envs.libero import (
    SUITES,
    LiberoEnv,
    UnknownTaskError,
    get_task,
    init_states,
    list_tasks,
    upright,
)
from evalharness.envs.rotations import quat2axisangle

SUITE = "libero_spatial"
TASK_ID = 0
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
CAMERA_HW = (32, 40)
MAX_STEPS = 3
SEED = 7
INIT_STATE = 3
ZERO_ACTION = np.zeros(7)
GRIPPER_OPEN_NOOP = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
GRIPPER_CLOSE_NOOP = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
OBS_ARRAYS = ("image_primary", "image_wrist", "proprio")


def make_env() -> LiberoEnv:
    return LiberoEnv(SUITE, TASK_ID, camera_size=CAMERA_HW, max_steps=MAX_STEPS)


def reset(env: LiberoEnv, seed: int = SEED, index: int = INIT_STATE) -> dict:
    obs, _ = env.reset(seed=seed, options={"init_state_index": index})
    return obs


@dataclass(frozen=True)
class FreshEnvRecord:
    """What a freshly built env did: its refusal to step before reset, then its first reset."""

    step_before_reset_error: str
    first_obs: dict[str, Any]
    first_sim_state: np.ndarray


@pytest.fixture(scope="module")
def fresh_env_record() -> FreshEnvRecord:
    """Build an env, step it before reset, reset it once (seed 7, init state 3), close it.

    Built and closed *before* the shared env exists: robosuite does not make an env's EGL
    context current before rendering, so closing one env while another is alive corrupts the
    survivor's frames (see the module docstring).
    """
    environment = make_env()
    try:
        with pytest.raises(RuntimeError) as excinfo:
            environment.step(ZERO_ACTION)
        first_obs = reset(environment)
        state = environment.get_sim_state()
    finally:
        environment.close()
    return FreshEnvRecord(str(excinfo.value), first_obs, state)


@pytest.fixture(scope="module")
def env(fresh_env_record: FreshEnvRecord) -> Iterator[LiberoEnv]:
    """One env for the module: num_steps_wait 0, max_steps 3, 32 x 40 frames.

    Requests `fresh_env_record` only so that the throwaway env is closed before this one is
    built.
    """
    environment = make_env()
    yield environment
    environment.close()


# --------------------------------------------------------------------------------------------
# Task lookup (reads BDDL / init-state files, builds no env)
# --------------------------------------------------------------------------------------------


def test_suites_are_the_five_libero_suites():
    assert SUITES == ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


@pytest.mark.parametrize(
    ("suite", "n_tasks"),
    [
        ("libero_spatial", 10),
        ("libero_object", 10),
        ("libero_goal", 10),
        ("libero_10", 10),
        ("libero_90", 90),
    ],
)
def test_list_tasks_gives_every_task_of_a_suite_in_order_with_50_init_states(suite, n_tasks):
    tasks = list_tasks(suite)
    assert len(tasks) == n_tasks
    assert [t.task_id for t in tasks] == list(range(n_tasks))
    assert {t.suite for t in tasks} == {suite}
    assert [t.num_init_states for t in tasks] == [50] * n_tasks


def test_libero_spatial_task_5_is_the_bowl_on_the_ramekin():
    task = get_task("libero_spatial", 5)
    assert task.instruction == "pick up the black bowl on the ramekin and place it on the plate"
    assert task.name == "pick_up_the_black_bowl_on_the_ramekin_and_place_it_on_the_plate"
    assert task.bddl_file.endswith(
        "libero_spatial/pick_up_the_black_bowl_on_the_ramekin_and_place_it_on_the_plate.bddl"
    )


def test_libero_spatial_task_order_is_libero_order_index_0():
    where = [
        "between the plate and the ramekin",
        "next to the ramekin",
        "from table center",
        "on the cookie box",
        "in the top drawer of the wooden cabinet",
        "on the ramekin",
        "next to the cookie box",
        "on the stove",
        "next to the plate",
        "on the wooden cabinet",
    ]
    assert [t.instruction for t in list_tasks("libero_spatial")] == [
        f"pick up the black bowl {w} and place it on the plate" for w in where
    ]


def test_init_states_are_50_flat_float64_sim_states():
    states = init_states("libero_spatial", 0)
    assert states.shape == (50, 92)
    assert states.dtype == np.float64


def test_unknown_suite_error_lists_the_known_suites():
    with pytest.raises(UnknownTaskError) as excinfo:
        list_tasks("libero_100")
    message = str(excinfo.value)
    assert "'libero_100'" in message
    for suite in SUITES:
        assert suite in message


@pytest.mark.parametrize("task_id", [10, -1])
def test_bad_task_id_error_names_the_valid_range(task_id):
    with pytest.raises(
        UnknownTaskError, match=rf"libero_spatial has tasks 0\.\.9; task id {task_id}"
    ):
        get_task("libero_spatial", task_id)


def test_env_with_a_bad_task_id_fails_before_building_a_simulator():
    with pytest.raises(UnknownTaskError, match=r"0\.\.9"):
        LiberoEnv("libero_spatial", 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_steps": 0}, "max_steps must be positive, got 0"),
        ({"num_steps_wait": -1}, "num_steps_wait must be >= 0, got -1"),
        ({"wait_action": (0.0,) * 6}, r"wait_action must have shape \(7,\), got \(6,\)"),
        ({"camera_size": 0}, "camera size must be positive"),
        ({"camera_size": (64, 0)}, "camera size must be positive"),
    ],
)
def test_env_rejects_bad_arguments_before_building_a_simulator(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LiberoEnv("libero_spatial", 0, **kwargs)


# --------------------------------------------------------------------------------------------
# Rotations (pure functions)
# --------------------------------------------------------------------------------------------


def test_upright_rotates_a_frame_by_180_degrees():
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    rotated = upright(frame)
    np.testing.assert_array_equal(rotated[0, 0], frame[1, 2])
    np.testing.assert_array_equal(rotated[1, 2], frame[0, 0])
    np.testing.assert_array_equal(rotated[0, 2], frame[1, 0])
    np.testing.assert_array_equal(rotated, np.rot90(frame, 2))
    assert rotated.flags["C_CONTIGUOUS"]
    assert rotated.dtype == np.uint8


S45 = np.sin(np.pi / 4)


@pytest.mark.parametrize(
    ("quat", "axis_angle"),
    [
        # (x, y, z, w), scalar last
        ((0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.0)),  # identity
        ((0.0, 0.0, S45, S45), (0.0, 0.0, np.pi / 2)),  # 90° about z
        ((1.0, 0.0, 0.0, 0.0), (np.pi, 0.0, 0.0)),  # 180° about x
        ((0.0, 1.0, 0.0, 0.0), (0.0, np.pi, 0.0)),  # 180° about y
        ((0.5, 0.5, 0.5, 0.5), (2 * np.pi / 3 / np.sqrt(3),) * 3),  # 120° about (1,1,1)/√3
        ((0.0, 0.0, 0.0, -1.0), (0.0, 0.0, 0.0)),  # -identity: angle 2π, returned as 0
    ],
)
def test_quat2axisangle_on_hand_worked_quaternions(quat, axis_angle):
    result = quat2axisangle(np.array(quat))
    assert result.shape == (3,)
    np.testing.assert_allclose(result, axis_angle, rtol=0, atol=1e-12)


def test_quat2axisangle_does_not_flip_to_the_shortest_rotation():
    # -q is the same rotation as q (90° about z) but robosuite's convention gives 270° about -z.
    result = quat2axisangle(np.array([0.0, 0.0, -S45, -S45]))
    np.testing.assert_allclose(result, (0.0, 0.0, -3 * np.pi / 2), rtol=0, atol=1e-12)


def test_quat2axisangle_matches_robosuite_and_leaves_its_input_alone():
    from robosuite.utils import transform_utils

    rng = np.random.default_rng(0)
    for _ in range(20):
        quat = rng.normal(size=4)
        quat /= np.linalg.norm(quat)
        before = quat.copy()
        ours = quat2axisangle(quat)
        np.testing.assert_array_equal(quat, before)
        np.testing.assert_allclose(
            ours, transform_utils.quat2axisangle(quat.copy()), rtol=0, atol=1e-12
        )


def test_quat2axisangle_rejects_a_non_quaternion():
    with pytest.raises(ValueError, match=r"\(4,\) quaternion \(x, y, z, w\), got shape \(3,\)"):
        quat2axisangle(np.zeros(3))


# --------------------------------------------------------------------------------------------
# LiberoEnv (simulated)
# --------------------------------------------------------------------------------------------


@pytest.mark.sim
def test_reset_loads_the_official_init_state_exactly(env):
    _, info = env.reset(seed=SEED, options={"init_state_index": INIT_STATE})
    np.testing.assert_array_equal(env.get_sim_state(), init_states(SUITE, TASK_ID)[INIT_STATE])
    fingerprint = info.pop("scene_fingerprint")
    assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0
    assert info == {
        "success": False,
        "episode_steps": 0,
        "task_id": TASK_ID,
        "suite": SUITE,
        "init_state_index": INIT_STATE,
        "scene_replays": 0,
    }


@pytest.mark.sim
def test_images_are_the_raw_frames_rotated_by_180_degrees(env):
    obs = reset(env)
    raw = env.raw_observation
    assert raw["agentview_image"].shape == (*CAMERA_HW, 3)
    np.testing.assert_array_equal(obs["image_primary"], raw["agentview_image"][::-1, ::-1])
    np.testing.assert_array_equal(obs["image_wrist"], raw["robot0_eye_in_hand_image"][::-1, ::-1])
    # Sanity: the rotation is not a no-op on these frames.
    assert not np.array_equal(obs["image_primary"], raw["agentview_image"])
    assert not np.array_equal(obs["image_wrist"], raw["robot0_eye_in_hand_image"])

    obs, *_ = env.step(ZERO_ACTION)
    raw = env.raw_observation
    np.testing.assert_array_equal(obs["image_primary"], raw["agentview_image"][::-1, ::-1])
    np.testing.assert_array_equal(obs["image_wrist"], raw["robot0_eye_in_hand_image"][::-1, ::-1])


@pytest.mark.sim
def test_proprio_is_eef_pos_axis_angle_and_gripper_qpos_as_float32(env):
    obs = reset(env)
    raw = env.raw_observation
    expected = np.concatenate(
        [
            raw["robot0_eef_pos"],
            quat2axisangle(raw["robot0_eef_quat"]),
            raw["robot0_gripper_qpos"],
        ]
    ).astype(np.float32)
    assert obs["proprio"].dtype == np.float32
    assert obs["proprio"].shape == (8,)
    np.testing.assert_array_equal(obs["proprio"], expected)


@pytest.mark.sim
def test_observations_and_actions_match_the_declared_spaces(env):
    obs, info = env.reset(seed=SEED, options={"init_state_index": INIT_STATE})
    assert set(obs) == set(env.observation_space.spaces)
    h, w = CAMERA_HW
    assert env.observation_space["image_primary"] == spaces.Box(0, 255, (h, w, 3), np.uint8)
    assert env.observation_space["image_wrist"] == spaces.Box(0, 255, (h, w, 3), np.uint8)
    for key in OBS_ARRAYS:
        assert env.observation_space[key].contains(obs[key]), key
    assert obs["image_primary"].dtype == np.uint8
    assert obs["image_wrist"].dtype == np.uint8
    assert obs["language_instruction"] == INSTRUCTION == env.task.instruction
    assert env.action_space == spaces.Box(-1.0, 1.0, (7,), np.float32)
    np.testing.assert_array_equal(env.render(), obs["image_primary"])

    obs, reward, terminated, truncated, info = env.step(ZERO_ACTION)
    for key in OBS_ARRAYS:
        assert env.observation_space[key].contains(obs[key]), key
    assert obs["language_instruction"] == INSTRUCTION
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info == {"success": False, "episode_steps": 1, "task_id": TASK_ID, "suite": SUITE}


@pytest.mark.sim
def test_the_whole_observation_is_contained_in_observation_space(env):
    obs = reset(env)
    assert env.observation_space.contains(obs)


@pytest.mark.sim
def test_same_seed_and_init_state_give_the_same_first_observation_on_reused_and_fresh_envs(
    env, fresh_env_record
):
    first = reset(env)
    first_state = env.get_sim_state()

    # A different episode in between: another init state, and a few steps.
    reset(env, seed=0, index=0)
    env.step(np.full(7, 0.5))
    env.step(GRIPPER_CLOSE_NOOP)

    again = reset(env)
    for key in OBS_ARRAYS:
        np.testing.assert_array_equal(again[key], first[key], err_msg=key)
    np.testing.assert_array_equal(env.get_sim_state(), first_state)

    for key in OBS_ARRAYS:
        np.testing.assert_array_equal(fresh_env_record.first_obs[key], first[key], err_msg=key)
    np.testing.assert_array_equal(fresh_env_record.first_sim_state, first_state)


@pytest.mark.sim
def test_a_freshly_built_env_refuses_to_step_before_reset(fresh_env_record):
    assert "call reset() first" in fresh_env_record.step_before_reset_error


@pytest.mark.sim
def test_an_episode_does_not_depend_on_how_the_previous_episode_ended(env):
    # robosuite grippers integrate their command across steps and a soft reset keeps it; the
    # env must clear it, or the same seed, init state and actions give different trajectories.
    def rollout_after(last_action: np.ndarray) -> list[np.ndarray]:
        reset(env, seed=0, index=0)
        env.step(last_action)
        env.step(last_action)
        reset(env)
        states = [env.get_sim_state()]
        for _ in range(2):
            env.step(ZERO_ACTION)
            states.append(env.get_sim_state())
        return states

    after_close = rollout_after(GRIPPER_CLOSE_NOOP)
    after_open = rollout_after(GRIPPER_OPEN_NOOP)
    for step, (a, b) in enumerate(zip(after_close, after_open, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"sim state after step {step}")


@pytest.mark.sim
def test_reset_without_an_init_state_index_draws_one_from_the_seed(env):
    _, info_a = env.reset(seed=11)
    _, info_b = env.reset(seed=11)
    assert info_a["init_state_index"] == info_b["init_state_index"]
    assert 0 <= info_a["init_state_index"] < 50


@pytest.mark.sim
def test_episode_is_truncated_at_max_steps_and_cannot_step_on(env):
    reset(env)
    for step in (1, 2):
        _, _, terminated, truncated, info = env.step(ZERO_ACTION)
        assert (terminated, truncated, info["episode_steps"]) == (False, False, step)
    _, _, terminated, truncated, info = env.step(ZERO_ACTION)
    assert (terminated, truncated, info["episode_steps"]) == (False, True, 3)
    with pytest.raises(RuntimeError, match=r"call reset\(\) first"):
        env.step(ZERO_ACTION)


@pytest.mark.sim
@pytest.mark.parametrize(
    ("action", "shape"),
    [(np.zeros(6), r"\(6,\)"), (np.zeros((1, 7)), r"\(1, 7\)"), (np.zeros(8), r"\(8,\)")],
)
def test_an_action_of_the_wrong_shape_is_refused_naming_the_shape(env, action, shape):
    reset(env)
    with pytest.raises(ValueError, match=rf"shape \(7,\).*got shape {shape}"):
        env.step(action)
    # The refused action does not count as a step.
    _, _, _, _, info = env.step(ZERO_ACTION)
    assert info["episode_steps"] == 1


@pytest.mark.sim
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_action_is_refused(env, bad):
    reset(env)
    action = ZERO_ACTION.copy()
    action[2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(action)
    _, _, _, _, info = env.step(ZERO_ACTION)
    assert info["episode_steps"] == 1


@pytest.mark.sim
@pytest.mark.parametrize("index", [50, -1])
def test_a_bad_init_state_index_error_names_the_valid_range(env, index):
    with pytest.raises(
        ValueError,
        match=rf"libero_spatial task 0 has init states 0\.\.49; init_state_index {index} ",
    ):
        env.reset(seed=SEED, options={"init_state_index": index})


@pytest.mark.sim
def test_warm_up_steps_run_wait_action_and_are_not_counted(env, monkeypatch):
    # max_steps / num_steps_wait / wait_action are read at reset() and step() time, and the
    # simulator is built with ignore_done=True, so changing them on the shared env is safe.
    reset(env)
    for _ in range(2):
        manual, *_ = env.step(ZERO_ACTION)
    manual_state = env.get_sim_state()

    monkeypatch.setattr(env, "num_steps_wait", 2)
    monkeypatch.setattr(env, "wait_action", ZERO_ACTION.copy())
    obs, info = env.reset(seed=SEED, options={"init_state_index": INIT_STATE})
    assert info["episode_steps"] == 0
    assert not np.array_equal(env.get_sim_state(), init_states(SUITE, TASK_ID)[INIT_STATE])
    np.testing.assert_array_equal(env.get_sim_state(), manual_state)
    for key in OBS_ARRAYS:
        np.testing.assert_array_equal(obs[key], manual[key], err_msg=key)

    # max_steps still counts policy steps only.
    truncations = [env.step(ZERO_ACTION)[3] for _ in range(MAX_STEPS)]
    assert truncations == [False, False, True]
