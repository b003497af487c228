"""octo_pt: the torch Octo reproduces upstream's JAX Octo, loads and saves checkpoints, acts.

Fixtures (``../shared/fixtures``): ``octo_tiny_lang`` is an upstream-written Octo checkpoint
with ``reference.npz`` (exact inputs and upstream outputs); ``tiny_t5`` its T5 encoder in Flax
and transformers-torch form with ``reference_t5.npz``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from evalharness.policies.common.compat import (  # noqa: E402
    CheckpointMismatchError,
    unflatten_tree,
)
from evalharness.policies.octo.checkpoint import load_checkpoint  # noqa: E402
from evalharness.policies.octo.config import OctoConfig  # noqa: E402
from evalharness.policies.octo.explain import explain_leaf  # noqa: E402
from evalharness.policies.octo.text import t5_config_from_params  # noqa: E402
from evalharness.policies.octo_pt.checkpoint import (  # noqa: E402
    LoadedOcto,
    detect_format,
    load_octo_pt,
    save_torch_checkpoint,
)
from evalharness.policies.octo_pt.t5 import T5Encoder  # noqa: E402
from evalharness.policies.octo_pt.transformer import GroupLayout, attention_rule_mask  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
OCTO = FIXTURES / "octo_tiny_lang"
TINY_T5 = FIXTURES / "tiny_t5"
STATS = "libero_spatial_no_noops"
needs_fixture = pytest.mark.skipif(
    not (OCTO / "reference.npz").is_file(), reason="shared fixtures not available"
)
pytestmark = needs_fixture


def _tensors(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tensors(v) for k, v in tree.items()}
    return torch.as_tensor(np.asarray(tree))


def _max_abs(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(OCTO / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def inputs(ref: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    tree = unflatten_tree({k: v for k, v in ref.items() if k.startswith(("observation/", "task/"))})
    return tree["observation"], tree["task"]


@pytest.fixture(scope="module")
def loaded() -> LoadedOcto:
    return load_octo_pt(OCTO)


@pytest.fixture(scope="module")
def outputs(loaded: LoadedOcto, inputs: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    obs, task = _tensors(inputs[0]), _tensors(inputs[1])
    with torch.inference_mode():
        return dict(loaded.model(obs, task, obs["timestep_pad_mask"]))


# -- T5 ----------------------------------------------------------------------------------------


def test_t5_encoder_reproduces_transformers_torch_and_flax_outputs() -> None:
    from safetensors.torch import load_file

    ckpt = load_checkpoint(OCTO)
    config = t5_config_from_params(ckpt.flat_params)
    encoder = T5Encoder(config).eval()
    encoder.load_state_dict_compat(load_file(str(TINY_T5 / "model.safetensors")))
    with np.load(TINY_T5 / "reference_t5.npz") as r:
        ids, mask = torch.as_tensor(r["input_ids"]), torch.as_tensor(r["attention_mask"])
        with torch.inference_mode():
            out = encoder(ids, mask).numpy()
        assert _max_abs(out, r["last_hidden_state_torch"]) <= 1e-5
        assert _max_abs(out, r["last_hidden_state_flax"]) <= 1e-5


def test_t5_weights_come_from_the_octo_checkpoint_and_match_the_torch_export(
    loaded: LoadedOcto,
) -> None:
    from safetensors.torch import load_file

    exported = load_file(str(TINY_T5 / "model.safetensors"))
    t5 = loaded.model.octo_transformer.task_tokenizers["language"].t5
    for key, value in t5.state_dict().items():
        assert torch.equal(value, exported[key]), key


# -- JAX checkpoint → torch --------------------------------------------------------------------


def test_jax_checkpoint_loads_without_jax_and_every_leaf_is_accounted_for(
    loaded: LoadedOcto,
) -> None:
    report = loaded.report
    ckpt = load_checkpoint(OCTO)
    assert loaded.format == "jax" and loaded.step == 300000
    assert report.compatible and report.counts()["loaded"] == len(ckpt.flat_params) == 126
    # every JAX leaf used once, every torch parameter filled
    assert sorted(e.source_key for e in report.entries) == sorted(ckpt.flat_params)
    assert sorted(e.key for e in report.entries) == sorted(loaded.model.state_dict())


def test_jax_layouts_are_transposed_into_torch_layouts(loaded: LoadedOcto) -> None:
    flat = load_checkpoint(OCTO).flat_params
    state = loaded.model.state_dict()
    blk = "octo_transformer/BlockTransformer_0/Transformer_0/encoderblock_0"
    q = flat[f"{blk}/MultiHeadDotProductAttention_0/query/kernel"]  # (E, H, Dh)
    np.testing.assert_array_equal(
        state["octo_transformer.transformer.blocks.0.attention.query.weight"].numpy(),
        q.reshape(q.shape[0], -1).T,
    )
    out = flat[f"{blk}/MultiHeadDotProductAttention_0/out/kernel"]  # (H, Dh, E)
    np.testing.assert_array_equal(
        state["octo_transformer.transformer.blocks.0.attention.out.weight"].numpy(),
        out.reshape(-1, out.shape[-1]).T,
    )
    conv = flat["octo_transformer/observation_tokenizers_primary/SmallStem16_0/StdConv_0/kernel"]
    np.testing.assert_array_equal(
        state["octo_transformer.observation_tokenizers.primary.encoder.convs.0.weight"].numpy(),
        conv.transpose(3, 2, 0, 1),
    )
    np.testing.assert_array_equal(
        state["octo_transformer.transformer.blocks.1.norm2.weight"].numpy(),
        flat["octo_transformer/BlockTransformer_0/Transformer_0/encoderblock_1/LayerNorm_1/scale"],
    )
    np.testing.assert_array_equal(
        state["octo_transformer.pos_embeddings.obs_primary"].numpy(),
        flat["octo_transformer/obs_primary_pos_embedding"][0],
    )


def test_tokenizer_outputs_match_upstream(
    loaded: LoadedOcto, inputs: tuple[dict[str, Any], dict[str, Any]], ref: dict[str, np.ndarray]
) -> None:
    obs, task = _tensors(inputs[0]), _tensors(inputs[1])
    with torch.inference_mode():
        raw = loaded.model.octo_transformer.tokenize(obs, task)
    assert sorted(raw) == ["obs_primary", "obs_wrist", "task_language"]
    for name, group in raw.items():
        assert _max_abs(group.tokens, ref[f"tokenizer_outputs/{name}/tokens"]) <= 1e-4, name
        np.testing.assert_array_equal(group.mask.numpy(), ref[f"tokenizer_outputs/{name}/mask"])


def test_readout_embeddings_match_upstream_within_1e_4(
    outputs: dict[str, Any], ref: dict[str, np.ndarray]
) -> None:
    diff = _max_abs(outputs["readout_action"].tokens, ref["transformer/readout_action/tokens"])
    assert diff <= 1e-4


def test_every_transformer_output_group_and_mask_matches_upstream(
    outputs: dict[str, Any], ref: dict[str, np.ndarray]
) -> None:
    groups = sorted({k.split("/")[1] for k in ref if k.startswith("transformer/")})
    assert sorted(outputs) == groups
    for name in groups:
        assert _max_abs(outputs[name].tokens, ref[f"transformer/{name}/tokens"]) <= 1e-4, name
        np.testing.assert_array_equal(
            outputs[name].mask.numpy(), ref[f"transformer/{name}/mask"].astype(bool)
        )


def test_score_network_call_matches_upstream(
    loaded: LoadedOcto, outputs: dict[str, Any], ref: dict[str, np.ndarray]
) -> None:
    head = loaded.model.heads["action"]
    with torch.inference_mode():
        eps = head(
            outputs,
            torch.as_tensor(ref["diffusion_eps/time"]),
            torch.as_tensor(ref["diffusion_eps/noisy_actions"]),
        )
    assert _max_abs(eps, ref["diffusion_eps/output"]) <= 1e-4
    for name in ("betas", "alphas", "alpha_hats"):
        assert _max_abs(getattr(head, name), ref[f"diffusion_sampling/{name}"]) <= 1e-6


def test_denoising_with_upstream_noise_reproduces_upstream_actions_within_1e_3(
    loaded: LoadedOcto, outputs: dict[str, Any], ref: dict[str, np.ndarray]
) -> None:
    noise = (
        torch.as_tensor(ref["diffusion_sampling/init_noise"]),
        torch.as_tensor(ref["diffusion_sampling/z_per_iteration"]),
    )
    trajectory: list[Any] = []
    with torch.inference_mode():
        actions = loaded.model.heads["action"].predict_action(
            outputs, embodiment_action_dim=7, noise=noise, trajectory=trajectory
        )
    steps = ref["diffusion_sampling/x_after_each_iteration"]
    assert len(trajectory) == len(steps) == 20
    for i, x in enumerate(trajectory):
        assert _max_abs(x, steps[i]) <= 1e-3, f"iteration {i}"
    assert _max_abs(actions, steps[-1][:, -1].reshape(2, 4, 7)) <= 1e-3
    assert _max_abs(actions, ref["actions_normalized"]) <= 1e-3


def test_sample_actions_unnormalized_like_upstream(
    loaded: LoadedOcto, inputs: tuple[dict[str, Any], dict[str, Any]], ref: dict[str, np.ndarray]
) -> None:
    from evalharness.policies.common.normalization import select_statistics
    from evalharness.policies.octo.inputs import postprocess_actions

    obs, task = _tensors(inputs[0]), _tensors(inputs[1])
    noise = (
        torch.as_tensor(ref["diffusion_sampling/init_noise"]),
        torch.as_tensor(ref["diffusion_sampling/z_per_iteration"]),
    )
    with torch.inference_mode():
        actions = loaded.model.sample_actions(obs, task, embodiment_action_dim=7, noise=noise)
    stats = select_statistics(loaded.dataset_statistics, STATS).action
    for kind in ("normal", "bounds"):
        out = postprocess_actions(actions.numpy(), stats, kind, gripper=None)
        assert _max_abs(out, ref[f"actions_unnormalized_{kind}"]) <= 1e-3, kind


def test_fully_padded_attention_rows_stay_finite(
    loaded: LoadedOcto, inputs: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    obs, task = _tensors(inputs[0]), _tensors(inputs[1])
    task["pad_mask_dict"]["language_instruction"] = torch.zeros(2, dtype=torch.bool)
    obs["timestep_pad_mask"] = torch.zeros(2, 2, dtype=torch.bool)
    with torch.inference_mode():
        out = loaded.model(obs, task, obs["timestep_pad_mask"])
    for name, group in out.items():
        assert torch.isfinite(group.tokens).all(), name


def test_attention_rules_follow_use_correct_attention() -> None:
    obs_rules = (("task_*", "causal"), ("obs_*", "causal"))
    prefix = [GroupLayout("task_language", 1, (("task_*", "causal"),), True)]
    steps = [
        GroupLayout("obs_primary", 2, obs_rules, False),
        GroupLayout("readout_action", 1, (*obs_rules, ("readout_action", "causal")), False),
    ]
    fixed = attention_rule_mask(prefix, steps, horizon=2, use_correct_attention=True)
    # rows = query. token 0 task; 1,2 obs@0; 3 readout@0; 4,5 obs@1; 6 readout@1
    assert fixed[0].tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert fixed[1].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert fixed[3].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert fixed[4].tolist() == [1, 1, 1, 0, 1, 1, 0]
    assert fixed[6].tolist() == [1, 1, 1, 1, 1, 1, 1]
    released = attention_rule_mask(prefix, steps, horizon=2, use_correct_attention=False)
    # v1.0 models: readout tokens leak into the obs rows (the off-by-one upstream fixed in 1.5)
    assert released[4].tolist() == [1, 1, 1, 1, 1, 1, 1]


# -- mismatches, skip, non_strict --------------------------------------------------------------


HORIZON_2 = {"heads": {"action": {"kwargs": {"action_horizon": 2}}}}
DENSE_0 = "heads_action/diffusion_model/reverse_network/Dense_0/kernel"


def test_different_action_horizon_is_refused_with_the_jax_loaders_explanation() -> None:
    with pytest.raises(CheckpointMismatchError) as info:
        load_octo_pt(OCTO, config_overrides=HORIZON_2)
    report = info.value.report
    config = OctoConfig.from_checkpoint_config(
        {**load_checkpoint(OCTO).config, "model": _override_model(HORIZON_2)}
    )
    # what the JAX family's explainer says for the Flax leaf and Flax shapes
    expected = explain_leaf(DENSE_0, (124, 64), (110, 64), config.model)
    assert expected is not None and "action_horizon changed 4 → 2" in expected
    entry = next(e for e in report.entries if e.source_key == DENSE_0)
    assert entry.status == "shape_mismatch" and entry.explanation == expected
    assert expected in str(info.value)
    assert {e.source_key for e in report.mismatched} == {
        DENSE_0,
        "heads_action/diffusion_model/reverse_network/Dense_1/kernel",
        "heads_action/diffusion_model/reverse_network/Dense_1/bias",
    }


def _override_model(overrides: dict[str, Any]) -> dict[str, Any]:
    model = json.loads(json.dumps(load_checkpoint(OCTO).config["model"]))
    model["heads"]["action"]["kwargs"].update(overrides["heads"]["action"]["kwargs"])
    return model


def test_non_strict_copies_the_overlapping_slice_and_says_so() -> None:
    flat = load_checkpoint(OCTO).flat_params
    loaded = load_octo_pt(OCTO, config_overrides=HORIZON_2, non_strict=r"heads_action")
    partial = {e.source_key: e for e in loaded.report.partial}
    assert set(partial) == {
        DENSE_0,
        "heads_action/diffusion_model/reverse_network/Dense_1/kernel",
        "heads_action/diffusion_model/reverse_network/Dense_1/bias",
    }
    assert "overlapping slice copied" in partial[DENSE_0].explanation
    assert "action_horizon changed 4 → 2" in partial[DENSE_0].explanation
    net = loaded.model.heads["action"].diffusion_model
    np.testing.assert_array_equal(net.input_proj.weight.detach().numpy(), flat[DENSE_0][:110].T)
    bias = flat["heads_action/diffusion_model/reverse_network/Dense_1/bias"]
    np.testing.assert_array_equal(net.output_proj.bias.detach().numpy(), bias[:14])


def test_skip_leaves_parameters_fresh_and_lists_them() -> None:
    loaded = load_octo_pt(OCTO, skip=r"hf_model")
    skipped = loaded.report.skipped
    assert len(skipped) == 19  # the T5 subtree, by its Flax path
    assert all(e.key.startswith("octo_transformer.task_tokenizers.language.t5.") for e in skipped)
    assert loaded.report.compatible and loaded.report.counts()["loaded"] == 107


# -- torch checkpoint format -------------------------------------------------------------------


def test_torch_checkpoint_save_then_load_is_bit_exact(
    loaded: LoadedOcto, inputs: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path
) -> None:
    directory = save_torch_checkpoint(
        tmp_path / "ckpt",
        loaded.model,
        loaded.raw_config,
        loaded.example_batch,
        loaded.dataset_statistics,
        t5_config=loaded.extra["t5"],
    )
    assert detect_format(directory) == "torch"
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json",
        "dataset_statistics.json",
        "example_batch.msgpack",
        "model.safetensors",
    ]
    again = load_octo_pt(directory)
    assert again.format == "torch" and again.report.compatible
    before, after = loaded.model.state_dict(), again.model.state_dict()
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    obs, task = _tensors(inputs[0]), _tensors(inputs[1])
    with torch.inference_mode():
        a = loaded.model(obs, task, obs["timestep_pad_mask"])["readout_action"].tokens
        b = again.model(obs, task, obs["timestep_pad_mask"])["readout_action"].tokens
    assert torch.equal(a, b)
    assert again.dataset_statistics == loaded.dataset_statistics


def test_torch_checkpoint_steps_and_overrides_are_explained(
    loaded: LoadedOcto, tmp_path: Path
) -> None:
    directory = save_torch_checkpoint(
        tmp_path / "ckpt",
        loaded.model,
        loaded.raw_config,
        loaded.example_batch,
        loaded.dataset_statistics,
        step=500,
        t5_config=loaded.extra["t5"],
    )
    assert load_octo_pt(directory).step == 500
    with pytest.raises(CheckpointMismatchError, match="action_horizon changed 4 → 2"):
        load_octo_pt(directory, config_overrides=HORIZON_2)


# -- the policy --------------------------------------------------------------------------------


def _standard_batch(batch: int = 2) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    rng = np.random.default_rng(0)
    obs = {
        "image_primary": rng.integers(0, 256, (batch, 2, 128, 128, 3), dtype=np.uint8),
        "image_wrist": rng.integers(0, 256, (batch, 2, 128, 128, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(batch, 2, 8)).astype(np.float32),
        "timestep_pad_mask": np.array([[False, True]] * batch),
    }
    tasks = {
        "language_instruction": ["put the bowl on the plate"] * batch,
        "episode_seed": np.arange(batch, dtype=np.int64) + 7,
    }
    return obs, tasks


@pytest.fixture(scope="module")
def policy() -> Any:
    from evalharness.policies.registry import load_policy

    return load_policy(f"octo_pt:{OCTO}?stats={STATS}")


def test_policy_spec_and_actions_in_libero_space(policy: Any) -> None:
    spec = policy.spec
    assert (spec.name, spec.window_size, spec.action_horizon, spec.action_dim) == (
        "octo_pt", 2, 4, 7,
    )  # fmt: skip
    assert spec.needs_language
    obs, tasks = _standard_batch()
    actions = policy.act(obs, tasks)
    assert actions.shape == (2, 4, 7) and np.isfinite(actions).all()
    assert set(np.unique(actions[..., -1])) <= {-1.0, 0.0, 1.0}  # LIBERO gripper commands


def test_policy_noise_is_per_episode_seed(policy: Any) -> None:
    obs, tasks = _standard_batch(3)
    policy.reset(3)
    first = policy.act(obs, tasks)
    policy.reset(3)
    assert np.array_equal(first, policy.act(obs, tasks))
    policy.reset(1)
    alone = policy.act({k: v[2:] for k, v in obs.items()}, {
        "language_instruction": tasks["language_instruction"][2:],
        "episode_seed": tasks["episode_seed"][2:],
    })  # fmt: skip
    assert _max_abs(alone, first[2:]) <= 1e-3  # the same episode sampled alone


def test_policy_preprocessing_matches_the_reference_inputs(
    policy: Any, ref: dict[str, Any]
) -> None:
    obs, _ = _standard_batch()
    observation, task = policy.model_inputs(obs, ["put the bowl on the plate"] * 2)
    assert observation["image_primary"].shape == ref["observation/image_primary"].shape
    assert observation["image_wrist"].shape == ref["observation/image_wrist"].shape
    np.testing.assert_array_equal(
        task["language_instruction"]["input_ids"][0], ref["task/language_instruction/input_ids"][0]
    )
    assert not task["pad_mask_dict"]["image_primary"].any()
    assert task["pad_mask_dict"]["language_instruction"].all()


def test_policy_options_are_validated() -> None:
    from evalharness.policies.registry import load_policy

    with pytest.raises(ValueError, match="has no option"):
        load_policy(f"octo_pt:{OCTO}?stats={STATS}&temperature=2")
    with pytest.raises(ValueError, match="choose one with"):
        load_policy(f"octo_pt:{OCTO}")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        load_policy("octo_pt")


def test_octo_pt_path_never_imports_jax_flax_or_transformers() -> None:
    code = (
        "import sys\n"
        "from evalharness.policies.registry import load_policy\n"
        f"p = load_policy({f'octo_pt:{OCTO}?stats={STATS}'!r})\n"
        "import numpy as np\n"
        "obs = {'image_primary': np.zeros((1, 2, 64, 64, 3), np.uint8),\n"
        "       'image_wrist': np.zeros((1, 2, 64, 64, 3), np.uint8),\n"
        "       'timestep_pad_mask': np.ones((1, 2), bool)}\n"
        "p.act(obs, {'language_instruction': ['pick up the bowl'], 'episode_seed': [0]})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'transformers'))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


# -- the same model in JAX (runs where both extras are installed; CI installs both) ---------------


@pytest.fixture(scope="module")
def jax_loaded() -> Any:
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    from evalharness.policies.octo_jax.loader import load_octo

    return load_octo(OCTO)


def _jax_readouts(jax_loaded: Any, obs: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    import jax.numpy as jnp

    from evalharness.policies.octo_jax.model import OctoModule

    return dict(
        jax_loaded.module.apply(
            {"params": jax_loaded.params},
            obs,
            task,
            jnp.asarray(obs["timestep_pad_mask"]),
            method=OctoModule.run_transformer,
        )
    )


def test_octo_jax_and_octo_pt_give_the_same_transformer_outputs(
    jax_loaded: Any, outputs: dict[str, Any], inputs: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    theirs = _jax_readouts(jax_loaded, *inputs)
    assert sorted(theirs) == sorted(outputs)
    assert _max_abs(theirs["readout_action"].tokens, outputs["readout_action"].tokens) <= 1e-4
    for name, group in theirs.items():
        assert _max_abs(group.tokens, outputs[name].tokens) <= 1e-4, name


def test_both_families_read_the_same_preprocessed_observations(
    jax_loaded: Any, loaded: LoadedOcto, policy: Any
) -> None:
    obs, tasks = _standard_batch(3)
    observation, task = policy.model_inputs(obs, tasks["language_instruction"])
    theirs = _jax_readouts(jax_loaded, observation, task)["readout_action"].tokens
    o, t = _tensors(observation), _tensors(task)
    with torch.inference_mode():
        ours = loaded.model(o, t, o["timestep_pad_mask"])["readout_action"].tokens
    assert _max_abs(theirs, ours) <= 1e-4


def test_jax_loader_and_torch_loader_explain_a_changed_horizon_identically(tmp_path: Path) -> None:
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    from evalharness.policies.octo_jax.loader import load_octo

    # the fixture with action_horizon edited to 2 in config.json (what users do, octo issue #97)
    edited = tmp_path / "edited"
    edited.mkdir()
    config = load_checkpoint(OCTO).config
    config = {**config, "model": _override_model(HORIZON_2)}
    (edited / "config.json").write_text(json.dumps(config))
    for name in ("example_batch.msgpack", "dataset_statistics.json", "300000"):
        (edited / name).symlink_to(OCTO / name)
    with pytest.raises(CheckpointMismatchError) as jax_error:
        load_octo(edited)
    with pytest.raises(CheckpointMismatchError) as torch_error:
        load_octo_pt(edited)
    jax_why = {e.key: e.explanation for e in jax_error.value.report.mismatched}
    torch_why = {e.source_key: e.explanation for e in torch_error.value.report.mismatched}
    assert DENSE_0 in jax_why and "action_horizon changed 4 → 2" in jax_why[DENSE_0]
    assert torch_why == jax_why
    assert jax_error.value.report.explanations == torch_error.value.report.explanations


def test_cached_language_embeddings_equal_the_token_id_path(
    policy: Any, loaded: LoadedOcto
) -> None:
    obs, tasks = _standard_batch()
    observation, task = policy.model_inputs(obs, tasks["language_instruction"])
    o, t = _tensors(observation), _tensors(task)
    with torch.inference_mode():
        by_ids = policy.model(o, t, o["timestep_pad_mask"])["readout_action"].tokens
        t["language_instruction"] = policy.encode_instructions(tasks["language_instruction"])
        cached = policy.model(o, t, o["timestep_pad_mask"])["readout_action"].tokens
    assert torch.equal(by_ids, cached)


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.slow
def test_evalharness_run_with_octo_pt_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "evalharness.cli", "run", "--suite", "libero_spatial",
           "--policy", f"octo_pt:{OCTO}?stats={STATS}", "--tasks", "0",
           "--episodes-per-task", "1", "--max-steps", "5", "--num-envs", "1",
           "--camera-size", "64", "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    episodes = (out / "episodes.csv").read_text().splitlines()
    assert len(episodes) == 2 and "octo_pt:" in episodes[1]
    run = json.loads((out / "run.json").read_text())
    assert run["policy_spec"]["window_size"] == 2 and run["policy_spec"]["action_horizon"] == 4
