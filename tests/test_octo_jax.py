"""octo_jax against upstream Octo's own outputs (``shared/fixtures/octo_tiny_lang``).

The fixture was written by upstream octo (jax 0.4.20, flax 0.7.5); ``reference.npz`` holds
upstream's outputs for fixed inputs. Tolerances are the acceptance criteria of issue 3:
transformer readouts ≤ 1e-5, ``sample_actions`` with ``PRNGKey(0)`` ≤ 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

from evalharness.policies.common.compat import (  # noqa: E402
    CheckpointMismatchError,
    flatten_tree,
    unflatten_tree,
)
from evalharness.policies.common.images import resize_images  # noqa: E402
from evalharness.policies.common.normalization import ArrayStatistics  # noqa: E402
from evalharness.policies.octo.checkpoint import load_checkpoint  # noqa: E402
from evalharness.policies.octo.inputs import postprocess_actions  # noqa: E402
from evalharness.policies.octo_jax.loader import load_octo, param_shapes, save_octo  # noqa: E402
from evalharness.policies.octo_jax.model import (  # noqa: E402
    DiffusionActionHead,
    ImageTokenizer,
    OctoModule,
    TokenGroup,
    cosine_beta_schedule,
)
from evalharness.policies.octo_jax.policy import OctoJaxPolicy, make_octo_jax_policy  # noqa: E402
from evalharness.policies.octo_jax.t5 import T5Encoder  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FIXTURE = FIXTURES / "octo_tiny_lang"
STATS = "libero_spatial_no_noops"

pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared fixtures not present")


def _sub(ref: np.lib.npyio.NpzFile, prefix: str) -> dict:
    return unflatten_tree(
        {k[len(prefix) + 1 :]: ref[k] for k in ref.files if k.startswith(prefix + "/")}
    )


@pytest.fixture(scope="module")
def ref() -> np.lib.npyio.NpzFile:
    return np.load(FIXTURE / "reference.npz")


@pytest.fixture(scope="module")
def loaded():
    return load_octo(FIXTURE)


@pytest.fixture(scope="module")
def outputs(loaded, ref):
    obs, task = _sub(ref, "observation"), _sub(ref, "task")
    return loaded.module.apply(
        {"params": loaded.params},
        obs,
        task,
        obs["timestep_pad_mask"],
        method=OctoModule.run_transformer,
    )


@pytest.fixture(scope="module")
def policy():
    return make_octo_jax_policy(str(FIXTURE), stats=STATS)


# --------------------------------------------------------------------------------------------
# parameter tree and loading


def test_param_tree_equals_upstream_listing(loaded):
    listed = {}
    for line in (FIXTURE / "param_tree.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        listed[key] = (
            tuple(json.loads(shape.replace("(", "[").replace(",)", "]").replace(")", "]"))),
            dtype,
        )
    shapes = param_shapes(loaded.module, loaded.checkpoint.example_batch)
    built = {k: (v, "float32") for k, v in shapes.items()}
    assert built == listed


def test_fixture_loads_strictly_with_every_leaf_bit_identical(loaded):
    assert loaded.report.compatible
    assert len(loaded.report.loaded) == 126
    stored = load_checkpoint(FIXTURE).flat_params
    for key, value in flatten_tree(loaded.params).items():
        np.testing.assert_array_equal(value, stored[key], err_msg=key)


def test_save_then_load_round_trips_strictly(loaded, tmp_path):
    ckpt = loaded.checkpoint
    save_octo(tmp_path, 7, loaded.params, ckpt.config, ckpt.example_batch, ckpt.dataset_statistics)
    again = load_octo(tmp_path, step=7)
    assert again.report.compatible
    for key, value in flatten_tree(again.params).items():
        np.testing.assert_array_equal(value, flatten_tree(loaded.params)[key])


# --------------------------------------------------------------------------------------------
# numerics against upstream


def test_t5_encoder_reproduces_flax_t5_reference(loaded):
    ref_t5 = np.load(FIXTURES / "tiny_t5" / "reference_t5.npz")
    hf = loaded.params["octo_transformer"]["task_tokenizers_language"]["hf_model"]
    out = T5Encoder(loaded.t5).apply({"params": hf}, ref_t5["input_ids"], ref_t5["attention_mask"])
    assert np.abs(np.asarray(out) - ref_t5["last_hidden_state_flax"]).max() <= 1e-5


def test_image_tokenizer_outputs_match_upstream(loaded, ref):
    obs, task = _sub(ref, "observation"), _sub(ref, "task")
    for name in ("primary", "wrist"):
        config = loaded.config.model.observation_tokenizer(name)
        params = loaded.params["octo_transformer"][f"observation_tokenizers_{name}"]
        out = ImageTokenizer(config).apply({"params": params}, obs, task)
        expected = ref[f"tokenizer_outputs/obs_{name}/tokens"]
        assert np.abs(np.asarray(out.tokens) - expected).max() <= 1e-5
        np.testing.assert_array_equal(
            np.asarray(out.mask, dtype=bool), ref[f"tokenizer_outputs/obs_{name}/mask"]
        )


def test_transformer_readouts_and_every_token_group_match_upstream_within_1e_5(outputs, ref):
    groups = {k.split("/")[1] for k in ref.files if k.startswith("transformer/")}
    assert groups == set(outputs)
    for group in groups:
        tokens = np.asarray(outputs[group].tokens)
        diff = np.abs(tokens - ref[f"transformer/{group}/tokens"]).max()
        assert diff <= 1e-5, f"{group}: max abs diff {diff}"
        np.testing.assert_array_equal(
            np.asarray(outputs[group].mask, dtype=bool),
            ref[f"transformer/{group}/mask"].astype(bool),
            err_msg=group,
        )


def test_score_network_matches_upstream(loaded, outputs, ref):
    head = DiffusionActionHead(loaded.config.model.action_head)
    eps = head.apply(
        {"params": loaded.params["heads_action"]},
        outputs,
        ref["diffusion_eps/time"],
        ref["diffusion_eps/noisy_actions"],
    )
    assert np.abs(np.asarray(eps) - ref["diffusion_eps/output"]).max() <= 1e-5


def test_cosine_schedule_matches_upstream(ref):
    betas = np.asarray(cosine_beta_schedule(20))
    np.testing.assert_allclose(betas, ref["diffusion_sampling/betas"], atol=5e-7)
    np.testing.assert_allclose(1 - betas, ref["diffusion_sampling/alphas"], atol=5e-7)
    np.testing.assert_allclose(
        np.cumprod(1 - betas), ref["diffusion_sampling/alpha_hats"], atol=5e-7
    )


def test_every_denoising_step_matches_upstream_with_recorded_noise(loaded, ref):
    """Per-step check with upstream's recorded noise, from upstream's readouts."""
    readout = TokenGroup(
        ref["transformer/readout_action/tokens"], ref["transformer/readout_action/mask"]
    )
    head = DiffusionActionHead(loaded.config.model.action_head)
    params = loaded.params["heads_action"]
    betas = ref["diffusion_sampling/betas"]
    alphas, alpha_hats = ref["diffusion_sampling/alphas"], ref["diffusion_sampling/alpha_hats"]
    x = ref["diffusion_sampling/init_noise"]
    for i, t in enumerate(range(19, -1, -1)):
        time = np.full((*x.shape[:-1], 1), t, dtype=np.int32)
        eps = np.asarray(head.apply({"params": params}, {"readout_action": readout}, time, x))
        x = (1 / np.sqrt(alphas[t])) * (x - (1 - alphas[t]) / np.sqrt(1 - alpha_hats[t]) * eps)
        x = np.clip(
            x + (t > 0) * np.sqrt(betas[t]) * ref["diffusion_sampling/z_per_iteration"][i], -5, 5
        )
        expected = ref["diffusion_sampling/x_after_each_iteration"][i]
        assert np.abs(x - expected).max() <= 1e-4, f"iteration {i}"
        x = expected.astype(np.float32)  # no error accumulation across steps


def test_sample_actions_prngkey0_matches_upstream(policy, ref):
    obs, task = _sub(ref, "observation"), _sub(ref, "task")
    actions = policy.sample_normalized(obs, task, jax.random.PRNGKey(0))
    assert np.abs(actions - ref["actions_normalized"]).max() <= 1e-4
    stats = ArrayStatistics.from_dict(_sub(ref, "unnormalization_statistics"), "reference")
    for kind in ("normal", "bounds"):
        unnormalized = postprocess_actions(actions, stats, kind, gripper=None)
        diff = np.abs(unnormalized - ref[f"actions_unnormalized_{kind}"]).max()
        assert diff <= 1e-4, f"{kind}: {diff}"


def test_sampling_leaves_the_global_threefry_setting_alone(policy, ref):
    before = jax.config.jax_threefry_partitionable
    policy.sample_normalized(_sub(ref, "observation"), _sub(ref, "task"), jax.random.PRNGKey(1))
    assert jax.config.jax_threefry_partitionable == before


def test_numpy_resize_equals_jax_lanczos3_antialias():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    smooth = np.clip(np.cumsum(rng.normal(size=(2, 64, 48, 3)), axis=1) * 8 + 128, 0, 255).astype(
        np.uint8
    )
    for images in (noise, smooth):
        for size in ((32, 32), (128, 96), (40, 24)):
            expected = jax.image.resize(
                images.astype(np.float32), (2, *size, 3), method="lanczos3", antialias=True
            )
            expected = np.clip(np.round(np.asarray(expected)), 0, 255).astype(np.uint8)
            got = resize_images(images, size)
            diff = np.abs(got.astype(int) - expected.astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.01, (size, diff.max(), diff.mean())


# --------------------------------------------------------------------------------------------
# strict / non-strict loading


@pytest.fixture(scope="module")
def horizon2_checkpoint(tmp_path_factory):
    """The fixture's weights under a config whose action_horizon was edited 4 → 2."""
    ckpt = load_checkpoint(FIXTURE)
    config = json.loads(json.dumps(ckpt.config))
    config["model"]["heads"]["action"]["kwargs"]["action_horizon"] = 2
    directory = tmp_path_factory.mktemp("octo_h2")
    save_octo(directory, 300000, ckpt.params, config, ckpt.example_batch, ckpt.dataset_statistics)
    return directory


