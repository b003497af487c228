"""The policy-family registry: one entry per family, found by folder or entry point, read by
finetune, doctor and `evalharness policies`; options dataclasses; the per-episode helper."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from evalharness.cli import main
from evalharness.policies.base import PAD_SEED_BASE, EpisodeStreams, PolicySpec
from evalharness.policies.builtin import ZeroPolicy
from evalharness.policies.common.doctor import CheckpointFacts, Finding
from evalharness.policies.common.options import (
    OptionError,
    describe_options,
    field_docs,
    option_field,
    parse_options,
)
from evalharness.policies.registry import (
    ENTRY_POINT_GROUP,
    PolicyFamily,
    PolicyStringError,
    families,
    format_families,
    get_family,
    known_policies,
    load_policy,
    register_family,
    reload_families,
    unregister_family,
)

REPO = Path(__file__).resolve().parents[1]
IN_TREE = {"diffusion", "octo_jax", "octo_pt", "random", "scripted", "zero"}


@pytest.fixture
def family():
    """Registers families for one test: `family(PolicyFamily(...))`; removed afterwards."""
    added: list[str] = []

    def add(entry: PolicyFamily) -> PolicyFamily:
        added.append(entry.name)
        return register_family(entry)

    yield add
    for name in added:
        unregister_family(name)


def make_toy(path=None, **options):
    return ZeroPolicy(PolicySpec("toy"))


# --------------------------------------------------------------------------------------------
# One entry per family
# --------------------------------------------------------------------------------------------


def test_every_family_folder_declares_itself_once():
    found = families()
    assert set(found) >= IN_TREE
    assert list(found) == sorted(found) == known_policies()
    for name in IN_TREE:
        assert found[name].name == name and found[name].source == "evalharness"
        assert found[name].summary and found[name].example is not None


def test_listing_families_and_their_options_imports_no_framework():
    code = (
        "import sys\n"
        "from evalharness.policies.registry import families, format_families\n"
        "format_families()\n"
        "assert all(f.describe_options() is not None for f in families().values())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'jax', 'flax', 'transformers', 'tensorflow')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def test_the_trainer_table_is_the_registry():
    from evalharness.finetune import FinetuneError, get_trainer_factory, known_trainers

    assert known_trainers() == [n for n, f in families().items() if f.trainer is not None]
    assert {"octo_jax", "octo_pt", "diffusion"} <= set(known_trainers())
    with pytest.raises(FinetuneError, match=r"no trainer for policy family 'zero'; .*octo_jax"):
        get_trainer_factory("zero")


def test_a_registered_family_is_loaded_by_name_and_an_unknown_name_lists_the_known(family):
    family(PolicyFamily("toy", "a toy", make_toy, usage="toy"))
    assert load_policy("toy").spec.name == "toy"
    with pytest.raises(PolicyStringError, match=r"unknown policy 'nope'; known policies: .*toy"):
        get_family("nope")
    with pytest.raises(ValueError, match="policy name 'toy' is already registered"):
        register_family(PolicyFamily("toy", "another", make_toy))


def test_a_family_that_needs_a_missing_module_says_which_extra_installs_it(family):
    entry = family(
        PolicyFamily("needs", "", "no_such_module_xyz:make", extra="xyz", requires=("no_such_xyz",))
    )
    assert entry.missing() == ["no_such_xyz"] and not entry.installed
    assert "not installed (needs no_such_xyz); pip extra [xyz]" in format_families(["needs"])
    with pytest.raises(ImportError, match=r"pip install 'evalharness\[xyz\]'"):
        load_policy("needs")


def test_doctor_reads_the_checkpoint_through_the_family_hook(family):
    from evalharness.doctor import doctor

    def describe(path: str, options: dict[str, str], findings: list[Finding]) -> CheckpointFacts:
        findings.append(Finding("ok", "weights", f"read {path} with {options}"))
        return CheckpointFacts({"image_primary": (8, 8)}, {}, 1, 2, 7, False, {}, None)

    family(PolicyFamily("toy", "", make_toy, doctor=describe))
    findings = doctor("toy:/ckpt?k=v")
    assert findings[0] == Finding("ok", "weights", "read /ckpt with {'k': 'v'}")
    assert findings[1].message == (
        "cameras {'image_primary': (8, 8)}, window 1, action 7 × horizon 2, no language"
    )


# --------------------------------------------------------------------------------------------
# Entry points: installed packages add families
# --------------------------------------------------------------------------------------------


def _install_fake_distribution(root: Path, entry_points: str, plugin: str) -> None:
    """A distribution as pip leaves it: a module and its .dist-info on sys.path."""
    (root / "toy_plugin.py").write_text(textwrap.dedent(plugin))
    info = root / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    sys.modules.pop("toy_plugin", None)
    reload_families()


PLUGIN = """
    from evalharness.policies.base import PolicySpec
    from evalharness.policies.builtin import ZeroPolicy
    from evalharness.policies.registry import PolicyFamily

    def make(path=None, **options):
        return ZeroPolicy(PolicySpec("toy"))

    FAMILY = PolicyFamily("toy", "a plugin's policy", make, usage="toy")
    IMPOSTOR = PolicyFamily("zero", "not the built-in", make)
