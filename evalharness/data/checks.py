"""Dtype and shape checks at the dataset boundary.

Everything a reader hands to the rest of the harness passes through `as_float32`,
`as_uint8_images` or `as_int32`. Trainers downstream (JAX in particular) fail far from the
cause on object arrays, strings in numeric fields or silently upcast float64; here the error
names the file, the key, the dtype and a sample value instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evalharness.data.errors import DatasetError

_INT32 = np.iinfo(np.int32)


def sample_value(array: np.ndarray) -> str:
    """A short printable sample of an array's first element, for error messages."""
    if array.size == 0:
        return "<empty>"
    first = array.reshape(-1)[0]
    text = repr(first.item() if isinstance(first, np.generic) else first)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(source: str, key: str) -> str:
    return f"{source}: {key!r}" if source else repr(key)


def to_array(value: Any, source: str, key: str) -> np.ndarray:
    """`np.asarray`, with ragged or otherwise unconvertible input reported as a DatasetError."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"{_where(source, key)}: cannot be read as an array ({exc}); expected numbers"
        ) from None


def as_float32(value: Any, source: str, key: str) -> np.ndarray:
    """Numeric data as float32: float16/32/64, bool and in-range integers are converted.

    Rejected: object arrays, strings/bytes, complex numbers and non-finite values (NaN/inf in
    actions or proprio poison the dataset statistics and every loss computed from them).
    float64 values beyond float32's range are rejected rather than turned into inf.
    """
    array = to_array(value, source, key)
    kind = array.dtype.kind
    if kind not in "fiub":
        what = {
            "O": "object array (mixed or ragged Python values)",
            "U": "strings",
            "S": "bytes",
            "c": "complex numbers",
        }.get(kind, f"dtype {array.dtype}")
        raise DatasetError(
            f"{_where(source, key)}: holds {what} (dtype {array.dtype}, shape {array.shape}, "
            f"sample {sample_value(array)}); expected numbers convertible to float32"
        )
    if kind == "f" and array.size and not np.all(np.isfinite(array)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise DatasetError(
            f"{_where(source, key)}: non-finite value {array[bad]} at index {list(bad)} "
            f"(dtype {array.dtype}); expected finite numbers"
        )
    if array.dtype == np.float32:
        return array
    limit = float(np.finfo(np.float32).max)
    if array.size and np.abs(array.astype(np.float64)).max() > limit:
        idx = int(np.argmax(np.abs(array.astype(np.float64)).reshape(-1)))
        raise DatasetError(
            f"{_where(source, key)}: value {array.reshape(-1)[idx]} (dtype {array.dtype}) does "
            "not fit in float32"
        )
    return array.astype(np.float32)


def as_int32(value: Any, source: str, key: str) -> np.ndarray:
    """Integer ids (int64 in most files) as int32 when every value is in range."""
    array = to_array(value, source, key)
    if array.dtype.kind not in "iub":
        raise DatasetError(
            f"{_where(source, key)}: dtype {array.dtype} (sample {sample_value(array)}); "
            "expected integers"
        )
    if array.size and (array.min() < _INT32.min or array.max() > _INT32.max):
        bad = array.max() if array.max() > _INT32.max else array.min()
        raise DatasetError(
            f"{_where(source, key)}: value {int(bad)} (dtype {array.dtype}) is out of int32 "
            f"range [{_INT32.min}, {_INT32.max}]; cannot convert safely"
        )
    return array.astype(np.int32)


def as_uint8_images(value: Any, source: str, key: str) -> np.ndarray:
    """Image stacks (T, H, W, 3) as uint8.

    Integer images already in 0..255 are converted; float images are rejected because
    whether they mean 0..1 or 0..255 cannot be known from the data.
    """
    array = to_array(value, source, key)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise DatasetError(
            f"{_where(source, key)}: shape {array.shape}; expected images (T, H, W, 3)"
        )
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DatasetError(
                f"{_where(source, key)}: dtype {array.dtype} with values in "
                f"[{array.min()}, {array.max()}]; expected uint8 pixels in 0..255"
            )
        return array.astype(np.uint8)
    raise DatasetError(
        f"{_where(source, key)}: dtype {array.dtype} (sample {sample_value(array)}); expected "
        "uint8 images (float images are ambiguous: 0..1 or 0..255?)"
    )


def check_shape(array: np.ndarray, source: str, key: str, expected: tuple[int | None, ...]) -> None:
    """Raise unless `array.shape` matches `expected` (None = any size on that axis)."""
    ok = array.ndim == len(expected) and all(
        e is None or e == s for e, s in zip(expected, array.shape, strict=False)
    )
    if not ok:
        shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise DatasetError(f"{_where(source, key)}: shape {array.shape}; expected {shown}")
