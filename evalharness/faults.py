"""Faults a run survives: what each is called in `episodes.csv`, how it is detected, and the
test-only hook that injects them.

A finished episode records *why* it did not succeed in `failure_reason`. Two kinds of reason
exist and summaries keep them apart:

- the **policy** failed: `step_limit` (the suite's step limit ran out), or a reason the policy
  reports itself; these count as failures in the success rate;
- the **harness or simulator** failed, so the episode says nothing about the policy:
  `worker_died` (the worker process was killed or crashed, twice), `sim_unstable` (MuJoCo
  produced NaN/inf state, warned of instability, or raised inside `step`) and
  `episode_timeout` (the per-episode wall-clock limit ran out, e.g. a hang inside rendering).
  These are excluded from the success rate's denominator and counted in its `excluded` column.

Fault injection (`EVALHARNESS_FAULTS`) is for tests and the fault soak benchmark only: it is
read by env worker processes, can only make them fail in the listed ways, and a run that sees
it set warns and records it in `run.json`. Syntax: `;`-separated entries
`KIND[:key=value,...]`, keys `task`, `episode`, `step` (1-based control step), `attempt`
(0 = first try, 1 = the rescheduled one) and, for `egl`, `times`::

    EVALHARNESS_FAULTS="kill:task=0,episode=1,step=2,attempt=0;nan:task=0,episode=2,step=1"

kinds: `kill` (SIGKILL), `segv` (SIGSEGV), `hang` (sleeps past any limit), `raise` (an
exception inside `step`), `nan` (NaN written into MuJoCo's qvel before a step: the simulator
warns and resets), `nanobs` (NaN in the observed proprio after a step), `egl` (the env build
fails with an EGL error, `times` times per worker process; default every time).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from evalharness.errors import EvalharnessError
from evalharness.policies.base import POLICY_TIMEOUT as BASE_POLICY_TIMEOUT
from evalharness.results import HARNESS_FAILURE_REASONS

FAULTS_ENV = "EVALHARNESS_FAULTS"

STEP_LIMIT = "step_limit"
WORKER_DIED = "worker_died"
SIM_UNSTABLE = "sim_unstable"
EPISODE_TIMEOUT = "episode_timeout"
#: a policy request (a remote policy's) outlived its timeout; that episode alone ends.
POLICY_TIMEOUT = BASE_POLICY_TIMEOUT
#: failure reasons that say nothing about the policy: excluded from success rates.
HARNESS_FAILURES: frozenset[str] = HARNESS_FAILURE_REASONS
assert {WORKER_DIED, SIM_UNSTABLE, EPISODE_TIMEOUT, POLICY_TIMEOUT} == HARNESS_FAILURES

#: seconds to wait before each retry of an env build that failed with an EGL/OpenGL error.
BUILD_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)

KINDS = ("kill", "segv", "hang", "raise", "nan", "nanobs", "egl")
_KEYS = ("task", "episode", "step", "attempt", "times")

T = TypeVar("T")


def harness_failure_counts(episodes: Any) -> dict[str, int]:
    """Episodes per harness failure reason (a frame with `failure_reason`), sorted by name."""
    if "failure_reason" not in getattr(episodes, "columns", ()):
        return {}
    reasons = [str(r) for r in episodes["failure_reason"] if str(r) in HARNESS_FAILURES]
    return {r: reasons.count(r) for r in sorted(set(reasons))}


class FaultSpecError(EvalharnessError, ValueError):
    """An `EVALHARNESS_FAULTS` value that does not parse."""


class SimUnstableError(RuntimeError):
    """The simulator produced non-finite state, warned of instability, or raised in `step`."""


class EnvBuildError(EvalharnessError, RuntimeError):
    """An env could not be built (after retries, for EGL/OpenGL errors)."""


# --------------------------------------------------------------------------------------------
# Simulator instability
# --------------------------------------------------------------------------------------------

# mjtWarning indices of MuJoCo's "Nan, Inf or huge value in QPOS/QVEL/QACC ... The simulation
# is unstable" warnings; MuJoCo resets the state after them, so the episode goes on from
# qpos0 unless someone looks at the counters.
_UNSTABLE_WARNINGS = {3: "QACC", 4: "QPOS", 5: "QVEL"}


def _mj_data(sim: Any) -> Any:
    data = sim.data
    return getattr(data, "_data", data)


def instability_counts(sim: Any) -> tuple[int, ...]:
    """How often MuJoCo has warned of bad QACC/QPOS/QVEL on `sim` so far."""
    warnings = _mj_data(sim).warning
    return tuple(int(warnings[i].number) for i in _UNSTABLE_WARNINGS)


def check_stable(sim: Any, before: tuple[int, ...], obs: Mapping[str, Any], where: str) -> None:
    """Raise `SimUnstableError` if MuJoCo warned since `before` or any state is non-finite."""
    after = instability_counts(sim)
    warned = [
        name
        for (name, b, a) in zip(_UNSTABLE_WARNINGS.values(), before, after, strict=True)
        if a > b
    ]
    if warned:
        raise SimUnstableError(
            f"{where}: MuJoCo warned of NaN, inf or huge values in {'/'.join(warned)} "
            "(the simulation is unstable and was reset)"
        )
    data = _mj_data(sim)
    for name in ("qpos", "qvel"):
        if not np.all(np.isfinite(getattr(data, name))):
            raise SimUnstableError(f"{where}: non-finite simulator {name}")
    for key, value in obs.items():
        if (
            isinstance(value, np.ndarray)
            and value.dtype.kind == "f"
            and not np.all(np.isfinite(value))
        ):
            raise SimUnstableError(f"{where}: non-finite observation {key!r}")


# --------------------------------------------------------------------------------------------
# Env builds: EGL retries
# --------------------------------------------------------------------------------------------

_GL_MARKERS = ("egl", "opengl", "gl context", "gladload", "glx", "osmesa", "display")


def is_gl_error(exc: BaseException) -> bool:
    """Whether an exception looks like a render-context failure worth retrying."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in _GL_MARKERS)


