"""msgpack with numpy arrays: the encodings openpi and vla-eval put on the wire.

Both peers send numpy arrays inline in msgpack as a small map, and differ only in how the
map's keys are spelled:

- **openpi** (Physical-Intelligence/openpi ``packages/openpi-client/src/openpi_client/
  msgpack_numpy.py``): binary keys ``{b"__ndarray__": True, b"data": <bytes>, b"dtype":
  dtype.str, b"shape": shape}``; numpy scalars as ``{b"__npgeneric__": True, b"data":
  item(), b"dtype": dtype.str}``. evalharness's own protocol uses this encoding too.
- **vla-eval** (allenai/vla-evaluation-harness ``src/vla_eval/protocol/numpy_codec.py``):
  string keys ``{"__ndarray__": True, "data", "dtype", "shape"}``; numpy scalars become plain
  Python numbers.

`pack` writes one flavour exactly; `unpack` reads either. Only plain numeric data crosses:
arrays of bool, signed/unsigned integer and float dtypes. Object, void and complex arrays are
refused when packing (as openpi does) *and* when unpacking, where a forged dtype could
otherwise reinterpret bytes as Python object pointers; msgpack extension types (the way
pickled payloads ride along in msgpack) are refused too. A size limit applies on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from evalharness.errors import EvalharnessError

OPENPI = "openpi"
VLAEVAL = "vlaeval"
FLAVOURS = (OPENPI, VLAEVAL)

#: numpy dtype kinds allowed on the wire: bool, signed int, unsigned int, float.
ALLOWED_KINDS = frozenset("biuf")
#: default limit on one encoded message, both directions (a batch of 32 windowed 256² frame
#: pairs is ~25 MB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class CodecError(EvalharnessError, ValueError):
    """A message that cannot be encoded or is refused on decoding; the text says why."""


def _check_dtype(dtype: np.dtype[Any], where: str) -> None:
    if dtype.kind not in ALLOWED_KINDS:
        raise CodecError(
            f"{where}: numpy dtype {dtype.str!r} (kind {dtype.kind!r}) is refused; only bool, "
            "integer and float arrays cross the wire (object, void, complex and string arrays "
            "could carry pickled or pointer data)"
        )


def _default_openpi(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype, f"packing an array of shape {obj.shape}")
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype, "packing a numpy scalar")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise CodecError(f"cannot pack a {type(obj).__name__}: only msgpack types and numpy arrays")


def _default_vlaeval(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype, f"packing an array of shape {obj.shape}")
        return {
            "__ndarray__": True,
            "data": np.ascontiguousarray(obj).tobytes(),
            "dtype": obj.dtype.str,
            "shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype, "packing a numpy scalar")
        return obj.item()
    raise CodecError(f"cannot pack a {type(obj).__name__}: only msgpack types and numpy arrays")


def pack(obj: Any, flavour: str = OPENPI, max_bytes: int | None = MAX_MESSAGE_BYTES) -> bytes:
    """Encode ``obj`` (nested dicts/lists of str, numbers, bytes and numpy arrays).

    Raises `CodecError` for a refused dtype, an unsupported type or a message over
    ``max_bytes``.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"codec flavour must be one of {FLAVOURS}, got {flavour!r}")
    default = _default_openpi if flavour == OPENPI else _default_vlaeval
    try:
        data: bytes = msgpack.packb(obj, default=default, use_bin_type=True)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode message: {exc}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise CodecError(
            f"encoded message is {len(data)} bytes, over the limit of {max_bytes} bytes"
        )
    return data


def _field(obj: Mapping[Any, Any], name: str) -> Any:
    if name in obj:
        return obj[name]
    return obj.get(name.encode())


def _object_hook(obj: dict[Any, Any]) -> Any:
    if _field(obj, "__ndarray__"):
        try:
            dtype = np.dtype(_field(obj, "dtype"))
            shape = tuple(int(n) for n in _field(obj, "shape"))
        except (TypeError, ValueError) as exc:
            raise CodecError(f"malformed array: bad dtype or shape ({exc})") from None
        _check_dtype(dtype, f"decoding an array of shape {shape}")
        data = _field(obj, "data")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not isinstance(data, bytes) or len(data) != expected or min(shape, default=0) < 0:
            size = len(data) if isinstance(data, bytes) else type(data).__name__
            raise CodecError(
                f"malformed array: dtype {dtype.str} shape {shape} needs {expected} bytes, "
                f"got {size}"
            )
        # A copy: the decoded arrays must be writable and own their memory.
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if _field(obj, "__npgeneric__"):
        try:
            dtype = np.dtype(_field(obj, "dtype"))
        except (TypeError, ValueError) as exc:
            raise CodecError(f"malformed numpy scalar: bad dtype ({exc})") from None
        _check_dtype(dtype, "decoding a numpy scalar")
        return dtype.type(_field(obj, "data"))
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise CodecError(
        f"msgpack extension type {code} ({len(data)} bytes) is refused: only plain data and "
        "numpy arrays cross the wire"
    )


def unpack(data: bytes, max_bytes: int | None = MAX_MESSAGE_BYTES) -> Any:
    """Decode a message written by either flavour (or by the peers' own code).

    Map keys are decoded to str where they are text; arrays come back as writable numpy
    arrays. Raises `CodecError` for refused dtypes, extension types, malformed arrays,
    invalid msgpack, or a message over ``max_bytes``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected a binary message, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise CodecError(f"message is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(
            data, object_hook=_object_hook, ext_hook=_refuse_ext, raw=False, strict_map_key=False
        )
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"not a valid msgpack message ({len(data)} bytes): {exc}") from exc
