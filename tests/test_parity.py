"""Train/act parity, per finetunable family: what a trainer shows the network for a sample is
what the family's ``act()`` shows it for the same observation window, and the action chunk the
trainer's target holds for step t is the one ``act()`` returns for step t.

The ground truth is the demo file itself, read here with h5py and nothing else: the window of
step t as the environment hands it to a policy (frames upright, ``proprio`` = ee_states +
gripper_states, ``joint_states``; rotated back to raw only where the policy's spec asks the
runner to), and the recorded actions (LIBERO gripper: −1 open, +1 close). So a flipped image,
a swapped gripper convention or an off-by-one chunk anywhere in the data layer, a trainer or an
adapter breaks one of these tests:

- swapping a spec's ``stored_orientation`` or a trainer's image rotation fails the
  ``..._sees_the_frames_act_shows`` tests (the frames differ);
- swapping a gripper conversion (data side or adapter side) fails the
  ``..._target_chunk_is_what_act_returns`` tests (gripper −1/+1 against 1/0 or the reverse),
  and for the diffusion gripper head ``..._gripper_head_target_is_the_recorded_gripper_...``,
  which also fails when ``act()`` reads the head's decision the wrong way round.

The networks are never run: ``act()``'s sampler is replaced by one that returns the trainer's
own normalized target, so the test checks the path around the network, exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from evalharness.data import write_tiny_libero_hdf5  # noqa: E402
from evalharness.envs.rotations import rotate180  # noqa: E402
from evalharness.finetune import FinetuneConfig, FinetuneOptions, build_trainer  # noqa: E402
from evalharness.policies.registry import load_policy  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
DIFFUSION = FIXTURES / "robomimic_dp_tiny" / "model.pth"
OCTO = FIXTURES / "octo_tiny_lang"
pytestmark = pytest.mark.skipif(
    not (DIFFUSION.is_file() and OCTO.is_dir()), reason="shared fixtures not present"
)

#: One sample mid-episode and one at the start, where the window is padded.
STEPS = (5, 0)
EPISODE = 1


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 84 px: the robomimic fixture's camera size, so no resize hides an orientation bug.
    root = tmp_path_factory.mktemp("parity")
    return write_tiny_libero_hdf5(root / "tiny_demo.hdf5", num_demos=2, steps=12, image_size=84)


def env_window(path: Path, episode: int, t: int, window: int, orientation: str) -> dict:
    """Step t's observation window, batch 1, as the runner hands it to a policy."""
    with h5py.File(path, "r") as f:
        g = f[f"data/demo_{episode}"]
        steps = np.arange(t - window + 1, t + 1)
        rows = np.maximum(steps, 0)
        obs = {
            # LIBERO files hold raw (upside-down) renders; the env hands out upright frames.
            "image_primary": rotate180(g["obs/agentview_rgb"][()][rows]),
            "image_wrist": rotate180(g["obs/eye_in_hand_rgb"][()][rows]),
            "proprio": np.concatenate(
                [g["obs/ee_states"][()], g["obs/gripper_states"][()]], axis=1
            )[rows].astype(np.float32),
            "joint_states": g["obs/joint_states"][()][rows].astype(np.float32),
            "timestep_pad_mask": steps >= 0,
        }
    if orientation == "raw":  # the runner's ImageOrientation wrapper
        obs["image_primary"] = rotate180(obs["image_primary"])
        obs["image_wrist"] = rotate180(obs["image_wrist"])
    return {k: v[None] for k, v in obs.items()}


def demo_actions(path: Path, episode: int, t: int, horizon: int) -> np.ndarray:
    """The recorded actions t .. t+horizon-1 (the last one repeated past the end)."""
    with h5py.File(path, "r") as f:
        actions = f[f"data/demo_{episode}/actions"][()]
    return actions[np.minimum(np.arange(t, t + horizon), len(actions) - 1)]


def tasks(instruction: str) -> dict[str, Any]:
    return {
        "language_instruction": [instruction],
        "episode_seed": np.array([7]),
        "episode_start": np.array([True]),
    }


