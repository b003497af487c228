"""Reader for LeRobotDatasets (format versions 2.0, 2.1 and 3.0), without the ``lerobot`` package.

The layouts (huggingface/lerobot ``src/lerobot/datasets/utils.py``, ``lerobot_dataset.py`` and
``scripts/convert_dataset_v21_to_v30.py``)::

    meta/info.json           codebase_version, fps, features {name: {dtype, shape, names}},
                             data_path / video_path templates, chunks_size, total_episodes ...
    v2.0 / v2.1
      meta/episodes.jsonl    {"episode_index", "tasks": [...], "length"} per line
      meta/tasks.jsonl       {"task_index", "task"} per line
      data/chunk-000/episode_000000.parquet             one file per episode
      videos/chunk-000/<video_key>/episode_000000.mp4   one file per episode and camera
    v3.0
      meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks,
                             data/chunk_index, data/file_index, dataset_from_index/_to_index,
                             videos/<key>/chunk_index, /file_index, /from_timestamp, /to_timestamp
      meta/tasks.parquet     task (the index) -> task_index
      data/chunk-000/file-000.parquet             many episodes per file
      videos/<video_key>/chunk-000/file-000.mp4   many episodes per file, back to back

Every data row is one frame: the features' columns (numbers as lists, ``dtype: image``
features as PNG bytes ``{"bytes", "path"}``) plus ``timestamp``, ``frame_index``,
``episode_index``, ``index`` and ``task_index``. A ``dtype: video`` feature's frame for a row is
the video frame whose presentation time is the row's ``timestamp`` (v3.0: plus the episode's
``videos/<key>/from_timestamp`` in its file), found within ``TOLERANCE_S`` as LeRobot's decoders
find it. Videos (AV1 in LeRobot's own datasets, H.264 elsewhere) are decoded with the ffmpeg
binary that ``imageio-ffmpeg`` ships, asking it for each frame's presentation time.

Spec keys are feature names (``observation.images.image``, ``observation.state``, ``action``);
the language instruction is the episode's task (``task_index`` → the tasks table). Parquet is
read with pandas + pyarrow (the ``lerobot`` extra).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.data.checks import as_float32, to_array
from evalharness.data.episode import Episode, standardize_episode
from evalharness.data.errors import DatasetError
from evalharness.data.spec import DatasetSpec
from evalharness.policies.common.normalization import ArrayStatistics

INFO_PATH = "meta/info.json"
#: LeRobot's default ``tolerance_s``: a video frame belongs to a row when their times differ by
#: at most this.
TOLERANCE_S = 1e-4
VERSIONS = ("v2.0", "v2.1", "v3.0")
#: Columns every LeRobotDataset has besides its features.
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def is_lerobot_dataset(path: str | Path) -> bool:
    """True for a folder with ``meta/info.json`` (a LeRobotDataset root)."""
    return (Path(path) / INFO_PATH).is_file()


def require_pandas() -> Any:
    """pandas, after checking its parquet engine (pyarrow) is installed."""
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  (pandas' parquet engine)
    except ImportError as exc:
        raise DatasetError(
            f"reading a LeRobotDataset needs pandas and pyarrow ({exc}); install "
            "evalharness[lerobot] (pip install pyarrow)"
        ) from None
    return pd


def _read_parquet(file: Path, root: Path) -> Any:
    pd = require_pandas()
    if not file.is_file():
        raise DatasetError(f"{file}: missing (listed by {root / INFO_PATH}'s layout)")
    try:
        return pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DatasetError(f"{file}: not a readable parquet file ({exc})") from None


def _read_jsonl(file: Path) -> list[dict[str, Any]]:
    if not file.is_file():
        raise DatasetError(
            f"{file}: missing (a v2.x LeRobotDataset lists episodes and tasks there)"
        )
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{file}: line {number} is not JSON ({exc})") from None
    return rows


@dataclass(frozen=True)
class EpisodeEntry:
    """Where one episode lives: its data file and rows, and each video's file and offset."""

    index: int
    length: int
    data_file: Path
    row_range: tuple[int, int] | None  # global ``index`` range [from, to) (v3.0)
    videos: Mapping[str, tuple[Path, float]]  # video key -> (file, from_timestamp)


