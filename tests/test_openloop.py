"""The open-loop check (issue 16): demos replayed through a policy's own act().

An oracle policy that looks the demo's actions up reproduces them exactly; one with a swapped
gripper sign disagrees at every step; the zero policy is exactly the zero predictor. The
replayed observations are the env's view of the demo file (frames upright, proprio = ee_states
+ gripper_states, joint_states), and each demo step is compared with one predicted action.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from evalharness.cli import main  # noqa: E402
from evalharness.data import write_tiny_libero_hdf5  # noqa: E402
from evalharness.envs.rotations import rotate180  # noqa: E402
from evalharness.openloop import open_loop, replay_episodes, select_demos  # noqa: E402
from evalharness.policies.base import Policy, PolicySpec  # noqa: E402
from evalharness.policies.registry import load_policy  # noqa: E402

STEPS = 12


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openloop")
    return write_tiny_libero_hdf5(root / "tiny_demo.hdf5", num_demos=3, steps=STEPS, image_size=16)


class Oracle(Policy):
    """Returns the demo's own next actions, found by the newest proprio in the window."""

    def __init__(self, path: Path, horizon: int, exec_horizon: int, flip_gripper: bool = False):
        self.spec = PolicySpec(
            name="oracle", window_size=2, action_horizon=horizon, exec_horizon=exec_horizon
        )
        self.flip = flip_gripper
        self.lookup: dict[bytes, np.ndarray] = {}
        self.calls = 0
        for episode in replay_episodes(path):
            actions = episode.actions
            for t, proprio in enumerate(episode.observations["proprio"]):
                rows = np.minimum(np.arange(t, t + horizon), len(actions) - 1)
                self.lookup[proprio.tobytes()] = actions[rows]

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        self.calls += 1
        assert obs["image_primary"].shape[1] == 2 and obs["timestep_pad_mask"].shape[1] == 2
        out = np.stack([self.lookup[p[-1].tobytes()] for p in obs["proprio"]]).copy()
        if self.flip:
            out[..., -1] *= -1
        return out


def test_replayed_demo_is_the_envs_view_of_the_file(demos):
    (episode,) = replay_episodes(demos, [1])
    with h5py.File(demos, "r") as f:
        g = f["data/demo_1"]
        np.testing.assert_array_equal(
            episode.observations["image_primary"], rotate180(g["obs/agentview_rgb"][()])
        )
        np.testing.assert_array_equal(
            episode.observations["image_wrist"], rotate180(g["obs/eye_in_hand_rgb"][()])
        )
        proprio = np.concatenate([g["obs/ee_states"][()], g["obs/gripper_states"][()]], axis=1)
        np.testing.assert_array_equal(episode.observations["proprio"], proprio.astype(np.float32))
        np.testing.assert_array_equal(
            episode.observations["joint_states"], g["obs/joint_states"][()].astype(np.float32)
        )
        # float32, as the data layer reads actions; −1 open / +1 close
        np.testing.assert_array_equal(episode.actions, g["actions"][()].astype(np.float32))
    assert episode.episode_id.endswith("demo_1") and episode.length == STEPS


def test_an_oracle_reproduces_every_demo_step_exactly(demos):
    oracle = Oracle(demos, horizon=4, exec_horizon=4)
    report = open_loop(oracle, replay_episodes(demos))
    assert report.steps == 3 * STEPS
    assert report.queries == 3 * 3  # every 4th step of 12
    assert report.policy_mae == (0.0,) * 7
    assert report.gripper_agreement == 1.0
    assert report.translation_error == 0.0 and report.translation_ratio == 0.0
    assert report.meets()


def test_queries_follow_the_exec_horizon_and_batch_across_demos(demos):
    oracle = Oracle(demos, horizon=4, exec_horizon=3)
    report = open_loop(oracle, replay_episodes(demos), batch_size=5)
    assert report.queries == 3 * 4 and report.steps == 3 * STEPS
    assert oracle.calls == 3  # 12 queries in batches of 5
    assert report.policy_mae == (0.0,) * 7


def test_a_swapped_gripper_disagrees_at_every_step(demos):
    report = open_loop(Oracle(demos, 4, 4, flip_gripper=True), replay_episodes(demos))
    assert report.gripper_agreement == 0.0
    assert report.policy_mae[-1] == 2.0
    assert report.translation_error == 0.0
    assert not report.meets()


def test_the_zero_policy_is_the_zero_predictor(demos):
    episodes = replay_episodes(demos)
    report = open_loop(load_policy("zero"), episodes)
    demo = np.concatenate([e.actions for e in episodes])
    np.testing.assert_allclose(report.policy_mae, np.abs(demo).mean(axis=0))
    assert report.policy_mae == report.zero_mae
    np.testing.assert_allclose(report.mean_mae, np.abs(demo - demo.mean(0)).mean(axis=0))
    assert report.translation_ratio == pytest.approx(1.0)
    assert report.gripper_agreement == 0.0  # 0 is no gripper command
    table = report.format()
    assert "gripper sign agreement: 0.0%" in table and "policy/zero = 1.00" in table


def test_demos_are_chosen_by_index_or_range():
    assert select_demos(30, "0,7,21") == [0, 7, 21]
    assert select_demos(5, "1-3,1") == [1, 2, 3]
    assert select_demos(3, None) == [0, 1, 2]
    with pytest.raises(ValueError, match="demo index 9 is out of range: the data holds 5 demos"):
        select_demos(5, "9")
    with pytest.raises(ValueError, match="expected indices like 0,7,21"):
        select_demos(5, "a")


def test_doctor_open_loop_prints_the_table(demos, capsys):
    status = main(
        ["doctor", "--policy", "zero", "--data", str(demos), "--open-loop", "--demos", "0"]
    )
    out = capsys.readouterr().out
    assert "[WARN] open loop: zero on 1 demo(s), 12 actions from 12 queries" in out
    assert "gripper sign agreement: 0.0%" in out
    assert status == 0  # a warning, not an error


DP_FIXTURE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "robomimic_dp_tiny"
)


@pytest.mark.skipif(not (DP_FIXTURE / "model.pth").is_file(), reason="no fixture")
@pytest.mark.parametrize(("num_demos", "held_out", "trained_on"), [(4, True, 3), (3, False, 3)])
def test_finetune_replays_held_out_demos_at_the_end(tmp_path, num_demos, held_out, trained_on):
    import json

    pytest.importorskip("torch")
    from evalharness.finetune import FinetuneConfig, FinetuneOptions, finetune

    data = write_tiny_libero_hdf5(tmp_path / "d_demo.hdf5", num_demos=num_demos, image_size=84)
    config = FinetuneConfig(
        policy=f"diffusion:{DP_FIXTURE / 'model.pth'}",
        data=data,
        out_dir=tmp_path / "ft",
        dataset_spec="libero_robomimic",
        options=FinetuneOptions(steps=2, batch_size=2),
        progress=False,
        open_loop_demos=1,
    )
    finetune(config, log=lambda _: None)
    info = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    stats = json.loads((tmp_path / "ft" / "dataset_statistics.json").read_text())
    assert stats["num_trajectories"] == trained_on
    check = info["open_loop"]
    assert (check["demos"], check["held_out"]) == ([num_demos - 1], held_out)
    assert check["steps"] == 12 and len(check["policy_mae"]) == 7
    saved = json.loads((tmp_path / "ft" / "open_loop.json").read_text())
    assert saved["episodes"] == [f"d_demo.hdf5:demo_{num_demos - 1}"]