def test_action_horizon_2_config_fails_strict_loading_with_explanation(horizon2_checkpoint):
    with pytest.raises(CheckpointMismatchError) as info:
        load_octo(horizon2_checkpoint)
    message = str(info.value)
    assert (
        "checkpoint 124 rows = time 32 + embedding 64 + action 7 × horizon 4; "
        "this config 110 = 32 + 64 + 7 × 2 → action_horizon changed 4 → 2"
    ) in message
    assert "heads_action/diffusion_model/reverse_network/Dense_0/kernel" in message
    assert "strict=False" in message


def test_non_strict_loads_everything_else_and_reports(horizon2_checkpoint):
    loaded = load_octo(horizon2_checkpoint, strict=False)
    report = loaded.report
    mismatched = {e.key for e in report.mismatched}
    prefix = "heads_action/diffusion_model/reverse_network/"
    assert mismatched == {
        prefix + "Dense_0/kernel",
        prefix + "Dense_1/kernel",
        prefix + "Dense_1/bias",
    }
    assert not report.missing and not report.unexpected
    assert len(report.loaded) == 126 - 3
    assert "action_horizon changed 4 → 2" in report.format()
    stored = load_checkpoint(FIXTURE).flat_params
    params = flatten_tree(loaded.params)
    for entry in report.loaded:
        np.testing.assert_array_equal(params[entry.key], stored[entry.key])
    assert params[prefix + "Dense_0/kernel"].shape == (110, 64)
    assert OctoJaxPolicy(loaded, None, None).spec.action_horizon == 2


