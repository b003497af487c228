"""The robomimic / DROID diffusion policy adapter against upstream's own outputs.

`robomimic_dp_tiny` was written by robomimic 0.5's trainer; `reference.npz` holds what upstream
computed from it. DROID checkpoints are large, so their layout is tested with a state dict
built from the recorded key list (`facts/dp_state_dicts/keys_droid.txt`) and random values.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from evalharness.policies.common.compat import CheckpointError, CheckpointMismatchError  # noqa: E402
from evalharness.policies.common.rotations import matrix_to_rot6d  # noqa: E402
from evalharness.policies.diffusion.actions import (  # noqa: E402
    decode_to_libero,
    droid_euler_action,
    split_unnormalize,
)
from evalharness.policies.diffusion.checkpoint import (  # noqa: E402
    build_nets,
    canonical_state_dict,
    load_checkpoint,
    load_weights,
)
from evalharness.policies.diffusion.config import ActionKey, DiffusionPolicyConfig  # noqa: E402
from evalharness.policies.diffusion.keymap import STANDARD_SOURCES  # noqa: E402
from evalharness.policies.diffusion.nets import VisualCoreSpec  # noqa: E402
from evalharness.policies.diffusion.policy import DiffusionPolicy  # noqa: E402
from evalharness.policies.diffusion.schedulers import NoiseScheduler, SchedulerConfig  # noqa: E402
from evalharness.policies.registry import load_policy  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "robomimic_dp_tiny"
DROID_KEYS = SHARED / "facts" / "dp_state_dicts" / "keys_droid.txt"
RESNET18_KEYS = SHARED / "fixtures" / "robomimic_dp_resnet18_keys" / "state_dict_keys.txt"

needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "model.pth").exists(), reason="../shared/fixtures/robomimic_dp_tiny absent"
)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "reference.npz"))


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_checkpoint(FIXTURE / "model.pth")


def _max_abs(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# -- the upstream fixture ---------------------------------------------------------------------


@needs_fixture
def test_fixture_loads_strictly_with_ema_weights_and_unet_dims_read_from_the_weights(
    tiny: Any,
) -> None:
    assert tiny.weights == "ema"
    assert tiny.report.compatible and len(tiny.report.loaded) == 204
    cfg = tiny.config
    assert cfg.unet.down_dims == (16, 32, 64) and cfg.unet.diffusion_step_embed_dim == 16
    assert cfg.unet.global_cond_dim == 274 and cfg.unet.input_dim == 7
    # shape_metadata order, not config.observation.modalities order
    assert list(cfg.obs_shapes) == [
        "agentview_rgb",
        "eye_in_hand_rgb",
        "gripper_states",
        "joint_states",
    ]
    assert cfg.visual["agentview_rgb"].crop == (76, 76)
    assert (cfg.observation_horizon, cfg.action_horizon, cfg.prediction_horizon) == (2, 8, 16)
    assert cfg.scheduler.kind == "ddim" and cfg.scheduler.num_inference_timesteps == 10


@needs_fixture
@pytest.mark.parametrize("weights", ["inference_nets", "raw_nets"])
def test_noise_prediction_matches_upstream(ref: dict[str, np.ndarray], weights: str) -> None:
    loaded = load_checkpoint(FIXTURE / "model.pth", use_ema=weights == "inference_nets")
    unet = loaded.nets.noise_pred_net
    sample = torch.tensor(ref["noise_pred/sample"])
    cond = torch.tensor(ref["noise_pred/global_cond"])
    with torch.no_grad():
        out = unet(sample, torch.tensor(ref["noise_pred/timestep"]), cond)
        out50 = unet(sample, torch.tensor(50), cond)
    assert _max_abs(out, ref[f"noise_pred/{weights}/output"]) <= 1e-5
    assert _max_abs(out50, ref[f"noise_pred/{weights}/output_scalar_timestep_50"]) <= 1e-5


@needs_fixture
def test_observation_features_match_upstream_from_raw_uint8_inputs(
    tiny: Any, ref: dict[str, np.ndarray]
) -> None:
    policy = DiffusionPolicy(tiny, missing_obs="passthrough")
    raw = {k: ref[f"encoder/input_raw/{k}"] for k in tiny.config.obs_shapes}
    prepared = policy.prepare(raw, 2)
    for key in tiny.config.obs_shapes:
        assert _max_abs(prepared[key], ref[f"encoder/input_processed/{key}"]) == 0.0, key
    with torch.no_grad():
        features = policy.nets.encode(prepared).reshape(2, 2, -1)
    assert _max_abs(features, ref["encoder/inference_nets/obs_features"]) <= 1e-5


@needs_fixture
def test_low_dim_observations_are_normalized_as_x_minus_offset_over_scale(
    tiny: Any, ref: dict[str, np.ndarray]
) -> None:
    key = next(k for k in tiny.config.obs_shapes if k not in tiny.config.visual)
    dim = tiny.config.obs_shapes[key][0]
    offset, scale = np.arange(dim, dtype=np.float64), np.full(dim, 2.0)
    config = dataclasses.replace(tiny.config, obs_normalization={key: (offset, scale)})
    policy = DiffusionPolicy(dataclasses.replace(tiny, config=config), missing_obs="passthrough")
    raw = {k: ref[f"encoder/input_raw/{k}"] for k in tiny.config.obs_shapes}
    for _ in range(2):  # the cached statistics are reused, not consumed
        prepared = policy.prepare(raw, 2)
        expected = (raw[key].astype(np.float32) - offset.astype(np.float32)) / np.float32(2.0)
        np.testing.assert_array_equal(prepared[key].numpy(), expected)


@needs_fixture
def test_ddim_schedule_matches_upstream(tiny: Any, ref: dict[str, np.ndarray]) -> None:
    scheduler = NoiseScheduler(tiny.config.scheduler)
    assert scheduler.timesteps == ref["scheduler/timesteps"].tolist()
    assert _max_abs(scheduler.betas, ref["scheduler/betas"]) == 0.0
    assert _max_abs(scheduler.alphas_cumprod, ref["scheduler/alphas_cumprod"]) == 0.0


@needs_fixture
def test_rollout_reproduces_upstream_actions_from_the_recorded_seed(
    tiny: Any, ref: dict[str, np.ndarray]
) -> None:
    policy = DiffusionPolicy(tiny, missing_obs="passthrough")
    policy.reset(1)
    # upstream: torch.manual_seed(0), one randn((1, 16, 7)) per inference; episode seed 0 is
    # the same stream.
    tasks = {"language_instruction": ["replay"], "episode_seed": np.array([0])}
    chunks = []
    for step in (0, 8):  # Ta = 8: inference at steps 0 and 8
        obs = {
            k: ref[f"rollout/policy_input_stacked/{k}"][step][None] for k in tiny.config.obs_shapes
        }
        chunk = policy.act(obs, tasks)
        assert chunk.shape == (1, 8, 7)
        chunks.append(chunk[0])
    actions = np.concatenate(chunks)[:10]
    assert _max_abs(actions, ref["rollout/actions"]) <= 1e-4
    # and the full normalized trajectory from the recorded noise
    obs0 = {k: ref[f"rollout/policy_input_stacked/{k}"][0][None] for k in tiny.config.obs_shapes}
    traj = policy.sample(
        policy.prepare(obs0, 1), torch.tensor(ref["rollout/inference_initial_noise"][:1])
    )
    assert _max_abs(traj, ref["rollout/normalized_action_trajectories"][:1]) <= 1e-4


@needs_fixture
def test_batched_actions_do_not_depend_on_batch_neighbours(
    tiny: Any, ref: dict[str, np.ndarray]
) -> None:
    policy = DiffusionPolicy(tiny, missing_obs="passthrough")
    keys = tiny.config.obs_shapes
    one = {k: ref[f"rollout/policy_input_stacked/{k}"][3][None] for k in keys}
    three = {k: ref[f"rollout/policy_input_stacked/{k}"][[3, 5, 7]] for k in keys}
    alone = policy.act(one, {"language_instruction": ["a"], "episode_seed": np.array([11])})
    policy.reset(3)
    batched = policy.act(
        three, {"language_instruction": ["a"] * 3, "episode_seed": np.array([11, 12, 13])}
    )
    assert batched.shape == (3, 8, 7)
    assert _max_abs(batched[0], alone[0]) <= 1e-5
    # a restarted episode (episode_start) replays its noise stream from the beginning
    again = policy.act(one, {"language_instruction": ["a"], "episode_seed": np.array([11])})
    assert _max_abs(again[0], alone[0]) > 1e-3
    tasks = {
        "language_instruction": ["a"],
        "episode_seed": np.array([11]),
        "episode_start": np.array([True]),
    }
    assert _max_abs(policy.act(one, tasks)[0], alone[0]) <= 1e-5


@needs_fixture
def test_policy_string_loads_the_fixture_and_refuses_unmapped_observations() -> None:
    path = FIXTURE / "model.pth"
    no_joints = {k: v for k, v in STANDARD_SOURCES.items() if k != "joint_states"}
    with pytest.raises(ValueError, match=r"joint_states.*missing_obs=zeros"):
        DiffusionPolicy(load_checkpoint(path), sources=no_joints)
    with pytest.warns(UserWarning, match=r"feeding zeros for \['joint_states'\]"):
        DiffusionPolicy(load_checkpoint(path), sources=no_joints, missing_obs="zeros")
    policy = load_policy(f"diffusion:{path}?device=cpu")
    assert policy.spec.window_size == 2 and policy.spec.action_horizon == 8
    assert policy.spec.exec_horizon == 8 and policy.spec.action_dim == 7
    # LIBERO's standard observation at the render size: images are resized to 84x84 inside.
    obs = {
        "image_primary": np.zeros((2, 2, 128, 128, 3), np.uint8),
        "image_wrist": np.full((2, 2, 128, 128, 3), 200, np.uint8),
        "proprio": np.zeros((2, 2, 8), np.float32),
        "joint_states": np.zeros((2, 2, 7), np.float32),
        "timestep_pad_mask": np.ones((2, 2), bool),
    }
    actions = policy.act(
        obs, {"language_instruction": ["a", "b"], "episode_seed": np.array([1, 2])}
    )
    assert actions.shape == (2, 8, 7) and np.all(np.isfinite(actions))
    with pytest.raises(ValueError, match="no option"):
        load_policy(f"diffusion:{path}?devcie=cpu")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        load_policy("diffusion")


def test_a_bad_device_option_is_named_before_any_weight_loads(tmp_path: Path) -> None:
    path = tmp_path / "never_read.pth"  # the option is checked first: the file is not opened
    with pytest.raises(ValueError) as info:
        load_policy(f"diffusion:{path}?device=tpu")
    assert str(info.value) == (
        "policy 'diffusion': option device='tpu': expected cpu, cuda or cuda:N"
    )
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^policy 'diffusion': option device='cuda': torch "):
            load_policy(f"diffusion:{path}?device=cuda")


@needs_fixture
def test_pickled_checkpoint_is_refused_without_the_trust_flag(tmp_path: Path) -> None:
    ckpt = torch.load(FIXTURE / "model.pth", weights_only=True)
    # Older robomimic saves stats as numpy arrays: loading those needs arbitrary unpickling.
    ckpt["action_normalization_stats"] = {
        k: {s: np.asarray(v[s]) for s in v} for k, v in ckpt["action_normalization_stats"].items()
    }
    path = tmp_path / "pickled.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"trust=true"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True).report.compatible


@needs_fixture
def test_malformed_normalization_stats_are_named_with_file_key_and_expectation(
    tmp_path: Path,
) -> None:
    ckpt = torch.load(FIXTURE / "model.pth", weights_only=True)
    name = next(iter(ckpt["action_normalization_stats"]))
    del ckpt["action_normalization_stats"][name]["scale"]
    path = tmp_path / "no_scale.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: action_normalization_stats[{name!r}] has no 'scale'; expected a dict with "
        "'offset' and 'scale', found ['offset']"
    )
    ckpt = torch.load(FIXTURE / "model.pth", weights_only=True)
    ckpt["obs_normalization_stats"] = {"joint_states": {"offset": "zero", "scale": [1.0]}}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: obs_normalization_stats['joint_states']['offset'] is not an array of numbers: "
        "'zero'"
    )


@needs_fixture
def test_a_missing_tensor_fails_strict_loading_by_name_and_loads_non_strictly(
    tmp_path: Path,
) -> None:
    ckpt = torch.load(FIXTURE / "model.pth", weights_only=True)
    victim = "policy.noise_pred_net.final_conv.1.bias"
    for which in ("nets", "ema"):
        del ckpt["model"][which][victim]
    path = tmp_path / "broken.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointMismatchError, match=re.escape(victim)):
        load_checkpoint(path)
    loaded = load_checkpoint(path, strict=False)
    assert [e.key for e in loaded.report.missing] == [victim]


@needs_fixture
def test_a_checkpoint_with_one_spelling_of_each_visual_core_key_still_loads(tmp_path: Path) -> None:
    ckpt = torch.load(FIXTURE / "model.pth", weights_only=True)
    for which in ("nets", "ema"):
        sd = ckpt["model"][which]
        for key in [k for k in sd if re.search(r"obs_nets\.[^.]+\.nets\.[01]\.", k)]:
            del sd[key]  # keep only backbone.* / pool.*
    path = tmp_path / "dedup.pth"
    torch.save(ckpt, path)
    assert load_checkpoint(path).report.compatible


def test_not_a_file_and_not_a_checkpoint_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="'model' entry"):
        load_checkpoint(bad)


# -- schedulers --------------------------------------------------------------------------------


def test_ddpm_with_all_train_steps_is_the_textbook_posterior_mean_plus_small_variance() -> None:
    sched = NoiseScheduler(SchedulerConfig("ddpm", 100, 100))
    assert sched.timesteps == list(range(99, -1, -1))
    x = torch.randn(2, 16, 7)
    eps = torch.randn(2, 16, 7)
    t = 0  # the last step adds no noise: the clipped x0 estimate
    expected = (
        (x - (1 - sched.alphas_cumprod[0]) ** 0.5 * eps) / sched.alphas_cumprod[0] ** 0.5
    ).clamp(-1, 1)
    # diffusers computes its coefficient betas[0] / (1 - alphas_cumprod[0]) = 1 in float32
    assert _max_abs(sched.step(eps, t, x), expected) <= 1e-4
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    a = sched.step(eps, 50, x, gens)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    assert torch.equal(a, sched.step(eps, 50, x, gens))


def test_scheduler_config_is_validated() -> None:
    with pytest.raises(ValueError, match="beta_schedule"):
        SchedulerConfig("ddim", beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="num_inference_timesteps"):
        SchedulerConfig("ddim", 100, 200)


# -- ResNet18 and DROID layouts ----------------------------------------------------------------


def _read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(policy\.\S+)\s+\(([\d, ]*)\)", line.replace("\t", " "))
        if m and m.group(1) not in shapes:
            shapes[m.group(1)] = tuple(int(d) for d in m.group(2).replace(" ", "").split(",") if d)
    return shapes


def _random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> OrderedDict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    out: OrderedDict[str, Any] = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith(("pos_x", "pos_y", "temperature")):
            out[key] = torch.ones(shape)
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.02
    return out


def _rgb_encoder(
    backbone: str, pool: str | None, feature_dimension: int, crop: int
) -> dict[str, Any]:
    return {
        "core_class": "VisualCore",
        "core_kwargs": {
            "feature_dimension": feature_dimension,
            "backbone_class": backbone,
            "backbone_kwargs": {"pretrained": False, "input_coord_conv": False},
            "pool_class": pool,
            "pool_kwargs": None if pool is None else {"num_kp": 32, "temperature": 1.0},
            "flatten": True,
        },
        "obs_randomizer_class": ["ColorRandomizer", "CropRandomizer"],
        "obs_randomizer_kwargs": [
            {},
            {"crop_height": crop, "crop_width": crop, "num_crops": 1, "pos_enc": False},
        ],
    }


def _ckpt(
    state: dict[str, Any], low_dim: list[str], rgb: list[str], shapes: dict[str, list[int]],
    encoder: dict[str, Any], action_stats: dict[str, Any], action_config: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    config = {
        "algo_name": "diffusion_policy",
        "algo": {
            "horizon": {"observation_horizon": 2, "action_horizon": 8, "prediction_horizon": 16},
            "ddpm": {"enabled": False},
            "ddim": {"enabled": True, "num_train_timesteps": 100, "num_inference_timesteps": 10,
                     "beta_schedule": "squaredcos_cap_v2", "clip_sample": True,
                     "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon"},
        },
        "observation": {"modalities": {"obs": {"low_dim": low_dim, "rgb": rgb}},
                        "encoder": {"rgb": encoder}},
        "train": {"action_keys": list(action_stats), "action_config": action_config},
    }  # fmt: skip
    return {
        "model": {"nets": state, "ema": None},
        "config": json.dumps(config),
        "algo_name": "diffusion_policy",
        "shape_metadata": {"ac_dim": 7, "all_shapes": shapes},
        "action_normalization_stats": action_stats,
    }


@pytest.mark.skipif(not RESNET18_KEYS.exists(), reason="resnet18 key list absent")
def test_resnet18_layout_with_group_norm_loads_strictly(tmp_path: Path) -> None:
    shapes = _read_keys(RESNET18_KEYS)
    assert len(shapes) == 412
    stats = {"actions": {"scale": [[1.0] * 7], "offset": [[0.0] * 7]}}
    ckpt = _ckpt(
        _random_state_dict(shapes), ["joint_states", "gripper_states"],
        ["agentview_rgb", "eye_in_hand_rgb"],
        {"agentview_rgb": [3, 84, 84], "eye_in_hand_rgb": [3, 84, 84],
         "gripper_states": [2], "joint_states": [7]},
        _rgb_encoder("ResNet18Conv", "SpatialSoftmax", 64, 76), stats, {},
    )  # fmt: skip
    torch.save(ckpt, tmp_path / "r18.pth")
    loaded = load_checkpoint(tmp_path / "r18.pth")
    assert loaded.report.compatible and loaded.weights == "nets"
    norm = loaded.nets.state_dict()
    assert norm[
        "policy.obs_encoder.nets.obs.obs_nets.agentview_rgb.backbone.nets.4.0.bn1.weight"
    ].shape == (64,)
    gn = loaded.nets.obs_encoder.nets["obs"].obs_nets["agentview_rgb"].backbone.nets[1]
    assert isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == 4  # 64 channels / 16


DROID_CAMS = ["camera/image/varied_camera_1_left_image", "camera/image/varied_camera_2_left_image"]
DROID_ACTIONS = {"action/abs_pos": 3, "action/abs_rot_6d": 6, "action/gripper_position": 1}


@pytest.fixture(scope="module")
def droid_state() -> OrderedDict[str, Any]:
    if not DROID_KEYS.exists():
        pytest.skip("keys_droid.txt absent")
    shapes = _read_keys(DROID_KEYS)
    assert len(shapes) == 794
    return _random_state_dict(shapes, seed=1)


@pytest.fixture(scope="module")
def droid_loaded(
    droid_state: OrderedDict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    stats = {k: {"scale": [[0.5] * d], "offset": [[0.1] * d]} for k, d in DROID_ACTIONS.items()}
    ckpt = _ckpt(
        droid_state, ["robot_state/cartesian_position", "robot_state/gripper_position"], DROID_CAMS,
        {"robot_state/cartesian_position": [6], "robot_state/gripper_position": [1],
         DROID_CAMS[0]: [3, 128, 128], DROID_CAMS[1]: [3, 128, 128]},
        _rgb_encoder("ResNet50Conv", None, 512, 116), stats,
        {"action/abs_rot_6d": {"normalization": "min_max", "format": "rot_6d", "convert_at_runtime": "rot_euler"}},
    )  # fmt: skip
    path = tmp_path_factory.mktemp("droid") / "droid.pth"
    torch.save(ckpt, path)
    return load_checkpoint(path)


@pytest.mark.slow
def test_droid_layout_loads_strictly_through_the_module_infix(
    droid_loaded: Any, droid_state: OrderedDict[str, Any]
) -> None:
    assert droid_loaded.report.compatible
    cfg = droid_loaded.config
    assert cfg.combine and cfg.unet.global_cond_dim == 1024 and cfg.unet.input_dim == 10
    key = "policy.noise_pred_net.module.final_conv.1.weight"
    assert torch.equal(droid_loaded.nets.state_dict()[key.replace("module.", "")], droid_state[key])
    policy = DiffusionPolicy(droid_loaded)
    proprio = np.tile(
        np.array([0.4, 0.0, 0.3, np.pi, 0.0, 0.0, 0.04, -0.04], np.float32), (1, 2, 1)
    )
    obs = {
        "image_primary": np.zeros((1, 2, 128, 128, 3), np.uint8),
        "image_wrist": np.zeros((1, 2, 128, 128, 3), np.uint8),
        "proprio": proprio,
    }
    actions = policy.act(obs, {"language_instruction": ["x"], "episode_seed": np.array([0])})
    assert actions.shape == (1, 8, 7) and np.all(np.abs(actions) <= 1.0)


@pytest.mark.slow
def test_droid_checkpoint_transfers_its_encoder_into_a_libero_config(
    droid_state: OrderedDict[str, Any],
) -> None:
    # The founding DROID -> LIBERO case: same architecture, LIBERO cameras and 7-d actions.
    visual = VisualCoreSpec(
        (3, 128, 128), "ResNet50Conv", None, None, feature_dimension=512, crop=(116, 116)
    )
    target = DiffusionPolicyConfig(
        obs_shapes={"agentview_rgb": (3, 128, 128), "eye_in_hand_rgb": (3, 128, 128),
                    "ee_states": (6,), "gripper_states": (2,)},
        visual={"agentview_rgb": visual, "eye_in_hand_rgb": visual},
        unet=droid_state_unet(droid_state, input_dim=7),
        scheduler=SchedulerConfig("ddim", 100, 10),
        action_keys=(ActionKey("actions", 7),),
        combine=True,
    )  # fmt: skip
    nets = build_nets(target)
    state = canonical_state_dict(droid_state)
    cams = {"agentview_rgb": DROID_CAMS[0], "eye_in_hand_rgb": DROID_CAMS[1]}
    key_map = {}
    for key in nets.state_dict():
        for new, old in cams.items():
            if f".obs_nets.{new}." in key:
                key_map[key] = key.replace(f".obs_nets.{new}.", f".obs_nets.{old}.")
    with pytest.raises(CheckpointMismatchError):
        load_weights(nets, state, key_map=key_map)
    report = load_weights(nets, state, strict=False, key_map=key_map)
    bad = {e.key for e in report.entries if e.status != "loaded"}
    assert not any(".obs_nets." in k for k in bad)  # both camera encoders transferred
    assert "policy.obs_encoder.combine.0.weight" in bad  # obs routing: 1031 -> 1032 inputs
    assert "policy.noise_pred_net.final_conv.1.weight" in bad  # new action head
    assert "policy.noise_pred_net.mid_modules.0.cond_encoder.1.weight" not in bad
    assert any("action head" in text for text in report.explanations)


def droid_state_unet(state: OrderedDict[str, Any], input_dim: int) -> Any:
    from evalharness.policies.diffusion.config import unet_dims_from_state_dict

    dims = unet_dims_from_state_dict(canonical_state_dict(state))
    return type(dims)(
        input_dim, dims.global_cond_dim, dims.diffusion_step_embed_dim, dims.down_dims
    )


# -- action decoding ---------------------------------------------------------------------------


def test_droid_absolute_targets_become_libero_deltas_against_the_current_pose() -> None:
    from scipy.spatial.transform import Rotation

    keys = [ActionKey("action/abs_pos", 3), ActionKey("action/abs_rot_6d", 6, rotation_format="rot_6d"),
            ActionKey("action/gripper_position", 1)]  # fmt: skip
    current = Rotation.from_rotvec([0.0, 0.0, 0.3])
    step1 = Rotation.from_rotvec([0.0, 0.0, 0.1]) * current  # turn 0.1 rad about world z
    step2 = Rotation.from_rotvec([0.05, 0.0, 0.0]) * step1
    parts = {
        "action/abs_pos": np.array([[[0.41, 0.0, 0.3], [0.41, 0.02, 0.3]]]),
        "action/abs_rot_6d": matrix_to_rot6d(np.stack([step1.as_matrix(), step2.as_matrix()]))[
            None
        ],
        "action/gripper_position": np.array([[[1.0], [0.0]]]),
    }
    proprio = np.array([[0.4, 0.0, 0.3, 0.0, 0.0, 0.3, 0.04, -0.04]])
    out = decode_to_libero(parts, keys, proprio)
    np.testing.assert_allclose(out[0, 0], [0.2, 0, 0, 0, 0, 0.2, 1.0], atol=1e-9)
    np.testing.assert_allclose(out[0, 1], [0, 0.4, 0, 0.1, 0, 0, -1.0], atol=1e-9)
    euler = droid_euler_action(parts, keys)
    np.testing.assert_allclose(euler[0, 0, 3:6], step1.as_euler("xyz"), atol=1e-12)


def test_robomimic_min_max_stats_unnormalize_as_x_times_scale_plus_offset() -> None:
    key = ActionKey("actions", 2, scale=(2.0, 0.5), offset=(1.0, -1.0))
    parts = split_unnormalize(np.array([[[0.5, 1.0]]]), [key])
    np.testing.assert_allclose(parts["actions"], [[[2.0, -0.5]]])
    with pytest.raises(ValueError, match="3 values, expected 2"):
        ActionKey("actions", 2, scale=(1.0, 1.0, 1.0))


# -- end to end ---------------------------------------------------------------------------------


@needs_fixture
@pytest.mark.sim
@pytest.mark.slow
def test_evalharness_run_with_the_fixture_end_to_end(tmp_path: Path) -> None:
    policy = f"diffusion:{FIXTURE / 'model.pth'}"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "evalharness.cli", "run", "--suite", "libero_spatial", "--policy", policy,
           "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "5", "--num-envs", "1",
           "--camera-size", "84", "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    episodes = (out / "episodes.csv").read_text().splitlines()
    assert len(episodes) == 2 and "diffusion:" in episodes[1]
    run = json.loads((out / "run.json").read_text())
    assert run["policy_spec"]["window_size"] == 2 and run["policy_spec"]["action_horizon"] == 8
    assert pickle.dumps(run)  # plain data
