"""A run's identity: everything that changes its outcomes, and one hash of it.

`run.json` stores the identity and its hash; `--resume` recomputes both and refuses a
directory whose hash differs, naming every field that changed. The identity holds the suite,
the policy string, the *content* hash of the checkpoint it points to (a checkpoint rewritten
in place under the same path is a different policy; for a hub reference also the commit it
resolved to), the protocol, the env/wrapper settings
and the versions of the packages that move numbers. It leaves out what does not change an
episode's outcome: the number of workers, videos, the output directory, host and git sha.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalharness.policies.common import hub
from evalharness.versions import DISTRIBUTIONS

#: packages whose version changes physics, rendering, or a policy's numerics: all those
#: `run.json` records but pandas, which only reads and writes the tables.
OUTCOME_PACKAGES = tuple(d for d in DISTRIBUTIONS if d != "pandas")

_CHUNK = 1 << 20


def checkpoint_digest(path: str | os.PathLike[str] | None) -> str | None:
    """sha256 over a checkpoint's bytes: a file, or every file under a directory (relative
    paths included, in sorted order). None when `path` is not a local file or directory (no
    checkpoint, or a hub reference: see `checkpoint_identity`)."""
    if path is None:
        return None
    root = Path(path).expanduser()
    if root.is_file():
        files = [(root.name, root)]
    elif root.is_dir():
        files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    else:
        return None
    digest = hashlib.sha256()
    for name, file in files:
        digest.update(name.encode("utf-8") + b"\0")
        with file.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def checkpoint_identity(path: str | None) -> dict[str, Any]:
    """The identity entries of the checkpoint a policy string names.

    ``checkpoint_sha256`` is the content hash of the local file or folder (None without one).
    For a hub reference (``hf://org/name[@REV]``) it hashes the snapshot the policy was loaded
    from, and ``checkpoint_hub`` records the repository, the revision as written and the
    commit it resolved to, so a branch that moved upstream is a different identity.
    """
    if hub.is_hub_ref(path):
        resolved = hub.last_resolution(path)
        return {
            "checkpoint_sha256": checkpoint_digest(resolved.local_path),
            "checkpoint_hub": resolved.to_dict(),
        }
    return {"checkpoint_sha256": checkpoint_digest(path)}


def outcome_versions(versions: Mapping[str, str]) -> dict[str, str]:
    """The subset of `package_versions()` that can change outcomes."""
    return {k: versions[k] for k in OUTCOME_PACKAGES if k in versions}


def normalize(value: Any) -> Any:
    """JSON round trip, so a fresh identity compares equal to one read back from run.json."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def identity_hash(identity: Mapping[str, Any]) -> str:
    """sha256 of the identity's canonical JSON."""
    text = json.dumps(normalize(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def differing_fields(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaves that differ, e.g. `["protocol.max_steps.libero_spatial"]`."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(recorded) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in recorded or key not in current:
                out.append(name)
            else:
                out.extend(differing_fields(recorded[key], current[key], name))
        return out
    return [] if recorded == current else [prefix or "<identity>"]


def lookup(identity: Any, dotted: str) -> Any:
    """The value at a dotted name from `differing_fields` (None where absent)."""
    node = identity
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
