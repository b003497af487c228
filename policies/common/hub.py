"""Pinned Hugging Face hub references: ``hf://org/name@REV/path``, resolved to a commit.

A checkpoint or dataset may be given as a hub reference wherever a local path is taken
(``NAME:hf://…``, ``NAME:hf://…/model.pth``,
``finetune --data hf://datasets/…``). The grammar is that of ``huggingface_hub``'s
``HfFileSystem`` paths::

    hf://[datasets/]ORG/NAME[@REVISION][/PATH/IN/REPO]

``REVISION`` is a commit sha (pinned: the same bytes forever), a tag or a branch (default
``main``); a revision holding ``/`` (``refs/pr/1``) is written %-encoded (``refs%2Fpr%2F1``).
``PATH`` selects a file or folder inside the repository (a ``.pth`` file); the
repository's ``*.json`` files come with it (``dataset_spec.json`` beside a finetuned
checkpoint). Without ``datasets/`` a reference names a model repository, except where a
dataset is expected (``finetune --data``).

Resolution goes through ``huggingface_hub.snapshot_download`` and its cache (``HF_HUB_CACHE``
or ``HF_HOME``): online it asks the hub which commit the revision names and downloads what is
missing; with ``HF_HUB_OFFLINE=1`` (or no network) it reads the cache alone, where
``refs/<revision>`` names the commit and ``snapshots/<commit>/`` holds its files. Either way
the result names the commit, and the run identity records it: a branch that moved upstream
makes ``--resume`` refuse instead of mixing two checkpoints in one run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import unquote

from evalharness.errors import EvalharnessError

__all__ = [
    "HF_PREFIX",
    "HubError",
    "HubRef",
    "ResolvedHubRef",
    "describe",
    "is_hub_ref",
    "last_resolution",
    "local_path",
    "parse_hub_ref",
    "resolve",
]

HF_PREFIX = "hf://"
#: the repository kinds a reference may name, by the prefix that selects them.
_TYPE_PREFIXES = {"datasets": "dataset", "models": "model"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubError(EvalharnessError, ValueError):
    """A hub reference that does not parse, or a repository or revision that cannot be had."""


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://`` reference."""

    repo_id: str
    repo_type: str = "model"
    #: as written; None means the default branch, ``main``.
    revision: str | None = None
    #: a file or folder inside the repository; "" for all of it.
    path: str = ""

    def __str__(self) -> str:
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        rev = "" if self.revision is None else "@" + self.revision.replace("/", "%2F")
        tail = f"/{self.path}" if self.path else ""
        return f"{HF_PREFIX}{prefix}{self.repo_id}{rev}{tail}"


@dataclass(frozen=True)
class ResolvedHubRef:
    """A reference resolved to one commit and the local folder holding its files."""

    ref: HubRef
    commit: str
    snapshot: Path

    @property
    def local_path(self) -> Path:
        """The file or folder the reference names, on this machine."""
        return self.snapshot / self.ref.path if self.ref.path else self.snapshot

    @property
    def pinned(self) -> str:
        """The same reference with the revision replaced by its commit."""
        return str(HubRef(self.ref.repo_id, self.ref.repo_type, self.commit, self.ref.path))

    def to_dict(self) -> dict[str, Any]:
        """What run.json and the run identity record."""
        return {
            "repo": self.ref.repo_id,
            "repo_type": self.ref.repo_type,
            "revision": self.ref.revision or "main",
            "commit": self.commit,
            "path": self.ref.path,
        }


def is_hub_ref(text: object) -> TypeGuard[str]:
    """Whether ``text`` is an ``hf://`` reference (anything else is a local path)."""
    return isinstance(text, str) and text.startswith(HF_PREFIX)