def trainer_for(policy: str, data: Path, out: Path, spec: str, **family_options: str):
    config = FinetuneConfig(
        policy=policy,
        data=data,
        out_dir=out,
        dataset_spec=spec,
        options=FinetuneOptions(steps=1, batch_size=1, seed=0, family_options=family_options),
        progress=False,
    )
    trainer, dataset = build_trainer(config)
    request = trainer.data
    sampler = dataset.sampler(
        request.window_size,
        request.action_horizon,
        1,
        normalization=request.normalization,
        action_dim=request.action_dim,
    )
    return trainer, dataset, sampler


def saved_policy(trainer: Any, dataset: Any, out: Path) -> Any:
    """The policy ``evalharness run`` would load from what ``finetune`` writes."""
    import json

    from evalharness.data import write_statistics
    from evalharness.policies.registry import DATASET_SPEC_JSON, EVALUATION_ORIENTATION

    trainer.save(out, 1)
    write_statistics(dataset.statistics(), out)
    record = dataset.spec.to_dict()
    record[EVALUATION_ORIENTATION] = getattr(
        trainer, "input_orientation", dataset.spec.model_orientation
    )
    (out / DATASET_SPEC_JSON).write_text(json.dumps(record))
    return load_policy(trainer.policy_string(out))


# --------------------------------------------------------------------------------------------
# diffusion


@pytest.fixture(scope="module", params=["libero_robomimic", "libero"])
def diffusion(request: pytest.FixtureRequest, demos: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"dp_{request.param}")
    trainer, dataset, sampler = trainer_for(f"diffusion:{DIFFUSION}", demos, out, request.param)
    return trainer, sampler, saved_policy(trainer, dataset, out)


