"""The scripted LIBERO expert: planning from BDDL goals, privileged state, real successes."""

from __future__ import annotations

import numpy as np
import pytest

from evalharness.policies import PolicySpec, load_policy
from evalharness.policies.scripted.expert import (
    DOWN,
    Expert,
    Step,
    UnsupportedTaskError,
    closest_yaw,
    gripper_yaw,
    plan_for_goal,
    rot_z,
)
from evalharness.policies.scripted.policy import ScriptedPolicy
from evalharness.protocols import get_protocol
from evalharness.runner import RunConfig, env_config


def test_pick_and_place_goals_plan_one_pick_place_each():
    assert plan_for_goal([["On", "akita_black_bowl_1", "plate_1"]]) == [
        Step("pick_place", ("akita_black_bowl_1", "plate_1"))
    ]
    assert plan_for_goal([["in", "milk_1", "basket_1_contain_region"]]) == [
        Step("pick_place", ("milk_1", "basket_1_contain_region"))
    ]


def test_a_drawer_is_opened_before_something_goes_in_and_closed_last():
    goal = [
        ["close", "wooden_cabinet_1_bottom_region"],
        ["in", "akita_black_bowl_1", "wooden_cabinet_1_bottom_region"],
    ]
    assert plan_for_goal(goal) == [
        Step("open", ("wooden_cabinet_1_bottom_region",)),
        Step("pick_place", ("akita_black_bowl_1", "wooden_cabinet_1_bottom_region")),
        Step("close", ("wooden_cabinet_1_bottom_region",)),
    ]


@pytest.mark.parametrize(
    "goal, named",
    [
        ([["on", "plate_1", "main_table_stove_front_region"]], "plate_1"),
        ([["stack", "a_1", "b_1"]], "stack"),
    ],
)
def test_unsupported_goals_raise_naming_the_predicate(goal, named):
    with pytest.raises(UnsupportedTaskError, match=named):
        plan_for_goal(goal)


@pytest.mark.parametrize("yaw", [0.0, 0.3, -1.2, 2.5])
def test_gripper_yaw_reads_back_the_yaw_of_a_down_pointing_gripper(yaw):
    assert gripper_yaw(rot_z(yaw) @ DOWN) == pytest.approx(yaw)


def test_closest_yaw_picks_the_equivalent_grasp_nearest_the_current_yaw():
    # Closing the fingers along 0 or pi is the same grasp; take the one needing less turning.
    assert closest_yaw(np.pi, current=0.1) == pytest.approx(0.0)
    assert closest_yaw(0.0, current=3.0) == pytest.approx(np.pi)


def test_scripted_policy_asks_for_privileged_state_and_no_images():
    policy = load_policy("scripted")
    assert isinstance(policy, ScriptedPolicy)
    assert policy.spec.privileged is True and policy.spec.uses_images is False
    # Ordinary policies keep the defaults: images, no privileged state.
    assert PolicySpec(name="x").privileged is False and PolicySpec(name="x").uses_images


def test_scripted_policy_rejects_unknown_options_and_checkpoints():
    with pytest.raises(ValueError, match="no option"):
        load_policy("scripted?speed=2")
    with pytest.raises(ValueError, match="no checkpoint"):
        load_policy("scripted:/some/ckpt")
    with pytest.raises(ValueError, match=r"option strict='2' must be true or false"):
        load_policy("scripted?strict=2")
    assert load_policy("scripted?strict=true").strict is True
    assert load_policy("scripted?strict=0").strict is False
    assert load_policy("scripted").strict is False


def test_the_runner_gives_privileged_state_only_to_policies_that_ask(tmp_path):
    config = RunConfig(
        suite="libero_spatial", policy="zero", out_dir=tmp_path, protocol=get_protocol("openvla")
    )
    zero = env_config(config, load_policy("zero"))
    assert zero.privileged is False and zero.render_images is True
    scripted = env_config(config, load_policy("scripted"))
    assert scripted.privileged is True and scripted.render_images is False


