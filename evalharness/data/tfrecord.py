"""TFRecord files and ``tf.train.Example`` messages without TensorFlow.

TFRecord framing, per record (little endian)::

    uint64 length | uint32 masked_crc32c(length bytes) | payload | uint32 masked_crc32c(payload)

with ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`` (mod 2**32) over CRC-32C
(Castagnoli). The payload of an RLDS/TFDS record is a serialized ``tf.train.Example``::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }     # repeated entries {key = 1, value = 2}
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                        Int64List int64_list = 3; } }
    *List     { repeated ... value = 1; }               # floats/int64s packed or not

A minimal protobuf wire-format codec covers exactly that. Decoded features are
``(kind, values)`` with kind ``"bytes"`` (list of bytes), ``"float"`` (float32 array) or
``"int64"`` (int64 array).

CRC-32C in pure Python runs at a few MB/s, too slow for image datasets; `crc32c` splits
large buffers into lanes processed together by numpy and joins the lane CRCs with the
GF(2) "append zeros" operator (the zlib ``crc32_combine`` construction).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np

from evalharness.data.errors import DatasetError

Feature = tuple[str, "list[bytes] | np.ndarray"]

# --------------------------------------------------------------------------- CRC-32C

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8
_M32 = 0xFFFFFFFF


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _make_table()
_TABLE_NP = np.asarray(_TABLE, dtype=np.uint32)


def _raw_update(crc: int, data: bytes) -> int:
    """CRC register after feeding ``data`` (no pre/post inversion); linear in (crc, data)."""
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _apply(operator: tuple[int, ...], vector: int) -> int:
    out = 0
    i = 0
    while vector:
        if vector & 1:
            out ^= operator[i]
        vector >>= 1
        i += 1
    return out


@lru_cache(maxsize=64)
def _zeros_operator(num_bytes: int) -> tuple[int, ...]:
    """The 32 columns of the linear map "feed num_bytes zero bytes" on the CRC register."""
    result = tuple(1 << i for i in range(32))  # identity
    power = tuple(_raw_update(1 << i, b"\0") for i in range(32))  # one zero byte
    n = num_bytes
    while n:
        if n & 1:
            result = tuple(_apply(power, col) for col in result)
        power = tuple(_apply(power, col) for col in power)
        n >>= 1
    return result


def _raw_crc_lanes(data: bytes, lanes: int = 1024) -> int:
    """Raw CRC (register starting at 0) of a large buffer, ``lanes`` slices at a time."""
    arr = np.frombuffer(data, dtype=np.uint8)
    lane_len = len(arr) // lanes
    body = np.ascontiguousarray(arr[: lanes * lane_len].reshape(lanes, lane_len).T)
    regs = np.zeros(lanes, dtype=np.uint32)
    for column in body:
        regs = _TABLE_NP[(regs ^ column) & 0xFF] ^ (regs >> 8)
    shift = _zeros_operator(lane_len)
    crc = 0
    for reg in regs.tolist():
        crc = _apply(shift, crc) ^ reg
    return _raw_update(crc, data[lanes * lane_len :])


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord uses it."""
    if len(data) < 1 << 15:
        return _raw_update(_M32, data) ^ _M32
    # register(init=~0, data) = zeros(len)(~0) ^ register(init=0, data), by linearity
    return _apply(_zeros_operator(len(data)), _M32) ^ _raw_crc_lanes(data) ^ _M32


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _M32


# --------------------------------------------------------------------------- framing


def iter_records(path: str | Path, verify: bool = True) -> Iterator[bytes]:
    """Yield the payloads of a TFRecord file; ``verify`` checks the payload CRCs (the length
    CRC is always checked: a wrong one means the file is not TFRecord or is truncated)."""
    path = Path(path)
    try:
        handle: BinaryIO = path.open("rb")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc})") from None
    with handle:
        index = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                raise DatasetError(f"{path}: record {index} is truncated (header)")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if masked_crc32c(length_bytes) != length_crc:
                raise DatasetError(
                    f"{path}: record {index} has a bad length checksum; not a TFRecord file, "
                    "or corrupt"
                )
            (length,) = struct.unpack("<Q", length_bytes)
            payload = handle.read(length)
            footer = handle.read(4)
            if len(payload) < length or len(footer) < 4:
                raise DatasetError(
                    f"{path}: record {index} is truncated ({len(payload)} of {length} bytes)"
                )
            if verify and masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                raise DatasetError(f"{path}: record {index} fails its data checksum (corrupt)")
            yield payload
            index += 1


