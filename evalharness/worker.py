"""The envs of one worker process, each driven over a pipe of its own by the runner.

The env (and its EGL render context) is built lazily *inside* the worker: a context created
before a fork is invalid in the child (EGL_BAD_CONTEXT), so workers are spawned and build
their env on the first episode. A worker keeps its env across episodes of the same task and
rebuilds only when it is handed another task.
"""

from __future__ import annotations

import os
import re
import signal
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from evalharness.faults import (
    EnvBuildError,
    FaultPlan,
    SimUnstableError,
    build_with_retries,
    check_stable,
    instability_counts,
)

#: set to 1 to render every step (benchmarks of render skipping).
RENDER_EVERY_STEP_ENV = "EVALHARNESS_RENDER_EVERY_STEP"


@dataclass(frozen=True)
class EnvConfig:
    """Everything a worker needs to build its wrapped env; plain data, picklable."""

    suite: str
    camera_size: int
    max_steps: int
    num_steps_wait: int
    wait_action: tuple[float, ...]
    window_size: int = 1
    action_horizon: int = 1
    exec_horizon: int = 1
    temporal_ensemble_weight: float | None = None
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the policy's training orientation: "raw" rotates frames 180° before resizing.
    image_orientation: str = "upright"
    video_dir: str | None = None
    video_fps: int = 20
    #: False for policies that read no pixels: frames are rendered only for video episodes.
    render_images: bool = True
    #: True only for policies whose spec asks for simulator state (scripted experts).
    privileged: bool = False


@dataclass(frozen=True)
class Episode:
    """One scheduled rollout: which task, which official init state, which seed."""

    suite: str
    task_id: int
    episode_index: int
    init_state_index: int
    #: the env seed: this episode's own (`per_episode`) or its task stream's (`task_stream`).
    seed: int
    record_video: bool = False
    policy_seed: int = 0
    #: 0, or 1 when rescheduled after its worker died; the outcome must not depend on it.
    attempt: int = 0
    #: how `seed` makes the scene (`evalharness.envs.scenes`): `per_episode` seeds this
    #: episode's reset; `task_stream` replays the task's stream to its `episode_index`.
    seeding: str = "per_episode"

    def reset_arguments(self) -> tuple[int | None, dict[str, Any]]:
        """`LiberoEnv.reset`'s (seed, options) for this episode's scene and init state."""
        options: dict[str, Any] = {"init_state_index": self.init_state_index}
        if self.seeding == "task_stream":
            options["scene_stream"] = (self.seed, self.episode_index)
            return None, options
        return self.seed, options

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.suite, self.task_id, self.episode_index)

    @property
    def task_key(self) -> tuple[str, int]:
        """(suite, task_id): which env the episode needs."""
        return (self.suite, self.task_id)


class FrameRecorder(gym.Wrapper):
    """Keeps every upright `image_primary` frame of the episode (for videos), reset included."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.enabled = False
        self.frames: list[np.ndarray] = []

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.frames = [obs["image_primary"]] if self.enabled else []
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.enabled:
            self.frames.append(obs["image_primary"])
        return obs, reward, terminated, truncated, info


def video_filename(episode: Episode, instruction: str, success: bool) -> str:
    """`task03_ep007_success_put_the_bowl_on_the_plate.mp4`: findable by eye and by glob."""
    slug = re.sub(r"[^a-z0-9]+", "_", instruction.lower()).strip("_")[:150]
    outcome = "success" if success else "failure"
    return f"task{episode.task_id:02d}_ep{episode.episode_index:03d}_{outcome}_{slug}.mp4"


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1 keeps odd render sizes instead of silently rescaling them.
    imageio.mimwrite(str(path), frames, fps=fps, macro_block_size=1)  # type: ignore[arg-type]


def wrap_for_policy(
    env: gym.Env,
    *,
    window_size: int,
    action_horizon: int,
    exec_horizon: int,
    temporal_ensemble_weight: float | None = None,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    image_orientation: str = "upright",
) -> gym.Env:
    """The wrappers between a LIBERO env and a policy: orientation -> resize -> history ->
    chunking (temporal ensembling instead when it has a weight). The one place this stack is
    built, for `evalharness run`'s workers and `evalharness record` alike."""
    from evalharness.envs.wrappers import (
        ActionChunk,
        History,
        ImageOrientation,
        ResizeImage,
        TemporalEnsemble,
    )

    if image_orientation != "upright":  # frames as the policy's training data saw them
        env = ImageOrientation(env, image_orientation)
    if image_sizes:
        env = ResizeImage(env, dict(image_sizes))
    env = History(env, window_size)
    if temporal_ensemble_weight is not None:
        return TemporalEnsemble(env, action_horizon, temporal_ensemble_weight)
    return ActionChunk(env, exec_horizon)


