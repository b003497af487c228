"""Write LeRobotDatasets (v2.1 or v3.0) for tests and smoke runs, without the ``lerobot`` package.

    from evalharness.data.tiny_lerobot import write_tiny_lerobot
    root = write_tiny_lerobot(tmp / "tiny", version="v3.0")    # LIBERO keys, mp4 cameras
    open_dataset(root, "libero_lerobot")

`write_lerobot_dataset` lays out any episodes the way LeRobot's writer does (layouts in
`evalharness.data.lerobot`): ``meta/info.json``, the episode and task tables, parquet data with
the index columns, and one mp4 per camera (v2.1: per episode; v3.0: episodes back to back in one
file, each episode's ``from_timestamp`` recorded), frame ``i`` of an episode at ``i / fps``.
Statistics go where each version keeps them (v2.1 ``meta/episodes_stats.jsonl``, v3.0
``meta/stats.json`` and the episode table's ``stats/*`` columns).

`write_tiny_lerobot` fills it with `evalharness.data.tiny`'s learnable trajectories under the
keys of the LIBERO LeRobotDatasets (``observation.images.image``/``image2``,
``observation.state`` 8, ``action`` 7): upright frames, LIBERO's gripper (−1 open, +1 close).
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.data.lerobot import ffmpeg_exe, require_pandas
from evalharness.data.tiny import DEFAULT_INSTRUCTION, tiny_trajectory

V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
#: ffmpeg options per codec: lossless H.264 in RGB (exact frames, for tests) and LeRobot's AV1.
CODECS: dict[str, list[str]] = {
    "libx264rgb": ["-qp", "0", "-pix_fmt", "rgb24"],
    "libsvtav1": ["-pix_fmt", "yuv420p", "-g", "2", "-crf", "30"],
}


def encode_video(file: Path, frames: np.ndarray, fps: float, vcodec: str = "libx264rgb") -> None:
    """Encode (T, H, W, 3) uint8 frames as an mp4 at ``fps`` (frame i at i / fps)."""
    if vcodec not in CODECS:
        raise ValueError(f"vcodec {vcodec!r}: expected one of {', '.join(CODECS)}")
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    _, height, width, _ = frames.shape
    file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        ffmpeg_exe(), "-y", "-hide_banner", "-nostdin", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}",
        "-i", "-", "-c:v", vcodec, *CODECS[vcodec], str(file),
    ]  # fmt: skip
    done = subprocess.run(command, input=frames.tobytes(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {file}: {done.stderr.decode()[-400:]}")


def _feature(array: np.ndarray, kind: str, fps: float, vcodec: str) -> dict[str, Any]:
    if kind in ("video", "image"):
        height, width = int(array.shape[1]), int(array.shape[2])
        entry: dict[str, Any] = {
            "dtype": kind,
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
        }
        if kind == "video":
            entry["info"] = {
                "video.height": height,
                "video.width": width,
                "video.codec": "h264" if vcodec.startswith("libx264") else "av1",
                "video.pix_fmt": CODECS[vcodec][CODECS[vcodec].index("-pix_fmt") + 1],
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
            }
        return entry
    return {"dtype": "float32", "shape": list(array.shape[1:]), "names": None}


def _stats(values: np.ndarray) -> dict[str, list[Any]]:
    values = np.asarray(values, np.float64)
    return {
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "count": [int(values.shape[0])],
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
    }


def _png(image: np.ndarray) -> dict[str, Any]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_lerobot_dataset(
    root: str | Path,
    episodes: Sequence[Mapping[str, Any]],
    fps: float = 10,
    version: str = "v3.0",
    image_dtype: str = "video",
    vcodec: str = "libx264rgb",
    episodes_per_file: int | None = None,
) -> Path:
    """Write ``episodes`` (each ``{"frames": {feature: (T, ...) array}, "task": str}``) as a
    LeRobotDataset at ``root``; returns ``root``.

    Features whose arrays are (T, H, W, 3) uint8 are cameras, stored as ``image_dtype``
    (``video``: mp4 files; ``image``: PNG bytes in the parquet); the rest are float32 columns.
    ``episodes_per_file`` (v3.0) starts a new data/video file after that many episodes.
    """
    if version not in ("v2.1", "v3.0"):
        raise ValueError(f"version {version!r}: expected v2.1 or v3.0")
    if image_dtype not in ("video", "image"):
        raise ValueError(f"image_dtype {image_dtype!r}: expected video or image")
    pd = require_pandas()
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    first = episodes[0]["frames"]
    cameras = [k for k, v in first.items() if np.asarray(v).ndim == 4]
    kinds = {k: (image_dtype if k in cameras else "float32") for k in first}
    features = {k: _feature(np.asarray(v), kinds[k], fps, vcodec) for k, v in first.items()}
    features |= {
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    task_names = list(dict.fromkeys(str(e["task"]) for e in episodes))
    task_index = {t: i for i, t in enumerate(task_names)}
    videos = [k for k in cameras if image_dtype == "video"]
    per_file = episodes_per_file or len(episodes)

    tables: list[Any] = []
    meta_rows: list[dict[str, Any]] = []
    total = 0
    for e, episode in enumerate(episodes):
        frames = {k: np.asarray(v) for k, v in episode["frames"].items()}
        steps = len(next(iter(frames.values())))
        table: dict[str, Any] = {}
        for key, values in frames.items():
            if key in videos:
                continue
            if key in cameras:
                table[key] = [_png(image) for image in values]
            else:
                table[key] = list(np.asarray(values, np.float32))
        table["timestamp"] = (np.arange(steps) / fps).astype(np.float32)
        table["frame_index"] = np.arange(steps, dtype=np.int64)
        table["episode_index"] = np.full(steps, e, dtype=np.int64)
        table["index"] = np.arange(total, total + steps, dtype=np.int64)
        table["task_index"] = np.full(steps, task_index[str(episode["task"])], dtype=np.int64)
        tables.append(pd.DataFrame(table))
        meta_rows.append(
            {
                "episode_index": e,
                "tasks": [str(episode["task"])],
                "length": steps,
                "stats": {k: _stats(v) for k, v in frames.items() if k not in cameras},
                "from": total,
            }
        )
        total += steps

    if version == "v2.1":
        for e, episode_frame in enumerate(tables):
            names = {"episode_chunk": 0, "episode_index": e}
            file = root / V21_DATA.format(**names)
            file.parent.mkdir(parents=True, exist_ok=True)
            episode_frame.to_parquet(file, index=False)
            for key in videos:
                encode_video(
                    root / V21_VIDEO.format(video_key=key, **names),
                    np.asarray(episodes[e]["frames"][key]),
                    fps,
                    vcodec,
                )
        lines = [
            {"episode_index": r["episode_index"], "tasks": r["tasks"], "length": r["length"]}
            for r in meta_rows
        ]
        _write_jsonl(root / "meta/episodes.jsonl", lines)
        _write_jsonl(
            root / "meta/tasks.jsonl",
            [{"task_index": i, "task": t} for i, t in enumerate(task_names)],
        )
        _write_jsonl(
            root / "meta/episodes_stats.jsonl",
            [{"episode_index": r["episode_index"], "stats": r["stats"]} for r in meta_rows],
        )
        data_path, video_path = V21_DATA, V21_VIDEO
    else:
        episode_table = []
        for file_index, start in enumerate(range(0, len(episodes), per_file)):
            members = range(start, min(start + per_file, len(episodes)))
            names = {"chunk_index": 0, "file_index": file_index}
            file = root / V30_DATA.format(**names)
            file.parent.mkdir(parents=True, exist_ok=True)
            pd.concat([tables[e] for e in members], ignore_index=True).to_parquet(file, index=False)
            offsets = {}
            for key in videos:
                stacked = np.concatenate([np.asarray(episodes[e]["frames"][key]) for e in members])
                encode_video(root / V30_VIDEO.format(video_key=key, **names), stacked, fps, vcodec)
                offsets[key] = np.cumsum([0] + [meta_rows[e]["length"] for e in members]) / fps
            for i, e in enumerate(members):
                row = meta_rows[e]
                entry: dict[str, Any] = {
                    "episode_index": e,
                    "tasks": row["tasks"],
                    "length": row["length"],
                    "data/chunk_index": 0,
                    "data/file_index": file_index,
                    "dataset_from_index": row["from"],
                    "dataset_to_index": row["from"] + row["length"],
                }
                for key in videos:
                    entry[f"videos/{key}/chunk_index"] = 0
                    entry[f"videos/{key}/file_index"] = file_index
                    entry[f"videos/{key}/from_timestamp"] = float(offsets[key][i])
                    entry[f"videos/{key}/to_timestamp"] = float(offsets[key][i + 1])
                for key, stats in row["stats"].items():
                    for name, value in stats.items():
                        entry[f"stats/{key}/{name}"] = value
                entry["meta/episodes/chunk_index"] = 0
                entry["meta/episodes/file_index"] = 0
                episode_table.append(entry)
        episodes_file = root / "meta/episodes/chunk-000/file-000.parquet"
        episodes_file.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(episode_table).to_parquet(episodes_file, index=False)
        pd.DataFrame(
            {"task_index": range(len(task_names))}, index=pd.Index(task_names, name="task")
        ).to_parquet(root / "meta/tasks.parquet")
        numeric = [k for k in first if k not in cameras]
        all_frames = {
            k: np.concatenate([np.asarray(ep["frames"][k]) for ep in episodes]) for k in numeric
        }
        (root / "meta/stats.json").write_text(
            json.dumps({k: _stats(v) for k, v in all_frames.items()}, indent=2)
        )
        data_path, video_path = V30_DATA, V30_VIDEO

    info = {
        "codebase_version": version,
        "robot_type": "panda",
        "total_episodes": len(episodes),
        "total_frames": total,
        "total_tasks": len(task_names),
        "chunks_size": 1000,
        "fps": int(fps) if float(fps).is_integer() else fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": data_path,
        "video_path": video_path if videos else None,
        "features": features,
    }
    if version == "v2.1":
        info |= {"total_chunks": 1, "total_videos": len(videos) * len(episodes)}
    else:
        info |= {"data_files_size_in_mb": 100, "video_files_size_in_mb": 200}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root


def _write_jsonl(file: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tiny_lerobot(
    path: str | Path,
    version: str = "v3.0",
    num_episodes: int = 3,
    steps: int = 12,
    image_size: int = 32,
    seed: int = 0,
    image_dtype: str = "video",
    vcodec: str = "libx264rgb",
    episodes_per_file: int | None = None,
    language_instruction: str = DEFAULT_INSTRUCTION,
) -> Path:
    """A LeRobotDataset with the LIBERO LeRobotDatasets' keys and `write_tiny_rlds`'s
    trajectories (same ``seed``, same numbers); the default codec is lossless, so decoded frames
    equal the written ones exactly. Returns ``path``."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(num_episodes):
        traj = tiny_trajectory(rng, steps, image_size)
        state = np.concatenate([traj["pos"], traj["rot"], traj["grip"]], axis=1)
        episodes.append(
            {
                "frames": {
                    "observation.images.image": traj["image_primary"],  # upright
                    "observation.images.image2": traj["image_wrist"],
                    "observation.state": state.astype(np.float32),
                    "action": traj["action"].astype(np.float32),  # LIBERO gripper
                },
                "task": language_instruction,
            }
        )
    return write_lerobot_dataset(
        path,
        episodes,
        fps=10,
        version=version,
        image_dtype=image_dtype,
        vcodec=vcodec,
        episodes_per_file=episodes_per_file,
    )
