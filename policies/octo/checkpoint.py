"""The Octo checkpoint directory, read and written without JAX, flax or orbax.

Both Octo families (``octo_jax`` and ``octo_pt``) start here, so a torch-only install can load
a released JAX checkpoint. The layout (what upstream ``OctoModel.load_pretrained`` in
``octo/model/octo_model.py`` reads)::

    CKPT/config.json                 training config; the model is built from config["model"]
    CKPT/example_batch.msgpack       flax msgpack of one batch (shapes the model is built for)
    CKPT/dataset_statistics.json     normalization statistics, per dataset or single-dataset
    CKPT/<step>/default/checkpoint   flax msgpack of the whole parameter tree (orbax "aggregate")
    CKPT/<step>/default/_METADATA    orbax's tree metadata (JSON)

Checkpoints written by a current orbax (OCDBT/tensorstore, one file per array) are read through
``orbax.checkpoint`` when it is installed (the ``jax`` extra brings it). evalharness writes its
own checkpoints in the aggregate layout, which every version of Octo and evalharness reads.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from evalharness.policies.common import hub
from evalharness.policies.common.compat import CheckpointError, check_finite, flatten_tree

HF_PREFIX = hub.HF_PREFIX
_NDARRAY, _COMPLEX, _NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"

# Every ModuleSpec an Octo config may name, and nothing else: a config is data, never a way to
# import arbitrary Python. Values are the upstream module paths.
KNOWN_MODULES: dict[str, frozenset[str]] = {
    "octo.model.components.tokenizers": frozenset(
        {"ImageTokenizer", "LanguageTokenizer", "LowdimObsTokenizer", "BinTokenizer"}
    ),
    "octo.model.components.vit_encoders": frozenset(
        {"SmallStem", "SmallStem16", "SmallStem32", "PatchEncoder"}
    ),
    "octo.model.components.action_heads": frozenset(
        {"DiffusionActionHead", "L1ActionHead", "MSEActionHead", "ContinuousActionHead"}
    ),
    "octo.data.utils.text_processing": frozenset({"HFTokenizer"}),
    "octo.utils.train_utils": frozenset({"hf_weights_loader"}),
}


# --------------------------------------------------------------------------------------------
# flax msgpack codec


class _Packed(NamedTuple):
    """An array still in its msgpack ext payload, decoded once its key path is known."""

    code: int
    payload: bytes


def _array_from_bytes(data: bytes, source: str, key: str = "") -> np.ndarray:
    import msgpack

    what = f"array {key!r}" if key else "an array"
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    name = dtype_name.decode() if isinstance(dtype_name, bytes) else str(dtype_name)
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as exc:  # pragma: no cover - ml_dtypes comes with jax
            raise CheckpointError(
                f"{source}: holds bfloat16 arrays; install `ml_dtypes` (or evalharness[jax])"
            ) from exc
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        try:
            dtype = np.dtype(name)
        except TypeError:
            raise CheckpointError(
                f"{source}: {what} {tuple(shape)} has dtype {name!r}, which numpy cannot read; "
                "expected numeric weights (float32, bfloat16, …) — the file is corrupted or was "
                "not written by flax"
            ) from None
    shape = tuple(int(d) for d in shape)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buffer) != expected:
        raise CheckpointError(
            f"{source}: {what} {shape} {dtype.name} should hold {expected} bytes but holds "
            f"{len(buffer)}; the file is corrupted"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _decode(tree: Any, source: str, key: str = "") -> Any:
    """Decode every :class:`_Packed` array, joining chunked ones, so errors name the key."""
    if isinstance(tree, _Packed):
        try:
            array = _array_from_bytes(tree.payload, source, key)
        except CheckpointError:
            raise
        except Exception as exc:  # a mangled ext payload: msgpack or numpy complains
            raise CheckpointError(
                f"{source}: array {key!r} cannot be decoded ({type(exc).__name__}: {exc}); "
                "the file is corrupted"
            ) from exc
        return array[()] if tree.code == _NPSCALAR else array
    if isinstance(tree, dict):
        if _CHUNKED in tree:
            chunks = [
                _decode(tree["chunks"][k], source, f"{key}/chunks/{k}")
                for k in sorted(tree["chunks"], key=int)
            ]
            shape = tuple(tree["shape"][k] for k in sorted(tree["shape"], key=int))
            return np.concatenate(chunks).reshape(shape)
        return {k: _decode(v, source, f"{key}/{k}" if key else str(k)) for k, v in tree.items()}
    return tree


_MAP_HEADERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


def _where_reading_stops(data: bytes) -> tuple[str, int]:
    """The key path and byte offset at which a msgpack tree stops decoding (for the message)."""
    import msgpack

    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=False,
        ext_hook=lambda code, payload: None,
        max_buffer_size=max(len(data), 1),
    )
    unpacker.feed(data)
    path: list[str] = []

    def walk() -> None:
        offset = unpacker.tell()
        if offset < len(data) and data[offset] in _MAP_HEADERS:
            for _ in range(unpacker.read_map_header()):
                path.append(str(unpacker.unpack()))
                walk()
                path.pop()
        else:
            unpacker.skip()

    with contextlib.suppress(Exception):  # stopping is what we are looking for
        walk()
    return "/".join(path), int(unpacker.tell())


def msgpack_restore(data: bytes, source: str = "msgpack data") -> dict[str, Any]:
    """Decode flax's msgpack serialization (``flax.serialization.msgpack_restore``) to numpy.

    A truncated or corrupted file raises :class:`CheckpointError` naming `source`, the key
    being read where decoding stopped and the byte offset.
    """
    try:
        import msgpack
    except ImportError as exc:  # pragma: no cover - msgpack is in both extras
        raise CheckpointError(
            "reading Octo checkpoints needs `msgpack` (pip install msgpack)"
        ) from exc

    def ext_hook(code: int, payload: bytes) -> Any:
        if code in (_NDARRAY, _NPSCALAR):
            return _Packed(code, payload)
        if code == _COMPLEX:
            real, imag = msgpack.unpackb(payload)
            return complex(real, imag)
        return msgpack.ExtType(code, payload)

    try:
        tree = msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
    except Exception as exc:
        key, offset = _where_reading_stops(data)
        where = f"; reading stopped in {key!r}" if key else "; reading stopped"
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{source}: not a readable flax msgpack file ({error}){where} "
            f"at byte {offset} of {len(data)} — the file is truncated or corrupted; download "
            "or copy it again"
        ) from exc
    if not isinstance(tree, dict):
        raise CheckpointError(
            f"{source}: expected a msgpack map at top level, got {type(tree).__name__}"
        )
    try:
        return _decode(tree, source)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{source}: an array cannot be decoded ({type(exc).__name__}: {exc}); the file is "
            "corrupted"
        ) from exc


def msgpack_serialize(tree: Mapping[str, Any]) -> bytes:
    """Encode a nested dict of arrays the way ``flax.serialization.msgpack_serialize`` does."""
    import msgpack

    def pack_array(array: np.ndarray) -> bytes:
        if array.dtype.hasobject:
            raise TypeError(f"cannot serialize an object-dtype array of shape {array.shape}")
        return msgpack.packb((array.shape, array.dtype.name, array.tobytes("C")), use_bin_type=True)

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(_NDARRAY, pack_array(obj))
        if isinstance(obj, np.generic):
            return msgpack.ExtType(_NPSCALAR, pack_array(np.asarray(obj)))
        if hasattr(obj, "__array__"):  # jax.Array, torch tensors converted by the caller
            return msgpack.ExtType(_NDARRAY, pack_array(np.asarray(obj)))
        raise TypeError(f"cannot serialize {type(obj).__name__}")

    return msgpack.packb(_plain(tree), default=default, strict_types=True)


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _plain(v) for i, v in enumerate(tree)}
    return tree


# --------------------------------------------------------------------------------------------
# the directory


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A local checkpoint directory; ``hf://org/name[@REV]`` comes from the Hugging Face hub
    or, offline, its local cache (`evalharness.policies.common.hub`)."""
    text = str(path)
    try:
        directory = Path(hub.local_path(text)).expanduser()
    except hub.HubError as exc:
        raise CheckpointError(str(exc)) from exc
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is a file; an Octo checkpoint is a directory with config.json, "
            "example_batch.msgpack, dataset_statistics.json and <step>/default/checkpoint"
        )
    return directory


