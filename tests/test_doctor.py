"""`evalharness doctor`: mismatches between checkpoint, dataset and env, each with its fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("jax")

from evalharness.cli import main
from evalharness.data import write_tiny_libero_hdf5
from evalharness.doctor import doctor

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "octo_tiny_lang"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared fixtures not present")


def _horizon_changed(tmp_path: Path, horizon: int = 2) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["heads"]["action"]["kwargs"]["action_horizon"] = horizon
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def test_doctor_on_a_horizon_changed_config_prints_the_row_arithmetic(tmp_path, capsys):
    ckpt = _horizon_changed(tmp_path)
    code = main(["doctor", "--policy", f"octo_jax:{ckpt}"])
    out = capsys.readouterr().out
    assert code == 1
    # The tiny model's version of octo-small's "444 = 32 + 384 + 7 × 4".
    assert (
        "checkpoint 124 rows = time 32 + embedding 64 + action 7 × horizon 4; "
        "this config 110 = 32 + 64 + 7 × 2 → action_horizon changed 4 → 2"
    ) in out
    assert "fix: undo the head edit" in out


def test_doctor_reports_data_and_env_mismatches_with_fixes(tmp_path):
    data = write_tiny_libero_hdf5(tmp_path / "d_demo.hdf5", num_demos=1, steps=4, image_size=16)
    findings = doctor(f"octo_jax:{FIXTURE}", str(data), "libero", "libero_spatial")
    by_topic = {(f.topic, f.severity): f for f in findings}
    assert ("weights", "ok") in by_topic
    stats = by_topic[("statistics", "warning")]
    assert "libero_spatial_no_noops" in stats.message and "?stats=" in stats.fix
    sizes = [f for f in findings if f.topic == "image sizes"]
    assert {f.message for f in sizes} == {
        "image_primary: data 16×16, model 64×64",
        "image_wrist: data 16×16, model 32×32",
    }
    assert all("resizes" in f.fix for f in sizes)
    assert ("gripper", "ok") in by_topic and ("env actions", "ok") in by_topic
    assert not [f for f in findings if f.severity == "error"]


def test_doctor_flags_a_gripper_convention_disagreement(tmp_path):
    data = write_tiny_libero_hdf5(tmp_path / "g_demo.hdf5", num_demos=1, steps=4, image_size=16)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"base": "libero", "name": "raw_gripper", "gripper_for_model": "libero"})
    )
    findings = doctor(f"octo_jax:{FIXTURE}?stats=libero_spatial_no_noops", str(data), str(spec))
    gripper = [f for f in findings if f.topic == "gripper"]
    assert gripper and gripper[0].severity == "error"
    assert "?gripper=libero" in gripper[0].fix


DIFFUSION = FIXTURE.parent / "robomimic_dp_tiny" / "model.pth"


@pytest.mark.skipif(not DIFFUSION.is_file(), reason="robomimic fixture not present")
def test_doctor_routes_diffusion_keys_and_names_the_ones_the_data_lacks(tmp_path):
    pytest.importorskip("torch")
    data = write_tiny_libero_hdf5(tmp_path / "d_demo.hdf5", num_demos=1, steps=4, image_size=16)
    findings = doctor(f"diffusion:{DIFFUSION}", str(data), "libero", "libero_spatial")
    messages = {f.message: f for f in findings}
    weights = next(f for f in findings if f.topic == "weights")
    assert (weights.severity, weights.message) == ("ok", "all 204 tensors fit the config (ema)")
    assert "agentview_rgb ← data image_primary rotated 180°" in messages
    assert "gripper_states ← data proprio[..., 6:8]" in messages
    dropped = [f for f in findings if "joint_states" in f.message]
    assert dropped[0].severity == "warning" and "proprio_keys" in dropped[0].fix
    horizon = next(f for f in findings if f.topic == "window / horizon")
    assert "?observation_horizon=N" in horizon.fix
    assert not [f for f in findings if f.severity == "error"]
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "base": "libero",
                "name": "robomimic",
                "proprio_keys": ["obs/joint_states", "obs/gripper_states"],
                "proprio_dims": [7, 2],
            }
        )
    )
    findings = doctor(f"diffusion:{DIFFUSION}", str(data), str(spec))
    assert "joint_states ← data proprio[..., 0:7]" in {f.message for f in findings}
    assert not [f for f in findings if f.severity in ("warning", "error")]


def test_doctor_protocol_lists_each_convention_with_its_source_and_the_reference(capsys):
    assert (
        main(
            ["doctor", "--policy", "random?action_horizon=8&exec_horizon=5", "--protocol", "openpi"]
        )
        == 0
    )
    out = capsys.readouterr().out
    topics = [
        ": ".join(line.split(": ")[:2])
        for line in out.splitlines()
        if line.startswith("[info] convention")
    ]
    assert topics == [
        f"[info] convention: {name}"
        for name in (
            "scenes",
            "image rotation",
            "resize",
            "gripper",
            "proprio",
            "un-normalization",
            "replan",
        )
    ]
    assert "convention: scenes: task_stream, env seed 7; init state i % 50" in out
    assert "reference: np.random.seed(7) at start, then env.seed(7) once per task env" in out
    assert "env renders 256x256; the policy takes the frames as rendered (no resize)" in out
    assert "robosuite's quat2axisangle, no antipodal flip" in out
    assert "un-normalization: none: the policy returns actions in the env's units" in out
    assert "replan: executes 5 of each 8-action chunk, then queries again" in out
    assert "reference: replan_steps 5: the first 5 actions of each chunk" in out


def test_doctor_without_protocol_lists_no_conventions(capsys):
    assert main(["doctor", "--policy", "random"]) == 0
    assert "convention" not in capsys.readouterr().out


def test_the_gripper_convention_of_an_octo_checkpoint_names_the_binarization():
    ckpt = f"{FIXTURE}?stats=libero_spatial_no_noops"
    findings = doctor(f"octo_jax:{ckpt}", protocol="openvla", list_conventions=True)
    by_topic = {f.topic: f.message for f in findings}
    assert by_topic["convention: gripper"].startswith(
        "the model's [0, 1] (1 = open) binarized at 0.5 and sign-flipped to LIBERO's -1 open"
    )
    assert "['libero_spatial_no_noops'] (?stats=)" in by_topic["convention: un-normalization"]
    assert (
        "norm_stats[unnorm_key = suite or suite_no_noops] q01/q99"
        in by_topic["convention: un-normalization"]
    )