class LeRobotLayout:
    """``meta/`` of one LeRobotDataset: version, features, tasks and where each episode is."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_file = self.root / INFO_PATH
        if not info_file.is_file():
            raise DatasetError(f"{self.root}: no {INFO_PATH}; not a LeRobotDataset")
        try:
            info = json.loads(info_file.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{info_file}: not JSON ({exc})") from None
        self.info_file = info_file
        self.info: dict[str, Any] = info
        version = str(info.get("codebase_version", ""))
        if version not in VERSIONS:
            raise DatasetError(
                f"{info_file}: codebase_version {version!r}; this reader knows "
                f"{', '.join(VERSIONS)} (convert older datasets with LeRobot's scripts)"
            )
        self.version = version
        for key in ("fps", "features", "data_path"):
            if key not in info:
                raise DatasetError(f"{info_file}: no {key!r}; found keys {sorted(info)}")
        self.fps = float(info["fps"])
        self.features: dict[str, dict[str, Any]] = dict(info["features"])
        self.chunks_size = int(info.get("chunks_size", 1000))

    # -- features -----------------------------------------------------------------------

    def feature(self, key: str) -> dict[str, Any]:
        """The ``features`` entry of ``key``, or an error listing the dataset's features."""
        if key not in self.features:
            raise DatasetError(
                f"{self.info_file}: no feature {key!r}; features: {', '.join(self.features)}"
            )
        return self.features[key]

    def dtype(self, key: str) -> str:
        """``video``, ``image`` or a numeric dtype such as ``float32``."""
        return str(self.feature(key).get("dtype", ""))

    # -- tasks and episodes -------------------------------------------------------------

    def tasks(self) -> dict[int, str]:
        """task_index -> task text."""
        if self.version == "v3.0":
            file = self.root / "meta/tasks.parquet"
            frame = _read_parquet(file, self.root)
            if "task" not in frame.columns:
                frame = frame.reset_index()
            if "task" not in frame.columns or "task_index" not in frame.columns:
                raise DatasetError(
                    f"{file}: expected columns 'task' (or the index) and 'task_index'; found "
                    f"{', '.join(map(str, frame.columns))}"
                )
            return {int(i): str(t) for t, i in zip(frame["task"], frame["task_index"], strict=True)}
        rows = _read_jsonl(self.root / "meta/tasks.jsonl")
        return {int(r["task_index"]): str(r["task"]) for r in rows}

    def episodes(self, video_keys: Sequence[str]) -> list[EpisodeEntry]:
        """Every episode in ``episode_index`` order, with its files for ``video_keys``."""
        if self.version == "v3.0":
            return self._episodes_v3(video_keys)
        return self._episodes_v2(video_keys)

    def _episodes_v2(self, video_keys: Sequence[str]) -> list[EpisodeEntry]:
        rows = sorted(
            _read_jsonl(self.root / "meta/episodes.jsonl"), key=lambda r: r["episode_index"]
        )
        out = []
        for row in rows:
            index = int(row["episode_index"])
            names = {"episode_chunk": index // self.chunks_size, "episode_index": index}
            videos = {key: (self._video_file(key, names), 0.0) for key in video_keys}
            out.append(
                EpisodeEntry(
                    index=index,
                    length=int(row["length"]),
                    data_file=self.root / self.info["data_path"].format(**names),
                    row_range=None,
                    videos=videos,
                )
            )
        return out

    def _episodes_v3(self, video_keys: Sequence[str]) -> list[EpisodeEntry]:
        pd = require_pandas()
        files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(
                f"{self.root / 'meta/episodes'}: no chunk-*/file-*.parquet (a v3.0 "
                "LeRobotDataset lists its episodes there)"
            )
        frame = pd.concat([_read_parquet(f, self.root) for f in files], ignore_index=True)
        needed = [
            "episode_index",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
        ]
        for key in video_keys:
            needed += [f"videos/{key}/chunk_index", f"videos/{key}/file_index"]
            needed += [f"videos/{key}/from_timestamp"]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise DatasetError(
                f"{files[0].parent.parent}: episode metadata has no column {missing[0]!r}; "
                f"columns: {', '.join(c for c in frame.columns if not c.startswith('stats/'))}"
            )
        out = []
        for row in frame.sort_values("episode_index").to_dict("records"):
            data_names = {
                "chunk_index": int(row["data/chunk_index"]),
                "file_index": int(row["data/file_index"]),
            }
            videos = {}
            for key in video_keys:
                names = {
                    "chunk_index": int(row[f"videos/{key}/chunk_index"]),
                    "file_index": int(row[f"videos/{key}/file_index"]),
                }
                videos[key] = (
                    self._video_file(key, names),
                    float(row[f"videos/{key}/from_timestamp"]),
                )
            out.append(
                EpisodeEntry(
                    index=int(row["episode_index"]),
                    length=int(row["length"]),
                    data_file=self.root / self.info["data_path"].format(**data_names),
                    row_range=(int(row["dataset_from_index"]), int(row["dataset_to_index"])),
                    videos=videos,
                )
            )
        return out

    def _video_file(self, key: str, names: Mapping[str, int]) -> Path:
        template = self.info.get("video_path")
        if not template:
            raise DatasetError(
                f"{self.info_file}: feature {key!r} is a video but 'video_path' is empty"
            )
        return self.root / str(template).format(video_key=key, **names)


# -------------------------------------------------------------------------------------------
# video


def ffmpeg_exe() -> str:
    """The ffmpeg binary imageio-ffmpeg ships (a dependency of evalharness)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise DatasetError(
            "decoding LeRobotDataset videos needs imageio-ffmpeg (pip install imageio-ffmpeg)"
        ) from None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


_PTS = re.compile(r"Parsed_showinfo.*?\bpts_time:\s*(-?[0-9.]+(?:e-?[0-9]+)?)")
_SIZE = re.compile(r"Parsed_showinfo.*?\bs:(\d+)x(\d+)")


def decode_video_frames(
    file: str | Path, timestamps: Sequence[float], tolerance_s: float = TOLERANCE_S
) -> np.ndarray:
    """Frames (N, H, W, 3) uint8 of ``file`` at ``timestamps`` (seconds, presentation times).

    Decodes the span [min, max] of the timestamps (accurate seek: from the keyframe before,
    frames before the span dropped) and picks, for each timestamp, the frame whose presentation
    time is nearest; farther than ``tolerance_s`` is an error, as in LeRobot's decoders.
    """
    file = Path(file)
    if not file.is_file():
        raise DatasetError(f"{file}: missing video")
    if len(timestamps) == 0:
        return np.zeros((0, 0, 0, 3), np.uint8)
    query = np.asarray(timestamps, dtype=np.float64)
    margin = 0.5  # seconds: ample for any frame rate, a few extra frames decoded at most
    start, end = max(0.0, float(query.min()) - margin), float(query.max()) + margin
    command = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "info", "-copyts",
        "-ss", f"{start:.6f}", "-to", f"{end:.6f}", "-i", str(file),
        "-map", "0:v:0", "-vf", "showinfo", "-fps_mode", "passthrough",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, check=False)
    log = done.stderr.decode("utf-8", errors="replace")
    if done.returncode != 0:
        tail = " | ".join(log.strip().splitlines()[-3:])
        raise DatasetError(f"{file}: ffmpeg could not decode it ({tail})")
    times = np.asarray([float(m) for m in _PTS.findall(log)], dtype=np.float64)
    sizes = {(int(w), int(h)) for w, h in _SIZE.findall(log)}
    if len(times) == 0 or len(sizes) != 1:
        raise DatasetError(
            f"{file}: no video frames between {start:.3f} s and {end:.3f} s (the rows ask for "
            f"{query.min():.3f}..{query.max():.3f} s)"
        )
    ((width, height),) = sizes
    frames = np.frombuffer(done.stdout, dtype=np.uint8)
    if frames.size != len(times) * height * width * 3:
        raise DatasetError(f"{file}: ffmpeg returned {frames.size} bytes for {len(times)} frames")
    frames = frames.reshape(len(times), height, width, 3)
    gap = np.abs(query[:, None] - times[None, :])
    nearest = gap.argmin(axis=1)
    worst = int(np.argmax(gap[np.arange(len(query)), nearest]))
    if gap[worst, nearest[worst]] > tolerance_s:
        raise DatasetError(
            f"{file}: no frame within {tolerance_s} s of timestamp {query[worst]:.6f} s (nearest "
            f"frame at {times[nearest[worst]]:.6f} s); the video and the data's 'timestamp' "
            "column disagree"
        )
    return frames[nearest].copy()


# -------------------------------------------------------------------------------------------
# columns


def _numeric_column(frame: Any, key: str, file: Path, feature: Mapping[str, Any]) -> np.ndarray:
    """A feature column as one (T, ...) array, checked against the feature's shape."""
    values = frame[key].to_numpy()
    where = f"{file}: column"
    if values.dtype == object:
        cells = [v for v in values]
        bad = next((v for v in cells if isinstance(v, str | bytes | dict)), None)
        if bad is not None or not cells:
            sample = repr(bad)[:60]
            raise DatasetError(
                f"{where} {key!r} holds {type(bad).__name__} values (sample {sample}); expected "
                f"numbers of shape {tuple(feature.get('shape', ()))} "
                "(meta/info.json features)"
            )
        try:
            values = np.stack([to_array(v, str(file), key) for v in cells])
        except ValueError as exc:
            raise DatasetError(
                f"{where} {key!r}: rows differ in length ({exc}); expected shape "
                f"{tuple(feature.get('shape', ()))} in every row"
            ) from None
    array = as_float32(values, f"{file}: column", key)
    shape = tuple(int(s) for s in feature.get("shape", ()))
    if shape and array.shape[1:] != shape and not (shape == (1,) and array.ndim == 1):
        raise DatasetError(
            f"{where} {key!r} has rows of shape {array.shape[1:]}; meta/info.json declares {shape}"
        )
    return array


def _image_column(frame: Any, key: str, file: Path, root: Path) -> np.ndarray:
    """A ``dtype: image`` column (PNG/JPEG bytes, or a path under the root) as (T, H, W, 3)."""
    from PIL import Image

    images = []
    for row, cell in enumerate(frame[key].to_numpy()):
        data = cell.get("bytes") if isinstance(cell, Mapping) else None
        path = cell.get("path") if isinstance(cell, Mapping) else None
        try:
            if data is not None:
                image = Image.open(io.BytesIO(bytes(data)))
            elif path:
                image = Image.open(root / str(path))
            else:
                raise DatasetError(
                    f"{file}: column {key!r} row {row} holds {type(cell).__name__} "
                    f"{repr(cell)[:60]}; expected an image {{'bytes': ..., 'path': ...}}"
                )
            images.append(np.asarray(image.convert("RGB")))
        except OSError as exc:
            raise DatasetError(
                f"{file}: column {key!r} row {row}: unreadable image ({exc})"
            ) from None
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


# -------------------------------------------------------------------------------------------
# the reader


def _source_keys(spec: DatasetSpec) -> list[str]:
    return [*spec.image_keys.values(), *spec.proprio_keys, spec.action_key]


def _episode_rows(frame: Any, entry: EpisodeEntry, file: Path) -> Any:
    """The rows of ``entry`` in its data file, checked against the episode metadata."""
    if "episode_index" not in frame.columns:
        raise DatasetError(
            f"{file}: no column 'episode_index'; columns: {', '.join(frame.columns)}"
        )
    if entry.row_range is None:  # v2.x: one file per episode
        rows, listed = frame, "meta/episodes.jsonl gives the file to that episode"
    elif "index" in frame.columns:  # v3.0: the global frame index range, as LeRobot selects
        index = frame["index"].to_numpy()
        rows = frame[(index >= entry.row_range[0]) & (index < entry.row_range[1])]
        listed = (
            f"meta/episodes gives it rows with 'index' {entry.row_range[0]}.."
            f"{entry.row_range[1] - 1}"
        )
    else:
        rows = frame[frame["episode_index"].to_numpy() == entry.index]
        listed = "meta/episodes lists it"
    others = sorted({int(v) for v in rows["episode_index"]} - {entry.index})
    if others:
        raise DatasetError(
            f"{file}: column 'episode_index' holds {others[:5]} in the rows of episode "
            f"{entry.index} ({listed})"
        )
    if len(rows) != entry.length:
        raise DatasetError(
            f"{file}: {len(rows)} rows for episode {entry.index}, but the episode metadata gives "
            f"length {entry.length} ({listed})"
        )
    if "frame_index" in rows.columns:
        rows = rows.sort_values("frame_index", kind="stable")
    return rows


def read_lerobot(path: str | Path, spec: DatasetSpec) -> Iterator[Episode]:
    """Yield standard episodes of a LeRobotDataset (v2.0, v2.1 or v3.0), in episode order."""
    if spec.format != "lerobot":
        raise DatasetError(f"spec {spec.name!r} is for {spec.format}, not a LeRobotDataset")
    layout = LeRobotLayout(path)
    keys = _source_keys(spec)
    for key in keys:
        layout.feature(key)
    video_keys = [k for k in spec.image_keys.values() if layout.dtype(k) == "video"]
    tasks = layout.tasks()
    cached: tuple[Path, Any] | None = None
    for entry in layout.episodes(video_keys):
        file = entry.data_file
        if cached is None or cached[0] != file:
            cached = (file, _read_parquet(file, layout.root))
        frame = cached[1]
        missing = [k for k in keys if k not in layout.features or layout.dtype(k) != "video"]
        missing = [k for k in missing if k not in frame.columns]
        if missing:
            raise DatasetError(
                f"{file}: no column {missing[0]!r} (meta/info.json lists the feature); columns: "
                f"{', '.join(map(str, frame.columns))}"
            )
        rows = _episode_rows(frame, entry, file)
        raw: dict[str, np.ndarray] = {}
        for key in keys:
            kind = layout.dtype(key)
            if kind == "video":
                video, offset = entry.videos[key]
                if "timestamp" not in rows.columns:
                    raise DatasetError(f"{file}: no column 'timestamp' to find {key!r}'s frames")
                stamps = rows["timestamp"].to_numpy(np.float64).reshape(-1) + offset
                raw[key] = decode_video_frames(video, stamps)
            elif kind == "image":
                raw[key] = _image_column(rows, key, file, layout.root)
            else:
                raw[key] = _numeric_column(rows, key, file, layout.feature(key))
        language = _episode_task(rows, tasks, file, entry, spec)
        name = f"episode_{entry.index:06d}"
        yield standardize_episode(raw, language, spec, str(file), name)


def _episode_task(
    rows: Any, tasks: Mapping[int, str], file: Path, entry: EpisodeEntry, spec: DatasetSpec
) -> str:
    column = spec.language_key or "task_index"
    if column not in rows.columns:
        raise DatasetError(
            f"{file}: no column {column!r} for the episode's task (spec {spec.name!r})"
        )
    values = rows[column].to_numpy()
    if column != "task_index":  # a text column
        return str(values[0]).strip() if len(values) else ""
    found = sorted({int(v) for v in values})
    if len(found) != 1:
        raise DatasetError(
            f"{file}: episode {entry.index} has task_index values {found}; a standard episode "
            "has one language instruction"
        )
    if found[0] not in tasks:
        raise DatasetError(
            f"{file}: 'task_index' {found[0]} of episode {entry.index} is not in the tasks "
            f"table (task_index {sorted(tasks)[:10]})"
        )
    return tasks[found[0]].strip()


# -------------------------------------------------------------------------------------------
# stored statistics (only when a spec asks for them)


def _stored_feature_stats(layout: LeRobotLayout) -> dict[str, dict[str, np.ndarray]]:
    """Per feature {mean, std, min, max[, q01, q99]} from meta/stats.json, or (v2.1) pooled
    from meta/episodes_stats.jsonl."""
    stats_file = layout.root / "meta/stats.json"
    if stats_file.is_file():
        data = json.loads(stats_file.read_text())
        return {k: {s: np.asarray(v, np.float64) for s, v in d.items()} for k, d in data.items()}
    rows = _read_jsonl(layout.root / "meta/episodes_stats.jsonl")
    pooled: dict[str, dict[str, np.ndarray]] = {}
    for key in rows[0]["stats"] if rows else []:
        parts = [{s: np.asarray(v, np.float64) for s, v in r["stats"][key].items()} for r in rows]
        count = np.asarray([p["count"].reshape(-1)[0] for p in parts], np.float64)
        means = np.stack([p["mean"] for p in parts])
        weights = (count / count.sum()).reshape(-1, *([1] * (means.ndim - 1)))
        mean = (weights * means).sum(0)
        second = (weights * (np.stack([p["std"] for p in parts]) ** 2 + means**2)).sum(0)
        pooled[key] = {
            "mean": mean,
            "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
            "min": np.min(np.stack([p["min"] for p in parts]), axis=0),
            "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
        }
    return pooled


def _octo_entry(parts: Sequence[dict[str, np.ndarray]], where: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, stored in (("mean", "mean"), ("std", "std"), ("min", "min"), ("max", "max")):
        if any(stored not in p for p in parts):
            raise DatasetError(f"{where}: no {stored!r} statistics")
        out[name] = np.concatenate([np.asarray(p[stored], np.float64).reshape(-1) for p in parts])
    for name, stored, fallback in (("p01", "q01", "min"), ("p99", "q99", "max")):
        # Datasets written before LeRobot stored quantiles have none: Octo's loader uses the
        # bounds in their place as well.
        out[name] = np.concatenate(
            [np.asarray(p.get(stored, p[fallback]), np.float64).reshape(-1) for p in parts]
        )
    return out


def stored_statistics(
    path: str | Path, spec: DatasetSpec, episodes: Sequence[Episode]
) -> dict[str, Any]:
    """Octo-layout statistics from the dataset's own ``meta/stats.json`` (v2.0, v3.0) or
    ``meta/episodes_stats.jsonl`` (v2.1), for a spec with ``statistics="stored"``.

    The stored numbers describe the file's values over every frame. Where the spec converts
    the gripper, the last action dim's statistics are recomputed from ``episodes`` (the
    conversion is not affine); everything else is taken as stored.
    """
    layout = LeRobotLayout(path)
    stats = _stored_feature_stats(layout)
    where = str(layout.root / "meta")

    def parts_of(keys: Sequence[str]) -> list[dict[str, np.ndarray]]:
        missing = [k for k in keys if k not in stats]
        if missing:
            raise DatasetError(
                f"{where}: no stored statistics for {missing[0]!r}; found {', '.join(stats)}"
            )
        return [stats[k] for k in keys]

    action = _octo_entry(parts_of([spec.action_key]), f"{where} [{spec.action_key}]")
    if spec.gripper_in_file != spec.gripper_for_model and episodes:
        last = np.concatenate([np.asarray(e["action"])[:, -1] for e in episodes])
        computed = ArrayStatistics.compute(last[:, None])
        for name in ("mean", "std", "min", "max", "p01", "p99"):
            action[name][-1] = float(getattr(computed, name)[0])
    dim = action["mean"].shape[0]
    out: dict[str, Any] = {
        "action": {k: v.tolist() for k, v in action.items()}
        | {"mask": spec.action_mask(dim).tolist()}
    }
    if spec.proprio_keys:
        proprio = _octo_entry(parts_of(spec.proprio_keys), f"{where} [proprio]")
        out["proprio"] = {k: v.tolist() for k, v in proprio.items()} | {
            "mask": [True] * proprio["mean"].shape[0]
        }
    out["num_transitions"] = int(layout.info.get("total_frames", 0))
    out["num_trajectories"] = int(layout.info.get("total_episodes", 0))
    return out