# --------------------------------------------------------------------------------------------
# the adapter


def _standard_obs(batch: int, size: int = 96) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "image_primary": rng.integers(0, 256, (batch, 2, size, size, 3), dtype=np.uint8),
        "image_wrist": rng.integers(0, 256, (batch, 2, size, size, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(batch, 2, 8)).astype(np.float32),
        "timestep_pad_mask": np.array([[False, True]] * batch),
    }


def test_spec_comes_from_the_checkpoint(policy):
    spec = policy.spec
    assert (spec.window_size, spec.action_horizon, spec.action_dim) == (2, 4, 7)
    assert spec.needs_language
    assert policy.model_image_sizes == {"image_primary": (64, 64), "image_wrist": (32, 32)}


def test_act_returns_env_actions_with_libero_gripper(policy):
    tasks = {"language_instruction": ["open the top drawer"] * 3, "episode_seed": np.arange(3)}
    actions = policy.act(_standard_obs(3), tasks)
    assert actions.shape == (3, 4, 7)
    assert set(np.unique(actions[..., -1])) <= {-1.0, 1.0}
    assert np.isfinite(actions).all()


def test_an_episodes_actions_depend_on_its_seed_and_query_not_on_the_batch(policy):
    def act(rows, seeds, starts):
        obs = {k: v[rows] for k, v in _standard_obs(3).items()}
        tasks = {
            "language_instruction": ["open the top drawer"] * len(rows),
            "episode_seed": np.array(seeds),
            "episode_start": np.array(starts),
        }
        return policy.act(obs, tasks)

    policy.reset(3)
    alone = act([0], [7], [True])
    together = act([0, 1, 2], [7, 8, 9], [True, True, True])
    # same seed, same draws; XLA's batch-size-dependent float rounding stays below 1e-4
    np.testing.assert_allclose(together[0], alone[0], atol=1e-4)
    assert not np.allclose(together[1], together[0])  # another episode, other noise
    second = act([0], [7], [False])  # the episode's 2nd query continues its stream
    assert not np.allclose(second[0], alone[0])
    restarted = act([0], [7], [True])  # a restarted episode (fresh worker) starts over
    np.testing.assert_array_equal(restarted[0], alone[0])