def build_with_retries(
    build: Callable[[], T],
    what: str,
    delays: tuple[float, ...] = BUILD_RETRY_DELAYS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `build`, retrying EGL/OpenGL failures after each of `delays` seconds.

    Any other exception, or a GL failure after the last retry, becomes an `EnvBuildError`
    that names `what` and, for GL failures, the `MUJOCO_GL` setting and how to change it.
    """
    attempt = 0
    while True:
        try:
            return build()
        except Exception as exc:
            if not is_gl_error(exc):
                raise EnvBuildError(f"building {what} failed: {type(exc).__name__}: {exc}") from exc
            if attempt >= len(delays):
                gl = os.environ.get("MUJOCO_GL", "<unset>")
                raise EnvBuildError(
                    f"building {what} failed {attempt + 1} times with a render-context error "
                    f"({type(exc).__name__}: {exc}). MUJOCO_GL={gl}: headless machines need "
                    "MUJOCO_GL=egl with a working EGL driver (libEGL; NVIDIA's on GPUs, Mesa "
                    "on CPUs); try MUJOCO_GL=osmesa if EGL is unavailable, and check that no "
                    "render context was created before the worker processes started"
                ) from exc
            sleep(delays[attempt])
            attempt += 1


# --------------------------------------------------------------------------------------------
# Fault injection (tests and benchmarks/fault_soak.py only)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected fault: a kind and the episodes/steps it fires on (None = any)."""

    kind: str
    task: int | None = None
    episode: int | None = None
    step: int | None = None
    attempt: int | None = None
    times: int | None = None

    def matches(self, task: int, episode: int, step: int | None, attempt: int) -> bool:
        return (
            (self.task is None or self.task == task)
            and (self.episode is None or self.episode == episode)
            and (self.step is None or self.step == step)
            and (self.attempt is None or self.attempt == attempt)
        )


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Parse an `EVALHARNESS_FAULTS` value; errors name the entry and what was expected."""
    faults = []
    for entry in text.split(";"):
        entry = entry.strip()
        if not entry:
            continue
        kind, _, rest = entry.partition(":")
        kind = kind.strip()
        if kind not in KINDS:
            raise FaultSpecError(
                f"{FAULTS_ENV}: unknown fault kind {kind!r} in {entry!r}; known: {', '.join(KINDS)}"
            )
        values: dict[str, int] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key not in _KEYS:
                raise FaultSpecError(
                    f"{FAULTS_ENV}: bad item {item!r} in {entry!r}; expected key=integer with key "
                    f"in {', '.join(_KEYS)}"
                )
            try:
                values[key] = int(value)
            except ValueError:
                raise FaultSpecError(
                    f"{FAULTS_ENV}: {key}={value!r} in {entry!r} is not an integer"
                ) from None
        faults.append(Fault(kind, **values))
    return tuple(faults)


@dataclass
class FaultPlan:
    """The faults one worker process injects; empty (and inert) unless the env var is set."""

    faults: tuple[Fault, ...] = ()
    _fired: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultPlan:
        text = (os.environ if environ is None else environ).get(FAULTS_ENV, "")
        return cls(parse_faults(text)) if text.strip() else cls()

    def before_build(self, task: int) -> None:
        """Raise an EGL-style error if an `egl` fault covers this build."""
        for i, fault in enumerate(self.faults):
            if fault.kind != "egl" or (fault.task is not None and fault.task != task):
                continue
            fired = self._fired.get(i, 0)
            if fault.times is None or fired < fault.times:
                self._fired[i] = fired + 1
                raise RuntimeError(
                    f"injected fault: eglMakeCurrent failed (EGL_BAD_CONTEXT), build {fired + 1}"
                )

    def before_step(self, task: int, episode: int, step: int, attempt: int, sim: Any) -> None:
        """Fire the faults due before control step `step` (1-based) of an episode."""
        for fault in self.faults:
            if not fault.matches(task, episode, step, attempt):
                continue
            if fault.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault.kind == "segv":
                _no_core_dump()
                os.kill(os.getpid(), signal.SIGSEGV)
            elif fault.kind == "hang":
                time.sleep(3600)
            elif fault.kind == "raise":
                raise RuntimeError(f"injected fault: exception inside step {step}")
            elif fault.kind == "nan":
                _mj_data(sim).qvel[0] = np.nan

    def after_step(
        self, task: int, episode: int, step: int, attempt: int, obs: dict[str, Any]
    ) -> None:
        """Fire `nanobs` faults: corrupt the observation the env just returned."""
        for fault in self.faults:
            if fault.kind == "nanobs" and fault.matches(task, episode, step, attempt):
                obs["proprio"] = np.full_like(obs["proprio"], np.nan)


def _no_core_dump() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):
        pass
