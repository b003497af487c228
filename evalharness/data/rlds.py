"""RLDS / TFDS episode datasets (the format Octo and OpenVLA train on), without TensorFlow.

A TFDS dataset version folder, e.g. ``libero_spatial_no_noops/1.0.0/``, holds
``dataset_info.json``, ``features.json`` and shards ``<name>-<split>.tfrecord-00000-of-00016``.
Each record is one episode, a ``tf.train.Example`` whose features are the flattened feature
tree: ``steps/observation/image`` (one encoded JPEG/PNG per step), ``steps/action`` (T·A
floats), ``steps/language_instruction`` (T strings), ``steps/is_first`` (T int64s),
``episode_metadata/file_path``, .... ``features.json`` gives each feature's class, dtype and
per-step shape, which is how the flat lists are cut back into (T, ...) arrays.

`read_rlds` yields standard episodes (through the spec); `read_rlds_raw` yields the nested
dict of arrays; `write_rlds` writes a dataset TFDS can load (``tfds.builder_from_directory``)
from nested dicts of numpy arrays, which is how the tests make tiny datasets.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evalharness.data.episode import Episode, standardize_episode
from evalharness.data.errors import DatasetError
from evalharness.data.spec import DatasetSpec
from evalharness.data.tfrecord import Feature, decode_example, encode_example, iter_records
from evalharness.data.tfrecord import write_records as _write_records

_TFDS = "tensorflow_datasets.core.features."
_CLASS = {
    "dict": _TFDS + "features_dict.FeaturesDict",
    "dataset": _TFDS + "dataset_feature.Dataset",
    "tensor": _TFDS + "tensor_feature.Tensor",
    "scalar": _TFDS + "scalar.Scalar",
    "image": _TFDS + "image_feature.Image",
    "text": _TFDS + "text_feature.Text",
}


@dataclass(frozen=True)
class FeatureInfo:
    """One leaf of ``features.json``, flattened: ``steps/observation/image`` etc."""

    name: str
    kind: str  # "tensor" | "image" | "text"
    dtype: str
    shape: tuple[int, ...]  # per element (per step inside steps/); -1 = unknown
    in_steps: bool
    encoding: str = "none"  # tensors: none | bytes | zlib; images: jpeg | png


def parse_features(
    tree: Mapping[str, Any], source: str = "features.json"
) -> dict[str, FeatureInfo]:
    """Flatten a TFDS ``features.json`` tree into ``{flat name: FeatureInfo}``."""
    out: dict[str, FeatureInfo] = {}

    def shape_of(info: Mapping[str, Any]) -> tuple[int, ...]:
        dims = info.get("shape", {}).get("dimensions", [])
        return tuple(int(d) for d in dims)

    def visit(node: Mapping[str, Any], prefix: str, in_steps: bool) -> None:
        cls = str(node.get("pythonClassName", ""))
        if "featuresDict" in node:
            for key, child in node["featuresDict"].get("features", {}).items():
                visit(child, f"{prefix}{key}/", in_steps)
        elif "sequence" in node:
            visit(node["sequence"]["feature"], prefix, True)
        elif "image" in node:
            info = node["image"]
            out[prefix[:-1]] = FeatureInfo(
                prefix[:-1],
                "image",
                str(info.get("dtype", "uint8")),
                shape_of(info),
                in_steps,
                str(info.get("encodingFormat", "png") or "png"),
            )
        elif "text" in node or cls.endswith("Text"):
            out[prefix[:-1]] = FeatureInfo(prefix[:-1], "text", "string", (), in_steps)
        elif "tensor" in node:
            info = node["tensor"]
            out[prefix[:-1]] = FeatureInfo(
                prefix[:-1],
                "tensor",
                str(info.get("dtype", "float32")),
                shape_of(info),
                in_steps,
                str(info.get("encoding", "none") or "none"),
            )
        else:
            raise DatasetError(
                f"{source}: feature {prefix[:-1]!r} has an unsupported class {cls or '?'} "
                f"(keys {sorted(node)})"
            )

    try:
        visit(tree, "", False)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{source}: not a TFDS features tree ({exc!r})") from None
    return out


def find_version_dir(path: str | Path) -> Path:
    """The TFDS version folder (with ``features.json``) at or below ``path``: the folder
    itself, or the highest version among its subfolders (``name/1.0.0``)."""
    path = Path(path)
    if (path / "features.json").is_file():
        return path
    if path.is_dir():
        candidates = [p for p in path.iterdir() if (p / "features.json").is_file()]
        if candidates:

            def version(p: Path) -> tuple[int, ...]:
                return tuple(int(x) if x.isdigit() else -1 for x in p.name.split("."))

            return max(candidates, key=version)
    raise DatasetError(
        f"{path}: no features.json here or in a version subfolder (e.g. "
        "libero_spatial_no_noops/1.0.0/); not an RLDS/TFDS dataset"
    )


def shard_files(version_dir: Path, split: str = "train") -> list[Path]:
    """TFRecord shards of one split, in shard order."""
    files = sorted(version_dir.glob(f"*-{split}.tfrecord*"))
    if not files:
        have = sorted(
            {
                m.group(1)
                for p in version_dir.glob("*.tfrecord*")
                if (m := re.search(r"-(\w+)\.tfrecord", p.name))
            }
        )
        raise DatasetError(
            f"{version_dir}: no shards for split {split!r}; splits present: "
            f"{', '.join(have) or 'none'}"
        )
    return files


def _decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # Pillow raises many types for bad data
        raise DatasetError(f"{where}: cannot decode image ({exc})") from None


def _tensor(info: FeatureInfo, feature: Feature, where: str) -> np.ndarray:
    kind, values = feature
    if info.encoding in ("bytes", "zlib"):
        if kind != "bytes":
            raise DatasetError(f"{where}: expected encoded bytes, got a {kind} list")
        try:
            chunks = [zlib.decompress(v) if info.encoding == "zlib" else bytes(v) for v in values]
        except zlib.error as exc:
            raise DatasetError(f"{where}: cannot decompress ({exc})") from None
        try:
            arrays = [np.frombuffer(c, dtype=np.dtype(info.dtype)) for c in chunks]
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: cannot read {info.dtype} bytes ({exc})") from None
        return np.concatenate(arrays) if arrays else np.zeros(0, np.dtype(info.dtype))
    if info.dtype == "string":
        return np.asarray([bytes(v).decode("utf-8", "replace") for v in values], dtype=object)
    if kind == "bytes":
        raise DatasetError(f"{where}: dtype {info.dtype} stored as bytes; expected numbers")
    array = np.asarray(values)
    if info.dtype == "bool":
        return array.astype(bool)
    # Example protos only hold float32 / int64; TFDS casts back to the declared dtype.
    try:
        return array.astype(np.dtype(info.dtype))
    except TypeError:
        return array


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        node = nested
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def decode_episode(
    features: Mapping[str, Feature], infos: Mapping[str, FeatureInfo], where: str
) -> dict[str, np.ndarray]:
    """One episode's features as flat ``{name: array}``; step features get a leading T."""
    out: dict[str, Any] = {}
    steps: int | None = None
    for name, info in infos.items():
        if name not in features:
            continue  # absent optional features stay absent; the spec decides what is needed
        loc = f"{where}: {name!r}"
        feature = features[name]
        if info.kind == "image":
            if feature[0] != "bytes":
                raise DatasetError(f"{loc}: images must be encoded bytes, got a {feature[0]} list")
            images = [_decode_image(bytes(v), loc) for v in feature[1]]
            shapes = {im.shape for im in images}
            if len(shapes) > 1:
                raise DatasetError(f"{loc}: images of different shapes {sorted(shapes)}")
            array = np.stack(images) if images else np.zeros((0, *info.shape), np.uint8)
            if not info.in_steps:
                array = array[0] if len(array) else array
        elif info.kind == "text":
            texts = [bytes(v).decode("utf-8", "replace") for v in feature[1]]
            if not info.in_steps:
                out[name] = texts[0] if texts else ""
                continue
            array = np.asarray(texts, dtype=object)
        else:
            array = _tensor(info, feature, loc)
            per = int(np.prod(info.shape)) if all(d >= 0 for d in info.shape) else -1
            if info.in_steps:
                if per <= 0 or array.size % per:
                    raise DatasetError(
                        f"{loc}: {array.size} values cannot be cut into steps of shape "
                        f"{info.shape} (features.json)"
                    )
                array = array.reshape(-1, *info.shape)
            elif per > 0:
                if array.size != per:
                    raise DatasetError(
                        f"{loc}: {array.size} values; features.json declares shape {info.shape}"
                    )
                array = array.reshape(info.shape)
        if info.in_steps:
            if steps is None:
                steps = len(array)
            elif len(array) != steps:
                raise DatasetError(
                    f"{loc}: {len(array)} steps, but other step features have {steps}"
                )
        out[name] = array
    return out


