"""Data-parallel finetuning (issue 21): torch DDP on gloo ranks and JAX over host devices take
the single-process steps; rank 0 alone writes; a train_state resumes under another rank count.

The equivalence tests train the tiny fixtures for 10 steps in head_only mode: per step, the
loss of 2 ranks with B/2 samples each equals one process with B to 1e-5 relative, and so do
the weights. (In full mode some weights drift apart by ~1e-4 within 10 steps — octo_jax's loss
too: Adam turns rounding-level differences in near-zero gradients, which any other split of
the batch sums differently, into full-size updates.)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evalharness.data import write_tiny_libero_hdf5
from evalharness.finetune import FinetuneConfig, FinetuneError, FinetuneOptions
from evalharness.policies.common.distributed import JaxMesh, Shard, launch_command

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
OCTO = FIXTURES / "octo_tiny_lang"
STEPS = 10


def test_a_shard_takes_its_rows_of_the_global_batch():
    rows = np.arange(8)
    assert Shard(0, 2).take(rows).tolist() == [0, 1, 2, 3]
    assert Shard(1, 2).take(rows).tolist() == [4, 5, 6, 7]
    assert Shard(1, 2).take(np.arange(12).reshape(2, 6), dim=1).tolist() == [[3, 4, 5], [9, 10, 11]]
    assert Shard().take(rows) is rows
    with pytest.raises(FinetuneError, match="batch size 6 is not divisible by the 4 processes"):
        Shard(0, 4).rows(6)


def test_nproc_relaunches_the_same_command_under_torchrun():
    argv = ["finetune", "--policy", "octo_pt:ckpt", "--nproc", "2", "--steps", "5"]
    assert launch_command(2, argv)[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "evalharness", "finetune", "--policy", "octo_pt:ckpt", "--steps", "5",
    ]  # fmt: skip
    assert launch_command(3, ["finetune", "--nproc=3"])[-1] == "finetune"


def test_finetune_then_eval_nproc_finetunes_on_torchrun_ranks_then_runs_once_here(
    monkeypatch, tmp_path
):
    from evalharness import cli, finetune
    from evalharness.finetune import FinetuneResult

    argv = ["finetune-then-eval", "--policy", "octo_pt:ckpt", "--data", "demos", "--out",
            str(tmp_path / "ft"), "--suite", "libero_object", "--tasks", "0", "--nproc", "2"]  # fmt: skip
    args = cli.build_parser().parse_args(argv)
    assert (args.nproc, args.finetune_only, args.tasks) == (2, False, "0")
    assert cli.build_parser().parse_args(argv[:-2]).nproc == 1
    done = FinetuneResult(tmp_path / "ft", f"octo_pt:{tmp_path / 'ft'}", 5, tmp_path, None, [0.5])
    calls: list = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    monkeypatch.setattr(finetune, "finished_finetune", lambda out: done)
    monkeypatch.setattr(cli, "cmd_run", lambda a: calls.append(("run", a.policy, a.tasks)) or 0)
    monkeypatch.setattr(
        finetune, "record_finetune_in_run", lambda run_dir, r: calls.append(("linked", r.step))
    )
    assert cli.main(argv) == 0
    # the ranks finetune only; the launcher evaluates the finished checkpoint, once
    assert calls == [
        launch_command(2, [*argv[:-2], "--finetune-only"]),
        ("run", done.policy, "0"),
        ("linked", 5),
    ]


def test_a_finished_finetune_reads_back_from_its_files_and_an_unfinished_one_is_refused(tmp_path):
    from evalharness.finetune import FINETUNE_JSON, TRAIN_LOG, finished_finetune

    (tmp_path / TRAIN_LOG).write_text(
        "step,loss,learning_rate,grad_norm,time_s\n1,0.5,0,0,0\n2,0.25,0,0,0\n"
    )
    info = {"status": "running", "step": 1}
    (tmp_path / FINETUNE_JSON).write_text(json.dumps(info))
    with pytest.raises(
        FinetuneError, match=r"finetune.json does not record a finished .*'running'"
    ):
        finished_finetune(tmp_path)
    info.update(status="finished", step=2, policy_string=f"octo_pt:{tmp_path}")
    (tmp_path / FINETUNE_JSON).write_text(json.dumps(info))
    result = finished_finetune(tmp_path)
    assert (result.policy, result.step, result.losses) == (f"octo_pt:{tmp_path}", 2, [0.5, 0.25])
    assert result.train_log == tmp_path / TRAIN_LOG


def test_jax_refuses_a_batch_its_devices_do_not_divide():
    jax = pytest.importorskip("jax")
    device = jax.devices()[0]
    assert JaxMesh.create(3, devices=[device]) is None  # one device: no mesh
    with pytest.raises(FinetuneError, match=r"batch size 3 is not divisible by the 2 JAX devices"):
        JaxMesh.create(3, devices=[device, device])


# -- torch: 2 gloo ranks == 1 process ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_tiny_libero_hdf5(root / "tiny_demo.hdf5", num_demos=3, steps=12, image_size=32)


def _config(policy: str, data: Path, out: Path, steps: int = STEPS, **options) -> FinetuneConfig:
    return FinetuneConfig(
        policy=policy,
        data=data,
        out_dir=out,
        dataset_spec=options.pop("dataset_spec", "libero"),
        options=FinetuneOptions(
            **{"mode": "head_only", **options}, steps=steps, batch_size=8, seed=0, warmup_steps=2
        ),
        progress=False,
    )


def _tensors(state: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a torch trainer's state_dict(), flattened to dotted names."""
    import io

    import torch

    out: dict[str, np.ndarray] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = value.detach().cpu().numpy()
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)

    walk("", torch.load(io.BytesIO(state), map_location="cpu", weights_only=False))
    return out


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


