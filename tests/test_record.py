"""`evalharness record`: LIBERO-format demo files that LIBERO's checks accept and that replay.

One short scripted demo (libero_object task 1, cream cheese into the basket, ~100 steps) at
32 px is recorded once per module and shared by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from evalharness.cli import build_parser
from evalharness.protocols import get_protocol

SUITE, TASK, SIZE = "libero_object", 1, 32


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory) -> Path:
    from evalharness.record import record_demos

    out = tmp_path_factory.mktemp("demos")
    (path,) = record_demos(SUITE, [TASK], out, episodes_per_task=1, camera_size=SIZE)
    return path


class _FrameEnv(gym.Env):
    """One 4x4 frame whose pixel (r, c) holds 4 * r + c, a proprio, and any 7-dim action."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict(
            {
                "image_primary": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
                "proprio": gym.spaces.Box(-1.0, 1.0, (8,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)

    def reset(self, *, seed=None, options=None):
        image = np.repeat(np.arange(16, dtype=np.uint8).reshape(4, 4, 1), 3, axis=2)
        return {"image_primary": image, "proprio": np.zeros(8, np.float32)}, {}


def test_record_wraps_a_raw_trained_policy_like_the_runner_does():
    from types import SimpleNamespace

    from evalharness.policies.base import PolicySpec
    from evalharness.record import _wrap_for_policy

    spec = PolicySpec("p", window_size=2, action_horizon=4, image_orientation="raw")
    env = _wrap_for_policy(_FrameEnv(), SimpleNamespace(spec=spec))  # type: ignore[arg-type]
    obs, _ = env.reset(seed=0)
    # rotated 180 degrees as the runner's workers rotate it, then stacked into a window of 2
    assert obs["image_primary"].shape == (2, 4, 4, 3)
    assert obs["image_primary"][-1, 0, :, 0].tolist() == [15, 14, 13, 12]
    assert obs["timestep_pad_mask"].tolist() == [False, True]


def test_record_is_a_cli_command_with_the_issue_arguments():
    args = build_parser().parse_args(
        ["record", "--policy", "scripted", "--suite", "libero_spatial", "--out", "d"]
    )
    assert (args.command, args.policy, args.suite, args.out) == (
        "record",
        "scripted",
        "libero_spatial",
        "d",
    )
    assert args.camera_size == 128 and args.only_success is False
    assert (args.seed, args.seeding, args.env_seed) == (None, None, None)  # the protocol's
    argv = ["record", "--policy", "p", "--suite", SUITE, "--out", "d"]
    seeded = build_parser().parse_args([*argv, "--seeding", "per_episode", "--env-seed", "1000"])
    assert (seeded.seeding, seeded.env_seed) == ("per_episode", 1000)  # as `run` takes them


@pytest.mark.sim
def test_the_file_is_named_after_the_task_like_libero_datasets(demo_file):
    from evalharness.envs.libero import get_task

    assert demo_file.name == f"{get_task(SUITE, TASK).name}_demo.hdf5"


@pytest.mark.sim
def test_recorded_file_passes_libero_integrity_checks(demo_file):
    """The checks of LIBERO's scripts/check_dataset_integrity.py and the layout that
    scripts/create_dataset.py writes: keys, shapes, dtypes and attributes."""
    import h5py

    from evalharness.envs.libero import get_task, init_states

    task = get_task(SUITE, TASK)
    state_dim = init_states(SUITE, TASK).shape[1]
    with h5py.File(demo_file, "r") as f:
        data = f["data"]
        attrs = data.attrs
        assert attrs["tag"] == "libero-v1"
        problem_info = json.loads(attrs["problem_info"])
        assert set(problem_info) == {"domain_name", "problem_name", "language_instruction"}
        assert problem_info["language_instruction"] == task.instruction
        env_args = json.loads(attrs["env_args"])
        assert env_args["type"] == 1
        assert {"env_name", "problem_name", "bddl_file", "env_kwargs"} <= set(env_args)
        assert env_args["problem_name"] == problem_info["problem_name"]
        assert attrs["bddl_file_name"] == task.bddl_file
        assert attrs["bddl_file_content"] == Path(task.bddl_file).read_text()
        assert attrs["macros_image_convention"] == "opengl"
        assert isinstance(attrs["env_name"], str)

        demos = [k for k in data if k.startswith("demo")]
        assert demos == ["demo_0"] and attrs["num_demos"] == 1
        demo = data["demo_0"]
        n = int(demo.attrs["num_samples"])
        assert attrs["total"] == n and n > 10
        expected = {
            "actions": ((n, 7), np.float64),
            "states": ((n, state_dim), np.float64),
            "robot_states": ((n, 9), np.float64),
            "rewards": ((n,), np.uint8),
            "dones": ((n,), np.uint8),
            "obs/agentview_rgb": ((n, SIZE, SIZE, 3), np.uint8),
            "obs/eye_in_hand_rgb": ((n, SIZE, SIZE, 3), np.uint8),
            "obs/gripper_states": ((n, 2), np.float64),
            "obs/joint_states": ((n, 7), np.float64),
            "obs/ee_states": ((n, 6), np.float64),
            "obs/ee_pos": ((n, 3), np.float64),
            "obs/ee_ori": ((n, 3), np.float64),
        }
        for key, (shape, dtype) in expected.items():
            assert demo[key].shape == shape, key
            assert demo[key].dtype == dtype, key
        assert np.all(np.abs(demo["actions"][()]) <= 1.0)
        assert demo["dones"][-1] == 1 and not demo["dones"][:-1].any()
        assert demo["rewards"][-1] == 1 and not demo["rewards"][:-1].any()
        assert np.array_equal(demo.attrs["init_state"], demo["states"][0])
        assert "<mujoco" in demo.attrs["model_file"]
        ee = demo["obs/ee_states"][()]
        assert np.array_equal(ee[:, :3], demo["obs/ee_pos"][()])
        assert np.array_equal(demo["robot_states"][:, 2:5], ee[:, :3])


@pytest.mark.sim
def test_frames_are_in_libero_raw_orientation_and_rows_precede_their_actions(demo_file):
    """Row 0 is the observation after the protocol's warm-up, stored upside down as in
    LIBERO's HDF5 files: rotating it 180° gives the harness' upright `image_primary`."""
    import h5py

    from evalharness.envs.libero import LiberoEnv, get_task, upright
    from evalharness.scheduling import task_episode

    protocol = get_protocol("openvla")
    seed, options = task_episode(protocol, get_task(SUITE, TASK), 0).reset_arguments()
    env = LiberoEnv(
        SUITE,
        TASK,
        camera_size=SIZE,
        max_steps=5,
        num_steps_wait=protocol.num_steps_wait,
        wait_action=protocol.wait_action,
    )
    try:
        obs, _ = env.reset(seed=seed, options=options)
        state = env.get_sim_state()
    finally:
        env.close()
    with h5py.File(demo_file, "r") as f:
        demo = f["data/demo_0"]
        assert demo.attrs["init_state_index"] == 0
        np.testing.assert_array_equal(demo["obs/agentview_rgb"][0], upright(obs["image_primary"]))
        np.testing.assert_array_equal(demo["obs/eye_in_hand_rgb"][0], upright(obs["image_wrist"]))
        np.testing.assert_allclose(demo["states"][0], state, atol=1e-9)


@pytest.mark.sim
def test_replaying_a_successful_demo_from_its_first_state_succeeds(demo_file):
    from evalharness.record import replay_demo

    assert replay_demo(demo_file) is True


def _contents(path: Path) -> dict:
    """Every array and attribute of an HDF5 file, by path."""
    import h5py

    out: dict = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, node) -> None:
            out[name] = np.asarray(node[()]) if isinstance(node, h5py.Dataset) else None
            for key, value in node.attrs.items():
                out[f"{name}@{key}"] = np.asarray(value)

        f.visititems(visit)
    return out


@pytest.mark.sim
@pytest.mark.slow
def test_two_workers_write_the_same_files_as_one(tmp_path):
    from evalharness.record import record_demos

    kwargs = dict(episodes_per_task=2, camera_size=SIZE, only_success=False, max_steps=12)
    one = record_demos(SUITE, [0, TASK], tmp_path / "one", **kwargs)
    two = record_demos(SUITE, [0, TASK], tmp_path / "two", num_envs=2, **kwargs)
    assert [p.name for p in one] == [p.name for p in two]
    for a, b in zip(one, two, strict=True):
        got, want = _contents(b), _contents(a)
        assert sorted(got) == sorted(want)
        assert "data/demo_1/actions" in got
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{a.name} {key}")


_TETRAHEDRON = "v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nv 0 0 0.1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"


def test_saved_mjcf_depends_on_the_model_alone_not_on_what_the_process_parsed(tmp_path):
    """MuJoCo's save writes the XML the process parsed last, and notes a mesh's content_type
    only when the file was read rather than taken from the asset cache (touching the file
    evicts it): neither may change the saved MJCF."""
    import os

    import mujoco

    from evalharness.envs.libero import saved_mjcf

    mesh = tmp_path / "tetrahedron.obj"
    mesh.write_text(_TETRAHEDRON)
    xml = (
        f'<mujoco model="tiny"><asset><mesh name="tet" file="{mesh}"/></asset><worldbody>'
        '<body><freejoint/><geom type="mesh" mesh="tet"/></body></worldbody></mujoco>'
    )
    model = mujoco.MjModel.from_xml_string(xml)
    model.geom_rgba[0] = [1, 0, 0, 1]  # a value changed after compiling, as a placed fixture
    first = saved_mjcf(model, xml)
    mujoco.MjModel.from_xml_string('<mujoco model="other"/>')
    os.utime(mesh, (mesh.stat().st_atime, mesh.stat().st_mtime + 5))
    assert saved_mjcf(model, xml) == first
    assert first.startswith('<mujoco model="tiny">')
    assert 'rgba="1 0 0 1"' in first and "content_type" not in first
    with pytest.raises(ValueError, match="with nbody=1, the model to save has nbody=2"):
        saved_mjcf(model, '<mujoco model="other"/>')


@pytest.mark.sim
def test_model_file_is_the_envs_own_model_after_another_was_parsed_in_the_process(tmp_path):
    """The state leak of issue 21: another LIBERO env built (or any MJCF parsed) in the same
    process made the next file's model_file that other model's XML."""
    import mujoco

    from evalharness.envs.libero import LiberoEnv
    from evalharness.record import DemoRecorder, write_demos

    env = LiberoEnv(SUITE, TASK, camera_size=SIZE, max_steps=2)
    recorder = DemoRecorder(env)

    def model_file(name: str) -> str:
        recorder.reset(seed=7, options={"init_state_index": 0})
        recorder.step(np.zeros(7))
        path = write_demos(tmp_path / name, env, [recorder.demo], {})
        return str(_contents(path)["data/demo_0@model_file"])

    try:
        alone = model_file("alone.hdf5")
        mujoco.MjModel.from_xml_string('<mujoco model="other"/>')
        assert model_file("after_another.hdf5") == alone
    finally:
        env.close()
    assert alone.startswith('<mujoco model="base">') and "basket_1" in alone


@pytest.mark.sim
def test_recorded_demo_i_starts_from_the_scene_of_run_episode_i(tmp_path):
    """libero_goal places its cabinet and stove by the scene seed; under openvla's task stream
    (env.seed(0) once, episodes in order) demo i must show what `evalharness run` shows."""
    import h5py
    import pandas as pd

    from evalharness.api import evaluate
    from evalharness.record import record_demos
    from evalharness.run_dir import EPISODES_CSV

    short = dict(tasks=[0], episodes_per_task=2, protocol="openvla", max_steps=2, camera_size=SIZE)
    evaluate("zero", "libero_goal", out=tmp_path / "run", num_envs=1, progress=False, **short)
    runs = pd.read_csv(tmp_path / "run" / EPISODES_CSV).sort_values("episode_index")
    (path,) = record_demos(
        "libero_goal",
        [0],
        tmp_path / "demos",
        policy="zero",
        episodes_per_task=2,
        only_success=False,
        max_steps=2,
        camera_size=SIZE,
    )
    with h5py.File(path, "r") as f:
        demos = [dict(f[f"data/demo_{i}"].attrs) for i in range(2)]
    assert [(d["episode_index"], d["init_state_index"], d["seed"]) for d in demos] == [
        (0, 0, 0),
        (1, 1, 0),
    ]
    assert [d["scene_fingerprint"] for d in demos] == runs["scene_fingerprint"].tolist()
    assert demos[0]["scene_fingerprint"] != demos[1]["scene_fingerprint"]


def test_record_num_envs_reaches_the_config_and_is_checked():
    from evalharness.record import RecordConfig

    args = build_parser().parse_args(
        ["record", "--suite", SUITE, "--policy", "scripted", "--out", "x", "--num-envs", "3"]
    )
    assert args.num_envs == 3
    with pytest.raises(ValueError, match="num_envs must be >= 1, got 0"):
        RecordConfig(suite=SUITE, policy="scripted", out_dir=Path("x"), num_envs=0)
