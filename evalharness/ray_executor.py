"""The same run on a Ray cluster: episodes sharded over Ray actors, rows streamed home.

`evalharness run ... --executor ray [--ray-address ADDR]` replaces the local worker pool by
`--num-envs` Ray actors. Each actor owns `envs_per_worker` envs and its own policy replica
(loaded from the policy string inside the actor, on the actor's GPU when
`--ray-gpus-per-worker` gives it one) and runs a shard of episodes in lockstep, one batched
`act()` per step, exactly like a local worker pool does. Finished episodes stream back as Ray
generator items and the driver appends them to the same `episodes.csv`, so `--resume`,
`summary.csv`, `run.json` and the dashboards work unchanged.

A lost actor (node gone, process killed, out of memory) loses only its unfinished episodes:
they are rescheduled on a fresh actor (`attempt` 1), and an episode whose second attempt also
loses its worker is recorded as `worker_died`, as in the local executor. A simulator failure
inside an actor is recorded as `sim_unstable`.

Outcomes equal the local executor's for the same seed whenever the policy's actions depend
only on each episode's observations and `episode_seed` (true of the built-ins and the torch
families); a policy drawing from one RNG stream per call (octo_jax) depends on batch
composition under any executor.

Ray is imported only when this executor is used (`pip install 'evalharness[ray]'`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from evalharness import faults
from evalharness.policies.base import Policy
from evalharness.results import EpisodeLog
from evalharness.runner import (
    RunConfig,
    RunError,
    Runner,
    _Active,
    _Progress,
    _stack,
    act_batch,
)
from evalharness.worker import EnvConfig, Episode, EpisodeEnv


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RunError(
            "--executor ray needs Ray: pip install 'evalharness[ray]' (or pip install 'ray>=2.9')"
        ) from None
    return ray


class EpisodeActor:
    """One Ray worker: `envs` envs and a policy replica, running shards of episodes."""

    def __init__(
        self,
        env_config: EnvConfig,
        make_policy: Callable[[], Policy],
        envs: int,
        render_threads: int | None,
        policy_string: str = "",
    ) -> None:
        if render_threads is not None:
            os.environ.setdefault("LP_NUM_THREADS", str(render_threads))
        os.environ.setdefault("MUJOCO_GL", "egl")
        self.policy = make_policy()
        #: the run's --policy, named in a `PolicyError` when the replica fails.
        self.policy_string = policy_string or self.policy.spec.name
        self.envs = [EpisodeEnv(env_config) for _ in range(envs)]

    def pid(self) -> int:
        return os.getpid()

    def run(self, episodes: list[Episode]) -> Iterator[dict[str, Any]]:
        """Run `episodes` (at most one per env) in lockstep; yield each result as it ends.

        A result: `episode`, `success`, `steps`, `wall_seconds`, `reason` ("" unless the
        simulator failed or the policy names why it failed).
        """
        policy = self.policy
        policy.reset(len(episodes))
        live: list[dict[str, Any]] = []
        for env, episode in zip(self.envs, episodes, strict=False):
            started = time.monotonic()
            try:
                obs, _ = env.reset(episode)
            except faults.SimUnstableError as exc:
                yield self._result(episode, False, 0, started, faults.SIM_UNSTABLE, str(exc))
                continue
            live.append(
                {"env": env, "episode": episode, "obs": obs, "steps": 0, "q": 0, "t0": started}
            )
        while live:
            batch = len(live)
            obs_batch = _stack([s["obs"] for s in live])
            tasks: dict[str, Any] = {
                "language_instruction": [s["obs"]["language_instruction"] for s in live],
                "episode_seed": np.array([s["episode"].policy_seed for s in live], np.int64),
                "episode_start": np.array([s["q"] == 0 for s in live]),
            }
            actions = act_batch(policy, obs_batch, tasks, batch, self.policy_string)
            still = []
            for s, chunk in zip(live, actions, strict=True):
                s["q"] += 1
                episode = s["episode"]
                try:
                    ob, _, terminated, truncated, info = s["env"].step(chunk)
                except faults.SimUnstableError as exc:
                    yield self._result(
                        episode, False, s["steps"], s["t0"], faults.SIM_UNSTABLE, str(exc)
                    )
                    continue
                s["obs"], s["steps"] = ob, int(info["episode_steps"])
                if terminated or truncated:
                    success = bool(info["success"])
                    reason = "" if success else policy.failure_reason(episode.policy_seed)
                    yield self._result(episode, success, s["steps"], s["t0"], reason)
                else:
                    still.append(s)
            live = still

    @staticmethod
    def _result(
        episode: Episode, success: bool, steps: int, t0: float, reason: str, detail: str = ""
    ) -> dict[str, Any]:
        return {
            "episode": episode,
            "success": success,
            "steps": steps,
            "wall_seconds": time.monotonic() - t0,
            "reason": reason,
            "detail": detail,
        }


class RayRunner(Runner):
    """A `Runner` whose episodes run on Ray actors instead of local worker processes.

    `num_envs` of the config is the number of actors; `envs_per_worker` envs each.
    `make_policy` builds each actor's replica (default: `load_policy(config.policy)`).
    """

    def __init__(
        self,
        config: RunConfig,
        policy: Policy,
        *,
        address: str | None = None,
        envs_per_worker: int = 1,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        make_policy: Callable[[], Policy] | None = None,
    ) -> None:
        super().__init__(config, policy)
        if envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
        self.address = address
        self.envs_per_worker = envs_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        if make_policy is None:
            spec, suite = config.policy, config.suite

            def make_policy() -> Policy:
                from evalharness.policies import load_policy

                return load_policy(spec, suite=suite)

        self.make_policy = make_policy
        #: pids of the actors started, in order (tests kill one of them).
        self.actor_pids: list[int] = []

    def _start_actor(self, ray: Any) -> Any:
        env_vars = {
            k: os.environ[k]
            for k in (faults.FAULTS_ENV, "MUJOCO_GL", "LP_NUM_THREADS")
            if k in os.environ
        }
        cls = ray.remote(EpisodeActor).options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=0,
            runtime_env={"env_vars": env_vars} if env_vars else None,
        )
        threads = max(1, int(self.cpus_per_worker * self.envs_per_worker))
        actor = cls.remote(
            self.env_config, self.make_policy, self.envs_per_worker, threads, self.config.policy
        )
        return actor

    def _loop(self, pending: deque[Episode], log: EpisodeLog, done_count: int) -> None:
        if not pending:
            return
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        self._pending = pending
        self._log = log
        self._progress = _Progress(len(self.episodes), done_count, enabled=self.config.progress)
        self.timing["start"] = time.monotonic()
        n = min(self.config.num_envs, -(-len(pending) // self.envs_per_worker))
        actors = [self._start_actor(ray) for _ in range(n)]
        # Raises here (naming the cause) if an actor cannot even start, e.g. no policy.
        self.actor_pids = list(ray.get([a.pid.remote() for a in actors]))
        self.timing["first_step"] = time.monotonic()
        built: dict[int, int | None] = {i: None for i in range(n)}
        #: per actor: its streaming generator and the episodes of its shard not yet returned.
        running: dict[int, tuple[Any, dict[tuple[str, int, int], Episode]]] = {}

        def submit(i: int) -> None:
            shard: list[Episode] = []
            while pending and len(shard) < self.envs_per_worker:
                task = built[i] if not shard else shard[0].task_id
                episode = next((e for e in pending if e.task_id == task), pending[0])
                pending.remove(episode)
                shard.append(episode)
            if shard:
                built[i] = shard[0].task_id
                gen = actors[i].run.options(num_returns="streaming").remote(shard)
                running[i] = (gen, {e.key: e for e in shard})

        try:
            for i in range(n):
                submit(i)
            while running:
                # A generator is ready when its next episode has ended or its actor is gone.
                gens = {id(gen): i for i, (gen, _) in running.items()}
                ready, _ = ray.wait([gen for gen, _ in running.values()], num_returns=1)
                i = gens[id(ready[0])]
                gen, open_episodes = running[i]
                try:
                    item = ray.get(next(gen))
                except StopIteration:
                    item = None
                except ray.exceptions.RayActorError as exc:  # ActorDiedError included
                    self._actor_lost(i, open_episodes, exc)
                    ray.kill(actors[i], no_restart=True)
                    actors[i] = self._start_actor(ray)
                    self.actor_pids.append(ray.get(actors[i].pid.remote()))
                    built[i] = None
                    item = None
                if item is not None:
                    self._record_result(item)
                    open_episodes.pop(item["episode"].key, None)
                    continue
                running.pop(i)
                submit(i)
            self.timing["end"] = time.monotonic()
        finally:
            self.timing.setdefault("end", time.monotonic())
            self._progress.close()
            for actor in actors:
                ray.kill(actor, no_restart=True)

    def _actor_lost(
        self, i: int, open_episodes: dict[tuple[str, int, int], Episode], exc: BaseException
    ) -> None:
        detail = f"Ray actor {i} died: {type(exc).__name__}"
        for episode in open_episodes.values():
            a = _Active(episode, self.tasks[episode.task_id], {}, time.monotonic())
            if episode.attempt == 0:
                self._incident(a, faults.WORKER_DIED, detail, "rescheduled on a fresh worker")
                self._pending.appendleft(dataclasses.replace(episode, attempt=1))
            else:
                self._fault_row(a, faults.WORKER_DIED, detail)

    def _record_result(self, item: dict[str, Any]) -> None:
        episode: Episode = item["episode"]
        a = _Active(
            episode,
            self.tasks[episode.task_id],
            {},
            time.monotonic() - float(item["wall_seconds"]),
            steps=int(item["steps"]),
        )
        self.env_steps += a.steps
        if item["reason"] == faults.SIM_UNSTABLE:
            self._fault_row(a, faults.SIM_UNSTABLE, item["detail"])
            return
        self._record(self._row(a, bool(item["success"]), reason=item["reason"] or None))
        self._progress.episode_done(bool(item["success"]))
        self._progress.steps(self.env_steps)