def write_records(path: str | Path, payloads: Iterable[bytes]) -> int:
    """Write payloads as a TFRecord file; returns the number of records."""
    count = 0
    with Path(path).open("wb") as handle:
        for payload in payloads:
            length = struct.pack("<Q", len(payload))
            handle.write(length)
            handle.write(struct.pack("<I", masked_crc32c(length)))
            handle.write(payload)
            handle.write(struct.pack("<I", masked_crc32c(payload)))
            count += 1
    return count


# --------------------------------------------------------------------------- protobuf


class _Truncated(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Truncated


_EMPTY = memoryview(b"")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """(field number, wire type, integer value, bytes view) for each field of a message;
    the view is set for length-delimited fields, the integer for the others."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, _EMPTY
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Truncated
            yield number, wire, length, buf[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _Truncated
            yield number, wire, int.from_bytes(buf[pos : pos + size], "little"), _EMPTY
            pos += size
        else:
            raise _Truncated


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_list(kind: str, buf: memoryview) -> list[bytes] | np.ndarray:
    if kind == "bytes":
        return [bytes(view) for n, w, _, view in _fields(buf) if n == 1 and w == 2]
    floats: list[np.ndarray] = []
    ints: list[int] = []
    for number, wire, value, view in _fields(buf):
        if number != 1:
            continue
        if kind == "float":
            if wire == 2:  # packed, as TF writes
                if len(view) % 4:
                    raise _Truncated
                floats.append(np.frombuffer(view, dtype="<f4"))
            elif wire == 5:  # unpacked: one fixed32 per value
                floats.append(np.frombuffer(struct.pack("<I", value), dtype="<f4"))
        elif wire == 2:
            pos = 0
            while pos < len(view):
                item, pos = _varint(view, pos)
                ints.append(_signed64(item))
        elif wire == 0:
            ints.append(_signed64(value))
    if kind == "float":
        return (np.concatenate(floats) if floats else np.zeros(0, np.float32)).astype(np.float32)
    return np.asarray(ints, dtype=np.int64)


_KINDS = {1: "bytes", 2: "float", 3: "int64"}


def decode_example(payload: bytes) -> dict[str, Feature]:
    """Decode a serialized ``tf.train.Example`` into ``{name: (kind, values)}``."""
    features: dict[str, Feature] = {}
    try:
        for number, wire, _, message in _fields(memoryview(payload)):
            if number != 1 or wire != 2:
                continue
            for n2, w2, _, entry in _fields(message):
                if n2 != 1 or w2 != 2:
                    continue
                name = ""
                feature: Feature = ("bytes", [])
                for n3, w3, _, item in _fields(entry):
                    if n3 == 1 and w3 == 2:
                        name = bytes(item).decode("utf-8")
                    elif n3 == 2 and w3 == 2:
                        for n4, w4, _, values in _fields(item):
                            if n4 in _KINDS and w4 == 2:
                                feature = (_KINDS[n4], _decode_list(_KINDS[n4], values))
                features[name] = feature
    except (_Truncated, UnicodeDecodeError):
        raise DatasetError("malformed tf.train.Example (truncated or not protobuf)") from None
    return features


def _encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, body: bytes) -> bytes:
    return _encode_varint((number << 3) | 2) + _encode_varint(len(body)) + body


def encode_example(features: Mapping[str, Feature]) -> bytes:
    """Serialize ``{name: (kind, values)}`` as a ``tf.train.Example`` (numbers packed, as TF
    writes them; names sorted so output is deterministic)."""
    entries = []
    for name in sorted(features):
        kind, values = features[name]
        if kind == "bytes":
            body = b"".join(_len_field(1, bytes(v)) for v in values)
            number = 1
        elif kind == "float":
            packed = np.asarray(values, dtype="<f4").tobytes()
            body = _len_field(1, packed) if packed else b""
            number = 2
        elif kind == "int64":
            packed = b"".join(_encode_varint(int(v)) for v in np.asarray(values).reshape(-1))
            body = _len_field(1, packed) if packed else b""
            number = 3
        else:
            raise ValueError(f"feature {name!r}: unknown kind {kind!r}")
        feature = _len_field(number, body)
        entries.append(_len_field(1, _len_field(1, name.encode("utf-8")) + _len_field(2, feature)))
    return _len_field(1, b"".join(entries))
