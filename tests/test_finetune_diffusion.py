"""The ``diffusion`` finetune trainer (issue 7) on the tiny robomimic fixture and tiny HDF5 data.

The fixture observes ``agentview_rgb``/``eye_in_hand_rgb`` (84², raw LIBERO frames),
``joint_states`` and ``gripper_states``; the dataset spec below feeds all four from the tiny
LIBERO file (proprio = joint_states 7 + gripper_states 2, frames kept raw, LIBERO gripper).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from evalharness.data import open_dataset, write_tiny_libero_hdf5  # noqa: E402
from evalharness.finetune import FinetuneOptions, Trainer, get_trainer_factory  # noqa: E402
from evalharness.policies.diffusion.checkpoint import load_checkpoint  # noqa: E402
from evalharness.policies.diffusion.train import (  # noqa: E402
    min_max_stats,
    robomimic_action_sequence,
)

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "robomimic_dp_tiny"
CKPT = str(FIXTURE / "model.pth")
pytestmark = pytest.mark.skipif(not (FIXTURE / "model.pth").is_file(), reason="no fixture")
SPEC = "libero_robomimic"  # joint_states + gripper_states, raw frames, LIBERO gripper
#: The fixture's UNet is tiny (down_dims 16/32/64) and barely trained: a few dozen steps of
#: ε-prediction lower the loss on the tiny data by ~23 % (60 steps, batch 16, peak lr 5e-3).
STEPS = 60
LR = 5e-3
BATCH = 16


def _trainer(data: Path, mode: str, spec: object = SPEC, steps: int = STEPS) -> Trainer:
    # The tiny data's joint_states are pure noise: normalized (the default) they would drown
    # the fixture's conditioning in it; these tests are about the loss, freezing and format.
    options = FinetuneOptions(
        mode=mode,
        steps=steps,
        batch_size=BATCH,
        learning_rate=LR,
        seed=0,
        family_options={"normalize_obs": "false"},
    )
    return get_trainer_factory("diffusion")(CKPT, open_dataset(data, spec), options)


def _batches(trainer: Trainer, data: Path, size: int = BATCH, seed: int = 0):
    request = trainer.data
    return open_dataset(data, SPEC).batches(
        request.window_size, request.action_horizon, size, seed=seed, normalization=None
    )


@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_tiny_libero_hdf5(root / "tiny_demo.hdf5", num_demos=3, steps=12, image_size=32)


@pytest.fixture(scope="module")
def trained(tiny_hdf5: Path, tmp_path_factory: pytest.TempPathFactory):
    """A head_only run: encoder before, eval losses before/after on a fixed batch, saved file."""
    torch.set_num_threads(2)
    trainer = _trainer(tiny_hdf5, "head_only")
    encoder_before = {
        k: v.clone() for k, v in trainer.nets.policy["obs_encoder"].state_dict().items()
    }
    unet_before = {
        k: v.clone() for k, v in trainer.nets.policy["noise_pred_net"].state_dict().items()
    }
    fixed = next(_batches(trainer, tiny_hdf5, size=32, seed=1))
    before = np.mean([trainer.eval_loss(fixed, seed=s) for s in range(3)])
    batches = _batches(trainer, tiny_hdf5)
    losses = [trainer.train_step(next(batches))["loss"] for _ in range(STEPS)]
    after = np.mean([trainer.eval_loss(fixed, seed=s) for s in range(3)])
    path = trainer.save(tmp_path_factory.mktemp("out"), STEPS)
    return trainer, encoder_before, unet_before, before, after, losses, path


def test_protocol_and_report(trained) -> None:
    trainer = trained[0]
    assert isinstance(trainer, Trainer)
    assert trainer.report.compatible, trainer.report.format()
    assert trainer.data.window_size == 2 and trainer.data.action_horizon == 16
    assert trainer.frozen_keys() and all(
        k.startswith("policy.obs_encoder.") for k in trainer.frozen_keys()
    )


def test_loss_drops(trained) -> None:
    _, _, _, before, after, losses, _ = trained
    assert all(np.isfinite(losses))
    assert after < 0.85 * before, (before, after, losses)


def test_head_only_freezes_encoder(trained) -> None:
    trainer, encoder_before, unet_before = trained[:3]
    for key, value in trainer.nets.policy["obs_encoder"].state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    unet = trainer.nets.policy["noise_pred_net"].state_dict()
    assert any(not torch.equal(unet[k], unet_before[k]) for k in unet)


def test_saved_checkpoint_loads_strictly(trained) -> None:
    trainer, *_, path = trained
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw["model"]) == {"nets", "ema"} and raw["algo_name"] == "diffusion_policy"
    loaded = load_checkpoint(path)  # strict
    assert loaded.report.compatible and loaded.weights == "ema"
    assert loaded.config.obs_shapes == trainer.config.obs_shapes
    assert loaded.config.action_keys == trainer.config.action_keys
    assert trainer.policy_string(path.parent) == f"diffusion:{path}"


def test_new_action_dim_and_missing_keys(tiny_hdf5: Path, tmp_path: Path) -> None:
    """10-d actions and the plain libero preset (no joint_states): fresh UNet in/out convs and
    FiLM layers, named in the report; the encoders still transfer."""
    data = write_tiny_libero_hdf5(tmp_path / "wide.hdf5", 2, 8, 32, action_dim=10)
    trainer = _trainer(data, "full", spec={"base": "libero", "action_dim": 10}, steps=2)
    assert trainer.config.action_dim == 10
    assert "joint_states" not in trainer.config.obs_shapes
    assert any("joint_states" in c for c in trainer.changes)
    fresh = {e.key: e for e in trainer.report.entries if e.status == "shape_mismatch"}
    assert "policy.noise_pred_net.final_conv.1.weight" in fresh
    assert (
        "action dimension differs" in fresh["policy.noise_pred_net.final_conv.1.weight"].explanation
    )
    assert any(".cond_encoder." in k for k in fresh)
    assert not any(k.startswith("policy.obs_encoder.") for k in fresh)
    batch = next(open_dataset(data, {"base": "libero", "action_dim": 10}).batches(2, 16, 4, 0))
    assert np.isfinite(trainer.train_step(batch)["loss"])
    state = trainer.state_dict()
    trainer.load_state_dict(state)


def test_action_sequence_and_stats() -> None:
    chunk = np.arange(2 * 2 * 4, dtype=float).reshape(2, 2, 4, 1)  # (B, W, Tp, 1)
    pad = np.array([[False, True], [True, True]])
    seq = robomimic_action_sequence(chunk, pad)
    assert seq[0, :, 0].tolist() == [0, 0, 1, 2]  # a0 repeated for the padded slot
    assert seq[1, :, 0].tolist() == [8, 9, 10, 11]
    scale, offset = min_max_stats(np.array([[-2.0, 1.0], [2.0, 1.0]]))
    normalized = (np.array([[-2.0, 1.0], [2.0, 1.0]]) - offset) / scale
    assert np.allclose(normalized[:, 0], [-0.999999, 0.999999])
    assert np.allclose(normalized[:, 1], 0.0)


def test_cli_finetune_writes_a_policy_that_loads_strictly_and_acts(
    tiny_hdf5: Path, tmp_path: Path
) -> None:
    """`evalharness finetune --policy diffusion:...`: the output directory is a normal
    ``diffusion:`` checkpoint whose EMA weights act on standard observations. The tiny data
    keeps LIBERO's raw frames, but the trainer already shows the model what its adapter
    shows, so evaluation must pass the env's frames upright (``evaluation_orientation``)."""
    import json

    from evalharness.cli import main
    from evalharness.policies import load_policy

    out = tmp_path / "ckpt"
    code = main(
        [
            "finetune",
            "--policy", f"diffusion:{CKPT}",
            "--data", str(tiny_hdf5),
            "--dataset-spec", SPEC,
            "--mode", "full",
            "--steps", "3",
            "--batch-size", "4",
            "--out", str(out),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    record = json.loads((out / "dataset_spec.json").read_text())
    assert record["model_orientation"] == "raw" and record["evaluation_orientation"] == "upright"
    assert len((out / "train_log.csv").read_text().splitlines()) == 4
    policy = load_policy(f"diffusion:{out / 'model.pth'}")  # strict by default
    assert policy.spec.image_orientation == "upright"
    assert (policy.spec.window_size, policy.spec.action_dim) == (2, 7)
    b = 2
    obs = {
        "image_primary": np.zeros((b, 2, 64, 64, 3), np.uint8),
        "image_wrist": np.zeros((b, 2, 64, 64, 3), np.uint8),
        "proprio": np.zeros((b, 2, 8), np.float32),
        "joint_states": np.zeros((b, 2, 7), np.float32),
        "timestep_pad_mask": np.ones((b, 2), bool),
    }
    tasks = {
        "language_instruction": ["pick"] * b,
        "episode_seed": np.arange(b),
        "episode_start": np.ones(b, bool),
    }
    actions = policy.act(obs, tasks)
    assert actions.shape == (b, policy.spec.action_horizon, 7) and np.all(np.isfinite(actions))


def test_resume_from_state_dict_continues_exactly(tiny_hdf5: Path) -> None:
    first = _trainer(tiny_hdf5, "full", steps=6)
    batches = list(itertools.islice(_batches(first, tiny_hdf5, size=4), 4))
    for batch in batches[:2]:
        first.train_step(batch)
    state = first.state_dict()
    expected = [first.train_step(batch)["loss"] for batch in batches[2:]]
    resumed = _trainer(tiny_hdf5, "full", steps=6)
    resumed.load_state_dict(state)
    assert [resumed.train_step(batch)["loss"] for batch in batches[2:]] == expected
    for (name, a), (_, b) in zip(
        first.ema.state_dict().items(), resumed.ema.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_bad_options_and_modes_are_refused_naming_them(tiny_hdf5: Path) -> None:
    from evalharness.finetune import FinetuneError

    with pytest.raises(FinetuneError, match=r"head_mlp_only.*full, head_only"):
        _trainer(tiny_hdf5, "head_mlp_only")
    options = FinetuneOptions(mode="full", steps=2, batch_size=2, family_options={"colour": "red"})
    with pytest.raises(FinetuneError, match=r"no option\(s\) \['colour'\]"):
        get_trainer_factory("diffusion")(CKPT, open_dataset(tiny_hdf5, SPEC), options)
    options = FinetuneOptions(mode="full", steps=2, batch_size=2, family_options={"device": "tpu"})
    with pytest.raises(FinetuneError, match=r"device='tpu'"):
        get_trainer_factory("diffusion")(CKPT, open_dataset(tiny_hdf5, SPEC), options)


@pytest.mark.sim
def test_finetune_then_eval_runs_the_finetuned_diffusion_policy(
    tiny_hdf5: Path, tmp_path: Path
) -> None:
    import json

    from evalharness.cli import main

    run_dir = tmp_path / "run"
    code = main(
        [
            "finetune-then-eval",
            "--policy", f"diffusion:{CKPT}",
            "--data", str(tiny_hdf5),
            "--dataset-spec", SPEC,
            "--mode", "head_only",
            "--steps", "2",
            "--batch-size", "2",
            "--out", str(tmp_path / "ckpt"),
            "--suite", "libero_spatial",
            "--tasks", "0",
            "--episodes-per-task", "1",
            "--max-steps", "4",
            "--camera-size", "64",
            "--num-envs", "1",
            "--eval-out", str(run_dir),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["policy"] == f"diffusion:{tmp_path / 'ckpt' / 'model.pth'}"
    assert info["policy_spec"]["image_orientation"] == "upright"
    rows = (run_dir / "episodes.csv").read_text().splitlines()
    assert len(rows) == 2 and (run_dir / "train_log.csv").is_file()


# --------------------------------------------------------------------------------------------
# the gripper head (``--option gripper_head=true``)


def _head_trainer(data: Path, head: str, steps: int = 3) -> Trainer:
    options = FinetuneOptions(
        mode="full",
        steps=steps,
        batch_size=4,
        learning_rate=LR,
        seed=0,
        family_options={"normalize_obs": "false", "gripper_head": head},
    )
    return get_trainer_factory("diffusion")(CKPT, open_dataset(data, SPEC), options)


def test_gripper_head_trains_beside_an_unchanged_diffusion_model(tiny_hdf5: Path) -> None:
    """The head reads detached features and is clipped apart: after the same batches, every
    robomimic weight (nets and EMA) equals a run without the head, bit for bit."""
    plain, headed = _head_trainer(tiny_hdf5, "false"), _head_trainer(tiny_hdf5, "true")
    assert plain.nets.gripper_head is None and headed.nets.gripper_head is not None
    head_before = {k: v.clone() for k, v in headed.nets.gripper_head.state_dict().items()}
    batches = list(itertools.islice(_batches(plain, tiny_hdf5, size=4), 3))
    for batch in batches:
        plain.train_step(batch)
        headed.train_step(batch)
    for which in ("nets", "ema"):
        a, b = getattr(plain, which).state_dict(), getattr(headed, which).state_dict()
        assert set(b) - set(a) == {k for k in b if k.startswith("gripper_head.")}
        for key in a:
            assert torch.equal(a[key], b[key]), (which, key)
    head_after = headed.nets.gripper_head.state_dict()
    assert any(not torch.equal(head_after[k], head_before[k]) for k in head_before)


def test_gripper_head_checkpoint_keeps_robomimic_layout_and_act_uses_the_head(
    tiny_hdf5: Path, tmp_path: Path
) -> None:
    """``model.nets``/``model.ema`` hold only robomimic's keys (robomimic loads them
    strictly); the head sits in ``gripper_head``. Loaded, ``act()`` takes its gripper
    command from the head, and ``?gripper_head=false`` from the diffusion sample."""
    from evalharness.policies import load_policy
    from evalharness.policies.diffusion.policy import DiffusionPolicy

    trainer = _head_trainer(tiny_hdf5, "true", steps=1)
    path = trainer.save(tmp_path, 1)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    for which in ("nets", "ema"):
        assert all(k.startswith("policy.") for k in raw["model"][which])
    assert raw["gripper_head"]["hidden_dim"] == 256
    head_keys = {f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert set(raw["gripper_head"]["ema"]) == set(raw["gripper_head"]["nets"]) == head_keys
    loaded = load_checkpoint(path)  # strict: the head's weights load too
    assert loaded.config.gripper_head == 256 and loaded.nets.gripper_head is not None

    obs = {
        "agentview_rgb": np.zeros((2, 2, 84, 84, 3), np.uint8),
        "eye_in_hand_rgb": np.zeros((2, 2, 84, 84, 3), np.uint8),
        "joint_states": np.zeros((2, 2, 7), np.float32),
        "gripper_states": np.zeros((2, 2, 2), np.float32),
    }
    tasks = {"language_instruction": ["pick"] * 2, "episode_seed": np.arange(2)}
    policy = DiffusionPolicy(loaded, missing_obs="passthrough")
    last = loaded.nets.gripper_head.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(5.0)
    assert np.all(policy.act(obs, tasks)[..., -1] == 1.0)
    with torch.no_grad():
        last.bias.fill_(-5.0)
    assert np.all(policy.act(obs, tasks)[..., -1] == -1.0)
    sampled = DiffusionPolicy(loaded, missing_obs="passthrough", gripper_head=False)
    assert sampled.gripper_head is None
    without = load_checkpoint(path)
    without.nets.gripper_head = None
    np.testing.assert_array_equal(
        sampled.act(obs, tasks), DiffusionPolicy(without, missing_obs="passthrough").act(obs, tasks)
    )
    assert load_policy(f"diffusion:{path}?gripper_head=false").gripper_head is None


def test_gripper_head_bad_input_is_named(tiny_hdf5: Path, tmp_path: Path) -> None:
    from evalharness.finetune import FinetuneError
    from evalharness.policies.common.compat import CheckpointError

    with pytest.raises(FinetuneError, match=r"gripper_head='wide'.*true, false or a hidden width"):
        _head_trainer(tiny_hdf5, "wide")
    assert _head_trainer(tiny_hdf5, "64", steps=1).config.gripper_head == 64
    assert _head_trainer(tiny_hdf5, "off", steps=1).nets.gripper_head is None
    data = write_tiny_libero_hdf5(tmp_path / "wide.hdf5", 2, 8, 32, action_dim=10)
    options = FinetuneOptions(
        mode="full", steps=1, batch_size=2, family_options={"gripper_head": "true"}
    )
    with pytest.raises(FinetuneError, match=r"actions are 10-d.*7-d actions"):
        get_trainer_factory("diffusion")(
            CKPT, open_dataset(data, {"base": "libero", "action_dim": 10}), options
        )
    path = _head_trainer(tiny_hdf5, "true", steps=1).save(tmp_path / "ok", 1)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw["gripper_head"]["hidden_dim"] = "256"
    torch.save(raw, tmp_path / "bad_width.pth")
    with pytest.raises(CheckpointError, match=r"bad_width.pth: 'gripper_head'.*hidden_dim='256'"):
        load_checkpoint(tmp_path / "bad_width.pth")
    raw["gripper_head"]["hidden_dim"] = 256
    del raw["gripper_head"]["nets"], raw["gripper_head"]["ema"]
    torch.save(raw, tmp_path / "no_weights.pth")
    with pytest.raises(CheckpointError, match=r"no_weights.pth: 'gripper_head' has no 'ema'"):
        load_checkpoint(tmp_path / "no_weights.pth")


def test_the_learning_recipe_finetunes_and_loads(tiny_hdf5: Path, tmp_path: Path) -> None:
    """The family's documented recipe (``docs/learning-from-demos.md``, the benchmark's) is
    accepted as a whole and yields a checkpoint with its gripper head and Ta = 2."""
    from evalharness.cli import main
    from evalharness.policies import load_policy
    from evalharness.policies.diffusion.family import example

    recipe = example(FIXTURE.parent)
    assert recipe.learning_recipe and recipe.finetune_data == SPEC
    out = tmp_path / "recipe"
    args = ["finetune", "--policy", recipe.finetune, "--data", str(tiny_hdf5)]
    args += ["--dataset-spec", recipe.finetune_data]
    args += [*recipe.learning_recipe, "--steps", "2", "--batch-size", "4", "--out", str(out)]
    assert main([*args, "--no-progress", "--open-loop-demos", "0"]) == 0
    policy = load_policy(f"diffusion:{out / 'model.pth'}")
    assert policy.gripper_head is not None
    assert policy.spec.exec_horizon == policy.config.action_horizon == 2
