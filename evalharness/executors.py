"""Executors: where a run's episodes are rolled out, behind one small interface.

An `Executor` takes the pending episodes and yields each one as it ends (`EpisodeResult`),
plus an `Incident` for each episode it had to reschedule. The runner does the rest the same
way for every executor: one `episodes.csv` row per result, incidents into run.json, progress.

- `LocalExecutor` (this module): `num_envs` local worker processes stepped in lockstep, one
  batched `act()` per step for all live envs;
- `evalharness.ray_executor.RayExecutor`: the same on Ray actors, each with a policy replica.

Harness faults are handled inside the executor and reported with the harness's reasons
(`evalharness.faults`): a worker that died is replaced and its episode rescheduled once
(`attempt` 1; a second death is recorded as `worker_died`); an episode past its time limit is
recorded as `episode_timeout` and its worker replaced; simulator instability as
`sim_unstable`; an episode whose policy request timed out (`Policy.failure_reason` names a
harness fault after `act()`, as a remote policy does) as `policy_timeout`, the others going on.

Pipelined rollouts (`pipeline=True`, a policy with `Policy.pipelines`): the slots split into
two groups (even, odd), each served by its own lane of the policy (`Policy.pipeline_lanes`).
One group's envs step while the other's `act()` runs on a thread, so env stepping and
inference overlap. Each lane is called in lockstep for its group, and episode seeds make an
outcome independent of its batch, so the outcomes equal lockstep's.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from evalharness import faults
from evalharness.policies.base import Policy
from evalharness.pool import WorkerDied, WorkerPool, WorkerTimeout
from evalharness.run_config import RESET_TIMEOUT_S
from evalharness.scheduling import ActiveEpisode, failure_reason, next_episode, query_policy
from evalharness.worker import EnvConfig, Episode

__all__ = ["EpisodeResult", "Event", "Executor", "Incident", "LocalExecutor"]


@dataclass(frozen=True)
class EpisodeResult:
    """An episode that ended, however it ended: one row of `episodes.csv`."""

    episode: Episode
    success: bool
    steps: int
    wall_seconds: float
    #: "" on success; else the policy's reason, `step_limit`, or a harness failure reason.
    failure_reason: str
    #: what went wrong, for harness failures (the worker's exit code, the simulator warning).
    detail: str = ""
    #: the scene after the warm-up (`evalharness.envs.scenes`); "" if the reset never ended.
    scene_fingerprint: str = ""


@dataclass(frozen=True)
class Incident:
    """A harness fault that did not end an episode's record: the episode was rescheduled."""

    episode: Episode
    reason: str
    detail: str
    action: str


Event = EpisodeResult | Incident


class Executor(abc.ABC):
    """Rolls out episodes and yields each as it ends."""

    def __init__(self) -> None:
        #: env steps taken so far (warm-up steps excluded).
        self.env_steps = 0
        #: monotonic time of the first batched `act()`, once every initial env is built.
        self.first_step: float | None = None

    @abc.abstractmethod
    def run(self, pending: deque[Episode]) -> Generator[Event, None, None]:
        """Roll out every episode of `pending`, taking each off it (rescheduled ones are put
        back); yield an `EpisodeResult` as each ends and an `Incident` for each reschedule.

        Closing the iterator before it is exhausted (an interrupt, a failed write, a policy
        error) abandons the episodes in flight at once.
        """


def _result(a: ActiveEpisode, success: bool, reason: str, detail: str = "") -> EpisodeResult:
    wall = time.monotonic() - a.started
    return EpisodeResult(a.episode, success, a.steps, wall, reason, detail, a.scene_fingerprint)


