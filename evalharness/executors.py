"""Executors: where a run's episodes are rolled out, behind one small interface.

An `Executor` takes the pending episodes and yields each one as it ends (`EpisodeResult`),
plus an `Incident` for each episode it had to reschedule. The runner does the rest the same
way for every executor: one `episodes.csv` row per result, incidents into run.json, progress.

- `LocalExecutor` (this module): `num_workers` local worker processes of `envs_per_worker`
  envs each (`evalharness.pool`), stepped in lockstep, one batched `act()` per step for all
  live envs;
- `evalharness.ray_executor.RayExecutor`: the same on Ray actors, each with a policy replica.

Harness faults are handled inside the executor and reported with the harness's reasons
(`evalharness.faults`): a worker that died is replaced and its episode rescheduled once
(`attempt` 1; a second death is recorded as `worker_died`); an episode past its time limit is
recorded as `episode_timeout` and its worker replaced. A worker hosting several envs takes
all their episodes with it: the episode whose request it was serving is handled as above,
the others are rescheduled as they were (incident `worker_died`, `attempt` unchanged: not
their fault). Simulator instability is recorded as `sim_unstable`; an episode whose policy
request timed out (`Policy.failure_reason` names a harness fault after `act()`, as a remote
policy does) as `policy_timeout`, the others going on.

Pipelined rollouts (`pipeline=True`, a policy with `Policy.pipelines`): the slots split into
two groups, each served by its own lane of the policy (`Policy.pipeline_lanes`). One group's
envs step while the other's `act()` runs on a thread, so env stepping and inference overlap.
With several envs per worker the groups split every worker (its first env in group 0, its
second in group 1, ...), so each process steps one env while its other env waits for actions;
with one env per worker they alternate workers (even, odd). Each lane is called in lockstep
for its group, and episode seeds make an outcome independent of its batch, so the outcomes
equal lockstep's.
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

__all__ = ["EpisodeResult", "Event", "Executor", "Incident", "LocalExecutor", "pipeline_groups"]


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

    `num_workers` processes of `envs_per_worker` envs (slots) each; fewer when there are
    fewer episodes. A finished episode's slot takes the next pending episode, preferring one
    of the task its env has built. Lockstep scheduling makes the batches a function of the
    command alone.
    """

    def __init__(
        self,
        env_config: EnvConfig | Mapping[str, EnvConfig],
        policy: Policy,
        policy_string: str,
        num_workers: int,
        episode_timeout: float,
        instructions: Mapping[tuple[str, int], str],
        pipeline: bool = False,
        envs_per_worker: int = 1,
    ) -> None:
        super().__init__()
        if envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
        self.env_config = env_config
        self.policy = policy
        self.policy_string = policy_string
        self.num_workers = num_workers
        self.envs_per_worker = envs_per_worker
        self.episode_timeout = episode_timeout
        self.instructions = dict(instructions)
        self.pool: WorkerPool | None = None
        #: pipelined rollouts asked for (taken when the policy has lanes and >= 2 envs run).
        self.pipeline = pipeline
        #: slots whose episode ended because a fault in another env restarted their worker;
        #: free, waiting for the next `_assign`.
        self._orphans: set[int] = set()

    def layout(self, num_episodes: int) -> tuple[int, int]:
        """(workers, envs per worker) for `num_episodes` pending episodes: as many workers as
        asked while there are episodes for them, then no more envs each than it takes."""
        workers = min(self.num_workers, num_episodes)
        return workers, min(self.envs_per_worker, -(-num_episodes // workers))

    def run(self, pending: deque[Episode]) -> Generator[Event, None, None]:
        """See `Executor.run`."""
        if not pending:
            return
        workers, envs_per_worker = self.layout(len(pending))
        self.pool = pool = WorkerPool(workers, self.env_config, envs_per_worker)
        n = len(pool)
        #: per slot: the episode it runs (or is resetting for), and the task its env is built for.
        active: list[ActiveEpisode | None] = [None] * n
        built: list[tuple[str, int] | None] = [None] * n
        self._orphans = set()
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
                groups = pipeline_groups(workers, envs_per_worker, len(lanes))
                yield from self._pipelined(thread, lanes, groups, pending, active, built)
            while any(a is not None for a in active):
                live = [i for i, a in enumerate(active) if a is not None]
                batch = [a for a in active if a is not None]
                actions = query_policy(self.policy, batch, self.policy_string)
                yield from self._step(self.policy, live, batch, actions, pending, active, built)
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
        groups: Sequence[Sequence[int]],
        pending: deque[Episode],
        active: list[ActiveEpisode | None],
        built: list[tuple[str, int] | None],
    ) -> Generator[Event, None, None]:
        """Step group g while group g+1's actions are computed on `thread`, alternating until
        every episode has ended."""
        #: group -> (its slots, their episodes, the future of their actions); at most one
        #: `act()` in flight.
        queried: dict[int, tuple[list[int], list[ActiveEpisode], Future[Any]]] = {}

        def submit(g: int) -> None:
            slots = [s for s in groups[g] if active[s] is not None]
            batch = [a for a in (active[s] for s in slots) if a is not None]
            if slots:
                future = thread.submit(query_policy, lanes[g], batch, self.policy_string)
                queried[g] = (slots, batch, future)

        g = 0
        submit(g)
        while queried or any(a is not None for a in active):
            slots: list[int] = []
            batch: list[ActiveEpisode] = []
            actions = None
            if g in queried:
                slots, batch, future = queried.pop(g)
                actions = future.result()
            h = (g + 1) % len(lanes)
            if h not in queried:
                submit(h)  # computed while group g's envs step
            if slots:
                yield from self._step(lanes[g], slots, batch, actions, pending, active, built)
            g = h

    def _step(
        self,
        policy: Policy,
        slots: Sequence[int],
        batch: Sequence[ActiveEpisode],
        actions: Any,
        pending: deque[Episode],
        active: list[ActiveEpisode | None],
        built: list[tuple[str, int] | None],
    ) -> Generator[Event, None, None]:
        """Step `slots` (running `batch`'s episodes) with their `actions`; yield what ends;
        hand freed slots new episodes. An episode whose query `policy` marks as a harness
        fault (a timed-out request) ends here, unstepped."""
        assert self.pool is not None
        freed, stepping = [], []
        for j, slot in enumerate(slots):
            a = active[slot]
            if a is None or a is not batch[j]:
                continue  # its worker was restarted while its actions were computed
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
            if active[slot] is not a:
                continue  # ended with its worker, restarted for another env's fault
            reply = yield from self._receive(slot, a, "step", sent_at, pending, active, built)
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
        freed.extend(self._take_orphans(freed))
        if freed:
            yield from self._assign(freed, pending, active, built)

    def _take_orphans(self, taken: Sequence[int]) -> list[int]:
        orphans = sorted(self._orphans - set(taken))
        self._orphans.clear()
        return orphans

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
            # In slot order: a worker serves its envs' requests in that order (`_reschedule`).
            for slot in sorted(free):
                if not pending:
                    break
                episode = next_episode(pending, built[slot])
                built[slot] = episode.task_key
                self.pool.send(slot, "reset", episode)
                instruction = self.instructions[episode.task_key]
                a = ActiveEpisode(episode, instruction, {}, time.monotonic())
                active[slot] = a  # so that a fault in another env of its worker finds it
                sent.append((slot, a))
            free = []
            for slot, a in sent:
                if active[slot] is not a:
                    continue  # ended with its worker, restarted for another env's fault
                reply = yield from self._receive(
                    slot, a, "reset", a.started, pending, active, built
                )
                if reply is None:
                    active[slot] = None
                    free.append(slot)
                    continue
                a.obs, info = reply
                a.scene_fingerprint = str(info.get("scene_fingerprint", ""))
                a.started = time.monotonic()
            free.extend(self._take_orphans(free))

    def _receive(
        self,
        slot: int,
        a: ActiveEpisode,
        what: str,
        sent_at: float,
        pending: deque[Episode],
        active: list[ActiveEpisode | None],
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
            lost = self._restart(slot, active, built)
            yield from _worker_died(a, str(exc), pending)
            yield from _reschedule(lost, str(exc), pending)
        except WorkerTimeout as exc:
            lost = self._restart(slot, active, built)
            yield _result(a, False, faults.EPISODE_TIMEOUT, f"{exc} ({self.episode_timeout:.0f} s)")
            yield from _reschedule(lost, f"{exc}, and was restarted", pending)
        except faults.SimUnstableError as exc:
            built[slot] = None  # the worker closed its env; the next reset rebuilds
            yield _result(a, False, faults.SIM_UNSTABLE, str(exc))
        finally:
            if what == "step":
                a.env_seconds += time.monotonic() - sent_at
        return None

    def _restart(
        self,
        slot: int,
        active: list[ActiveEpisode | None],
        built: list[tuple[str, int] | None],
    ) -> list[tuple[int, Episode]]:
        """Restart the slot's worker; returns the (slot, episode) of its other envs, which
        ended with it. Their slots wait for `_assign` (`_orphans`)."""
        assert self.pool is not None
        lost = []
        for s in self.pool.restart(slot):
            built[s] = None
            other = active[s]
            if s != slot and other is not None:
                active[s] = None
                self._orphans.add(s)
                lost.append((s, other.episode))
        return lost


def _reschedule(
    lost: Sequence[tuple[int, Episode]], cause: str, pending: deque[Episode]
) -> Generator[Event, None, None]:
    """Episodes that ended because another env of their worker broke it: rescheduled as
    they were (`attempt` unchanged). Not their fault: a worker serves its envs' requests in
    the order sent and the runner reads the replies in that order, so the env whose reply
    never came is the one whose request was being served (requests go out in slot order,
    and `evalharness.worker.worker_main` serves ready pipes in that order)."""
    for _, e in reversed(lost):
        pending.appendleft(e)
    for s, e in lost:
        detail = f"{cause}; the episode ran on env {s} of the same worker process"
        yield Incident(e, faults.WORKER_DIED, detail, "rescheduled with its worker's envs")


def _worker_died(
    a: ActiveEpisode, detail: str, pending: deque[Episode]
) -> Generator[Event, None, None]:
    """A worker death's toll on one episode: rescheduled once on a fresh worker, recorded as
    `worker_died` the second time."""
    e = a.episode
    if e.attempt == 0:
        pending.appendleft(dataclasses.replace(e, attempt=1))
        yield Incident(e, faults.WORKER_DIED, detail, "rescheduled on a fresh worker")
    else:
        yield _result(a, False, faults.WORKER_DIED, detail)


def pipeline_groups(workers: int, envs_per_worker: int, num_groups: int) -> list[list[int]]:
    """The slots of each pipeline group. With several envs per worker, env k of every worker
    joins group k % num_groups, so each process has an env stepping while another waits for
    its actions; with one env per worker, worker w joins group w % num_groups.

        >>> pipeline_groups(2, 2, 2)  # slots 0, 1 on worker 0; 2, 3 on worker 1
        [[0, 2], [1, 3]]
        >>> pipeline_groups(4, 1, 2)
        [[0, 2], [1, 3]]
    """
    slots = range(workers * envs_per_worker)
    if envs_per_worker == 1:
        return [[s for s in slots if s % num_groups == g] for g in range(num_groups)]
    return [[s for s in slots if s % envs_per_worker % num_groups == g] for g in range(num_groups)]