def test_instructions_are_encoded_once_per_distinct_instruction(policy):
    calls = []
    encode = policy._encode

    def counting(params, ids, mask):
        calls.append(ids.shape[0])
        return encode(params, ids, mask)

    policy._encode = counting
    policy._language_cache.clear()
    try:
        texts = ["pick up the bowl", "open the drawer", "pick up the bowl"]
        for _ in range(3):
            policy.act(
                _standard_obs(3), {"language_instruction": texts, "episode_seed": np.arange(3)}
            )
    finally:
        policy._encode = encode
    assert calls == [2]


def test_missing_stats_key_lists_the_available_ones():
    with pytest.raises(ValueError, match="libero_object_no_noops, libero_spatial_no_noops"):
        make_octo_jax_policy(str(FIXTURE))
    with pytest.raises(ValueError, match="available: libero_object_no_noops"):
        make_octo_jax_policy(str(FIXTURE), stats="bridge_dataset")


def test_unknown_option_and_wrong_window_are_explained(policy):
    with pytest.raises(ValueError, match="no option"):
        make_octo_jax_policy(str(FIXTURE), stats=STATS, horizon="4")
    obs = _standard_obs(1)
    obs = {k: v[:, 1:] for k, v in obs.items()}
    with pytest.raises(ValueError, match="History\\(window=2\\)"):
        policy.act(obs, {"language_instruction": ["x"], "episode_seed": np.arange(1)})


@pytest.mark.sim
@pytest.mark.slow
def test_evalharness_run_end_to_end(tmp_path):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    command = [
        sys.executable, "-m", "evalharness.cli", "run",
        "--suite", "libero_spatial",
        "--policy", f"octo_jax:{FIXTURE}?stats={STATS}",
        "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "5",
        "--num-envs", "1", "--out", str(tmp_path / "run"), "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    rows = (tmp_path / "run" / "episodes.csv").read_text().splitlines()
    assert len(rows) == 2
    assert "octo_jax" in rows[1]