def test_scripted_policy_without_privileged_state_says_what_is_missing():
    policy = load_policy("scripted")
    with pytest.raises(ValueError, match="privileged"):
        policy.act({"proprio": np.zeros((1, 1, 8))}, {"episode_seed": np.array([1])})


def test_an_unsupported_task_holds_still_and_reports_why():
    policy = load_policy("scripted")
    privileged = np.empty(1, dtype=object)
    privileged[0] = {"goal": [["on", "plate_1", "main_table_stove_front_region"]]}
    actions = policy.act(
        {"privileged": privileged}, {"episode_seed": np.array([5]), "language_instruction": ["x"]}
    )
    assert actions.shape == (1, 1, 7)
    assert np.array_equal(actions[0, 0], [0, 0, 0, 0, 0, 0, -1])
    assert policy.failure_reason(5).startswith("unsupported: ")
    assert policy.failure_reason(6) == ""
    with pytest.raises(UnsupportedTaskError):
        load_policy("scripted?strict=1").act(
            {"privileged": privileged}, {"episode_seed": np.array([5])}
        )


# -- in the simulator --------------------------------------------------------------------


@pytest.fixture(scope="module")
def object_env():
    from evalharness.envs.libero import LiberoEnv

    protocol = get_protocol("openvla")
    env = LiberoEnv(
        "libero_object",
        1,
        camera_size=32,
        max_steps=protocol.max_steps_for("libero_object"),
        num_steps_wait=protocol.num_steps_wait,
        wait_action=protocol.wait_action,
        render_images=False,
        privileged=True,
    )
    yield env
    env.close()


@pytest.mark.sim
def test_privileged_state_holds_poses_joints_and_the_bddl_goal(object_env):
    obs, _ = object_env.reset(seed=7, options={"init_state_index": 0})
    assert "image_primary" not in obs and "image_wrist" not in obs
    p = obs["privileged"]
    assert p["goal"] == [["in", "cream_cheese_1", "basket_1_contain_region"]]
    cheese = p["objects"]["cream_cheese_1"]
    assert cheese["pos"].shape == (3,) and cheese["mat"].shape == (3, 3)
    lo, hi = cheese["bbox"]
    assert np.all(lo <= cheese["pos"] + 1e-6) and np.all(cheese["pos"] <= hi + 1e-6)
    assert "basket_1_contain_region" in p["sites"]
    assert np.allclose(p["eef_pos"], obs["proprio"][:3], atol=1e-5)


@pytest.mark.sim
def test_an_env_built_without_privileged_state_never_shows_it():
    from evalharness.envs.libero import LiberoEnv

    env = LiberoEnv("libero_object", 1, camera_size=32, max_steps=2)
    try:
        obs, _ = env.reset(seed=7, options={"init_state_index": 0})
        assert "privileged" not in obs and "privileged" not in env.observation_space.spaces
        obs, *_ = env.step(np.zeros(7))
        assert "privileged" not in obs
        assert obs["image_primary"].shape == (32, 32, 3)
    finally:
        env.close()


@pytest.mark.sim
def test_the_expert_puts_the_cream_cheese_in_the_basket(object_env):
    obs, _ = object_env.reset(seed=7, options={"init_state_index": 0})
    expert = Expert(obs["privileged"]["goal"])
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = object_env.step(expert.act(obs["privileged"]))
    assert info["success"] and terminated


def test_frames_rendered_only_for_a_video_do_not_reach_an_image_free_policy(tmp_path):
    # With --video, one env renders frames for its video episode while the others do not; the
    # batch must not mix observations with and without image keys.
    from evalharness.worker import EpisodeEnv

    config = RunConfig(
        suite="libero_spatial",
        policy="scripted",
        out_dir=tmp_path,
        protocol=get_protocol("openvla"),
    )
    episode_env = EpisodeEnv(env_config(config, load_policy("scripted")))
    obs = {"image_primary": np.zeros((2, 2, 3)), "proprio": np.zeros(8), "privileged": {}}
    assert sorted(episode_env._requested(obs)) == ["privileged", "proprio"]
    with_images = EpisodeEnv(env_config(config, load_policy("zero")))
    assert sorted(with_images._requested(obs)) == ["image_primary", "privileged", "proprio"]
