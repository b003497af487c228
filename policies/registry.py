"""Policy families by name: the one list, and `load_policy("NAME[:PATH][?key=value&...]")`.

A family is one entry, a :class:`PolicyFamily` declared once in its folder's ``family.py``
(``policies/<folder>/family.py`` defines ``FAMILIES``): its name, its policy factory, its
options dataclass, its finetune trainer and ``doctor`` checks (or None), the pip extra it
needs, and an example for the contract test and the latency benchmark. The registry finds the
family folders itself, so adding a family touches no list here; installed third-party packages
add families through the ``evalharness.policies`` entry-point group::

    # their pyproject.toml
    [project.entry-points."evalharness.policies"]
    my_policy = "my_package.family:FAMILY"     # a PolicyFamily, or a sequence of them

Everything heavy is named as ``"package.module:attribute"`` and imported on first use by
:func:`load_object`, so listing families (``evalharness policies``) imports no torch or JAX.
See ``docs/adding-a-policy-family.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import pkgutil
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from evalharness.envs.rotations import ORIENTATIONS
from evalharness.errors import EvalharnessError
from evalharness.policies.base import Policy
from evalharness.policies.common import hub
from evalharness.policies.common.compat import CheckpointError
from evalharness.policies.common.normalization import evaluation_suite
from evalharness.policies.common.options import OptionInfo, describe_options

__all__ = [
    "BENCHMARK_FAMILY",
    "ENTRY_POINT_GROUP",
    "EXPERT_POLICY",
    "NO_OP_POLICY",
    "PolicyFactory",
    "PolicyFamily",
    "PolicyRef",
    "PolicyStringError",
    "families",
    "format_families",
    "get_family",
    "known_policies",
    "load_object",
    "load_policy",
    "parse_policy_string",
    "register_family",
    "register_policy",
    "reload_families",
    "unregister_family",
]

PolicyFactory = Callable[..., Policy]

#: the entry-point group through which installed packages add policy families.
ENTRY_POINT_GROUP = "evalharness.policies"
#: the policy that holds still and costs nothing: what benchmarks of the env and the harness
#: run, so that no model's cost gets in the way.
NO_OP_POLICY = "zero"
#: the demonstrator: what ``record`` and the tests' tiny demonstration files use by default.
EXPERT_POLICY = "scripted"
#: the family whose contract example the speed benchmarks time by default (a jitted model).
BENCHMARK_FAMILY = "octo_jax"


class PolicyStringError(EvalharnessError, ValueError):
    """A policy string that does not parse or names no known policy."""


def load_object(ref: Any) -> Any:
    """``"package.module:attribute"`` → that attribute, imported now; anything else as is.

    The one lazy import of the registry (policy factories, trainers, doctor checks, examples).
    A missing package raises ``ImportError`` naming it; callers add which extra installs it.
    """
    if not isinstance(ref, str):
        return ref
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"lazy reference {ref!r} must be 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class PolicyFamily:
    """One policy family, declared once (``policies/<folder>/family.py`` or an entry point).

    Every hook is a callable or a lazy ``"package.module:attribute"`` string; only ``options``
    is a class, so it must live in a module that imports no framework.
    """

    name: str
    """the name in policy strings: ``NAME[:PATH][?options]``."""
    summary: str
    """one line for ``evalharness policies``."""
    policy: PolicyFactory | str
    """``factory(path: str | None, **options: str) -> Policy``."""
    options: type | None = None
    """the frozen dataclass of its ``?key=value`` options (``policies.common.options``)."""
    usage: str = ""
    """an example policy string, e.g. ``NAME:/path/to/checkpoint?key=value``."""
    trainer: Callable[..., Any] | str | None = None
    """``from_pretrained(checkpoint, dataset, options) -> Trainer`` for ``evalharness
    finetune`` (``evalharness.finetune.Trainer``), or None: the family cannot be finetuned."""
    doctor: Callable[..., Any] | str | None = None
    """``describe(path, options, findings) -> CheckpointFacts`` for ``evalharness doctor``
    (``policies.common.doctor``), or None: doctor checks what the loaded spec declares."""
    example: Callable[..., Any] | str | None = None
    """``example(fixtures: Path) -> PolicyExample`` (``policies.examples``): a small instance
    for the contract test and the latency benchmark; ``fixtures`` is the folder of the
    upstream-written conformance checkpoints."""
    benchmarks: Callable[..., Any] | str | None = None
    """``models(fixtures: Path) -> {name: make() -> Policy}``: extra models (e.g. released
    sizes with random weights) for ``benchmarks/policy_latency.py``."""
    extra: str | None = None
    """the pip extra that installs what it needs: ``pip install evalharness[EXTRA]``."""
    requires: tuple[str, ...] = ()
    """top-level modules that extra provides; the family is installed when all are found."""
    source: str = "evalharness"
    """where the entry came from: ``evalharness`` or the distribution of its entry point."""

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise ValueError(
                f"policy family name {self.name!r} must be ASCII letters, digits, _ or -"
            )

    def missing(self) -> list[str]:
        """The required top-level modules that are not installed (found without importing)."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    @property
    def installed(self) -> bool:
        return not self.missing()

    def factory(self) -> PolicyFactory:
        """The policy factory, imported now."""
        return self._load(self.policy, "policy factory")

    def describe_options(self) -> list[OptionInfo]:
        """Its options: name, type, default, docstring (nothing imported but the dataclass)."""
        return [] if self.options is None else describe_options(self.options, self.name)

    def load(self, hook: str) -> Any:
        """The ``trainer``, ``doctor``, ``example`` or ``benchmarks`` hook, imported now
        (None when the family has none)."""
        ref = getattr(self, hook)
        return None if ref is None else self._load(ref, hook)

    def _load(self, ref: Any, what: str) -> Any:
        try:
            return load_object(ref)
        except ImportError as exc:
            install = f"pip install 'evalharness[{self.extra}]'" if self.extra else "install it"
            raise ImportError(
                f"policy family {self.name!r}: its {what} needs {exc.name or 'a missing package'}"
                f" ({exc}); {install}"
            ) from exc


