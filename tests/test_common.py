"""What every policy family shares: the compatibility report, statistics, grippers, resizing,
and the framework-free Octo checkpoint reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evalharness.policies.common.compat import (
    CheckpointError,
    CheckpointMismatchError,
    check_finite,
    compare_shapes,
    flatten_tree,
    mark_partial,
    merge_params,
    unflatten_tree,
)
from evalharness.policies.common.finetune import FinetuneError
from evalharness.policies.common.finetune import option_bool as finetune_bool
from evalharness.policies.common.finetune import option_int as finetune_int
from evalharness.policies.common.images import resize_images
from evalharness.policies.common.normalization import (
    ArrayStatistics,
    Gripper,
    StatisticsError,
    convert_gripper,
    evaluation_suite,
    gripper_to_env,
    select_statistics,
)
from evalharness.policies.common.options import check_options, option_bool, option_int
from evalharness.policies.octo.checkpoint import (
    load_checkpoint,
    msgpack_restore,
    msgpack_serialize,
    save_checkpoint,
)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
OCTO_TINY = FIXTURES / "octo_tiny_lang"


# ---------------------------------------------------------------- compatibility report


def _explain_rows(key, ckpt, model):
    if ckpt and model and key.endswith("Dense_0/kernel"):
        return f"rows {ckpt[0]} → {model[0]}"
    return None


def test_report_sorts_every_leaf_into_one_status_and_explains_known_mismatches():
    ckpt = {"a/kernel": (4, 3), "b/kernel": (2,), "Dense_0/kernel": (444, 256), "old": (1,)}
    model = {"a/kernel": (4, 3), "b/kernel": (3,), "Dense_0/kernel": (430, 256), "new": (5,)}
    report = compare_shapes(ckpt, model, explain=_explain_rows, source="ckpt", target="cfg")
    assert [e.key for e in report.loaded] == ["a/kernel"]
    assert {e.key for e in report.mismatched} == {"b/kernel", "Dense_0/kernel"}
    assert [e.key for e in report.missing] == ["new"]
    assert [e.key for e in report.unexpected] == ["old"]
    assert not report.compatible
    assert report.explanations == ["rows 444 → 430"]
    text = report.format()
    assert "Dense_0/kernel: checkpoint (444, 256), model (430, 256) — rows 444 → 430" in text
    with pytest.raises(CheckpointMismatchError, match="strict=False") as info:
        report.check(strict=True)
    assert info.value.report is report
    report.check(strict=False)  # non-strict never raises


def test_report_maps_names_and_lists_skipped_leaves_with_their_reason():
    ckpt = {"jax/kernel": (3, 4), "t5/embedding": (10, 2)}
    model = {"torch.weight": (3, 4)}
    report = compare_shapes(
        ckpt,
        model,
        key_map={"torch.weight": "jax/kernel"},
        skip={"t5/embedding": "loaded from the tokenizer folder"},
    )
    assert report.compatible
    (loaded,) = report.loaded
    assert (loaded.key, loaded.source_key) == ("torch.weight", "jax/kernel")
    (skipped,) = report.skipped
    assert skipped.explanation == "loaded from the tokenizer folder"
    assert report.to_dict()["counts"] == {
        "loaded": 1,
        "missing": 0,
        "unexpected": 0,
        "shape_mismatch": 0,
        "partial": 0,
        "skipped": 1,
    }


def test_non_strict_merge_keeps_fresh_leaves_and_partial_copies_the_overlap():
    pretrained = {"w": np.arange(6.0).reshape(3, 2), "same": np.ones(2), "gone": np.zeros(1)}
    fresh = {"w": np.full((2, 2), -1.0), "same": np.zeros(2), "new": np.full(3, 7.0)}
    report = compare_shapes(pretrained, fresh)
    merged = merge_params(pretrained, fresh, report)
    np.testing.assert_array_equal(merged["same"], np.ones(2))
    np.testing.assert_array_equal(merged["w"], np.full((2, 2), -1.0))  # mismatch stays fresh
    np.testing.assert_array_equal(merged["new"], np.full(3, 7.0))
    partial = mark_partial(report)
    assert [e.key for e in partial.partial] == ["w"]
    merged = merge_params(pretrained, fresh, partial)
    np.testing.assert_array_equal(merged["w"], [[0.0, 1.0], [2.0, 3.0]])


def test_flatten_and_unflatten_are_inverse():
    tree = {"a": {"b": {"c": 1}, "d": 2}, "e": 3}
    assert flatten_tree(tree) == {"a/b/c": 1, "a/d": 2, "e": 3}
    assert unflatten_tree(flatten_tree(tree)) == tree


def test_nan_weights_are_refused_naming_the_tensor():
    with pytest.raises(CheckpointError, match=r"'head/bias' \(3,\) holds 1 NaN"):
        check_finite({"ok": np.ones(2), "head/bias": np.array([1.0, np.nan, 2.0])}, "ckpt")


# ---------------------------------------------------------------- statistics and grippers

STATS = {
    "mean": [0.0, 1.0, 0.5],
    "std": [2.0, 0.5, 1.0],
    "min": [-3.0, 0.0, 0.0],
    "max": [3.0, 2.0, 1.0],
    "p01": [-2.0, 0.2, 0.0],
    "p99": [2.0, 1.8, 1.0],
    "mask": [True, True, False],
}


def test_unnormalize_matches_upstream_formulas_and_leaves_masked_dims_alone():
    stats = ArrayStatistics.from_dict(STATS, "stats")
    a = np.array([[0.5, -1.0, 0.9]])
    np.testing.assert_allclose(stats.unnormalize(a, "normal"), [[1.0, 0.5, 0.9]])
    np.testing.assert_allclose(stats.unnormalize(a, "bounds"), [[1.0, 0.2, 0.9]])
    # normalize ∘ unnormalize is the identity (up to upstream's 1e-8) inside the bounds
    x = np.array([[1.0, 1.5, 0.3]])
    back = stats.unnormalize(stats.normalize(x, "normal"), "normal")
    np.testing.assert_allclose(back, x, atol=1e-7)


def test_unnormalize_drops_padded_action_dims_beyond_the_statistics():
    stats = ArrayStatistics.from_dict(STATS, "stats")
    assert stats.unnormalize(np.zeros((2, 4, 5)), "normal").shape == (2, 4, 3)
    with pytest.raises(StatisticsError, match="model outputs 2 action dims"):
        stats.unnormalize(np.zeros((1, 2)), "normal")


def test_statistics_selection_lists_available_datasets():
    stats = {"bridge": {"action": STATS}, "libero": {"action": STATS, "proprio": STATS}}
    chosen = select_statistics(stats, "libero")
    assert chosen.key == "libero" and chosen.proprio is not None
    with pytest.raises(
        StatisticsError, match=r"choose one with \?stats=KEY, one of: bridge, libero"
    ):
        select_statistics(stats)
    with pytest.raises(
        StatisticsError, match="no statistics for dataset 'nope'; available: bridge"
    ):
        select_statistics(stats, "nope")
    single = select_statistics({"action": STATS})
    assert single.key is None and single.proprio is None


def test_statistics_default_to_the_dataset_named_after_the_evaluated_suite():
    stats = {
        "libero_object_no_noops": {"action": STATS},
        "libero_spatial_no_noops": {"action": STATS},
    }
    with evaluation_suite("libero_spatial"):
        assert select_statistics(stats).key == "libero_spatial_no_noops"
        assert select_statistics(stats, "libero_object_no_noops").key == "libero_object_no_noops"
    with (
        evaluation_suite("libero_goal"),
        pytest.raises(StatisticsError, match="none is named after the suite 'libero_goal'"),
    ):
        select_statistics(stats)
    with pytest.raises(StatisticsError, match=r"\?stats=KEY"):
        select_statistics(stats)  # outside an evaluation there is no default


def test_malformed_statistics_name_the_entry():
    with pytest.raises(StatisticsError, match=r"x\[d\]\.action\.std has 2 entries but mean has 3"):
        select_statistics({"d": {"action": {**STATS, "std": [1, 2]}}}, "d", source="x")


def test_gripper_conventions_octo_open_is_libero_minus_one():
    octo = np.array([1.0, 0.9, 0.1, 0.0])
    np.testing.assert_array_equal(convert_gripper(octo, "octo", "libero"), [-1, -1, 1, 1])
    libero = np.array([-1.0, 1.0])
    np.testing.assert_array_equal(convert_gripper(libero, Gripper.LIBERO, Gripper.OCTO), [1, 0])
    actions = np.array([[[0.1, 0.2, 0.3, 0, 0, 0, 1.0]]])
    out = gripper_to_env(actions, "octo")
    np.testing.assert_array_equal(out[..., :6], actions[..., :6])
    assert out[0, 0, 6] == -1.0


# ---------------------------------------------------------------- images


def test_resize_keeps_images_at_their_size_and_constant_images_constant():
    image = np.full((1, 2, 128, 128, 3), 77, dtype=np.uint8)
    assert resize_images(image, (128, 128)) is image
    out = resize_images(image, (256, 256))
    assert out.shape == (1, 2, 256, 256, 3) and out.dtype == np.uint8
    assert np.all(out == 77)


def test_resize_matches_jax_lanczos3_antialias_within_one_level():
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(0)
    for src, dst in [((128, 128), (256, 256)), ((128, 128), (64, 64)), ((96, 80), (224, 128))]:
        images = rng.integers(0, 256, size=(2, *src, 3), dtype=np.uint8)
        ref = jax.image.resize(
            np.asarray(images, np.float32), (2, *dst, 3), "lanczos3", antialias=True
        )
        ref = np.clip(np.round(np.asarray(ref)), 0, 255).astype(np.uint8)
        diff = np.abs(resize_images(images, dst).astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


# ---------------------------------------------------------------- Octo checkpoint reader


def test_octo_checkpoint_reads_the_upstream_fixture_without_flax():
    ckpt = load_checkpoint(OCTO_TINY)
    assert ckpt.step == 300000
    params = ckpt.flat_params
    assert len(params) == 126
    assert sum(v.size for v in params.values()) == 367_372
    listed = {}
    for line in (OCTO_TINY / "param_tree.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        path, shape, dtype = line.split("\t")
        listed[path] = (shape, dtype)
    assert {k: (str(v.shape), str(v.dtype)) for k, v in params.items()} == listed
    assert ckpt.example_batch["observation"]["image_primary"].shape == (1, 2, 64, 64, 3)
    assert ckpt.config["model"]["heads"]["action"]["kwargs"]["action_horizon"] == 4


def test_msgpack_codec_round_trips_and_matches_flax_bytes():
    tree = {"a": {"k": np.arange(6, dtype=np.float32).reshape(2, 3)}, "m": np.array([True])}
    data = msgpack_serialize(tree)
    back = msgpack_restore(data)
    np.testing.assert_array_equal(back["a"]["k"], tree["a"]["k"])
    assert back["m"].dtype == np.bool_
    flax = pytest.importorskip("flax.serialization")
    assert flax.msgpack_serialize(tree) == data


def test_saved_checkpoint_loads_back_bit_exact(tmp_path):
    ckpt = load_checkpoint(OCTO_TINY)
    out = save_checkpoint(
        tmp_path / "copy", 7, ckpt.params, ckpt.config, ckpt.example_batch, ckpt.dataset_statistics
    )
    again = load_checkpoint(out)
    assert again.step == 7
    for key, value in ckpt.flat_params.items():
        assert np.array_equal(again.flat_params[key], value)
        assert again.flat_params[key].dtype == value.dtype


def _copy_fixture(tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(OCTO_TINY, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.chmod(0o755)
    return target


def test_bad_octo_checkpoints_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    ckpt = _copy_fixture(tmp_path)
    weights = ckpt / "300000" / "default" / "checkpoint"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(
        CheckpointError, match=r"checkpoint: not a readable flax msgpack.*truncated"
    ):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"has no step 5; available steps: \[300000\]"):
        load_checkpoint(ckpt, step=5)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json is missing"):
        load_checkpoint(ckpt)


def test_config_may_only_name_known_upstream_modules(tmp_path):
    ckpt = _copy_fixture(tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["heads"]["action"]["module"] = "os"
    config["model"]["heads"]["action"]["name"] = "system"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model.heads.action names module os.system"):
        load_checkpoint(ckpt)


def test_octo_v1_config_and_batch_names_are_shimmed(tmp_path):
    ckpt = _copy_fixture(tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    kwargs = config["model"]["heads"]["action"]["kwargs"]
    kwargs["pred_horizon"] = kwargs.pop("action_horizon")
    (ckpt / "config.json").write_text(json.dumps(config))
    batch = msgpack_restore((ckpt / "example_batch.msgpack").read_bytes())
    batch["tasks"] = batch.pop("task")
    batch["observation"]["pad_mask"] = batch["observation"].pop("timestep_pad_mask")
    (ckpt / "example_batch.msgpack").write_bytes(msgpack_serialize(batch))
    loaded = load_checkpoint(ckpt)
    assert loaded.config["model"]["heads"]["action"]["kwargs"]["action_horizon"] == 4
    assert "task" in loaded.example_batch
    assert loaded.example_batch["observation"]["timestep_pad_mask"].shape == (1, 2)


_SPELLINGS = [("1", True), ("TRUE", True), (" yes ", True), ("on", True)]
_SPELLINGS += [("0", False), ("False", False), ("no", False), ("off", False)]


@pytest.mark.parametrize(("text", "expected"), _SPELLINGS)
def test_bool_option_accepts_the_usual_spellings(text, expected):
    assert option_bool({"strict": text}, "strict", not expected, "policy 'x'") is expected


def test_options_fall_back_to_the_default_when_absent():
    assert option_bool({}, "strict", True, "policy 'x'") is True
    assert option_int({}, "seed", 7, "policy 'x'") == 7


def test_option_errors_name_owner_key_value_and_what_was_expected():
    with pytest.raises(
        ValueError, match=r"^policy 'x': option strict='maybe' must be true or false$"
    ):
        option_bool({"strict": "maybe"}, "strict", True, "policy 'x'")
    with pytest.raises(ValueError, match=r"^policy 'x': option seed='1\.5' must be an integer$"):
        option_int({"seed": "1.5"}, "seed", 0, "policy 'x'")
    with pytest.raises(ValueError, match=r"^policy 'x': option seed=0 must be >= 1$"):
        option_int({"seed": "0"}, "seed", 5, "policy 'x'", minimum=1)
    assert option_int({"seed": "-3"}, "seed", 0, "policy 'x'") == -3


def test_finetune_options_raise_finetune_errors_naming_the_family():
    assert finetune_int({"steps": "12"}, "steps", 1, "diffusion") == 12
    assert finetune_bool({"ema": "off"}, "ema", True, "diffusion") is False
    with pytest.raises(FinetuneError, match=r"^diffusion finetune: option steps=0 must be >= 1$"):
        finetune_int({"steps": "0"}, "steps", 1, "diffusion")
    with pytest.raises(FinetuneError, match=r"^finetune: option ema='x' must be true or false$"):
        finetune_bool({"ema": "x"}, "ema")


def test_unknown_options_are_refused_listing_the_known_ones():
    check_options({"seed": "1"}, ("seed", "strict"), "policy 'x'")
    with pytest.raises(ValueError) as info:
        check_options({"sede": "1", "b": "2"}, ("seed", "strict"), "policy 'x'")
    assert str(info.value) == "policy 'x' has no option(s) ['b', 'sede']; known: seed, strict"