@pytest.mark.parametrize("t", STEPS)
def test_diffusion_trainer_sees_the_frames_act_shows(diffusion, demos, t):
    trainer, sampler, policy = diffusion
    obs_train, _ = trainer.prepare_batch(sampler.batch_for([(EPISODE, t)]))
    window = policy.config.observation_horizon
    obs_act = policy.prepare(
        env_window(demos, EPISODE, t, window, policy.spec.image_orientation), 1
    )
    assert list(obs_train) == list(obs_act) == list(policy.config.obs_shapes)
    for key in obs_act:
        assert obs_train[key].dtype == obs_act[key].dtype == torch.float32, key
        torch.testing.assert_close(obs_train[key], obs_act[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("t", STEPS)
def test_diffusion_target_chunk_is_what_act_returns(diffusion, demos, t):
    trainer, sampler, policy = diffusion
    _, target = trainer.prepare_batch(sampler.batch_for([(EPISODE, t)]))
    # act() samples Tp normalized actions and keeps To-1 .. To-1+Ta-1: give it the target.
    policy.sample = lambda obs_t, noise, seeds=None, cond=None: target
    window = policy.config.observation_horizon
    obs = env_window(demos, EPISODE, t, window, policy.spec.image_orientation)
    actions = policy.act(obs, tasks("put the tiny red block on the target"))
    expected = demo_actions(demos, EPISODE, t, policy.config.action_horizon)
    np.testing.assert_allclose(actions[0], expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def diffusion_with_gripper_head(demos: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp_head")
    trainer, dataset, sampler = trainer_for(
        f"diffusion:{DIFFUSION}", demos, out, "libero_robomimic", gripper_head="true"
    )
    return trainer, sampler, saved_policy(trainer, dataset, out)


@pytest.mark.parametrize("t", STEPS)
def test_diffusion_gripper_head_target_is_the_recorded_gripper_act_returns(
    diffusion_with_gripper_head, demos, t
):
    """The head learns "closed" for exactly the recorded steps t .. t+Tp-1 where the demo
    closes, and ``act()`` turns a head that reproduces its target into the recorded
    gripper commands of steps t .. t+Ta-1 (its slice and sign)."""
    trainer, sampler, policy = diffusion_with_gripper_head
    _, target = trainer.prepare_batch(sampler.batch_for([(EPISODE, t)]))
    closed = trainer.gripper_closed(target)[0].numpy()
    horizon = policy.config.prediction_horizon
    recorded = demo_actions(demos, EPISODE, t - policy.config.observation_horizon + 1, horizon)
    recorded_from_t = demo_actions(demos, EPISODE, t, policy.config.action_horizon)
    assert set(np.unique(recorded[:, -1])) <= {-1.0, 1.0}
    start = policy.config.observation_horizon - 1
    # The trainer's chunk starts To-1 steps before t (robomimic's), a[0] repeated when padded.
    np.testing.assert_array_equal(
        closed[start : start + policy.config.action_horizon], recorded_from_t[:, -1] > 0
    )
    if t >= start:
        np.testing.assert_array_equal(closed, recorded[:, -1] > 0)
    assert policy.gripper_head is not None
    policy.gripper_head = lambda cond: torch.as_tensor(2.0 * closed - 1.0)[None]
    window = policy.config.observation_horizon
    obs = env_window(demos, EPISODE, t, window, policy.spec.image_orientation)
    actions = policy.act(obs, tasks("put the tiny red block on the target"))
    np.testing.assert_array_equal(actions[0, :, -1], recorded_from_t[:, -1])


# --------------------------------------------------------------------------------------------
# Octo, JAX and PyTorch


@pytest.fixture(scope="module", params=["octo_jax", "octo_pt", "octo_jax?action_head=l1"])
def octo(request: pytest.FixtureRequest, demos: Path, tmp_path_factory):
    family, _, options = request.param.partition("?")
    if family == "octo_jax":
        pytest.importorskip("jax")
    else:
        pytest.importorskip("safetensors")
    out = tmp_path_factory.mktemp(family)
    policy = f"{family}:{OCTO}" + (f"?{options}" if options else "")
    trainer, dataset, sampler = trainer_for(policy, demos, out, "libero")
    return family, trainer, sampler, saved_policy(trainer, dataset, out)


def _capture_octo(family: str, policy: Any, target: np.ndarray) -> dict[str, Any]:
    """Make ``policy``'s sampler return ``target`` and record what it was given."""
    seen: dict[str, Any] = {}
    if family == "octo_jax":

        def sample(observation, task, key):
            seen.update(observation=observation, task=task)
            return target

        policy.sample_normalized = sample
    else:

        def sample_actions(observation, task, **_):
            seen.update(observation=observation, task=task)
            return torch.as_tensor(target)

        policy.model.sample_actions = sample_actions
    return seen


def _numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _numpy(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy()
    return np.asarray(tree)


def _assert_same_tree(train: Any, act: Any, path: str = "") -> None:
    if isinstance(train, dict):
        assert sorted(train) == sorted(act), path
        for key in train:
            _assert_same_tree(train[key], act[key], f"{path}/{key}")
        return
    assert train.dtype == act.dtype and train.shape == act.shape, path
    np.testing.assert_array_equal(train, act, err_msg=path)


@pytest.mark.parametrize("t", STEPS)
def test_octo_trainer_sees_the_inputs_act_builds(octo, demos, t):
    family, trainer, sampler, policy = octo
    prepared = _numpy(trainer.prepare_batch(sampler.batch_for([(EPISODE, t)])))
    horizon = policy.spec.action_horizon
    seen = _capture_octo(family, policy, np.zeros((1, horizon, trainer.data.action_dim)))
    window = policy.spec.window_size
    policy.act(
        env_window(demos, EPISODE, t, window, policy.spec.image_orientation),
        tasks("put the tiny red block on the target"),
    )
    _assert_same_tree(prepared["observation"], _numpy(seen["observation"]))
    _assert_same_tree(prepared["task"], _numpy(seen["task"]))


@pytest.mark.parametrize("t", STEPS)
def test_octo_target_chunk_is_what_act_returns(octo, demos, t):
    family, trainer, sampler, policy = octo
    prepared = _numpy(trainer.prepare_batch(sampler.batch_for([(EPISODE, t)])))
    # The chunk of the newest window slot is the one act() predicts (for step t).
    target = prepared["action"][:, -1]
    _capture_octo(family, policy, target)
    window = policy.spec.window_size
    actions = policy.act(
        env_window(demos, EPISODE, t, window, policy.spec.image_orientation),
        tasks("put the tiny red block on the target"),
    )
    expected = demo_actions(demos, EPISODE, t, policy.spec.action_horizon)
    np.testing.assert_allclose(actions[0], expected, rtol=0, atol=1e-5)