def read_rlds_raw(
    path: str | Path, split: str = "train", verify_checksums: bool = True
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(episode_id, flat {name: array})`` for each episode of a split."""
    version_dir = find_version_dir(path)
    try:
        tree = json.loads((version_dir / "features.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{version_dir / 'features.json'}: unreadable ({exc})") from None
    infos = parse_features(tree, str(version_dir / "features.json"))
    for shard in shard_files(version_dir, split):
        for index, payload in enumerate(iter_records(shard, verify=verify_checksums)):
            where = f"{shard} [episode {index}]"
            try:
                features = decode_example(payload)
            except DatasetError as exc:
                raise DatasetError(f"{where}: {exc}") from None
            yield f"{shard.name}:{index}", decode_episode(features, infos, where)


def read_rlds(
    path: str | Path, spec: DatasetSpec, split: str = "train", verify_checksums: bool = True
) -> Iterator[Episode]:
    """Yield standard episodes from an RLDS dataset, mapped by ``spec`` (``steps/`` keys)."""
    if spec.format != "rlds":
        raise DatasetError(f"spec {spec.name!r} is for {spec.format}, not RLDS")
    keys = [*spec.image_keys.values(), *spec.proprio_keys, spec.action_key]
    for episode_id, flat in read_rlds_raw(path, split, verify_checksums):
        source = str(Path(path))
        steps = {k[len("steps/") :]: v for k, v in flat.items() if k.startswith("steps/")}
        missing = [k for k in keys if k not in steps]
        if missing:
            raise DatasetError(
                f"{source} [{episode_id}]: no step feature {missing[0]!r}; available: "
                f"{', '.join(sorted(steps)) or 'none'}"
            )
        language = ""
        if spec.language_key is not None:
            if spec.language_key not in steps:
                raise DatasetError(
                    f"{source} [{episode_id}]: no step feature {spec.language_key!r} "
                    f"(language_key); available: {', '.join(sorted(steps))}"
                )
            texts = steps[spec.language_key]
            language = str(texts[0]) if len(texts) else ""
        yield standardize_episode({k: steps[k] for k in keys}, language, spec, source, episode_id)


# --------------------------------------------------------------------------- writer


def _feature_json(value: Any, name: str, image_encoding: str, in_steps: bool) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {
            "pythonClassName": _CLASS["dict"],
            "featuresDict": {
                "features": {
                    k: _feature_json(v, f"{name}/{k}", image_encoding, in_steps)
                    for k, v in value.items()
                }
            },
        }
    if isinstance(value, str) or (
        isinstance(value, np.ndarray | list) and len(value) and isinstance(value[0], str)
    ):
        return {"pythonClassName": _CLASS["text"], "text": {}, "description": ""}
    array = np.asarray(value)
    shape = array.shape[1:] if in_steps else array.shape
    if array.dtype == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3, 4):
        return {
            "pythonClassName": _CLASS["image"],
            "image": {
                "shape": {"dimensions": [str(d) for d in shape]},
                "dtype": "uint8",
                "encodingFormat": image_encoding,
            },
            "description": "",
        }
    dtype = "bool" if array.dtype == bool else str(array.dtype)
    return {
        "pythonClassName": _CLASS["scalar" if not shape else "tensor"],
        "tensor": {
            "shape": {"dimensions": [str(d) for d in shape]} if shape else {},
            "dtype": dtype,
            "encoding": "none",
        },
        "description": "",
    }


def _encode_image(image: np.ndarray, encoding: str) -> bytes:
    buffer = io.BytesIO()
    array = image[..., 0] if image.shape[-1] == 1 else image
    if encoding == "jpeg":
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _encode_episode(episode: Mapping[str, Any], infos: Mapping[str, FeatureInfo]) -> bytes:
    flat = _flatten(episode)
    features: dict[str, Feature] = {}
    for name, info in infos.items():
        value = flat[name]
        if info.kind == "image":
            images = value if info.in_steps else [value]
            features[name] = (
                "bytes",
                [_encode_image(np.asarray(im), info.encoding) for im in images],
            )
        elif info.kind == "text":
            texts = [value] if isinstance(value, str) else list(value)
            features[name] = ("bytes", [str(t).encode("utf-8") for t in texts])
        elif info.dtype in ("bool",) or np.dtype(info.dtype).kind in "iu":
            features[name] = ("int64", np.asarray(value, dtype=np.int64).reshape(-1))
        else:
            features[name] = ("float", np.asarray(value, dtype=np.float32).reshape(-1))
    return encode_example(features)


def write_rlds(
    root: str | Path,
    name: str,
    episodes: Iterable[Mapping[str, Any]],
    *,
    version: str = "1.0.0",
    split: str = "train",
    image_encoding: str = "png",
    num_shards: int = 1,
) -> Path:
    """Write episodes as an RLDS dataset at ``root/name/version``; returns that folder.

    Each episode is a nested dict ``{"steps": {...}, "episode_metadata": {...}}`` of numpy
    arrays: under ``steps`` every leaf has a leading T axis (uint8 (T, H, W, C) become encoded
    images, lists of T str become text); ``is_first``/``is_last``/``is_terminal`` are added when
    absent. The feature tree is taken from the first episode. PNG round-trips exactly; JPEG
    (what OpenVLA's data uses) is lossy.
    """
    if image_encoding not in ("png", "jpeg"):
        raise ValueError(f"image_encoding must be 'png' or 'jpeg', got {image_encoding!r}")
    prepared = []
    for episode in episodes:
        episode = {k: dict(v) if isinstance(v, Mapping) else v for k, v in episode.items()}
        steps = episode.get("steps")
        if not isinstance(steps, dict):
            raise ValueError("each episode needs a 'steps' dict")
        length = len(next(iter(_flatten(steps).values())))
        flags = np.zeros(length, dtype=bool)
        for flag, index in (("is_first", 0), ("is_last", -1), ("is_terminal", -1)):
            if flag not in steps:
                values = flags.copy()
                if length:
                    values[index] = True
                steps[flag] = values
        prepared.append(episode)
    if not prepared:
        raise ValueError("write_rlds needs at least one episode")
    tree = {
        "pythonClassName": _CLASS["dict"],
        "featuresDict": {
            "features": {
                key: (
                    {
                        "pythonClassName": _CLASS["dataset"],
                        "sequence": {
                            "feature": _feature_json(value, key, image_encoding, True),
                            "length": "-1",
                        },
                    }
                    if key == "steps"
                    else _feature_json(value, key, image_encoding, False)
                )
                for key, value in prepared[0].items()
            }
        },
    }
    infos = parse_features(tree)
    out = Path(root) / name / version
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.json").write_text(json.dumps(tree, indent=2))
    num_shards = max(1, min(num_shards, len(prepared)))
    shard_lengths = []
    bounds = np.linspace(0, len(prepared), num_shards + 1).astype(int)
    for shard in range(num_shards):
        part = prepared[bounds[shard] : bounds[shard + 1]]  # contiguous: order survives
        file = out / f"{name}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"
        shard_lengths.append(_write_records(file, (_encode_episode(e, infos) for e in part)))
    info = {
        "name": name,
        "version": version,
        "fileFormat": "tfrecord",
        "moduleName": f"evalharness.data.rlds.{name}",
        "splits": [
            {
                "name": split,
                "numBytes": str(sum(f.stat().st_size for f in out.glob("*.tfrecord*"))),
                "shardLengths": [str(n) for n in shard_lengths],
                "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            }
        ],
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"steps/observation/image": x}`` → ``{"steps": {"observation": {"image": x}}}``."""
    return _unflatten(flat)
