"""The framework-free Octo pieces both families share: config, text, inputs, explanations."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from evalharness.policies.common.normalization import ArrayStatistics
from evalharness.policies.octo.config import (
    ConfigError,
    ContinuousHeadConfig,
    DiffusionHeadConfig,
    ImageTokenizerConfig,
    OctoConfig,
    parse_model_config,
)
from evalharness.policies.octo.explain import octo_explainer
from evalharness.policies.octo.inputs import (
    InputError,
    OctoInputSpec,
    postprocess_actions,
    prepare_observation,
    prepare_tasks,
)
from evalharness.policies.octo.text import (
    TextTokenizer,
    TokenizerNotFoundError,
    resolve_tokenizer,
    t5_config_from_params,
)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FIXTURE = FIXTURES / "octo_tiny_lang"

pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared fixtures not present")


@pytest.fixture(scope="module")
def raw_config() -> dict:
    return json.loads((FIXTURE / "config.json").read_text())


@pytest.fixture(scope="module")
def config(raw_config) -> OctoConfig:
    return OctoConfig.from_checkpoint_config(raw_config)


# --------------------------------------------------------------------------------------------
# config


def test_fixture_config_parses_with_upstream_defaults_filled(config):
    model = config.model
    assert [n for n, _ in model.observation_tokenizers] == ["primary", "wrist"]
    primary = model.observation_tokenizer("primary")
    assert isinstance(primary, ImageTokenizerConfig)
    assert primary.encoder.kind == "SmallStem16" and primary.encoder.patch_size == 16
    assert primary.encoder.features == (32, 32, 64, 64) and primary.encoder.num_features == 64
    assert primary.task_stack_keys == ("image_primary",)
    head = model.action_head
    assert isinstance(head, DiffusionHeadConfig)
    assert (head.action_horizon, head.action_dim, head.hidden_dim) == (4, 7, 64)
    # upstream class defaults for what the config leaves out
    assert (head.time_dim, head.num_blocks, head.diffusion_steps, head.max_action) == (
        32,
        3,
        20,
        5.0,
    )
    assert head.use_layer_norm and head.score_input_dim(64) == 124
    assert model.repeat_task_tokens and model.use_correct_attention
    assert config.window_size == 2
    assert config.text_processor.tokenizer_name == "tiny_t5"
    assert config.text_processor.max_length == 16


def test_v1_config_without_use_correct_attention_defaults_to_false(raw_config):
    model = copy.deepcopy(raw_config["model"])
    del model["use_correct_attention"]
    kwargs = model["heads"]["action"]["kwargs"]
    kwargs["pred_horizon"] = kwargs.pop("action_horizon")
    parsed = parse_model_config(model)
    assert parsed.use_correct_attention is False
    assert parsed.action_head.action_horizon == 4


def test_l1_head_uses_map_pooling_by_default(raw_config):
    model = copy.deepcopy(raw_config["model"])
    model["heads"]["action"] = {
        "module": "octo.model.components.action_heads",
        "name": "L1ActionHead",
        "args": [],
        "kwargs": {"readout_key": "readout_action", "action_horizon": 50, "action_dim": 14},
    }
    head = parse_model_config(model).action_head
    assert isinstance(head, ContinuousHeadConfig)
    assert head.use_map and head.loss_type == "l1" and head.kind == "L1ActionHead"


def test_bad_values_name_the_key_and_value(raw_config):
    model = copy.deepcopy(raw_config["model"])
    model["heads"]["action"]["kwargs"]["action_horizon"] = "four"
    with pytest.raises(ConfigError, match=r"heads\.action.*action_horizon='four'.*integer"):
        parse_model_config(model)
    model = copy.deepcopy(raw_config["model"])
    model["heads"]["action"]["kwargs"]["horizon"] = 4
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['horizon'\].*accepts"):
        parse_model_config(model)
    model = copy.deepcopy(raw_config["model"])
    model["observation_tokenizers"]["primary"]["kwargs"]["encoder"]["name"] = "ResNet26FILM"
    with pytest.raises(ConfigError, match="'ResNet26FILM' is not supported"):
        parse_model_config(model)


def test_image_token_count_follows_the_encoder(config):
    encoder = config.model.observation_tokenizer("primary").encoder
    assert encoder.num_tokens(64, 64) == 16
    assert encoder.num_tokens(256, 256) == 256
    assert encoder.num_tokens(128, 128) == 64


# --------------------------------------------------------------------------------------------
# text


def test_tokenizer_name_resolves_to_the_sibling_folder_and_matches_upstream_ids(config):
    folder = resolve_tokenizer("tiny_t5", FIXTURE, allow_download=False)
    assert folder == FIXTURES / "tiny_t5"
    tokenizer = TextTokenizer(folder, config.text_processor)
    ref = np.load(FIXTURE / "reference.npz")
    ids = tokenizer.encode(list(ref["task_texts"]))
    np.testing.assert_array_equal(ids["input_ids"], ref["task/language_instruction/input_ids"])
    np.testing.assert_array_equal(
        ids["attention_mask"], ref["task/language_instruction/attention_mask"]
    )
    ref_t5 = np.load(FIXTURES / "tiny_t5" / "reference_t5.npz")
    ids = tokenizer.encode(list(ref_t5["texts"]))
    np.testing.assert_array_equal(ids["input_ids"], ref_t5["input_ids"])


def test_long_instructions_are_truncated_keeping_the_end_of_sequence_token(config):
    tokenizer = TextTokenizer(FIXTURES / "tiny_t5", config.text_processor)
    ids = tokenizer.encode(["pick up the black bowl " * 10])
    assert ids["input_ids"].shape == (1, 16)
    assert ids["input_ids"][0, -1] == 1 and ids["attention_mask"].all()


def test_unresolvable_tokenizer_says_what_and_how(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match=r"'t5-nowhere'.*\?tokenizer="):
        resolve_tokenizer("t5-nowhere", tmp_path, allow_download=False)
    with pytest.raises(TokenizerNotFoundError, match=r"has no tokenizer\.json"):
        resolve_tokenizer("t5-base", tmp_path, override=tmp_path)
    assert (
        resolve_tokenizer("t5-base", tmp_path, override=FIXTURES / "tiny_t5")
        == FIXTURES / "tiny_t5"
    )


def test_t5_shape_is_read_from_the_checkpoint_weights():
    from evalharness.policies.octo.checkpoint import load_checkpoint

    t5 = t5_config_from_params(load_checkpoint(FIXTURE).flat_params)
    expected = json.loads((FIXTURES / "tiny_t5" / "config.json").read_text())
    assert (t5.d_model, t5.d_kv, t5.num_heads, t5.d_ff, t5.num_layers, t5.vocab_size) == (
        expected["d_model"],
        expected["d_kv"],
        expected["num_heads"],
        expected["d_ff"],
        expected["num_layers"],
        expected["vocab_size"],
    )
    assert not t5.gated and t5.activation == "relu"


# --------------------------------------------------------------------------------------------
# inputs


@pytest.fixture(scope="module")
def spec() -> OctoInputSpec:
    from evalharness.policies.octo.checkpoint import load_checkpoint

    return OctoInputSpec.from_example_batch(load_checkpoint(FIXTURE).example_batch)


def test_input_spec_is_read_from_the_example_batch(spec):
    assert spec.window_size == 2
    assert spec.obs_images == {"image_primary": (64, 64), "image_wrist": (32, 32)}
    assert spec.task_images == {"image_primary": (64, 64), "image_wrist": (32, 32)}
    assert spec.language_length == 16 and spec.lowdim == {}


def test_observation_is_resized_and_a_missing_camera_is_masked(spec):
    obs = {
        "image_primary": np.full((3, 2, 128, 128, 3), 200, dtype=np.uint8),
        "timestep_pad_mask": np.array([[False, True]] * 3),
    }
    out = prepare_observation(obs, spec)
    assert out["image_primary"].shape == (3, 2, 64, 64, 3)
    assert (out["image_primary"] == 200).all()  # a flat image stays flat through lanczos3
    assert out["image_wrist"].shape == (3, 2, 32, 32, 3) and not out["image_wrist"].any()
    assert out["pad_mask_dict"]["image_primary"].all()
    assert not out["pad_mask_dict"]["image_wrist"].any()
    np.testing.assert_array_equal(out["timestep_pad_mask"], obs["timestep_pad_mask"])


def test_wrong_window_is_explained(spec):
    obs = {"image_primary": np.zeros((1, 3, 64, 64, 3), np.uint8)}
    with pytest.raises(InputError, match=r"window of 3 steps.*takes 2.*History\(window=2\)"):
        prepare_observation(obs, spec)


def test_tasks_have_zero_goal_images_and_valid_language(spec):
    language = {
        "input_ids": np.ones((2, 16), np.int64),
        "attention_mask": np.ones((2, 16), np.int64),
    }
    task = prepare_tasks(2, spec, language)
    assert task["image_primary"].shape == (2, 64, 64, 3) and not task["image_primary"].any()
    assert not task["pad_mask_dict"]["image_primary"].any()
    assert task["pad_mask_dict"]["language_instruction"].all()
    with pytest.raises(InputError, match="trained on 16"):
        prepare_tasks(2, spec, {k: v[:, :8] for k, v in language.items()})


def test_actions_are_unnormalized_with_mask_and_gripper_converted_to_libero():
    stats = ArrayStatistics.from_dict(
        {
            "mean": [1.0, 0.0],
            "std": [2.0, 1.0],
            "p01": [-1.0, 0.0],
            "p99": [3.0, 1.0],
            "mask": [True, False],
        },
        "test",
    )
    actions = np.array([[[0.5, 0.9], [-1.0, 0.1]]])  # gripper: 0.9 open, 0.1 close (Octo)
    normal = postprocess_actions(actions, stats, "normal")
    np.testing.assert_allclose(normal[..., 0], [[2.0, -1.0]])
    np.testing.assert_array_equal(normal[..., 1], [[-1.0, 1.0]])  # LIBERO: -1 open, +1 close
    bounds = postprocess_actions(actions, stats, "bounds", gripper=None)
    np.testing.assert_allclose(bounds[..., 0], [[2.0, -1.0]])
    np.testing.assert_allclose(bounds[..., 1], [[0.9, 0.1]])


# --------------------------------------------------------------------------------------------
# explanations


def test_edited_action_horizon_is_explained_in_plain_words(raw_config, spec):
    edited = copy.deepcopy(raw_config)
    edited["model"]["heads"]["action"]["kwargs"]["action_horizon"] = 2
    explain = octo_explainer(OctoConfig.from_checkpoint_config(edited).model, spec)
    key = "heads_action/diffusion_model/reverse_network/"
    assert explain(key + "Dense_0/kernel", (124, 64), (110, 64)) == (
        "checkpoint 124 rows = time 32 + embedding 64 + action 7 × horizon 4; "
        "this config 110 = 32 + 64 + 7 × 2 → action_horizon changed 4 → 2"
    )
    assert "action_horizon changed 4 → 2" in explain(key + "Dense_1/kernel", (64, 28), (64, 14))
    assert "action_horizon changed 4 → 2" in explain(key + "Dense_1/bias", (28,), (14,))


def test_octo_small_numbers_from_the_issue_are_explained(raw_config):
    small = copy.deepcopy(raw_config)
    small["model"]["token_embedding_size"] = 384
    small["model"]["heads"]["action"]["kwargs"].update(action_horizon=2, hidden_dim=256)
    explain = octo_explainer(OctoConfig.from_checkpoint_config(small).model)
    text = explain(
        "heads_action/diffusion_model/reverse_network/Dense_0/kernel", (444, 256), (430, 256)
    )
    assert text == (
        "checkpoint 444 rows = time 32 + embedding 384 + action 7 × horizon 4; "
        "this config 430 = 32 + 384 + 7 × 2 → action_horizon changed 4 → 2"
    )


def test_image_size_goal_stacking_and_layer_changes_are_explained(config, spec):
    explain = octo_explainer(config.model, spec)
    text = explain("octo_transformer/obs_primary_pos_embedding", (1, 10, 256, 64), (1, 10, 16, 64))
    assert (
        "256 obs_primary tokens" in text
        and "image_primary" in text
        and "image size changed" in text
    )
    text = explain(
        "octo_transformer/observation_tokenizers_primary/SmallStem16_0/StdConv_0/kernel",
        (3, 3, 3, 32),
        (3, 3, 6, 32),
    )
    assert "task_stack_keys" in text
    text = explain(
        "octo_transformer/BlockTransformer_0/Transformer_0/encoderblock_5/LayerNorm_0/scale",
        (64,),
        None,
    )
    assert "more transformer layers" in text
