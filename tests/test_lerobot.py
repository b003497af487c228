"""LeRobotDataset v2.1 / v3.0 reader (issue 21): test-made datasets read into standard episodes
equal to the same trajectories read from RLDS, videos decoded at the recorded timestamps,
malformed datasets refused naming the file and the key, and finetuning from one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

import pandas as pd

from evalharness.data import DatasetError, open_dataset
from evalharness.data.dataset import detect_format
from evalharness.data.lerobot import decode_video_frames
from evalharness.data.spec import LIBERO_LEROBOT, get_spec
from evalharness.data.tiny import write_tiny_rlds
from evalharness.data.tiny_lerobot import (
    encode_video,
    write_lerobot_dataset,
    write_tiny_lerobot,
)

KEYS = ("image_primary", "image_wrist", "proprio", "action")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The same trajectories (seed 0) as OpenVLA-style RLDS, read with the libero_rlds preset."""
    root = write_tiny_rlds(tmp_path_factory.mktemp("rlds"), num_episodes=3)
    return open_dataset(root, "libero_rlds").load()


@pytest.fixture(scope="module", params=["v2.1", "v3.0"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # v3.0 with two episodes per file: the second episode of file 0 starts mid-video.
    root = tmp_path_factory.mktemp(request.param.replace(".", "")) / "libero"
    return write_tiny_lerobot(root, version=request.param, num_episodes=3, episodes_per_file=2)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_each_version_reads_into_the_episodes_rlds_gives(tiny: Path, reference: list[dict]):
    dataset = open_dataset(tiny, "libero_lerobot")
    episodes = dataset.load()
    assert [e["episode_id"] for e in episodes] == [f"episode_{i:06d}" for i in range(3)]
    for got, want in zip(episodes, reference, strict=True):
        for key in KEYS:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert got["language_instruction"] == "put the tiny red block on the target"
    # LIBERO's gripper (-1 open / +1 close) arrives in Octo's (1 open / 0 closed).
    assert set(np.unique(episodes[0]["action"][:, -1])) <= {0.0, 1.0}
    # The red marker sits top-left of every upright primary frame: no rotation applied.
    assert tuple(episodes[0]["image_primary"][0, 0, 0]) == (255, 0, 0)


def test_format_is_detected_and_a_mismatched_spec_names_the_preset(tiny: Path):
    assert detect_format(tiny) == "lerobot"
    with pytest.raises(DatasetError, match="use a lerobot spec such as 'libero_lerobot'"):
        open_dataset(tiny, "libero")


def test_statistics_come_from_the_data_unless_the_spec_asks_for_the_stored_ones(
    tiny: Path, reference: list[dict], tmp_path: Path
):
    from evalharness.data import compute_statistics

    data = open_dataset(tiny, "libero_lerobot").statistics()
    assert data == compute_statistics(reference, get_spec("libero_rlds"))
    # A doctored stats.json changes nothing unless asked for.
    root = _copy(tiny, tmp_path / "doctored")
    (root / "meta/stats.json").write_text(
        json.dumps({"action": {"mean": [9.0] * 7, "std": [1.0] * 7, "min": [0.0] * 7,
                               "max": [9.0] * 7},
                    "observation.state": {"mean": [5.0] * 8, "std": [2.0] * 8,
                                          "min": [0.0] * 8, "max": [9.0] * 8}})
    )  # fmt: skip
    assert open_dataset(root, "libero_lerobot").statistics() == data
    stored = open_dataset(root, LIBERO_LEROBOT.replace(statistics="stored")).statistics()
    assert stored["action"]["mean"][:6] == [9.0] * 6
    assert stored["proprio"]["std"] == [2.0] * 8
    # The gripper is converted on reading (not affinely), so its dim is the data's.
    assert stored["action"]["mean"][6] == pytest.approx(data["action"]["mean"][6])
    assert stored["action"]["p01"] == stored["action"]["min"]  # no quantiles stored


def test_stored_statistics_of_each_version_match_the_data_where_no_conversion_applies(tiny: Path):
    data = open_dataset(tiny, "libero_lerobot").statistics()
    stored = open_dataset(tiny, LIBERO_LEROBOT.replace(statistics="stored")).statistics()
    for key in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(stored["proprio"][key], data["proprio"][key], atol=1e-6)
        np.testing.assert_allclose(stored["action"][key], data["action"][key], atol=1e-6)
    assert (stored["num_transitions"], stored["num_trajectories"]) == (36, 3)


def test_stored_statistics_are_refused_for_formats_that_store_none():
    with pytest.raises(DatasetError, match=r"statistics = 'stored'.*only LeRobotDatasets"):
        get_spec({"base": "libero", "statistics": "stored"})


def test_images_stored_as_png_in_parquet_read_under_openpi_keys(tmp_path: Path, reference):
    """physical-intelligence/libero's layout: image columns, keys image/wrist_image/state/actions."""
    episodes = [
        {
            "frames": {
                "image": e["image_primary"],
                "wrist_image": e["image_wrist"],
                "state": e["proprio"],
                "actions": np.concatenate(
                    [e["action"][:, :-1], 1.0 - 2.0 * e["action"][:, -1:]], axis=1
                ),  # back to LIBERO's gripper, as the file holds it
            },
            "task": e["language_instruction"],
        }
        for e in reference
    ]
    root = write_lerobot_dataset(tmp_path / "pi", episodes, version="v2.1", image_dtype="image")
    assert json.loads((root / "meta/info.json").read_text())["features"]["image"]["dtype"] == (
        "image"
    )
    for got, want in zip(
        open_dataset(root, "libero_lerobot_openpi").load(), reference, strict=True
    ):
        for key in KEYS:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_video_frames_are_picked_by_presentation_time(tmp_path: Path):
    frames = np.zeros((20, 16, 16, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(20)[:, None, None] * 10
    encode_video(tmp_path / "v.mp4", frames, fps=10)
    got = decode_video_frames(tmp_path / "v.mp4", [1.2, 0.0, 1.9, 0.5])
    assert got[:, 0, 0, 0].tolist() == [120, 0, 190, 50]
    with pytest.raises(DatasetError, match=r"v\.mp4: no frame within 0\.0001 s of timestamp 0\.55"):
        decode_video_frames(tmp_path / "v.mp4", [0.5, 0.55])


def test_av1_videos_as_lerobot_encodes_them_decode_close_to_the_frames(tmp_path: Path, reference):
    root = write_tiny_lerobot(tmp_path / "av1", version="v3.0", vcodec="libsvtav1", image_size=64)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.images.image"]["info"]["video.codec"] == "av1"
    lossless = open_dataset(write_tiny_lerobot(tmp_path / "x264", image_size=64), "libero_lerobot")
    for got, want in zip(open_dataset(root, "libero_lerobot").load(), lossless.load(), strict=True):
        assert got["image_primary"].shape == want["image_primary"].shape == (12, 64, 64, 3)
        error = np.abs(got["image_primary"].astype(float) - want["image_primary"]).mean()
        assert error < 8.0  # lossy, but the same frames in the same order
        np.testing.assert_array_equal(got["action"], want["action"])


# -- malformed datasets: the error names the file and the key --------------------------------


def _data_file(root: Path) -> Path:
    return sorted((root / "data").rglob("*.parquet"))[0]


def test_a_missing_video_is_named(tiny: Path, tmp_path: Path):
    root = _copy(tiny, tmp_path / "broken")
    video = sorted((root / "videos").rglob("*.mp4"))[0]
    video.unlink()
    with pytest.raises(DatasetError, match=rf"{video}: missing video"):
        open_dataset(root, "libero_lerobot").load()


def test_a_mismatched_episode_index_is_named(tiny: Path, tmp_path: Path):
    root = _copy(tiny, tmp_path / "broken")
    file = _data_file(root)
    frame = pd.read_parquet(file)
    frame.loc[frame.index[:3], "episode_index"] = 7
    frame.to_parquet(file, index=False)
    with pytest.raises(DatasetError, match=rf"{file}: .*'episode_index'.*7"):
        open_dataset(root, "libero_lerobot").load()


def test_an_object_column_is_named_with_a_sample(tiny: Path, tmp_path: Path):
    root = _copy(tiny, tmp_path / "broken")
    file = _data_file(root)
    frame = pd.read_parquet(file)
    frame["observation.state"] = ["0.1 0.2"] * len(frame)
    frame.to_parquet(file, index=False)
    with pytest.raises(
        DatasetError, match=rf"{file}: column 'observation.state' holds str values.*expected"
    ):
        open_dataset(root, "libero_lerobot").load()


def test_ragged_rows_and_missing_features_are_named(tiny: Path, tmp_path: Path):
    root = _copy(tiny, tmp_path / "ragged")
    file = _data_file(root)
    frame = pd.read_parquet(file)
    frame["action"] = [np.zeros(7 if i else 6, np.float32) for i in range(len(frame))]
    frame.to_parquet(file, index=False)
    with pytest.raises(DatasetError, match=rf"{file}: column 'action': rows differ in length"):
        open_dataset(root, "libero_lerobot").load()
    spec = {"base": "libero_lerobot", "action_key": "actions"}
    with pytest.raises(DatasetError, match=r"meta/info\.json: no feature 'actions'; features: "):
        open_dataset(tiny, spec).load()


def test_an_unknown_codebase_version_is_refused(tiny: Path, tmp_path: Path):
    root = _copy(tiny, tmp_path / "old")
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v1.6"}))
    with pytest.raises(DatasetError, match=r"info\.json: codebase_version 'v1\.6'"):
        open_dataset(root, "libero_lerobot").load()


# -- finetuning from a LeRobotDataset ----------------------------------------------------------

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "octo_tiny_lang"


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared fixtures not present")
def test_a_lerobot_dataset_of_each_version_finetunes(tiny: Path, tmp_path: Path):
    pytest.importorskip("torch")
    from evalharness.finetune import FinetuneConfig, FinetuneOptions, finetune

    result = finetune(
        FinetuneConfig(
            policy=f"octo_pt:{FIXTURE}",
            data=tiny,
            out_dir=tmp_path / "ckpt",
            dataset_spec="libero_lerobot",
            options=FinetuneOptions(mode="head_only", steps=2, batch_size=2, seed=0),
            progress=False,
        )
    )
    assert result.step == 2 and len(result.losses) == 2
    spec = json.loads((tmp_path / "ckpt" / "dataset_spec.json").read_text())
    assert (spec["name"], spec["format"], spec["eval_image_transform"]) == (
        "libero_lerobot",
        "lerobot",
        "none",
    )
    stats = json.loads((tmp_path / "ckpt" / "dataset_statistics.json").read_text())
    assert stats["num_transitions"] == 36


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared fixtures not present")
def test_finetune_then_eval_runs_from_a_lerobot_dataset(tiny: Path, tmp_path: Path):
    pytest.importorskip("torch")
    from evalharness.cli import main

    run_dir = tmp_path / "run"
    code = main(
        [
            "finetune-then-eval",
            "--policy", f"octo_pt:{FIXTURE}",
            "--data", str(tiny),
            "--dataset-spec", "libero_lerobot",
            "--mode", "head_only",
            "--steps", "1",
            "--batch-size", "2",
            "--out", str(tmp_path / "ckpt"),
            "--suite", "libero_spatial",
            "--tasks", "0",
            "--episodes-per-task", "1",
            "--max-steps", "3",
            "--camera-size", "64",
            "--num-envs", "1",
            "--eval-out", str(run_dir),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    episodes = pd.read_csv(run_dir / "episodes.csv")
    assert len(episodes) == 1
    info = json.loads((run_dir / "run.json").read_text())
    assert info["finetune"]["step"] == 1
    assert info["policy_spec"]["image_orientation"] == "upright"
