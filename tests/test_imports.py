"""Modules keep their underscore names to themselves.

A name that starts with `_` is private to the module that defines it: no other module of the
package (evalharness/, envs/, policies/, benchmarks/) may import it (`from x import _y`) or
reach it through an imported module (`import x; x._y`). What two modules share gets a public
name in one of them. Read from the source with `ast`, so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the module name it installs as (pyproject's package-dir mapping).
PACKAGES = {
    "evalharness": "evalharness",
    "envs": "evalharness.envs",
    "policies": "evalharness.policies",
    "benchmarks": "benchmarks",
}


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = {
    _module_name(path): path
    for folder in PACKAGES
    for path in sorted((ROOT / folder).rglob("*.py"))
    if ".venv" not in path.parts
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ImportFrom reads from, with relative imports resolved."""
    if not node.level:
        return node.module or ""
    is_package = SOURCES[module].name == "__init__.py"
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def private_uses(module: str, source: str) -> list[str]:
    """`file:line: what` for every underscore name `module` takes from another first-party
    module (the check below, exposed for its own test)."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name -> first-party module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import a.b.c` binds `a`; `import a.b.c as m` binds `m` to `a.b.c`.
                top = alias.name.split(".")[0]
                modules[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(module, node)
            if origin not in SOURCES:
                continue
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"{node.lineno}: from {origin} import {alias.name}")
                elif f"{origin}.{alias.name}" in SOURCES:
                    modules[alias.asname or alias.name] = f"{origin}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        # Resolve `a.b.c._d` to its dotted prefix and check that prefix names a module.
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in modules:
            target = ".".join([modules[value.id], *reversed(chain)])
            if target in SOURCES and target != module:
                found.append(f"{node.lineno}: {target}.{node.attr}")
    return sorted(found, key=lambda use: int(use.split(":")[0]))


def test_the_check_finds_both_spellings_and_allows_public_and_dunder_names() -> None:
    source = (
        "from evalharness.runner import _stack, act_batch\n"
        "from evalharness import faults, __version__\n"
        "import evalharness.results as results\n"
        "from . import errors\n"
        "from numpy import _NoValue\n"
        "faults._mj_data(sim)\n"
        "results._header_error\n"
        "errors._x\n"
        "faults.SIM_UNSTABLE\n"
        "self._private\n"
    )
    assert private_uses("evalharness.record", source) == [
        "1: from evalharness.runner import _stack",
        "6: evalharness.faults._mj_data",
        "7: evalharness.results._header_error",
        "8: evalharness.errors._x",
    ]


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_module_imports_another_modules_underscore_names(module: str) -> None:
    path = SOURCES[module]
    uses = private_uses(module, path.read_text(encoding="utf-8"))
    rel = path.relative_to(ROOT)
    assert not uses, f"{rel} uses private names of other modules: " + "; ".join(
        f"{rel}:{u}" for u in uses
    )
