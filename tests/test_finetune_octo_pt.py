"""The octo_pt (PyTorch) finetune trainer (issue 7): the tiny Octo fixture loaded into torch.

One head_only finetune through the driver (module fixture, 40 steps, batch 8, seed 0) serves
most checks; no JAX and no LIBERO environment needed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("h5py")

from evalharness.cli import main  # noqa: E402
from evalharness.data import open_dataset, write_tiny_libero_hdf5  # noqa: E402
from evalharness.finetune import (  # noqa: E402
    FinetuneConfig,
    FinetuneError,
    FinetuneOptions,
    Trainer,
    build_trainer,
    finetune,
    known_trainers,
)
from evalharness.policies.common.finetune import warmup_cosine  # noqa: E402
from evalharness.policies.octo_pt.checkpoint import load_octo_pt  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "octo_tiny_lang"
POLICY = f"octo_pt:{FIXTURE}"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared fixtures not present")
STEPS = 40


@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_tiny_libero_hdf5(root / "tiny_demo.hdf5", num_demos=3, steps=12, image_size=32)


def _config(policy: str, data: Path, out: Path, mode: str = "head_only", **kw) -> FinetuneConfig:
    steps = kw.pop("steps", STEPS)
    return FinetuneConfig(
        policy=policy,
        data=data,
        out_dir=out,
        options=FinetuneOptions(mode=mode, steps=steps, batch_size=8, seed=0, **kw),
        save_every=25,
        progress=False,
    )


@pytest.fixture(scope="module")
def head_only(tmp_path_factory: pytest.TempPathFactory, tiny_hdf5: Path):
    out = tmp_path_factory.mktemp("ft") / "ckpt"
    config = _config(POLICY, tiny_hdf5, out)
    return config, finetune(config)


def _fixed_batches(trainer, dataset, n: int = 4) -> list:
    request = trainer.data
    stream = dataset.batches(
        request.window_size,
        request.action_horizon,
        8,
        seed=123,
        normalization=request.normalization,
        action_dim=request.action_dim,
    )
    return [next(stream) for _ in range(n)]


def test_octo_pt_trainer_is_registered_and_meets_the_protocol(head_only):
    assert "octo_pt" in known_trainers()
    trainer, _ = build_trainer(head_only[0])
    assert isinstance(trainer, Trainer) and trainer.family == "octo_pt"
    assert trainer.data.window_size == 2 and trainer.data.action_horizon == 4
    assert trainer.data.action_dim == 7 and trainer.changes == []


def test_head_only_finetune_lowers_the_loss_on_the_tiny_data(head_only, tmp_path):
    config, result = head_only
    losses = np.array(result.losses)
    assert len(losses) == STEPS and np.isfinite(losses).all()
    first, last = losses[:10].mean(), losses[-10:].mean()
    assert last < 0.9 * first, (first, last)
    # The same fixed batches and diffusion draws, before and after: a clear drop.
    before, dataset = build_trainer(config)
    after, _ = build_trainer(_config(f"octo_pt:{result.out_dir}", config.data, tmp_path / "unused"))
    batches = _fixed_batches(before, dataset)
    loss_before = np.mean([before.eval_loss(b, seed=i) for i, b in enumerate(batches)])
    loss_after = np.mean([after.eval_loss(b, seed=i) for i, b in enumerate(batches)])
    assert loss_after < 0.85 * loss_before, (loss_before, loss_after)


def test_train_log_has_warmup_cosine_lr_and_grad_norms(head_only):
    _, result = head_only
    rows = list(csv.DictReader(result.train_log.open()))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    lr = [float(r["learning_rate"]) for r in rows]
    assert lr[0] == 0.0 and max(lr) == pytest.approx(3e-4, rel=1e-3)
    assert all(float(r["grad_norm"]) > 0 for r in rows)
    # optax.warmup_cosine_decay_schedule(0, 1, 2, 10, 0)
    assert [round(warmup_cosine(s, 1.0, 2, 10), 6) for s in (0, 1, 2, 6, 10, 11)] == [
        0.0,
        0.5,
        1.0,
        0.5,
        0.0,
        0.0,
    ]


def test_checkpoint_is_the_torch_layout_and_loads_strictly(head_only):
    from evalharness.policies import load_policy

    config, result = head_only
    out = result.out_dir
    assert result.policy == f"octo_pt:{out}"
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["25", "40"]
    assert (out / "40" / "model.safetensors").is_file()
    loaded = load_octo_pt(out)  # strict by default
    assert loaded.format == "torch" and loaded.step == STEPS and loaded.report.compatible
    stats = json.loads((out / "dataset_statistics.json").read_text())
    assert stats == open_dataset(config.data, "libero").statistics()
    report = json.loads((out / "compatibility_report.json").read_text())
    assert report["compatible"] and report["counts"]["loaded"] == 126
    assert (out / "tiny_t5" / "tokenizer.json").is_file()  # evaluation works offline
    policy = load_policy(result.policy)
    assert policy.spec.name == "octo_pt" and policy.spec.action_horizon == 4


def test_head_only_leaves_the_transformer_bit_identical_and_moves_the_head(head_only):
    _, result = head_only
    before = load_octo_pt(FIXTURE).model.state_dict()
    after = load_octo_pt(result.out_dir).model.state_dict()
    assert set(before) == set(after)
    transformer = [k for k in before if k.startswith("octo_transformer.")]
    head = [k for k in before if k.startswith("heads.action.")]
    assert transformer and head
    for key in transformer:
        assert torch.equal(after[key], before[key]), key
    changed = [k for k in head if not torch.equal(after[k], before[k])]
    assert changed == head


def test_modes_freeze_upstreams_patterns_t5_always(tiny_hdf5, tmp_path):
    frozen = {}
    for mode in ("full", "head_only", "head_mlp_only"):
        trainer, _ = build_trainer(_config(POLICY, tiny_hdf5, tmp_path / mode, mode))
        frozen[mode] = set(trainer.frozen_keys())
        params = dict(trainer.model.named_parameters())
        assert all(not params[k].requires_grad for k in frozen[mode])
    t5 = {k for k in frozen["head_only"] if ".t5." in k}
    assert t5 and frozen["full"] == t5
    assert frozen["head_only"] == {k for k in params if k.startswith("octo_transformer.")}
    assert frozen["head_only"] <= frozen["head_mlp_only"]
    assert not any(k.startswith("heads.") and "map_head" not in k for k in frozen["head_mlp_only"])


def test_resume_continues_exactly(tmp_path, tiny_hdf5):
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
    resumed = finetune(config(tmp_path / "b", 6, resume=True))
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-5)


def test_ten_dim_actions_finetune_with_a_fresh_head_the_report_names(tmp_path, capsys):
    from evalharness.data.tiny import write_tiny_rlds

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
    assert "heads.action.diffusion_model.input_proj.weight" in fresh
    assert not any(k.startswith("octo_transformer.") for k in fresh)
    loaded = load_octo_pt(tmp_path / "ckpt")
    assert loaded.config.model.action_head.action_dim == 10


def test_unknown_options_are_explained(tmp_path, tiny_hdf5):
    with pytest.raises(FinetuneError, match="no option"):
        finetune(
            FinetuneConfig(policy=POLICY + "?colour=red", data=tiny_hdf5, out_dir=tmp_path / "p")
        )
