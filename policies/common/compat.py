"""Checkpoint ↔ model compatibility report, shared by every policy family.

Loading a checkpoint into a model built from a config is a comparison of two sets of named
tensors. Every leaf ends in one of these states:

- ``loaded``: same name (after the family's key mapping) and shape; copied.
- ``missing``: the model has it, the checkpoint does not; it keeps its fresh initialization.
- ``unexpected``: the checkpoint has it, the model does not; ignored.
- ``shape_mismatch``: both have it with different shapes; fresh initialization.
- ``partial``: shape mismatch where the overlapping slice was copied (octo-pytorch's
  ``non_strict`` behaviour); the rest is fresh.
- ``skipped``: deliberately not loaded (a skip pattern, or a family rule such as "T5 comes
  from elsewhere"), with the reason.

Families pass an ``explain`` callback that turns a known mismatch into plain words, e.g.
Octo's diffusion head: "checkpoint 444 rows = time 32 + embedding 384 + action 7 × horizon 4;
this config 430 = 32 + 384 + 7 × 2 → action_horizon changed 4 → 2".

Strict loading (the default everywhere) refuses any report that is not fully ``loaded`` or
``skipped``, raising :class:`CheckpointMismatchError` whose message is the report itself. A
policy loaded non-strictly says so exactly once, through :func:`report_non_strict_load` (a
:class:`NonStrictLoadWarning`), whatever its family.

Corruption is checked before any of that and refused even with ``strict=False``:
:func:`check_finite` (NaN/inf weights) where each family reads its weights file, and
:func:`check_dtypes` (an int32 or string where a float32 kernel belongs) against the model's
tensors. Floats of another width are cast to the model's dtype by every loader.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.errors import EvalharnessError

Shape = tuple[int, ...]
#: explain(key, checkpoint_shape, model_shape) -> plain-language reason, or None if unknown.
Explainer = Callable[[str, "Shape | None", "Shape | None"], "str | None"]

STATUSES = ("loaded", "missing", "unexpected", "shape_mismatch", "partial", "skipped")
_PROBLEMS = ("missing", "unexpected", "shape_mismatch", "partial")


class CheckpointError(EvalharnessError, ValueError):
    """A checkpoint file or directory that cannot be read as what it claims to be."""


class CheckpointMismatchError(CheckpointError):
    """Strict loading refused: the checkpoint does not fit the model built from the config."""

    def __init__(self, report: CompatibilityReport, hint: str = "") -> None:
        self.report = report
        message = "checkpoint does not fit the model built from its config (strict loading)\n"
        message += report.format()
        message += "\n" + (
            hint
            or "To load every tensor that fits and initialize the rest fresh, load with "
            "strict=False (policy string option `?strict=false`)."
        )
        super().__init__(message)


@dataclass(frozen=True)
class LeafReport:
    """What happened to one named tensor."""

    key: str
    status: str
    checkpoint_shape: Shape | None = None
    model_shape: Shape | None = None
    #: The checkpoint's name for this leaf when the family maps names (JAX → torch).
    source_key: str | None = None
    explanation: str = ""

    def describe(self) -> str:
        src = f" (checkpoint {self.source_key})" if self.source_key not in (None, self.key) else ""
        shapes = ""
        if self.status in ("shape_mismatch", "partial"):
            shapes = f": checkpoint {_fmt(self.checkpoint_shape)}, model {_fmt(self.model_shape)}"
        elif self.status == "missing":
            shapes = f" {_fmt(self.model_shape)}"
        elif self.status == "unexpected":
            shapes = f" {_fmt(self.checkpoint_shape)}"
        why = f" — {self.explanation}" if self.explanation else ""
        return f"{self.key}{src}{shapes}{why}"


def _fmt(shape: Shape | None) -> str:
    return "?" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


class CompatibilityReport:
    """The per-leaf outcome of loading a checkpoint into a model, and why."""

    def __init__(self, entries: Iterable[LeafReport], source: str = "", target: str = "") -> None:
        self.entries: tuple[LeafReport, ...] = tuple(sorted(entries, key=lambda e: e.key))
        for entry in self.entries:
            if entry.status not in STATUSES:
                raise ValueError(
                    f"unknown leaf status {entry.status!r}; expected one of {STATUSES}"
                )
        self.source = source
        self.target = target

    def by_status(self, status: str) -> list[LeafReport]:
        return [e for e in self.entries if e.status == status]

    @property
    def loaded(self) -> list[LeafReport]:
        return self.by_status("loaded")

    @property
    def missing(self) -> list[LeafReport]:
        return self.by_status("missing")

    @property
    def unexpected(self) -> list[LeafReport]:
        return self.by_status("unexpected")

    @property
    def mismatched(self) -> list[LeafReport]:
        return self.by_status("shape_mismatch")

    @property
    def partial(self) -> list[LeafReport]:
        return self.by_status("partial")

    @property
    def skipped(self) -> list[LeafReport]:
        return self.by_status("skipped")

    @property
    def compatible(self) -> bool:
        """True when strict loading accepts it: nothing missing, unexpected or mismatched."""
        return not any(e.status in _PROBLEMS for e in self.entries)

    @property
    def explanations(self) -> list[str]:
        """The distinct plain-language reasons, in order of first appearance."""
        seen: dict[str, None] = {}
        for entry in self.entries:
            if entry.explanation and entry.status in _PROBLEMS:
                seen.setdefault(entry.explanation, None)
        return list(seen)

    def counts(self) -> dict[str, int]:
        return {status: len(self.by_status(status)) for status in STATUSES}

    def format(self, max_per_status: int = 25) -> str:
        """A readable report: counts, then every problem leaf with its explanation."""
        counts = self.counts()
        where = ""
        if self.source or self.target:
            where = f" ({self.source or 'checkpoint'} → {self.target or 'model'})"
        lines = [
            "compatibility report"
            + where
            + ": "
            + ", ".join(f"{counts[s]} {s.replace('_', '-')}" for s in STATUSES if counts[s])
        ]
        for status in ("shape_mismatch", "partial", "missing", "unexpected", "skipped"):
            entries = self.by_status(status)
            if not entries:
                continue
            lines.append(f"  {status.replace('_', ' ')}:")
            for entry in entries[:max_per_status]:
                lines.append(f"    {entry.describe()}")
            if len(entries) > max_per_status:
                lines.append(f"    ... and {len(entries) - max_per_status} more")
        if self.explanations:
            lines.append("  why:")
            lines.extend(f"    {text}" for text in self.explanations)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "compatible": self.compatible,
            "counts": self.counts(),
            "explanations": self.explanations,
            "entries": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(e).items()}
                for e in self.entries
            ],
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def check(self, strict: bool = True, hint: str = "") -> None:
        """Raise :class:`CheckpointMismatchError` if strict and the checkpoint does not fit."""
        if strict and not self.compatible:
            raise CheckpointMismatchError(self, hint)


class NonStrictLoadWarning(UserWarning):
    """A policy was loaded with ``strict=false`` and some weights did not fit: they keep their
    fresh initialization. The message is the compatibility report."""


def report_non_strict_load(what: str, report: CompatibilityReport) -> None:
    """Tell the user, once, that ``what`` (a policy being loaded) did not fully fit its model.

    The one way every family reports a non-strict load: loaders return their report, the
    policy factory calls this. Nothing is said when the report is compatible.
    """
    if not report.compatible:
        warnings.warn(
            NonStrictLoadWarning(f"{what}: loaded non-strictly (strict=false)\n{report.format()}"),
            stacklevel=3,
        )


def _shape(value: Any) -> Shape:
    return tuple(int(d) for d in getattr(value, "shape", np.shape(value)))


def compare_shapes(
    checkpoint: Mapping[str, Any],
    model: Mapping[str, Any],
    *,
    explain: Explainer | None = None,
    source: str = "",
    target: str = "",
    key_map: Mapping[str, str] | None = None,
    skip: Mapping[str, str] | None = None,
) -> CompatibilityReport:
    """Compare named tensors (or shapes) of a checkpoint with those a model expects.

    `checkpoint` and `model` map names to arrays or shape tuples. `key_map` maps a model key
    to its checkpoint key where the names differ (absent keys map to themselves). `skip` maps
    checkpoint or model keys to the reason they are deliberately not loaded.
    """
    key_map = key_map or {}
    skip = skip or {}
    ckpt_shapes = {k: v if isinstance(v, tuple) else _shape(v) for k, v in checkpoint.items()}
    entries: list[LeafReport] = []
    used: set[str] = set()
    for key, value in model.items():
        model_shape = value if isinstance(value, tuple) else _shape(value)
        src = key_map.get(key, key)
        if key in skip or src in skip:
            used.add(src)
            reason = skip.get(key) or skip.get(src, "")
            entries.append(
                LeafReport(key, "skipped", ckpt_shapes.get(src), model_shape, src, reason)
            )
            continue
        if src not in ckpt_shapes:
            why = explain(key, None, model_shape) if explain else None
            entries.append(LeafReport(key, "missing", None, model_shape, src, why or ""))
            continue
        used.add(src)
        ckpt_shape = ckpt_shapes[src]
        if ckpt_shape == model_shape:
            entries.append(LeafReport(key, "loaded", ckpt_shape, model_shape, src))
        else:
            why = explain(key, ckpt_shape, model_shape) if explain else None
            entries.append(
                LeafReport(key, "shape_mismatch", ckpt_shape, model_shape, src, why or "")
            )
    for src, ckpt_shape in ckpt_shapes.items():
        if src in used:
            continue
        if src in skip:
            entries.append(LeafReport(src, "skipped", ckpt_shape, None, src, skip[src]))
            continue
        why = explain(src, ckpt_shape, None) if explain else None
        entries.append(LeafReport(src, "unexpected", ckpt_shape, None, src, why or ""))
    return CompatibilityReport(entries, source=source, target=target)


def overlap_copy(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Copy the overlapping leading slice of `source` into a copy of `target`.

    The non-strict transfer of a shape-mismatched tensor (octo-pytorch's behaviour): for a
    (444, 256) kernel into a (430, 256) one the first 430 rows are copied. Ranks must agree.
    """
    if source.ndim != target.ndim:
        raise CheckpointError(
            f"cannot copy a slice of a rank-{source.ndim} tensor {source.shape} into a "
            f"rank-{target.ndim} one {target.shape}"
        )
    out = np.array(target, copy=True)
    region = tuple(slice(0, min(a, b)) for a, b in zip(source.shape, target.shape, strict=True))
    out[region] = source[region]
    return out