class LocalExecutor(Executor):
    """Episodes on local worker processes (`evalharness.pool`), stepped in lockstep.

    A finished episode's worker takes the next pending episode, preferring one of the task it
    has built. Lockstep scheduling makes the batches a function of the command alone.
    """

    def __init__(
        self,
        env_config: EnvConfig | Mapping[str, EnvConfig],
        policy: Policy,
        policy_string: str,
        num_envs: int,
        episode_timeout: float,
        instructions: Mapping[tuple[str, int], str],
        pipeline: bool = False,
    ) -> None:
        super().__init__()
        self.env_config = env_config
        self.policy = policy
        self.policy_string = policy_string
        self.num_envs = num_envs
        self.episode_timeout = episode_timeout
        self.instructions = dict(instructions)
        self.pool: WorkerPool | None = None
        #: pipelined rollouts asked for (taken when the policy has lanes and >= 2 envs run).
        self.pipeline = pipeline

    def run(self, pending: deque[Episode]) -> Generator[Event, None, None]:
        """See `Executor.run`."""
        if not pending:
            return
        n = min(self.num_envs, len(pending))
        self.pool = pool = WorkerPool(n, self.env_config)
        #: per slot: the episode it runs, and the task its env is built for.
        active: list[ActiveEpisode | None] = [None] * n
        built: list[tuple[str, int] | None] = [None] * n
        finished = False
        thread: ThreadPoolExecutor | None = None
        try:
            pipelined = self.pipeline and self.policy.pipelines and n >= 2
            lanes = self.policy.pipeline_lanes(2) if pipelined else [self.policy]
            for lane in lanes:
                lane.reset(n)
            yield from self._assign(range(n), pending, active, built)
            self.first_step = time.monotonic()
            if pipelined:
                thread = ThreadPoolExecutor(1, thread_name_prefix="evalharness-act")
                yield from self._pipelined(thread, lanes, pending, active, built)
            while any(a is not None for a in active):
                live = [i for i, a in enumerate(active) if a is not None]
                batch = [a for a in active if a is not None]
                actions = query_policy(self.policy, batch, self.policy_string)
                yield from self._step(self.policy, live, actions, pending, active, built)
            finished = True
        finally:
            if thread is not None:
                thread.shutdown(wait=False, cancel_futures=True)
            # Interrupted or failed: in-flight episodes are abandoned, not waited for.
            if finished:
                pool.close()
            else:
                pool.kill_all()

    def _pipelined(
        self,
        thread: ThreadPoolExecutor,
        lanes: Sequence[Policy],
        pending: deque[Episode],
        active: list[ActiveEpisode | None],
        built: list[tuple[str, int] | None],
    ) -> Generator[Event, None, None]:
        """Step group g while group g+1's actions are computed on `thread`, alternating until
        every episode has ended."""
        groups = [list(range(g, len(active), len(lanes))) for g in range(len(lanes))]
        #: group -> (its slots, the future of their actions); at most one `act()` in flight.
        queried: dict[int, tuple[list[int], Future[Any]]] = {}

        def submit(g: int) -> None:
            slots = [s for s in groups[g] if active[s] is not None]
            batch = [a for a in (active[s] for s in slots) if a is not None]
            if slots:
                future = thread.submit(query_policy, lanes[g], batch, self.policy_string)
                queried[g] = (slots, future)

        g = 0
        submit(g)
        while queried or any(a is not None for a in active):
            slots: list[int] = []
            actions = None
            if g in queried:
                slots, future = queried.pop(g)
                actions = future.result()
            h = (g + 1) % len(lanes)
            if h not in queried:
                submit(h)  # computed while group g's envs step
            if slots:
                yield from self._step(lanes[g], slots, actions, pending, active, built)
            g = h

    def _step(
        self,
        policy: Policy,
        slots: Sequence[int],
        actions: Any,
        pending: deque[Episode],
        active: list[ActiveEpisode | None],
        built: list[tuple[str, int] | None],
    ) -> Generator[Event, None, None]:
        """Step `slots` with their `actions`; yield what ends; hand freed slots new episodes.
        An episode whose query `policy` marks as a harness fault (a timed-out request) ends
        here, unstepped."""
        assert self.pool is not None
        freed, stepping = [], []
        for j, slot in enumerate(slots):
            a = active[slot]
            assert a is not None
            seed = a.episode.policy_seed
            reason = policy.failure_reason(seed)
            if reason in faults.HARNESS_FAILURES:
                yield _result(a, False, reason, policy.failure_detail(seed))
                active[slot] = None
                freed.append(slot)
                continue
            self.pool.send(slot, "step", actions[j])
            stepping.append((slot, a))
        sent_at = time.monotonic()
        for slot, a in stepping:
            reply = yield from self._receive(slot, a, "step", sent_at, pending, built)
            if reply is None:  # a fault ended the episode (reported or rescheduled)
                active[slot] = None
                freed.append(slot)
                continue
            ob, _, terminated, truncated, info = reply
            self.env_steps += int(info["episode_steps"]) - a.steps
            a.steps = int(info["episode_steps"])
            a.obs = ob
            if terminated or truncated:
                success = bool(info["success"])
                yield _result(a, success, failure_reason(policy, a.episode, success))
                active[slot] = None
                freed.append(slot)
        if freed:
            yield from self._assign(freed, pending, active, built)

    def _assign(
        self,
        slots: Sequence[int],
        pending: deque[Episode],
        active: list[ActiveEpisode | None],
        built: list[tuple[str, int] | None],
    ) -> Generator[Event, None, None]:
        """Hand each free slot its next episode and reset it; a slot whose reset fails (the
        worker died, the simulator went unstable) takes the next one."""
        assert self.pool is not None
        free = list(slots)
        while free and pending:
            sent = []
            for slot in free:
                if not pending:
                    break
                episode = next_episode(pending, built[slot])
                built[slot] = episode.task_key
                self.pool.send(slot, "reset", episode)
                instruction = self.instructions[episode.task_key]
                sent.append((slot, ActiveEpisode(episode, instruction, {}, time.monotonic())))
            free = []
            for slot, a in sent:
                reply = yield from self._receive(slot, a, "reset", a.started, pending, built)
                if reply is None:
                    free.append(slot)
                    continue
                a.obs, info = reply
                a.scene_fingerprint = str(info.get("scene_fingerprint", ""))
                a.started = time.monotonic()
                active[slot] = a

    def _receive(
        self,
        slot: int,
        a: ActiveEpisode,
        what: str,
        sent_at: float,
        pending: deque[Episode],
        built: list[tuple[str, int] | None],
    ) -> Generator[Event, None, Any]:
        """The worker's reply; or None, after yielding what a fault made of the episode."""
        assert self.pool is not None
        e = a.episode
        where = f"{what} of task {e.task_id} episode {e.episode_index}"
        if what == "reset":
            limit = max(RESET_TIMEOUT_S, self.episode_timeout)
        else:
            limit = self.episode_timeout - a.env_seconds
        try:
            return self.pool.recv(slot, where, timeout=sent_at + limit - time.monotonic())
        except WorkerDied as exc:
            self.pool.restart(slot)
            built[slot] = None
            if e.attempt == 0:
                pending.appendleft(dataclasses.replace(e, attempt=1))
                yield Incident(e, faults.WORKER_DIED, str(exc), "rescheduled on a fresh worker")
            else:
                yield _result(a, False, faults.WORKER_DIED, str(exc))
        except WorkerTimeout as exc:
            self.pool.restart(slot)
            built[slot] = None
            detail = f"{exc} ({self.episode_timeout:.0f} s)"
            yield _result(a, False, faults.EPISODE_TIMEOUT, detail)
        except faults.SimUnstableError as exc:
            built[slot] = None  # the worker closed its env; the next reset rebuilds
            yield _result(a, False, faults.SIM_UNSTABLE, str(exc))
        finally:
            if what == "step":
                a.env_seconds += time.monotonic() - sent_at
        return None
