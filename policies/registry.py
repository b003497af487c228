"""Policies by name: `load_policy("NAME[:PATH][?key=value&key=value]")`.

Families register a factory under a name. Heavy families (JAX, torch) register a *lazy*
entry, "module:function", so that listing or loading the built-ins never imports them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from evalharness.envs.rotations import ORIENTATIONS
from evalharness.errors import EvalharnessError
from evalharness.policies.base import Policy
from evalharness.policies.common.compat import CheckpointError
from evalharness.policies.common.normalization import evaluation_suite

PolicyFactory = Callable[..., Policy]

_FACTORIES: dict[str, PolicyFactory | str] = {}


class PolicyStringError(EvalharnessError, ValueError):
    """A policy string that does not parse or names no known policy."""


@dataclass(frozen=True)
class PolicyRef:
    """A parsed policy string."""

    name: str
    path: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        text = self.name if self.path is None else f"{self.name}:{self.path}"
        if self.options:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.options.items())
        return text


def register_policy(name: str, factory: PolicyFactory | str | None = None) -> Any:
    """Register `factory(path, **options) -> Policy` under `name`.

    Use as a decorator, or pass "package.module:function" to register lazily.
    """

    def add(obj: PolicyFactory | str) -> PolicyFactory | str:
        if name in _FACTORIES and _FACTORIES[name] is not obj:
            raise ValueError(f"policy name {name!r} is already registered")
        _FACTORIES[name] = obj
        return obj

    if factory is not None:
        return add(factory)
    return add


def known_policies() -> list[str]:
    _register_builtins()
    return sorted(_FACTORIES)


def parse_policy_string(text: str) -> PolicyRef:
    """Split "NAME[:PATH][?k=v&k2=v2]" into its parts, naming what is malformed."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyStringError(
            "empty policy string; expected NAME[:PATH][?key=value&...], e.g. octo_jax:/ckpt/dir"
        )
    body, _, query = text.partition("?")
    name, sep, path = body.partition(":")
    name = name.strip()
    if not name or not (name.isascii() and name.replace("_", "").replace("-", "").isalnum()):
        raise PolicyStringError(
            f"malformed policy string {text!r}: the name {name!r} must be letters, digits, _ or -; "
            "expected NAME[:PATH][?key=value&...]"
        )
    if sep and not path:
        raise PolicyStringError(f"malformed policy string {text!r}: nothing after ':'")
    options: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise PolicyStringError(
                f"malformed options {query!r} in policy string {text!r}: expected key=value&key=value"
            ) from exc
        for key, value in pairs:
            if not key:
                raise PolicyStringError(f"empty option name in policy string {text!r}")
            if key in options:
                raise PolicyStringError(f"option {key!r} given twice in policy string {text!r}")
            options[key] = value
    return PolicyRef(name=name, path=path or None, options=options)


def load_policy(text: str, suite: str | None = None) -> Policy:
    """Build the policy a string names. Unknown names list the known ones.

    `suite` is the suite the policy will be evaluated on: a checkpoint whose statistics cover
    several datasets then defaults to the one named after it (see `select_statistics`).
    """
    ref = parse_policy_string(text)
    _register_builtins()
    if ref.name not in _FACTORIES:
        raise PolicyStringError(
            f"unknown policy {ref.name!r} in {text!r}; known policies: {', '.join(known_policies())}"
        )
    factory = _FACTORIES[ref.name]
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        _FACTORIES[ref.name] = factory
    assert callable(factory)
    with evaluation_suite(suite):
        policy = factory(ref.path, **ref.options)
    orientation = training_orientation(ref.path)
    if orientation is not None and orientation != policy.spec.image_orientation:
        policy.spec = dataclasses.replace(policy.spec, image_orientation=orientation)
    return policy


#: what `evalharness finetune` writes beside a checkpoint (`evalharness.finetune.SPEC_JSON`).
DATASET_SPEC_JSON = "dataset_spec.json"
#: its entry for the frame orientation the finetuned policy expects at `act()`.
EVALUATION_ORIENTATION = "evaluation_orientation"


def dataset_spec_file(path: str | None) -> Path | None:
    """The ``dataset_spec.json`` a finetune wrote beside checkpoint ``path``: in the checkpoint
    directory, beside a checkpoint file, or above a numbered step directory. None if absent."""
    if not path:
        return None
    root = Path(path).expanduser()
    if root.is_file():
        candidates = [root.parent]
    elif root.is_dir():
        candidates = [root, root.parent] if root.name.isdigit() else [root]
    else:
        return None
    for folder in candidates:
        if (folder / DATASET_SPEC_JSON).is_file():
            return folder / DATASET_SPEC_JSON
    return None


def training_orientation(path: str | None) -> str | None:
    """``raw`` or ``upright``: the frame orientation the model at ``path`` was finetuned to
    expect at ``act()`` (``evaluation_orientation``, written by the finetune driver; older
    files: the dataset spec's ``model_orientation``), or None for a checkpoint without one."""
    file = dataset_spec_file(path)
    if file is None:
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: not readable JSON ({exc})") from None
    key = EVALUATION_ORIENTATION
    if isinstance(data, dict) and key not in data:
        key = "model_orientation"
    orientation = data.get(key, "upright") if isinstance(data, dict) else None
    if orientation not in ORIENTATIONS:
        raise CheckpointError(
            f"{file}: {key} is {orientation!r}; expected {' or '.join(map(repr, ORIENTATIONS))} "
            "(the orientation of the frames the model was finetuned on)"
        )
    return str(orientation)


_BUILTINS_DONE = False


def _register_builtins() -> None:
    global _BUILTINS_DONE
    if not _BUILTINS_DONE:
        _BUILTINS_DONE = True
        importlib.import_module("evalharness.policies.builtin")