_FAMILIES: dict[str, PolicyFamily] = {}
_DISCOVERED = False


def _valid_name(name: str) -> bool:
    return bool(name) and name.isascii() and name.replace("_", "").replace("-", "").isalnum()


def _folder_families() -> list[PolicyFamily]:
    """``FAMILIES`` of every ``policies/<folder>/family.py`` (cheap: those import nothing heavy)."""
    package = importlib.import_module("evalharness.policies")
    found: list[PolicyFamily] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        name = f"evalharness.policies.{info.name}.family"
        if importlib.util.find_spec(name) is None:
            continue  # a shared folder (common/, octo/), not a family
        found.extend(_as_families(importlib.import_module(name).FAMILIES, name))
    return found


def _as_families(obj: Any, where: str) -> list[PolicyFamily]:
    items = [obj] if isinstance(obj, PolicyFamily) else list(obj)
    for item in items:
        if not isinstance(item, PolicyFamily):
            raise TypeError(f"{where}: expected PolicyFamily entries, got {type(item).__name__}")
    return items


def _entry_point_families() -> list[PolicyFamily]:
    """Families of installed distributions (``evalharness.policies`` entry points). A broken
    entry point is skipped with a warning naming it, so one bad plugin stops nothing else."""
    found: list[PolicyFamily] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
        try:
            items = _as_families(ep.load(), f"entry point {ep.name} = {ep.value}")
        except Exception as exc:
            warnings.warn(
                f"entry point {ep.name} = {ep.value!r} ({ENTRY_POINT_GROUP}, from {dist}) "
                f"failed to load and was skipped: {type(exc).__name__}: {exc}",
                stacklevel=3,
            )
            continue
        found.extend(dataclasses.replace(item, source=dist) for item in items)
    return found


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for family in _folder_families():
        register_family(family)
    for family in _entry_point_families():
        if family.name in _FAMILIES:
            warnings.warn(
                f"policy family {family.name!r} from {family.source} is already registered "
                f"by {_FAMILIES[family.name].source}; the entry point was skipped",
                stacklevel=3,
            )
            continue
        register_family(family)