def parse_hub_ref(text: str, default_repo_type: str = "model") -> HubRef:
    """Split ``hf://[datasets/]ORG/NAME[@REV][/PATH]``, naming what is malformed."""
    if not is_hub_ref(text):
        raise HubError(f"{text!r} is not a hub reference; expected {HF_PREFIX}ORG/NAME[@REV]")
    parts = text[len(HF_PREFIX) :].strip("/").split("/")
    repo_type = default_repo_type
    if parts and parts[0] in _TYPE_PREFIXES:
        repo_type = _TYPE_PREFIXES[parts.pop(0)]
    if len(parts) < 2:
        raise HubError(
            f"hub reference {text!r} names no repository; expected "
            f"{HF_PREFIX}ORG/NAME[@REVISION][/PATH], e.g. {HF_PREFIX}rail-berkeley/octo-small-1.5"
        )
    org, name, rest = parts[0], parts[1], parts[2:]
    name, at, revision = name.partition("@")
    if at and not revision:
        raise HubError(
            f"hub reference {text!r}: nothing after '@'; expected a commit, tag or branch"
        )
    for what, value in (("organization", org), ("repository name", name)):
        if not _NAME.match(value):
            raise HubError(
                f"hub reference {text!r}: {what} {value!r} must be letters, digits, '-', '_' or '.'"
            )
    if any(p in ("", ".", "..") for p in rest):
        raise HubError(f"hub reference {text!r}: the path inside the repository is malformed")
    return HubRef(
        repo_id=f"{org}/{name}",
        repo_type=repo_type,
        revision=unquote(revision) if at else None,
        path="/".join(rest),
    )


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").upper() in _TRUE


def _cache_dir() -> str | None:
    # Read at call time (huggingface_hub reads its variables once, at import).
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


#: the last resolution of each reference in this process (see `last_resolution`).
_RESOLVED: dict[tuple[str, str], ResolvedHubRef] = {}


def resolve(text: str, default_repo_type: str = "model") -> ResolvedHubRef:
    """Resolve a reference to its commit and a local snapshot, downloading what is missing.

    Offline (``HF_HUB_OFFLINE=1``, or the hub unreachable) only the local cache is read.
    """
    ref = parse_hub_ref(text, default_repo_type)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise HubError(
            f"{text}: hub references need `huggingface_hub` (pip install huggingface_hub), or "
            "download the files and pass their local path"
        ) from exc
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    patterns = [ref.path, f"{ref.path}/*", "*.json"] if ref.path else None
    try:
        folder = snapshot_download(
            ref.repo_id,
            repo_type=ref.repo_type,
            revision=ref.revision,
            cache_dir=_cache_dir(),
            local_files_only=offline,
            allow_patterns=patterns,
        )
    except Exception as exc:
        where = "the local Hugging Face cache" if offline else "the Hugging Face hub or its cache"
        cache = _cache_dir() or "the default cache (~/.cache/huggingface/hub)"
        raise HubError(
            f"{text}: {ref.repo_type} repository {ref.repo_id!r} at revision "
            f"{ref.revision or 'main'!r} is not in {where} ({type(exc).__name__}: "
            f"{str(exc)[:300]}). Cache searched: {cache}. Download it once online (unset "
            "HF_HUB_OFFLINE), copy the cache from a machine that has it, or pass a local path."
        ) from exc
    snapshot = Path(folder)
    commit = snapshot.name
    if not _COMMIT.match(commit):
        raise HubError(
            f"{text}: huggingface_hub returned {snapshot}, which is not a snapshots/<commit> "
            "folder of its cache, so the commit cannot be recorded"
        )
    resolved = ResolvedHubRef(ref, commit, snapshot)
    if ref.path and not resolved.local_path.exists():
        raise HubError(
            f"{text}: commit {commit} of {ref.repo_id!r} has no {ref.path!r} "
            f"(in {snapshot}); check the path inside the repository"
        )
    _RESOLVED[(text, default_repo_type)] = resolved
    return resolved


def last_resolution(text: str, default_repo_type: str = "model") -> ResolvedHubRef:
    """The commit this process last resolved ``text`` to (resolving it now if it has not).

    A run records the commit its policy was loaded from, even if the branch moves upstream
    between the load and the moment run.json is written.
    """
    found = _RESOLVED.get((text, default_repo_type))
    return found if found is not None else resolve(text, default_repo_type)


def describe(text: str | None, default_repo_type: str = "model") -> dict[str, Any] | None:
    """What a record (run.json, finetune.json) keeps of a reference: repository, revision as
    written, commit and path (`ResolvedHubRef.to_dict`) of its last resolution; None for a
    local path."""
    if not is_hub_ref(text):
        return None
    return last_resolution(text, default_repo_type).to_dict()


def local_path(path: str, default_repo_type: str = "model") -> str:
    """``path`` itself, or for a hub reference the local file or folder it resolves to."""
    if not is_hub_ref(path):
        return path
    return str(resolve(path, default_repo_type).local_path)