def merge_params(
    pretrained: Mapping[str, np.ndarray],
    fresh: Mapping[str, np.ndarray],
    report: CompatibilityReport,
) -> dict[str, np.ndarray]:
    """Fresh parameters with every ``loaded`` (and ``partial``) leaf taken from the checkpoint.

    Keys are the model's; ``LeafReport.source_key`` says where each comes from.
    """
    merged = dict(fresh)
    for entry in report.entries:
        if entry.key not in fresh or entry.source_key is None:
            continue
        if entry.status == "loaded":
            merged[entry.key] = np.asarray(pretrained[entry.source_key])
        elif entry.status == "partial":
            merged[entry.key] = overlap_copy(
                np.asarray(pretrained[entry.source_key]), np.asarray(fresh[entry.key])
            )
    return merged


def mark_partial(report: CompatibilityReport) -> CompatibilityReport:
    """The same report with every same-rank shape mismatch turned into a ``partial`` copy."""
    entries = []
    for e in report.entries:
        if (
            e.status == "shape_mismatch"
            and e.checkpoint_shape is not None
            and e.model_shape is not None
            and len(e.checkpoint_shape) == len(e.model_shape)
        ):
            note = "overlapping slice copied, the rest freshly initialized"
            explanation = f"{e.explanation}; {note}" if e.explanation else note
            e = LeafReport(
                e.key, "partial", e.checkpoint_shape, e.model_shape, e.source_key, explanation
            )
        entries.append(e)
    return CompatibilityReport(entries, source=report.source, target=report.target)