def available_steps(directory: Path) -> list[int]:
    """The integer step folders of a checkpoint directory, ascending."""
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; an Octo checkpoint directory needs it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def shim_config(config: dict[str, Any]) -> dict[str, Any]:
    """Octo 1.0 → 1.5 config renames (``pred_horizon`` → ``action_horizon``), in place."""
    heads = config.get("model", {}).get("heads", {}) or {}
    for spec in heads.values():
        kwargs = spec.get("kwargs", {}) if isinstance(spec, dict) else {}
        if "pred_horizon" in kwargs:
            kwargs.setdefault("action_horizon", kwargs.pop("pred_horizon"))
    return config


def shim_example_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Octo 1.0 → 1.5 example-batch renames (``tasks`` → ``task``, ``pad_mask`` → ``timestep_pad_mask``)."""
    if "tasks" in batch and "task" not in batch:
        batch["task"] = batch.pop("tasks")
    obs = batch.get("observation", {})
    if "timestep_pad_mask" not in obs and "pad_mask" in obs:
        obs["timestep_pad_mask"] = obs["pad_mask"]
    return batch


def check_module_specs(config: Mapping[str, Any], source: str) -> None:
    """Refuse a config naming any module outside :data:`KNOWN_MODULES` (no arbitrary imports)."""

    def walk(node: Any, where: str) -> None:
        if isinstance(node, Mapping):
            if "module" in node and "name" in node and isinstance(node.get("module"), str):
                allowed = KNOWN_MODULES.get(node["module"], frozenset())
                if node["name"] not in allowed:
                    known = ", ".join(
                        f"{m}.{n}" for m, names in KNOWN_MODULES.items() for n in sorted(names)
                    )
                    raise CheckpointError(
                        f"{source}: {where} names module {node['module']}.{node['name']}, which "
                        f"evalharness does not implement; known modules: {known}"
                    )
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(config.get("model", {}), "model")
    if config.get("text_processor"):
        walk(config["text_processor"], "text_processor")


def params_path(directory: Path, step: int) -> Path:
    """The file (aggregate msgpack) or folder (current orbax) holding the parameters of a step."""
    step_dir = directory / str(step)
    if not step_dir.is_dir():
        steps = available_steps(directory)
        raise CheckpointError(f"{directory} has no step {step}; available steps: {steps or 'none'}")
    item = step_dir / "default"
    if not item.is_dir():
        items = [p for p in step_dir.iterdir() if p.is_dir()]
        if len(items) != 1:
            raise CheckpointError(
                f"{step_dir}: expected a 'default' item folder with the parameters, found "
                f"{sorted(p.name for p in items) or 'nothing'}"
            )
        item = items[0]
    aggregate = item / "checkpoint"
    return aggregate if aggregate.is_file() else item


def read_params(directory: Path, step: int) -> dict[str, Any]:
    """The nested parameter tree (numpy) saved at ``<directory>/<step>``.

    Refuses (:class:`CheckpointError`, naming the file and key) a truncated or corrupted file
    and NaN/inf weights, for every Octo family at once.
    """
    path = params_path(directory, step)
    if path.is_file():
        params = msgpack_restore(path.read_bytes(), source=str(path))
    else:
        params = _read_with_orbax(path)
    check_finite(flatten_tree(params), str(path))
    return params


def _read_with_orbax(item: Path) -> dict[str, Any]:
    if not any(item.iterdir()):
        raise CheckpointError(f"{item} is empty; the parameters were never written")
    try:
        import orbax.checkpoint as ocp
    except ImportError as exc:
        raise CheckpointError(
            f"{item} was written by a current orbax (one file per array, no aggregate "
            "'checkpoint' file); reading it needs orbax-checkpoint: pip install 'evalharness[jax]'"
        ) from exc
    try:
        restored = ocp.PyTreeCheckpointer().restore(item.resolve())
    except Exception as exc:
        raise CheckpointError(
            f"{item}: orbax could not restore the parameters ({type(exc).__name__}: {exc})"
        ) from exc
    return _to_numpy(restored)


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


@dataclass
class OctoCheckpoint:
    """Everything in an Octo checkpoint directory, as plain Python and numpy."""

    directory: Path
    step: int
    config: dict[str, Any]
    example_batch: dict[str, Any]
    dataset_statistics: dict[str, Any]
    params: dict[str, Any] = field(repr=False)

    @property
    def flat_params(self) -> dict[str, np.ndarray]:
        """Parameters as {"octo_transformer/.../kernel": array}."""
        return flatten_tree(self.params)

    @property
    def name(self) -> str:
        return f"{self.directory} (step {self.step})"

    @property
    def params_file(self) -> Path:
        """Where the parameters were read from (for messages that name the file)."""
        return params_path(self.directory, self.step)


def load_checkpoint(path: str | Path, step: int | None = None) -> OctoCheckpoint:
    """Read an Octo checkpoint directory (or ``hf://org/name[@REV]``) without any ML framework."""
    if step is not None and str(path).startswith(HF_PREFIX):
        # Upstream refuses this too: hub repos hold one step.
        raise CheckpointError(f"{path}: a step cannot be chosen for a hub checkpoint")
    directory = resolve_checkpoint_dir(path)
    config = shim_config(_read_json(directory / "config.json"))
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(
            f"{directory / 'config.json'}: has no 'model' entry; is this an Octo checkpoint?"
        )
    check_module_specs(config, str(directory / "config.json"))
    batch_path = directory / "example_batch.msgpack"
    if not batch_path.is_file():
        raise CheckpointError(f"{batch_path} is missing; an Octo checkpoint directory needs it")
    example_batch = shim_example_batch(msgpack_restore(batch_path.read_bytes(), str(batch_path)))
    stats_path = directory / "dataset_statistics.json"
    statistics = _read_json(stats_path) if stats_path.is_file() else {}
    steps = available_steps(directory)
    if step is None:
        if not steps:
            raise CheckpointError(
                f"{directory} has no <step>/ folder with parameters (e.g. 300000/default/checkpoint)"
            )
        step = steps[-1]
    params = read_params(directory, step)
    return OctoCheckpoint(directory, step, config, example_batch, statistics, params)


def save_checkpoint(
    directory: str | Path,
    step: int,
    params: Mapping[str, Any],
    config: Mapping[str, Any],
    example_batch: Mapping[str, Any],
    dataset_statistics: Mapping[str, Any],
) -> Path:
    """Write the upstream layout (aggregate msgpack params), readable by Octo and evalharness."""
    directory = Path(directory)
    item = directory / str(step) / "default"
    item.mkdir(parents=True, exist_ok=True)
    write_checkpoint_files(directory, config, example_batch, dataset_statistics)
    flat = flatten_tree(params)
    tmp = item / "checkpoint.tmp"
    tmp.write_bytes(msgpack_serialize(params))
    tmp.replace(item / "checkpoint")
    metadata = {
        "tree_metadata": {
            str(tuple(key.split("/"))): {
                "key_metadata": [{"key": part, "key_type": 2} for part in key.split("/")],
                "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": True},
            }
            for key in flat
        }
    }
    (item / "_METADATA").write_text(json.dumps(metadata))
    return directory


def write_checkpoint_files(
    directory: Path,
    config: Mapping[str, Any],
    example_batch: Mapping[str, Any],
    dataset_statistics: Mapping[str, Any],
) -> None:
    """``config.json``, ``example_batch.msgpack`` and ``dataset_statistics.json``: the files
    beside the weights that both Octo layouts (JAX msgpack, torch safetensors) share."""
    (directory / "config.json").write_text(json.dumps(config, indent=1, default=_json_default))
    (directory / "example_batch.msgpack").write_bytes(msgpack_serialize(example_batch))
    (directory / "dataset_statistics.json").write_text(
        json.dumps(dataset_statistics, indent=1, default=_json_default)
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


_STEP_OPTION = re.compile(r"^\d+$")


def parse_step(value: str | None) -> int | None:
    """The ``?step=N`` policy option."""
    if value is None or value == "":
        return None
    if not _STEP_OPTION.match(value):
        raise CheckpointError(f"option step={value!r} must be a non-negative integer")
    return int(value)
