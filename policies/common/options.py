"""Parsing the ``?key=value`` options of a ``family:PATH?options`` spec.

Policy factories and finetune trainers share these so that every family accepts the same
spellings and its errors read the same: ``<owner>: option key='value' must be ...``. A family
declares its policy options once, as a frozen dataclass parsed by :func:`parse_options` (see
the section below).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from evalharness.errors import EvalharnessError

__all__ = [
    "OptionError",
    "OptionInfo",
    "check_options",
    "describe_options",
    "field_docs",
    "option_bool",
    "option_device",
    "option_field",
    "option_fields",
    "option_int",
    "parse_options",
]

T = TypeVar("T")


class OptionError(EvalharnessError, ValueError):
    """A ``?key=value`` option that is unknown or does not parse (the default error below)."""


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def check_options(
    options: Mapping[str, str],
    known: Iterable[str],
    owner: str,
    error: type[ValueError] = OptionError,
) -> None:
    """Refuse options ``owner`` does not know, listing the ones it does."""
    known = tuple(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise error(f"{owner} has no option(s) {unknown}; known: {', '.join(known)}")


def option_bool(
    options: Mapping[str, str],
    key: str,
    default: bool,
    owner: str,
    error: type[ValueError] = OptionError,
) -> bool:
    """A true/false option (1/0, true/false, yes/no, on/off), or ``default`` when absent.

    ``owner`` names who reads it (``policy 'NAME'``); ``error`` is raised otherwise.
    """
    if key not in options:
        return default
    text = str(options[key]).strip().lower()
    if text not in _TRUE + _FALSE:
        raise error(f"{owner}: option {key}={options[key]!r} must be true or false")
    return text in _TRUE


def option_int(
    options: Mapping[str, str],
    key: str,
    default: int,
    owner: str,
    *,
    minimum: int | None = None,
    error: type[ValueError] = OptionError,
) -> int:
    """An integer option (at least ``minimum`` when given), or ``default`` when absent."""
    if key not in options:
        return default
    try:
        value = int(options[key])
    except ValueError:
        raise error(f"{owner}: option {key}={options[key]!r} must be an integer") from None
    if minimum is not None and value < minimum:
        raise error(f"{owner}: option {key}={value} must be >= {minimum}")
    return value


def option_device(
    options: Mapping[str, str], owner: str, error: type[ValueError] = OptionError
) -> str:
    """The torch ``device`` option (``cpu`` default, ``cuda``, ``cuda:1``), checked before any
    weight is built so that a typo or a missing GPU is named instead of failing inside torch."""
    import torch  # here, so that option parsing alone never imports torch

    text = str(options.get("device", "cpu"))
    try:
        device = torch.device(text)
    except RuntimeError:
        raise error(f"{owner}: option device={text!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(
            f"{owner}: option device={text!r}: torch sees no CUDA device here "
            f"(torch {torch.__version__}); use device=cpu"
        )
    return text


# -- options as a frozen dataclass -----------------------------------------------------------
#
# A family declares its ``?key=value`` options once, as a frozen dataclass whose fields carry a
# docstring each (the string literal under the field, as CleanRL and tyro read them):
#
#     @dataclass(frozen=True)
#     class MyOptions:
#         device: str = "cpu"
#         """torch device: cpu, cuda or cuda:N."""
#         steps: int = option_field(10, minimum=1)
#         """denoising steps per chunk."""
#
# ``parse_options(MyOptions, options, "policy 'mine'")`` refuses unknown keys, converts each value
# by the field's type (bool, int, float, str, ``X | None``, ``Literal[...]``) and names the key,
# the value and what was expected when one does not parse. ``evalharness policies`` lists the
# fields with their defaults and docstrings (``describe_options``).


def option_field(
    default: Any, *, minimum: float | None = None, only: Iterable[str] | None = None
) -> Any:
    """A dataclass field with a ``minimum`` (for numbers) or read ``only`` by some families
    (names of the families that accept it; the others refuse it as unknown)."""
    metadata: dict[str, Any] = {}
    if minimum is not None:
        metadata["minimum"] = minimum
    if only is not None:
        metadata["only"] = tuple(only)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``evalharness policies`` shows it."""

    name: str
    type: str
    default: Any
    doc: str


def option_fields(cls: type, family: str | None = None) -> list[dataclasses.Field[Any]]:
    """The fields of options dataclass ``cls`` that ``family`` accepts (all when None)."""
    fields = dataclasses.fields(cls)
    if family is None:
        return list(fields)
    return [f for f in fields if family in f.metadata.get("only", (family,))]


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring: the string literal written under it in the class body
    (``cls`` and its dataclass bases), read from the source; "" where there is none."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, [*body[1:], None], strict=True):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def describe_options(cls: type, family: str | None = None) -> list[OptionInfo]:
    """The options ``family`` reads from dataclass ``cls``: name, type, default, docstring."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    return [
        OptionInfo(f.name, _type_name(hints[f.name]), f.default, docs.get(f.name, ""))
        for f in option_fields(cls, family)
    ]


def parse_options(
    cls: type[T],
    options: Mapping[str, str],
    owner: str,
    *,
    family: str | None = None,
    error: type[ValueError] = OptionError,
) -> T:
    """``?key=value`` strings → an instance of the options dataclass ``cls``.

    Unknown keys (and keys of fields ``only`` other families read) are refused with the list
    of known ones; each value is converted by its field's type and checked against its
    ``minimum``; absent keys keep their defaults.
    """
    fields = option_fields(cls, family)
    check_options(options, [f.name for f in fields], owner, error)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields:
        if f.name not in options:
            continue
        value = _convert(hints[f.name], str(options[f.name]), f.name, owner, error)
        minimum = f.metadata.get("minimum")
        if minimum is not None and value is not None and value < minimum:
            raise error(f"{owner}: option {f.name}={value} must be >= {minimum}")
        values[f.name] = value
    return cls(**values)


def _convert(hint: Any, text: str, key: str, owner: str, error: type[ValueError]) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if text == "":  # `?stats=` means "not given", as before the dataclass
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        if text not in args:
            raise error(
                f"{owner}: option {key}={text!r} must be one of {', '.join(map(repr, args))}"
            )
        return text
    if hint is bool:
        return option_bool({key: text}, key, False, owner, error)
    if hint is int:
        return option_int({key: text}, key, 0, owner, error=error)
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise error(f"{owner}: option {key}={text!r} must be a number") from None
    return text


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _type_name(inner)
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(str(a) for a in args)
    return getattr(hint, "__name__", str(hint))