class EpisodeEnv:
    """The wrapped env of one worker: LiberoEnv -> frames -> orientation -> resize -> history
    -> chunking."""

    def __init__(
        self, config: EnvConfig | Mapping[str, EnvConfig], skip_renders: bool | None = None
    ) -> None:
        #: the config of each suite this worker may be handed (a multi-suite run has several);
        #: `config` is the one of the suite its env is built for.
        self.configs = dict(config) if isinstance(config, Mapping) else {config.suite: config}
        self.config = next(iter(self.configs.values()))
        #: render only the steps a policy query reads (`LiberoEnv.set_render_schedule`); the
        #: policy sees the same frames either way, so this is not part of a run's identity.
        #: EVALHARNESS_RENDER_EVERY_STEP=1 turns it off (benchmarks measure the difference).
        if skip_renders is None:
            skip_renders = os.environ.get(RENDER_EVERY_STEP_ENV) != "1"
        self.skip_renders = skip_renders
        self.task_id: int | None = None
        self.env: gym.Env | None = None
        self.recorder: FrameRecorder | None = None
        self.base: Any = None  # the LiberoEnv under the wrappers
        self.episode: Episode | None = None
        self.control_steps = 0
        self.faults = FaultPlan.from_env()

    def _build(self, task_id: int) -> None:
        from evalharness.envs.libero import LiberoEnv

        self.close()
        c = self.config
        base = LiberoEnv(
            c.suite,
            task_id,
            camera_size=c.camera_size,
            max_steps=c.max_steps,
            num_steps_wait=c.num_steps_wait,
            wait_action=c.wait_action,
            render_images=c.render_images,
            privileged=c.privileged,
        )
        self.base = base
        self.recorder = FrameRecorder(base)
        # Videos are taken below the policy's wrappers, so they stay upright.
        self.env = wrap_for_policy(
            self.recorder,
            window_size=c.window_size,
            action_horizon=c.action_horizon,
            exec_horizon=c.exec_horizon,
            temporal_ensemble_weight=c.temporal_ensemble_weight,
            image_sizes=c.image_sizes,
            image_orientation=c.image_orientation,
        )
        self.task_id = task_id

    def reset(self, episode: Episode) -> tuple[dict[str, Any], dict[str, Any]]:
        if episode.suite not in self.configs:
            raise ValueError(
                f"worker built for {', '.join(self.configs)} got an episode of {episode.suite}"
            )
        if self.env is None or (self.config.suite, self.task_id) != episode.task_key:
            self.config = self.configs[episode.suite]
            self._build_with_retries(episode.task_id)
        assert self.env is not None and self.recorder is not None
        self.recorder.enabled = episode.record_video and self.config.video_dir is not None
        self.base.render_images = self.config.render_images or self.recorder.enabled
        c = self.config
        if self.skip_renders and not self.recorder.enabled and c.temporal_ensemble_weight is None:
            self.base.set_render_schedule(c.exec_horizon, c.window_size)
        else:  # a video keeps every frame; temporal ensembling queries on every step
            self.base.set_render_schedule(1, 1)
        self.episode = episode
        self.control_steps = 0
        try:
            seed, options = episode.reset_arguments()
            obs, info = self.env.reset(seed=seed, options=options)
            return self._requested(obs), info
        except Exception as exc:
            self.close()  # a half-reset simulator is not trusted with the next episode
            raise SimUnstableError(f"reset raised {type(exc).__name__}: {exc}") from exc

    def _build_with_retries(self, task_id: int) -> None:
        def build() -> None:
            self.faults.before_build(task_id)
            self._build(task_id)

        build_with_retries(build, f"the env of {self.config.suite} task {task_id}")

    def step(self, chunk: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        assert self.env is not None and self.recorder is not None and self.episode is not None
        e = self.episode
        self.control_steps += 1
        where = f"task {e.task_id} episode {e.episode_index} control step {self.control_steps}"
        try:
            sim = self.base.sim
            before = instability_counts(sim)
            self.faults.before_step(e.task_id, e.episode_index, self.control_steps, e.attempt, sim)
            obs, reward, terminated, truncated, info = self.env.step(chunk)
            self.faults.after_step(e.task_id, e.episode_index, self.control_steps, e.attempt, obs)
            check_stable(sim, before, obs, where)
        except Exception as exc:
            self.close()  # rebuilt for the next episode: its state cannot be trusted
            if isinstance(exc, SimUnstableError):
                raise
            raise SimUnstableError(f"{where}: step raised {type(exc).__name__}: {exc}") from exc
        if (terminated or truncated) and self.recorder.enabled and self.config.video_dir:
            name = video_filename(self.episode, obs["language_instruction"], bool(info["success"]))
            path = Path(self.config.video_dir) / name
            write_video(path, self.recorder.frames, self.config.video_fps)
            info["video"] = str(path)
            self.recorder.frames = []
        return self._requested(obs), float(reward), bool(terminated), bool(truncated), info

    def _requested(self, obs: dict[str, Any]) -> dict[str, Any]:
        # Frames rendered only for a video are not the policy's input: a batch must not mix
        # envs with and without image keys.
        if self.config.render_images:
            return obs
        return {k: v for k, v in obs.items() if k not in ("image_primary", "image_wrist")}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env = None
        self.task_id = None


def worker_main(
    conns: Connection | Sequence[Connection],
    config: EnvConfig | Mapping[str, EnvConfig],
    render_threads: int | None = None,
    egl_device: int | None = None,
) -> None:
    """Serve reset/step/close requests, one env per pipe of `conns`, until told to stop or
    every pipe closes.

    A worker may host several envs (`evalharness.pool`): each has its own pipe and answers on
    it; requests are served one at a time, as they arrive, so one env steps while the
    runner waits for another's actions. `close` on any pipe closes them all and exits.

    `render_threads` caps Mesa llvmpipe's rasterizer threads (LP_NUM_THREADS): by default each
    software-rendering process starts one thread per core, and N workers on N cores then
    fight over the cores instead of rendering side by side. A user's own setting wins.
    `egl_device` is the EGL device (GPU) this worker renders on (`MUJOCO_EGL_DEVICE_ID`).
    """
    if render_threads is not None:
        os.environ.setdefault("LP_NUM_THREADS", str(render_threads))
    if egl_device is not None:
        os.environ.setdefault("MUJOCO_EGL_DEVICE_ID", str(egl_device))
    # Ctrl-C goes to the whole process group; only the runner decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pipes = [conns] if isinstance(conns, Connection) else list(conns)
    envs = [EpisodeEnv(config) for _ in pipes]
    open_pipes = list(range(len(pipes)))
    try:
        while open_pipes:
            ready = connection_wait([pipes[i] for i in open_pipes])
            for i in [i for i in open_pipes if pipes[i] in ready]:
                try:
                    command, payload = pipes[i].recv()
                except (EOFError, OSError):
                    open_pipes.remove(i)
                    continue
                if command == "close":
                    pipes[i].send(("ok", None))
                    return
                pipes[i].send(_serve(envs[i], command, payload))
    finally:
        for env in envs:
            env.close()
        for pipe in pipes:
            pipe.close()


def _serve(env: EpisodeEnv, command: str, payload: Any) -> tuple[str, Any]:
    """One request to one env: ("ok", result), or how it failed (`evalharness.pool`)."""
    try:
        if command == "reset":
            return ("ok", env.reset(payload))
        if command == "step":
            return ("ok", env.step(payload))
        return ("error", (f"unknown command {command!r}", ""))
    except SimUnstableError as exc:  # the episode is recorded as sim_unstable
        return ("unstable", (str(exc), traceback.format_exc()))
    except EnvBuildError as exc:  # the run stops: no env, no episodes
        return ("build_error", (str(exc), traceback.format_exc()))
    except Exception as exc:  # reported to the runner, which decides what to do
        return ("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