DIFFUSION = FIXTURES / "robomimic_dp_tiny" / "model.pth"
#: case -> (policy string, dataset spec, finetune mode, fixture, family options)
TORCH_CASES = {
    "octo_pt": (f"octo_pt:{OCTO}", "libero", "head_only", OCTO, {}),
    # The random crops feed the encoder's conditioning: the loss shows their draws match.
    "diffusion": (f"diffusion:{DIFFUSION}", "libero_robomimic", "head_only", DIFFUSION, {}),
    # The gripper head's parameters are averaged across ranks like the others.
    "diffusion_gripper_head": (
        f"diffusion:{DIFFUSION}",
        "libero_robomimic",
        "head_only",
        DIFFUSION,
        {"gripper_head": "true"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TORCH_CASES))
def test_two_gloo_ranks_take_the_steps_of_one_process(family, tiny_hdf5, tmp_path):
    pytest.importorskip("torch")
    from ddp_ranks import run_ranks

    policy, spec, mode, fixture, family_options = TORCH_CASES[family]
    if not fixture.exists():
        pytest.skip("shared fixtures not present")
    config = _config(
        policy,
        tiny_hdf5,
        tmp_path / "ckpt",
        dataset_spec=spec,
        mode=mode,
        family_options=family_options,
    )
    (single,) = run_ranks(config, STEPS, 1, tmp_path / "one")
    ranks = run_ranks(config, STEPS, 2, tmp_path / "two")
    want = np.asarray(single["losses"])
    for rank in ranks:
        got = np.asarray(rank["losses"])
        assert got.shape == (STEPS,)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)
    # Parameters, optimizer state (and the diffusion EMA) agree bit for bit across ranks ...
    first, second = _tensors(ranks[0]["state"]), _tensors(ranks[1]["state"])
    assert sorted(first) == sorted(second)
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value, err_msg=name)
    # ... and the weights (and EMA) equal the single process's to rounding. (Adam's moments
    # are left out: for parameters whose gradients are rounding noise they are noise too.)
    reference = _tensors(single["state"])
    assert sorted(reference) == sorted(first)
    weights = [k for k, v in reference.items() if v.dtype.kind == "f" and ".exp_avg" not in k]
    worst = max((_relative(first[k], reference[k]), k) for k in weights)
    assert worst[0] <= 1e-5, worst