"""


def test_an_installed_package_adds_a_family_through_the_entry_point_group(plugin_path):
    _install_fake_distribution(plugin_path, "toy = toy_plugin:FAMILY", PLUGIN)
    found = reload_families()
    assert found["toy"].source == "toy-plugin"
    assert set(found) >= IN_TREE
    assert load_policy("toy").spec.name == "toy"
    assert "from: toy-plugin" in format_families(["toy"])


def test_a_broken_or_clashing_entry_point_is_skipped_with_a_warning(plugin_path):
    _install_fake_distribution(
        plugin_path,
        "broken = toy_plugin:NOT_THERE\nimpostor = toy_plugin:IMPOSTOR\ntoy = toy_plugin:FAMILY",
        PLUGIN,
    )
    with pytest.warns(UserWarning) as caught:
        found = reload_families()
    messages = sorted(str(w.message) for w in caught)
    assert any("entry point broken = 'toy_plugin:NOT_THERE'" in m for m in messages)
    assert any(
        "policy family 'zero' from toy-plugin is already registered by evalharness" in m
        for m in messages
    )
    assert found["zero"].source == "evalharness" and "toy" in found


# --------------------------------------------------------------------------------------------
# `evalharness policies`
# --------------------------------------------------------------------------------------------


def test_evalharness_policies_lists_every_family_with_its_options_and_install_state(capsys):
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    for name in families():
        assert f"\n{name}: " in f"\n{out}"
    assert "  installed" in out
    assert "    action_horizon  int, default 1" in out
    assert main(["policies", "scripted"]) == 0
    assert capsys.readouterr().out.startswith("scripted: waypoint expert")


def test_evalharness_policies_names_an_unknown_family(capsys):
    assert main(["policies", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Options as a dataclass
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyOptions:
    """Options of a toy family."""

    steps: int = option_field(10, minimum=1)
    """denoising steps."""
    scale: float | None = None
    """action scale."""
    mode: Literal["fast", "exact"] = "exact"
    """how to sample."""
    strict: bool = True
    """refuse what does not fit."""
    device: str = option_field("cpu", only=("toy_torch",))
    """torch device."""


def test_options_are_converted_by_their_field_types():
    parsed = parse_options(
        ToyOptions, {"steps": "3", "scale": "0.5", "mode": "fast", "strict": "no"}, "policy 'toy'"
    )
    assert parsed == ToyOptions(steps=3, scale=0.5, mode="fast", strict=False)
    assert parse_options(ToyOptions, {"scale": ""}, "policy 'toy'").scale is None
    assert parse_options(ToyOptions, {}, "policy 'toy'") == ToyOptions()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stepz": "1"}, r"policy 'toy' has no option\(s\) \['stepz'\]; known: steps, scale"),
        ({"steps": "x"}, r"policy 'toy': option steps='x' must be an integer"),
        ({"steps": "0"}, r"policy 'toy': option steps=0 must be >= 1"),
        ({"scale": "big"}, r"policy 'toy': option scale='big' must be a number"),
        ({"mode": "slow"}, r"policy 'toy': option mode='slow' must be one of 'fast', 'exact'"),
        ({"strict": "2"}, r"policy 'toy': option strict='2' must be true or false"),
        ({"device": "cuda"}, r"policy 'toy' has no option\(s\) \['device'\]"),
    ],
)
def test_a_bad_option_is_named_with_what_was_expected(options, message):
    with pytest.raises(OptionError, match=message):
        parse_options(ToyOptions, options, "policy 'toy'", family="toy")


def test_an_option_only_some_families_read_is_known_to_them():
    assert parse_options(ToyOptions, {"device": "cuda"}, "x", family="toy_torch").device == "cuda"
    assert [o.name for o in describe_options(ToyOptions, "toy")] == [
        "steps",
        "scale",
        "mode",
        "strict",
    ]


def test_each_option_is_documented_by_the_docstring_under_its_field():
    assert field_docs(ToyOptions) == {
        "steps": "denoising steps.",
        "scale": "action scale.",
        "mode": "how to sample.",
        "strict": "refuse what does not fit.",
        "device": "torch device.",
    }
    info = describe_options(ToyOptions)[2]
    assert (info.name, info.type, info.default, info.doc) == (
        "mode",
        "fast | exact",
        "exact",
        "how to sample.",
    )
    for name, entry in families().items():
        undocumented = [o.name for o in entry.describe_options() if not o.doc]
        assert not undocumented, f"{name}: options without a docstring: {undocumented}"


# --------------------------------------------------------------------------------------------
# EpisodeStreams
# --------------------------------------------------------------------------------------------


def tasks(seeds: list[int], starts: list[bool] | None = None) -> dict[str, np.ndarray]:
    out = {"episode_seed": np.array(seeds, dtype=np.int64)}
    if starts is not None:
        out["episode_start"] = np.array(starts)
    return out


def test_an_episode_keeps_its_value_across_calls_and_restarts_at_episode_start():
    made: list[int] = []
    streams = EpisodeStreams(lambda seed: made.append(seed) or [seed])
    first = streams.rows(tasks([3, 4]))
    assert streams.rows(tasks([3, 4], [False, False])) == first
    assert streams.rows(tasks([3, 4]))[0] is first[0]
    restarted = streams.rows(tasks([3, 4], [True, False]))
    assert restarted[0] is not first[0] and restarted[1] is first[1]
    assert made == [3, 4, 3]


def test_an_episode_absent_from_a_call_has_ended_and_is_forgotten_after_it():
    streams = EpisodeStreams(lambda seed: [seed])
    streams.rows(tasks([3, 4]))
    assert streams.get(4) == [4]  # e.g. failure_reason right after the episode ended
    streams.rows(tasks([3, 5]))
    assert sorted(streams) == [3, 5] and streams.get(4) is None


def test_padding_rows_get_a_fresh_value_that_is_never_kept():
    streams = EpisodeStreams(lambda seed: [seed])
    for _ in range(100):
        values = streams.rows(tasks([7, PAD_SEED_BASE, PAD_SEED_BASE + 1], [False, True, True]))
        assert values[1] == [PAD_SEED_BASE]
    assert len(streams) == 1 and 7 in streams


def test_a_direct_call_without_episode_seeds_numbers_its_rows():
    streams = EpisodeStreams(lambda seed: [seed])
    assert streams.rows({}, batch_size=2) == [[0], [1]]
    with pytest.raises(KeyError, match="episode_seed"):
        streams.rows({})
    streams.clear()
    assert len(streams) == 0


# --------------------------------------------------------------------------------------------
# Family names live in their folders and the registry
# --------------------------------------------------------------------------------------------

#: string literals that are a family's name by coincidence, not a policy string.
COINCIDENCES = {
    ("evalharness/dashboard.py", "zero"): "the CSS class of the zero line",
    ("evalharness/openloop.py", "zero"): "the zero predictor's column",
    # A benchmark of the remote family itself (serve round trips); its home is that family's
    # `benchmarks` hook, which benchmarks/policy_latency.py would then time like the others.
    ("benchmarks/remote.py", "remote"): "the remote family's own benchmark",
}


def _code_strings(path: Path) -> list[str]:
    """String literals in code, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_code_outside_a_family_folder_and_the_registry_names_a_family():
    names = set(families())
    shared = {"octo"}  # the two Octo families' shared folder
    offenders = []
    for top in ("evalharness", "envs", "benchmarks", "policies"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            parts = rel.split("/")
            if top == "policies" and (
                rel == "policies/registry.py"
                or (len(parts) > 2 and (parts[1] in names or parts[1] in shared))
                or (len(parts) > 2 and (REPO / "policies" / parts[1] / "family.py").exists())
            ):
                continue
            for text in _code_strings(path):
                for name in names:
                    named = text == name or text.startswith((f"{name}:", f"{name}?"))
                    if named and (rel, name) not in COINCIDENCES:
                        offenders.append(f"{rel}: {text!r}")
    assert not offenders, "family names outside their folder and the registry:\n" + "\n".join(
        offenders
    )