def register_family(family: PolicyFamily) -> PolicyFamily:
    """Add ``family`` to the registry (a notebook or test may; folders and entry points are
    found without it). A name registered to another entry raises ``ValueError``."""
    existing = _FAMILIES.get(family.name)
    if existing is not None and existing != family:
        raise ValueError(f"policy name {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def reload_families() -> dict[str, PolicyFamily]:
    """Find the family folders and entry points again (after installing a plugin in a running
    notebook); families added with :func:`register_family` are forgotten."""
    global _DISCOVERED
    _FAMILIES.clear()
    _DISCOVERED = False
    return families()


def unregister_family(name: str) -> None:
    """Remove a family added with :func:`register_family` (tests, notebooks)."""
    _FAMILIES.pop(name, None)


def register_policy(name: str, factory: PolicyFactory | str | None = None) -> Any:
    """Register a bare ``factory(path, **options) -> Policy`` as a family named ``name``;
    usable as a decorator. A family with options, trainer or doctor checks declares a
    :class:`PolicyFamily` in its folder instead."""

    def add(obj: PolicyFactory | str) -> PolicyFactory | str:
        _discover()
        register_family(PolicyFamily(name=name, summary="", policy=obj, source="register_policy"))
        return obj

    if factory is not None:
        return add(factory)
    return add


def families() -> dict[str, PolicyFamily]:
    """Every registered family by name, sorted: the family folders, then entry points."""
    _discover()
    return {name: _FAMILIES[name] for name in sorted(_FAMILIES)}


def known_policies() -> list[str]:
    """The names a policy string may start with, sorted."""
    return list(families())


def get_family(name: str) -> PolicyFamily:
    """The family called ``name``; an unknown name lists the known ones."""
    family = families().get(name)
    if family is None:
        raise PolicyStringError(
            f"unknown policy {name!r}; known policies: {', '.join(known_policies())}"
        )
    return family


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


def parse_policy_string(text: str) -> PolicyRef:
    """Split "NAME[:PATH][?k=v&k2=v2]" into its parts, naming what is malformed."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyStringError(
            "empty policy string; expected NAME[:PATH][?key=value&...]; "
            "`evalharness policies` lists the names and their options"
        )
    body, _, query = text.partition("?")
    name, sep, path = body.partition(":")
    name = name.strip()
    if not _valid_name(name):
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
    if ref.name not in families():
        raise PolicyStringError(
            f"unknown policy {ref.name!r} in {text!r}; known policies: {', '.join(known_policies())}"
        )
    factory = get_family(ref.name).factory()
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
    directory, beside a checkpoint file, or above a numbered step directory. None if absent.
    For a hub reference, the snapshot the policy was loaded from is looked at."""
    if not path:
        return None
    root = hub.last_resolution(path).local_path if hub.is_hub_ref(path) else Path(path)
    root = root.expanduser()
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


def format_families(names: list[str] | None = None) -> str:
    """``evalharness policies``: each family (or those in ``names``) with whether its extra is
    installed, what it can do, and its options with their defaults and docstrings."""
    table = families()
    unknown = [n for n in names or [] if n not in table]
    if unknown:
        raise PolicyStringError(
            f"unknown policy {unknown[0]!r}; known policies: {', '.join(known_policies())}"
        )
    blocks = []
    for name in names or list(table):
        family = table[name]
        missing = family.missing()
        status = "installed" if not missing else f"not installed (needs {', '.join(missing)})"
        if family.extra:
            status += f"; pip extra [{family.extra}]"
        lines = [f"{name}: {family.summary}".rstrip(": "), f"  {status}"]
        if family.usage:
            lines.append(f"  usage: {family.usage}")
        hooks = [
            ("finetune", family.trainer is not None),
            ("doctor checks", family.doctor is not None),
        ]
        lines.append("  " + ", ".join(f"{hook}: {'yes' if has else 'no'}" for hook, has in hooks))
        if family.source != "evalharness":
            lines.append(f"  from: {family.source}")
        options = family.describe_options()
        if options:
            lines.append("  options (?key=value):")
            width = max(len(o.name) for o in options)
            for o in options:
                default = "(none)" if o.default is None else str(o.default).lower()
                head = f"    {o.name:<{width}}  {o.type}, default {default}"
                lines.append(head)
                doc = " ".join(o.doc.replace("``", "`").split())
                for text in textwrap.wrap(doc, max(40, 92 - width)):
                    lines.append(f"    {'':<{width}}  {text}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