def flatten_tree(tree: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """Nested dicts → {"a/b/c": leaf}. Keys must be strings without `sep`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, sep, name))
        else:
            flat[name] = value
    return flat


def unflatten_tree(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{"a/b/c": leaf} → nested dicts; the inverse of :func:`flatten_tree`."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        parts = name.split(sep)
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"key {name!r} nests under a leaf at {part!r}")
            node = child
        node[parts[-1]] = value
    return tree


def matching(keys: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The keys that match any of the regular expressions (``re.search``)."""
    compiled = [re.compile(p) for p in patterns]
    return [k for k in keys if any(c.search(k) for c in compiled)]


def _checkable(value: Any) -> np.ndarray | None:
    """`value` as a numpy array numpy can test for finiteness, or None when it holds no floats."""
    if hasattr(value, "detach"):  # a torch tensor; compat stays importable without torch
        tensor = value.detach().cpu()
        if not (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
            return None
        if dtype_name(tensor.dtype) not in ("float16", "float32", "float64") and not (
            tensor.dtype.is_complex
        ):
            tensor = tensor.float()  # bfloat16 / float8 have no numpy dtype; float32 holds them
        return np.asarray(tensor.numpy())
    dtype = _dtype_of(value)
    if dtype is None or dtype_category(dtype) not in ("float", "other"):
        return None
    array = np.asarray(value)
    if array.dtype.kind in "fc":
        return array
    if dtype_category(array.dtype) == "float":  # ml_dtypes' bfloat16 / float8 (numpy kind 'V')
        return array.astype(np.float32)
    return None


def check_finite(params: Mapping[str, Any], source: str) -> None:
    """Refuse checkpoints with NaN or inf weights, naming the file, tensor, count and first index.

    `params` maps names to numpy arrays (any float width, ml_dtypes' bfloat16 included) or torch
    tensors; integer, bool and non-array entries are not checked.
    """
    for key, value in params.items():
        array = _checkable(value)
        if array is None:
            continue
        finite = np.isfinite(array)
        if finite.all():
            continue
        bad = int(finite.size - np.count_nonzero(finite))
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise CheckpointError(
            f"{source}: tensor {key!r} {array.shape} holds {bad} NaN/inf value(s) "
            f"(first {array[first].item()!r} at index {first}); expected finite weights — the "
            "checkpoint is corrupted or was saved after training diverged"
        )


#: What a checkpoint tensor may be for the model tensor it loads into: the same category.
DTYPE_CATEGORIES = ("float", "integer", "bool", "other")
_CATEGORY_WORDS = {
    "float": "a floating-point dtype",
    "integer": "an integer dtype",
    "bool": "a bool dtype",
    "other": "a non-numeric dtype",
}


def _dtype_of(value: Any) -> Any:
    """The dtype of an array, tensor or ShapeDtypeStruct, a dtype itself, or None."""
    if isinstance(value, np.dtype):
        return value
    if type(value).__name__ == "dtype" and type(value).__module__ == "torch":
        return value
    if isinstance(value, bool):
        return np.dtype(bool)
    if isinstance(value, (int, float)):
        return np.asarray(value).dtype
    return getattr(value, "dtype", None)


def dtype_name(dtype: Any) -> str:
    """``float32``, ``bfloat16``, ``int64``, ``<U5``, ``object``, … for numpy and torch dtypes."""
    return str(dtype).removeprefix("torch.")


def dtype_category(dtype: Any) -> str:
    """``"float"``, ``"integer"``, ``"bool"`` or ``"other"`` (object, str, complex, quantized).

    Decided by name, because ml_dtypes' ``bfloat16`` (what JAX checkpoints hold) has numpy kind
    ``'V'``, and torch dtypes have no numpy kind at all.
    """
    name = dtype_name(dtype)
    if name.startswith(("float", "bfloat")):
        return "float"
    if name.startswith(("int", "uint")):
        return "integer"
    if name == "bool":
        return "bool"
    return "other"


def check_dtypes(
    checkpoint: Mapping[str, Any],
    model: Mapping[str, Any],
    source: str,
    key_map: Mapping[str, str] | None = None,
) -> None:
    """Refuse a checkpoint tensor whose dtype category differs from its model tensor's.

    `checkpoint` maps names to arrays or tensors (any other value is "other": a string where a
    kernel belongs); `model` maps model keys to arrays, tensors, ``ShapeDtypeStruct`` values or
    dtypes. `key_map` maps a model key to its checkpoint key where the names differ. Keys on
    one side only are :func:`compare_shapes`' business and are not looked at here.

    Categories are float (float16/32/64, bfloat16, float8), integer, bool and other. A float
    of another width is accepted: every loader casts it to the model's dtype (float64 or
    bfloat16 weights load into a float32 model). Anything else — an int32 array or a string
    where a float32 kernel belongs, a float where torch keeps an int64 ``num_batches_tracked``
    — is corruption, not a config mismatch, so this raises :class:`CheckpointError` naming the
    file, key, shape, found and expected dtype, with ``strict=False`` too.
    """
    key_map = key_map or {}
    for key, target in model.items():
        src = key_map.get(key, key)
        if src not in checkpoint:
            continue
        value = checkpoint[src]
        found, expected = _dtype_of(value), _dtype_of(target)
        if expected is None:
            raise TypeError(f"model entry {key!r} is a {type(target).__name__}, not a tensor")
        found_category = "other" if found is None else dtype_category(found)
        expected_category = dtype_category(expected)
        if found_category == expected_category:
            continue
        shape = getattr(value, "shape", None)
        shown = "" if shape is None else f" {tuple(int(d) for d in shape)}"
        found_text = (
            f"is a {type(value).__name__}, not an array"
            if found is None
            else f"has dtype {dtype_name(found)}"
        )
        model_key = f" (model tensor {key!r})" if src != key else ""
        raise CheckpointError(
            f"{source}: tensor {src!r}{shown}{model_key} {found_text}; expected "
            f"{_CATEGORY_WORDS[expected_category]} (the model's is {dtype_name(expected)}) — "
            "the weights file is corrupted or was not written for this model"
        )
