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
only on each episode's observations and `episode_seed`, which the policy contract asks of every
family (per-episode streams in `policies.base.EpisodeStreams`).

Ray is imported only when this executor is used (`pip install 'evalharness[ray]'`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

from evalharness import faults
from evalharness.errors import RunError, UsageError
from evalharness.executors import EpisodeResult, Event, Executor, Incident
from evalharness.policies.base import Policy
from evalharness.runner import RunConfig, Runner
from evalharness.scheduling import ActiveEpisode, failure_reason, next_episode, query_policy
from evalharness.worker import EnvConfig, Episode, EpisodeEnv

__all__ = ["EpisodeActor", "RayExecutor", "RayRunner"]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RunError(
            "--executor ray needs Ray: pip install 'evalharness[ray]' (or pip install 'ray>=2.9')"
        ) from None
    return ray


def _result(a: ActiveEpisode, success: bool, reason: str, detail: str = "") -> EpisodeResult:
    wall = time.monotonic() - a.started
    return EpisodeResult(a.episode, success, a.steps, wall, reason, detail, a.scene_fingerprint)


class EpisodeActor:
    """One Ray worker: `envs` envs and a policy replica, running shards of episodes."""

    def __init__(
        self,
        env_config: EnvConfig | Mapping[str, EnvConfig],
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
        """The actor's process id (tests kill it)."""
        return os.getpid()

    def run(self, episodes: list[Episode]) -> Iterator[EpisodeResult]:
        """Run `episodes` (at most one per env) in lockstep; yield each result as it ends."""
        policy = self.policy
        policy.reset(len(episodes))
        live: list[tuple[EpisodeEnv, ActiveEpisode]] = []
        for env, episode in zip(self.envs, episodes, strict=False):
            a = ActiveEpisode(episode, "", {}, time.monotonic())
            try:
                a.obs, info = env.reset(episode)
                a.scene_fingerprint = str(info.get("scene_fingerprint", ""))
            except faults.SimUnstableError as exc:
                yield _result(a, False, faults.SIM_UNSTABLE, str(exc))
                continue
            a.instruction = a.obs["language_instruction"]
            live.append((env, a))
        while live:
            actions = query_policy(policy, [a for _, a in live], self.policy_string)
            still = []
            for (env, a), chunk in zip(live, actions, strict=True):
                try:
                    a.obs, _, terminated, truncated, info = env.step(chunk)
                except faults.SimUnstableError as exc:
                    yield _result(a, False, faults.SIM_UNSTABLE, str(exc))
                    continue
                a.steps = int(info["episode_steps"])
                if terminated or truncated:
                    success = bool(info["success"])
                    yield _result(a, success, failure_reason(policy, a.episode, success))
                else:
                    still.append((env, a))
            live = still


class RayExecutor(Executor):
    """Episodes on `num_workers` Ray actors of `envs_per_worker` envs each.

    A worker takes a shard of up to `envs_per_worker` pending episodes (of the task it has
    built first) and streams their results back as they end; a lost actor is replaced and its
    unfinished episodes rescheduled once.
    """

    def __init__(
        self,
        env_config: EnvConfig | Mapping[str, EnvConfig],
        make_policy: Callable[[], Policy],
        policy_string: str,
        num_workers: int,
        *,
        address: str | None = None,
        envs_per_worker: int = 1,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
    ) -> None:
        super().__init__()
        if envs_per_worker < 1:
            raise UsageError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
        self.env_config = env_config
        self.make_policy = make_policy
        self.policy_string = policy_string
        self.num_workers = num_workers
        self.address = address
        self.envs_per_worker = envs_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
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
        return cls.remote(
            self.env_config, self.make_policy, self.envs_per_worker, threads, self.policy_string
        )

    def run(self, pending: deque[Episode]) -> Generator[Event, None, None]:
        """See `Executor.run`."""
        if not pending:
            return
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        n = min(self.num_workers, -(-len(pending) // self.envs_per_worker))
        actors = [self._start_actor(ray) for _ in range(n)]
        try:
            # Raises here (naming the cause) if an actor cannot even start, e.g. no policy.
            self.actor_pids = list(ray.get([a.pid.remote() for a in actors]))
            self.first_step = time.monotonic()
            built: dict[int, tuple[str, int] | None] = dict.fromkeys(range(n))
            #: per actor: its streaming generator and the episodes of its shard not yet ended.
            running: dict[int, tuple[Any, dict[tuple[str, int, int], Episode]]] = {}

            def submit(i: int) -> None:
                shard: list[Episode] = []
                while pending and len(shard) < self.envs_per_worker:
                    shard.append(next_episode(pending, shard[0].task_key if shard else built[i]))
                if shard:
                    built[i] = shard[0].task_key
                    gen = actors[i].run.options(num_returns="streaming").remote(shard)
                    running[i] = (gen, {e.key: e for e in shard})

            for i in range(n):
                submit(i)
            while running:
                # A generator is ready when its next episode has ended or its actor is gone.
                gens = {id(gen): i for i, (gen, _) in running.items()}
                ready, _ = ray.wait([gen for gen, _ in running.values()], num_returns=1)
                i = gens[id(ready[0])]
                gen, open_episodes = running[i]
                try:
                    result: EpisodeResult = ray.get(next(gen))
                except StopIteration:
                    pass
                except ray.exceptions.RayActorError as exc:  # ActorDiedError included
                    yield from self._actor_lost(i, open_episodes, exc, pending)
                    ray.kill(actors[i], no_restart=True)
                    actors[i] = self._start_actor(ray)
                    self.actor_pids.append(ray.get(actors[i].pid.remote()))
                    built[i] = None
                else:
                    self.env_steps += result.steps
                    open_episodes.pop(result.episode.key, None)
                    yield result
                    continue
                running.pop(i)
                submit(i)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)

    @staticmethod
    def _actor_lost(
        i: int,
        open_episodes: dict[tuple[str, int, int], Episode],
        exc: BaseException,
        pending: deque[Episode],
    ) -> Iterator[Event]:
        detail = f"Ray actor {i} died: {type(exc).__name__}"
        for episode in open_episodes.values():
            if episode.attempt == 0:
                pending.appendleft(dataclasses.replace(episode, attempt=1))
                yield Incident(episode, faults.WORKER_DIED, detail, "rescheduled on a fresh worker")
            else:
                yield EpisodeResult(episode, False, 0, 0.0, faults.WORKER_DIED, detail)


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
        if make_policy is None:
            spec, suite = config.policy, config.statistics_suite

            def make_policy() -> Policy:
                from evalharness.policies import load_policy

                return load_policy(spec, suite=suite)

        self.ray_executor = RayExecutor(
            self.env_configs,
            make_policy,
            config.policy,
            config.num_envs,
            address=address,
            envs_per_worker=envs_per_worker,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
        )

    def make_executor(self) -> Executor:
        """The Ray actors (see `RayExecutor`)."""
        return self.ray_executor

    @property
    def pipelined(self) -> bool:
        """Ray actors step in lockstep (each holds a policy replica)."""
        return False

    @property
    def envs_per_worker(self) -> int:
        """Envs per Ray actor (`--ray-envs-per-worker`)."""
        return self.ray_executor.envs_per_worker

    @property
    def actor_pids(self) -> list[int]:
        """pids of the actors started by the latest run, in order."""
        return self.ray_executor.actor_pids
