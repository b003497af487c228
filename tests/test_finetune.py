"""Finetune, then evaluate: the driver, the octo_jax trainer, the CLI (issue 7).

One head_only finetune of the tiny Octo fixture (module fixture, ~40 steps) serves several
checks, since compiling the train step dominates the time on CPU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")

from evalharness.cli import main  # noqa: E402
from evalharness.data import DatasetError, open_dataset, write_tiny_libero_hdf5  # noqa: E402
from evalharness.data.tiny import write_tiny_rlds  # noqa: E402
from evalharness.finetune import (  # noqa: E402
    FinetuneConfig,
    FinetuneError,
    FinetuneOptions,
    Trainer,
    finetune,
    known_trainers,
)
from evalharness.policies.common.compat import flatten_tree  # noqa: E402
from evalharness.policies.octo_jax.loader import load_octo  # noqa: E402
from evalharness.policies.octo_jax.train import FROZEN_KEYS, frozen_mask  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "octo_tiny_lang"
POLICY = f"octo_jax:{FIXTURE}"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared fixtures not present")
STEPS = 40


@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_tiny_libero_hdf5(root / "tiny_demo.hdf5", num_demos=3, steps=12, image_size=32)


@pytest.fixture(scope="module")
def head_only(tmp_path_factory: pytest.TempPathFactory, tiny_hdf5: Path):
    """A head_only finetune, and the parameters it started from (all loaded: the fixture's)."""
    from evalharness.policies.octo.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("ft") / "ckpt"
    config = FinetuneConfig(
        policy=POLICY,
        data=tiny_hdf5,
        out_dir=out,
        options=FinetuneOptions(mode="head_only", steps=STEPS, batch_size=8, seed=0),
        save_every=25,
        progress=False,
    )
    before = load_checkpoint(FIXTURE).flat_params
    result = finetune(config)
    return config, result, before


def test_octo_jax_trainer_is_registered_and_meets_the_protocol(head_only):
    from evalharness.finetune import build_trainer

    assert "octo_jax" in known_trainers()
    trainer, _ = build_trainer(head_only[0])
    assert isinstance(trainer, Trainer)
    assert trainer.data.window_size == 2 and trainer.data.action_horizon == 4


def test_head_only_finetune_lowers_the_loss_on_the_tiny_data(head_only):
    _, result, _ = head_only
    losses = np.array(result.losses)
    assert len(losses) == STEPS
    first, last = losses[:10].mean(), losses[-10:].mean()
    assert last < 0.8 * first, (first, last)


def test_train_log_has_a_row_per_step_with_lr_and_grad_norm(head_only):
    _, result, _ = head_only
    with result.train_log.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert {"step", "loss", "learning_rate", "grad_norm"} <= set(rows[0])
    lr = [float(r["learning_rate"]) for r in rows]
    assert lr[0] == 0.0 and max(lr) == pytest.approx(3e-4, rel=1e-3)  # warmup, then cosine
    assert all(float(r["grad_norm"]) > 0 for r in rows)


def test_checkpoint_loads_strictly_with_statistics_spec_and_report_beside_it(head_only):
    config, result, _ = head_only
    out = result.out_dir
    loaded = load_octo(out)  # strict by default
    assert loaded.checkpoint.step == STEPS
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["25", "40"]
    stats = json.loads((out / "dataset_statistics.json").read_text())
    assert stats == open_dataset(config.data, "libero").statistics()
    spec = json.loads((out / "dataset_spec.json").read_text())
    assert spec["name"] == "libero" and spec["eval_image_transform"] == "none"
    report = json.loads((out / "compatibility_report.json").read_text())
    assert report["compatible"] and report["counts"]["loaded"] == 126
    assert (out / "tiny_t5" / "tokenizer.json").is_file()  # evaluation works offline


def test_head_only_leaves_the_transformer_bit_identical_and_moves_the_head(head_only):
    _, result, before = head_only
    after = flatten_tree(load_octo(result.out_dir).params)
    transformer = [k for k in before if k.startswith("octo_transformer/")]
    head = [k for k in before if k.startswith("heads_action/")]
    assert transformer and head
    for key in transformer:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    changed = [k for k in head if not np.array_equal(after[k], before[k])]
    assert len(changed) == len(head)


def test_frozen_patterns_follow_upstream_modes():
    params = {
        "octo_transformer": {
            "BlockTransformer_0": {"k": 0},
            "task_tokenizers_language": {"hf_model": {"w": 0}},
        },
        "heads_action": {"map_head": {"probe": 0, "MlpBlock_0": {"kernel": 0}}},
    }
    mask = flatten_tree(frozen_mask(params, FROZEN_KEYS["head_mlp_only"]))
    assert mask == {
        "octo_transformer/BlockTransformer_0/k": True,
        "octo_transformer/task_tokenizers_language/hf_model/w": True,
        "heads_action/map_head/probe": True,
        "heads_action/map_head/MlpBlock_0/kernel": False,
    }
    full = flatten_tree(frozen_mask(params, ("*hf_model*",)))
    assert [k for k, v in full.items() if v] == [
        "octo_transformer/task_tokenizers_language/hf_model/w"
    ]


def test_resume_continues_from_the_last_checkpoint_exactly(tmp_path, tiny_hdf5):
    def config(out: Path, steps: int, resume: bool = False) -> FinetuneConfig:
        return FinetuneConfig(
            policy=POLICY,
            data=tiny_hdf5,
            out_dir=out,
            options=FinetuneOptions(mode="head_only", steps=steps, batch_size=8, warmup_steps=2),
            save_every=3,
            resume=resume,
            progress=False,
        )

    straight = finetune(config(tmp_path / "a", 6))
    finetune(config(tmp_path / "b", 3))
    with pytest.raises(FinetuneError, match="--resume"):
        finetune(config(tmp_path / "b", 6))
    resumed = finetune(config(tmp_path / "b", 6, resume=True))
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-5)
    rows = list(csv.DictReader((tmp_path / "b" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_ten_dim_actions_finetune_with_a_fresh_head_the_report_names(tmp_path, capsys):
    data = write_tiny_rlds(tmp_path / "rlds", num_episodes=2, steps=8, image_size=16, action_dim=10)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": "libero_rlds", "name": "tiny10", "action_dim": 10}))
    code = main(
        [
            "finetune",
            "--policy", POLICY,
            "--data", str(data),
            "--dataset-spec", str(spec),
            "--mode", "full",
            "--steps", "3",
            "--batch-size", "4",
            "--out", str(tmp_path / "ckpt"),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().err
    assert "action_dim changed 7 → 10" in printed
    report = json.loads((tmp_path / "ckpt" / "compatibility_report.json").read_text())
    fresh = {e["key"] for e in report["entries"] if e["status"] == "shape_mismatch"}
    assert "heads_action/diffusion_model/reverse_network/Dense_0/kernel" in fresh
    loaded = load_octo(tmp_path / "ckpt")
    assert loaded.config.model.action_head.action_dim == 10


def test_object_dtype_field_fails_with_the_key_and_a_sample(tmp_path):
    import h5py

    path = write_tiny_libero_hdf5(tmp_path / "bad_demo.hdf5", num_demos=1, steps=3)
    with h5py.File(path, "a") as f:
        del f["data/demo_0/actions"]
        f["data/demo_0"].create_dataset(
            "actions", data=np.array(["a", "b", "c"], dtype=object), dtype=h5py.string_dtype()
        )
    config = FinetuneConfig(policy=POLICY, data=path, out_dir=tmp_path / "o", progress=False)
    with pytest.raises(DatasetError) as err:
        finetune(config)
    assert "'actions'" in str(err.value) and "object" in str(err.value) and "b'a'" in str(err.value)


def test_unknown_family_and_bad_options_are_explained(tmp_path, tiny_hdf5):
    with pytest.raises(FinetuneError, match="octo_jax"):
        finetune(FinetuneConfig(policy="nope:/x", data=tiny_hdf5, out_dir=tmp_path / "o"))
    with pytest.raises(FinetuneError, match="mode"):
        FinetuneOptions(mode="heads")
    with pytest.raises(FinetuneError, match="no option"):
        finetune(
            FinetuneConfig(policy=POLICY + "?colour=red", data=tiny_hdf5, out_dir=tmp_path / "p")
        )


@pytest.mark.sim
def test_finetune_then_eval_writes_run_results_and_links_the_train_log(tmp_path, tiny_hdf5):
    # Trained on LIBERO's raw (upside-down) frames: evaluation must rotate the env's frames.
    spec = tmp_path / "raw_spec.json"
    spec.write_text(json.dumps({"base": "libero", "name": "raw", "model_orientation": "raw"}))
    run_dir = tmp_path / "run"
    code = main(
        [
            "finetune-then-eval",
            "--policy", POLICY,
            "--data", str(tiny_hdf5),
            "--dataset-spec", str(spec),
            "--mode", "head_only",
            "--steps", "2",
            "--batch-size", "2",
            "--out", str(tmp_path / "ckpt"),
            "--suite", "libero_spatial",
            "--tasks", "0",
            "--episodes-per-task", "1",
            "--max-steps", "5",
            "--camera-size", "64",
            "--num-envs", "1",
            "--eval-out", str(run_dir),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    assert (run_dir / "episodes.csv").is_file() and (run_dir / "summary.csv").is_file()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["policy"] == f"octo_jax:{tmp_path / 'ckpt'}"
    assert info["finetune"]["train_log"] == "train_log.csv"
    assert info["finetune"]["checkpoint"] == str((tmp_path / "ckpt").resolve())
    assert info["policy_spec"]["image_orientation"] == "raw"
    from evalharness.compare import find_train_log

    log = find_train_log(run_dir, info)
    assert log is not None and len(log.read_text().splitlines()) == 3
