"""Reader for LIBERO / robomimic HDF5 demonstrations.

The layout LIBERO ships (``scripts/create_dataset.py``, checked by
``scripts/check_dataset_integrity.py``) and ``evalharness record`` writes::

    data                      attrs: problem_info (JSON with language_instruction), env_args,
                                     bddl_file_name, env_name, num_demos, total, tag, ...
    data/demo_0/actions       (T, 7) float64, gripper -1 open / +1 close
    data/demo_0/states        (T, S) flattened MuJoCo state
    data/demo_0/rewards       (T,) uint8; dones (T,) uint8
    data/demo_0/obs/agentview_rgb    (T, H, W, 3) uint8, upside down as rendered
    data/demo_0/obs/eye_in_hand_rgb  (T, H, W, 3) uint8
    data/demo_0/obs/ee_states        (T, 6) eef pos + axis-angle
    data/demo_0/obs/gripper_states   (T, 2) finger qpos
    data/demo_0/obs/joint_states     (T, 7)

One file per task; a folder of ``*_demo.hdf5`` files is a suite. Demos are read in numeric
order (demo_2 before demo_10), files in name order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from evalharness.data.episode import Episode, standardize_episode
from evalharness.data.errors import DatasetError
from evalharness.data.spec import DatasetSpec

_DEMO = re.compile(r"^demo_(\d+)$")


def hdf5_files(path: str | Path) -> list[Path]:
    """The HDF5 files of a dataset: ``path`` itself, or a folder's ``*_demo.hdf5`` (any
    ``*.hdf5`` when none is named that way), sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    files = sorted(path.glob("*_demo.hdf5")) or sorted(path.glob("*.hdf5"))
    if not files:
        shown = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
        raise DatasetError(f"{path}: no *_demo.hdf5 or *.hdf5 files (found: {shown})")
    return files


def demo_names(data: h5py.Group, source: str) -> list[str]:
    """``demo_*`` groups of ``data`` in numeric order."""
    demos = [k for k in data if _DEMO.match(k)]
    if not demos:
        raise DatasetError(
            f"{source}: group 'data' has no demo_<i> groups; found: {_listing(data.keys())}"
        )
    return sorted(demos, key=lambda k: int(_DEMO.match(k).group(1)))  # type: ignore[union-attr]


def _listing(keys: Any, limit: int = 30) -> str:
    keys = sorted(str(k) for k in keys)
    text = ", ".join(keys[:limit])
    return (text + f", ... ({len(keys)} in all)") if len(keys) > limit else (text or "nothing")


def _dataset_paths(group: h5py.Group) -> list[str]:
    paths: list[str] = []
    group.visititems(
        lambda name, obj: paths.append(name) if isinstance(obj, h5py.Dataset) else None
    )
    return paths


def _read(group: h5py.Group, key: str, source: str, demo: str) -> np.ndarray:
    """The array at ``key`` (a/b/c) under a demo group, or an error listing what exists."""
    node: Any = group
    for part in key.split("/"):
        if not isinstance(node, h5py.Group) or part not in node:
            raise DatasetError(
                f"{source}: data/{demo} has no {key!r}; available: {_listing(_dataset_paths(group))}"
            )
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(
            f"{source}: data/{demo}/{key} is a group, not an array; available arrays: "
            f"{_listing(_dataset_paths(group))}"
        )
    return np.asarray(node[()])


def _attr_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _attr_text(value.reshape(-1)[0])
    if isinstance(value, np.bytes_ | np.str_):
        return _attr_text(value.item())
    return str(value)


def language_instruction(data: h5py.Group, source: str) -> str:
    """The instruction from ``data.attrs["problem_info"]`` (JSON), as LIBERO stores it."""
    if "problem_info" not in data.attrs:
        raise DatasetError(
            f"{source}: group 'data' has no 'problem_info' attribute (LIBERO stores the "
            f"language_instruction there); attributes: {_listing(data.attrs.keys())}"
        )
    text = _attr_text(data.attrs["problem_info"])
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        raise DatasetError(
            f"{source}: data.attrs['problem_info'] is not JSON: {text[:80]!r}"
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get("language_instruction"), str):
        raise DatasetError(
            f"{source}: data.attrs['problem_info'] has no string 'language_instruction': "
            f"{text[:120]!r}"
        )
    return str(info["language_instruction"]).strip()


def count_episodes(path: str | Path) -> int:
    """Number of demos without reading any arrays."""
    total = 0
    for file in hdf5_files(path):
        with _open(file) as handle:
            total += len(demo_names(_data_group(handle, str(file)), str(file)))
    return total


def _open(file: Path) -> h5py.File:
    try:
        return h5py.File(file, "r")
    except OSError as exc:
        raise DatasetError(f"{file}: not a readable HDF5 file ({exc})") from None


def _data_group(handle: h5py.File, source: str) -> h5py.Group:
    data = handle.get("data")
    if not isinstance(data, h5py.Group):
        raise DatasetError(
            f"{source}: no group 'data' (LIBERO/robomimic layout data/demo_i/...); top level "
            f"holds: {_listing(handle.keys())}"
        )
    return data


def read_libero_hdf5(path: str | Path, spec: DatasetSpec) -> Iterator[Episode]:
    """Yield standard episodes from one LIBERO HDF5 file or a folder of them."""
    if spec.format != "libero_hdf5":
        raise DatasetError(f"spec {spec.name!r} is for {spec.format}, not LIBERO HDF5")
    keys = [*spec.image_keys.values(), *spec.proprio_keys, spec.action_key]
    for file in hdf5_files(path):
        source = str(file)
        with _open(file) as handle:
            data = _data_group(handle, source)
            language = language_instruction(data, source)
            for demo in demo_names(data, source):
                group = data[demo]
                if not isinstance(group, h5py.Group):
                    raise DatasetError(f"{source}: data/{demo} is an array, not a demo group")
                try:
                    raw = {key: _read(group, key, source, demo) for key in keys}
                except OSError as exc:  # truncated or corrupt chunks
                    raise DatasetError(f"{source}: data/{demo}: unreadable ({exc})") from None
                yield standardize_episode(raw, language, spec, source, f"{file.name}:{demo}")