@pytest.mark.slow
def test_finetune_nproc_writes_once_loads_strictly_and_resumes_under_another_count(
    tiny_hdf5, tmp_path
):
    """`finetune --nproc 2` for 3 steps, then --resume to 6 in one process == 1 process."""
    pytest.importorskip("torch")
    if not OCTO.is_dir():
        pytest.skip("shared fixtures not present")
    from evalharness.finetune import finetune
    from evalharness.policies.octo_pt.checkpoint import load_octo_pt

    policy = f"octo_pt:{OCTO}"
    single = finetune(_config(policy, tiny_hdf5, tmp_path / "one", steps=3))
    after_three = load_octo_pt(single.out_dir, strict=True).model.state_dict()
    single_resumed = finetune(
        dataclasses.replace(_config(policy, tiny_hdf5, tmp_path / "one", steps=6), resume=True)
    )

    out = tmp_path / "two"
    done = subprocess.run(
        [
            sys.executable, "-m", "evalharness", "finetune",
            "--policy", policy, "--data", str(tiny_hdf5), "--dataset-spec", "libero",
            "--mode", "head_only", "--steps", "3", "--batch-size", "8", "--seed", "0",
            "--warmup-steps", "2", "--out", str(out), "--no-progress", "--nproc", "2",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # Rank 0 alone wrote: one header, one row per step, one report.
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert done.stderr.count("compatibility report") == 1
    assert json.loads((out / "finetune.json").read_text())["processes"] == 2
    np.testing.assert_allclose(
        [float(r["loss"]) for r in rows], single.losses[:3], rtol=2e-5
    )  # the log keeps 6 significant digits
    ddp = load_octo_pt(out, strict=True).model.state_dict()
    assert sorted(ddp) == sorted(after_three)
    for name, value in after_three.items():
        assert _relative(ddp[name].numpy(), value.numpy()) <= 1e-5, name

    resumed = finetune(dataclasses.replace(_config(policy, tiny_hdf5, out, steps=6), resume=True))
    np.testing.assert_allclose(resumed.losses, single_resumed.losses, rtol=1e-5)


# -- JAX: two host devices == one --------------------------------------------------------------

_JAX_SCRIPT = """
import json, sys
from pathlib import Path
import jax
from evalharness.finetune import FinetuneConfig, FinetuneOptions, training_batches, build_trainer
config = FinetuneConfig(
    policy=sys.argv[1], data=sys.argv[2], out_dir=Path(sys.argv[3]),
    options=FinetuneOptions(mode="head_only", steps=10, batch_size=8, seed=0, warmup_steps=2),
    progress=False,
)
trainer, dataset = build_trainer(config)
batches = training_batches(dataset, trainer.data, config.options, 0)
losses = [trainer.train_step(next(batches))["loss"] for _ in range(10)]
leaves = jax.tree.leaves(trainer.state)
replicated = all(
    leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == len(jax.devices())
    for leaf in leaves
)
print(json.dumps({"devices": len(jax.devices()), "mesh": trainer.mesh is not None,
                  "losses": losses, "replicated": replicated}))
"""


@pytest.mark.slow
def test_octo_jax_on_two_host_devices_takes_the_steps_of_one(tiny_hdf5, tmp_path):
    pytest.importorskip("jax")
    if not OCTO.is_dir():
        pytest.skip("shared fixtures not present")

    def run(devices: int) -> dict:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        done = subprocess.run(
            [sys.executable, "-c", _JAX_SCRIPT, f"octo_jax:{OCTO}", str(tiny_hdf5), str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    one, two = run(1), run(2)
    assert (one["devices"], one["mesh"], two["devices"], two["mesh"]) == (1, False, 2, True)
    assert two["replicated"] is True
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=0)
