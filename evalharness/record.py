"""Record any policy's rollouts as LIBERO demonstration files (`evalharness record`).

One `<task_name>_demo.hdf5` per task, in the layout of LIBERO's own datasets
(`scripts/create_dataset.py`), so LIBERO/robomimic tooling and `evalharness finetune` read it:

    data                      attrs: env_name, problem_info (JSON), macros_image_convention,
                              bddl_file_name, bddl_file_content, env_args (JSON), num_demos,
                              total, tag="libero-v1" (+ evalharness_* provenance)
    data/demo_<i>             attrs: num_samples, model_file (MJCF of the env's model after the
                              demo's reset: its fixture placements), init_state (+ the run
                              episode it is: episode_index, init_state_index, seed,
                              scene_fingerprint; success)
        actions       (T, 7)  float64, the env actions executed (OSC_POSE deltas, gripper +-1)
        states        (T, D)  float64, flat MuJoCo state *before* each action
        robot_states  (T, 9)  float64, gripper qpos 2 + eef pos 3 + eef quat 4 (xyzw)
        rewards       (T,)    uint8, 1 on the last step of a successful demo
        dones         (T,)    uint8, 1 on the last step
        obs/agentview_rgb     (T, H, W, 3) uint8  raw render orientation (upside down), as
        obs/eye_in_hand_rgb   (T, H, W, 3) uint8  in LIBERO's files; not the harness' upright view
        obs/gripper_states    (T, 2), obs/joint_states (T, 7), obs/ee_states (T, 6) = eef pos +
                              axis-angle, obs/ee_pos (T, 3), obs/ee_ori (T, 3), all float64

Row t holds the observation and state an action was chosen from and that action (robomimic's
convention). Recording starts after the protocol's warm-up steps, so `states[0]` is where the
policy took over and replaying `actions` from it (`replay_demo`) retraces the demo.

    >>> paths = record_demos("libero_object", [0], "/tmp/demos", episodes_per_task=2)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from evalharness.envs.libero import LiberoEnv, TaskInfo, UnknownTaskError, get_task, list_tasks
from evalharness.envs.rotations import quat2axisangle
from evalharness.policies.base import Policy
from evalharness.policies.registry import EXPERT_POLICY
from evalharness.protocols import Protocol, get_protocol
from evalharness.scheduling import ActiveEpisode, query_policy, task_episode
from evalharness.worker import Episode

LIBERO_TAG = "libero-v1"
#: LIBERO's datasets are rendered at 128 px; the protocol's eval size does not apply here.
DEFAULT_CAMERA_SIZE = 128


@dataclass
class Demo:
    """One recorded episode, row t = what the policy saw and did at env step t."""

    agentview_rgb: list[np.ndarray] = field(default_factory=list)
    eye_in_hand_rgb: list[np.ndarray] = field(default_factory=list)
    gripper_states: list[np.ndarray] = field(default_factory=list)
    joint_states: list[np.ndarray] = field(default_factory=list)
    ee_states: list[np.ndarray] = field(default_factory=list)
    robot_states: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    success: bool = False
    init_state_index: int = 0
    #: the env seed and episode index of `evalharness run`'s episode this demo is
    #: (`scheduling.task_episode`), and its scene's fingerprint after the warm-up.
    seed: int = 0
    episode_index: int = 0
    scene_fingerprint: str = ""
    #: The env's MJCF after this episode's reset (`LiberoEnv.model_xml`), LIBERO's `model_file`.
    model_xml: str = ""

    def __len__(self) -> int:
        return len(self.actions)


class DemoRecorder(gym.Wrapper):
    """Wraps the bare `LiberoEnv` and logs every env step in LIBERO's per-step fields.

    It sits under the policy's wrappers (history, chunking), so a chunk of 8 actions becomes
    8 rows, each with the raw frames and sim state it was executed from.
    """

    def __init__(self, env: LiberoEnv) -> None:
        super().__init__(env)
        self.base = env
        self.demo = Demo()
        self._pending: dict[str, np.ndarray] = {}

    def _snapshot(self) -> dict[str, np.ndarray]:
        raw = self.base.raw_observation
        if "agentview_image" not in raw:
            raise RuntimeError(
                "DemoRecorder needs camera frames on every step; build the env with "
                "render_images=True and the default render schedule"
            )
        pos = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
        quat = np.asarray(raw["robot0_eef_quat"], dtype=np.float64)
        gripper = np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64)
        return {
            "agentview_rgb": np.array(raw["agentview_image"], dtype=np.uint8),
            "eye_in_hand_rgb": np.array(raw["robot0_eye_in_hand_image"], dtype=np.uint8),
            "gripper_states": gripper,
            "joint_states": np.asarray(raw["robot0_joint_pos"], dtype=np.float64),
            "ee_states": np.concatenate([pos, quat2axisangle(quat)]),
            "robot_states": np.concatenate([gripper, pos, quat]),
            "states": self.base.get_sim_state(),
        }

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.demo = Demo(
            init_state_index=int(info.get("init_state_index", 0)),
            scene_fingerprint=str(info.get("scene_fingerprint", "")),
            model_xml=self.base.model_xml(),
        )
        self._pending = self._snapshot()
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        row = self._pending
        obs, reward, terminated, truncated, info = self.env.step(action)
        for key, value in row.items():
            getattr(self.demo, key).append(value)
        self.demo.actions.append(np.asarray(action, dtype=np.float64).copy())
        self.demo.success = bool(info.get("success", False))
        if not (terminated or truncated):
            self._pending = self._snapshot()
        return obs, reward, terminated, truncated, info


def _wrap_for_policy(env: gym.Env, policy: Policy) -> gym.Env:
    """The policy's wrapper stack, built as the runner's workers build it."""
    from evalharness.worker import wrap_for_policy

    spec = policy.spec
    return wrap_for_policy(
        env,
        window_size=spec.window_size,
        action_horizon=spec.action_horizon,
        exec_horizon=spec.resolved_exec_horizon,
        temporal_ensemble_weight=spec.temporal_ensemble_weight,
        image_sizes={k: (int(v[0]), int(v[1])) for k, v in spec.image_sizes.items()},
        image_orientation=spec.image_orientation,
    )


def rollout(env: gym.Env, recorder: DemoRecorder, policy: Policy, episode: Episode) -> Demo:
    """One episode of `policy` on a wrapped env; returns what `recorder` logged.

    The env is reset with the episode's own arguments (`Episode.reset_arguments`: its init
    state and the scene its protocol's seeding gives it) and the policy is queried as
    `evalharness run` queries it (`evalharness.scheduling`): the same `tasks` dict, policy
    seed, padding and action checks, so a recorded demo is that episode of a run.
    """
    seed, options = episode.reset_arguments()
    obs, _ = env.reset(seed=seed, options=options)
    policy.reset(1)
    active = ActiveEpisode(episode, recorder.base.task.instruction, obs, time.monotonic())
    while True:
        chunk = query_policy(policy, [active], policy.spec.name)[0]
        active.obs, _, terminated, truncated, _ = env.step(chunk)
        if terminated or truncated:
            break
    recorder.demo.seed = episode.seed
    recorder.demo.episode_index = episode.episode_index
    return recorder.demo


def _env_kwargs(env: LiberoEnv) -> dict[str, Any]:
    h, w = env.camera_hw
    return {
        "bddl_file_name": env.task.bddl_file,
        "robots": ["Panda"],
        "controller": "OSC_POSE",
        "control_freq": 20,
        "camera_names": ["agentview", "robot0_eye_in_hand"],
        "camera_heights": h,
        "camera_widths": w,
        "has_renderer": False,
        "has_offscreen_renderer": True,
        "use_camera_obs": True,
        "ignore_done": True,
        "hard_reset": False,
    }


@dataclass(frozen=True)
class TaskFile:
    """What a task's demo file says about the task and its env, read from a built env (in a
    worker process when recording in parallel: the file writer needs no env of its own)."""

    env_name: str
    problem_info: dict[str, Any]
    env_args: dict[str, Any]
    bddl_file: str

    @classmethod
    def of(cls, env: LiberoEnv) -> TaskFile:
        """Read from a built `LiberoEnv`."""
        robosuite_env = env._env.env
        problem_name = str(robosuite_env.parsed_problem["problem_name"])
        env_name = type(robosuite_env).__name__
        return cls(
            env_name=env_name,
            problem_info={
                "domain_name": str(robosuite_env.parsed_problem.get("domain_name", "robosuite")),
                "problem_name": problem_name,
                "language_instruction": env.task.instruction,
            },
            env_args={
                "type": 1,
                "env_name": env_name,
                "problem_name": problem_name,
                "bddl_file": env.task.bddl_file,
                "env_kwargs": _env_kwargs(env),
            },
            bddl_file=env.task.bddl_file,
        )


def write_demos(
    path: Path, env: LiberoEnv | TaskFile, demos: Sequence[Demo], provenance: dict[str, Any]
) -> Path:
    """Write `demos` of one task to `path` in LIBERO's HDF5 layout (see module docstring)."""
    import h5py
    import robosuite.macros as macros

    info = env if isinstance(env, TaskFile) else TaskFile.of(env)
    env_name, env_args = info.env_name, info.env_args
    problem_info = info.problem_info
    for i, demo in enumerate(demos):
        if not demo.model_xml:
            raise ValueError(
                f"demo {i} for {path} has no model_xml (the env's MJCF after its reset, written "
                "as LIBERO's model_file); record demos with DemoRecorder"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".hdf5.tmp")
    with h5py.File(tmp, "w") as f:
        grp = f.create_group("data")
        grp.attrs["env_name"] = env_name
        grp.attrs["problem_info"] = json.dumps(problem_info)
        grp.attrs["macros_image_convention"] = macros.IMAGE_CONVENTION
        grp.attrs["bddl_file_name"] = info.bddl_file
        grp.attrs["bddl_file_content"] = Path(info.bddl_file).read_text()
        grp.attrs["env_args"] = json.dumps(env_args)
        grp.attrs["tag"] = LIBERO_TAG
        for key, value in provenance.items():
            grp.attrs[f"evalharness_{key}"] = value
        total = 0
        for i, demo in enumerate(demos):
            n = len(demo)
            g = grp.create_group(f"demo_{i}")
            obs = g.create_group("obs")
            ee = np.stack(demo.ee_states)
            obs.create_dataset("agentview_rgb", data=np.stack(demo.agentview_rgb))
            obs.create_dataset("eye_in_hand_rgb", data=np.stack(demo.eye_in_hand_rgb))
            obs.create_dataset("gripper_states", data=np.stack(demo.gripper_states))
            obs.create_dataset("joint_states", data=np.stack(demo.joint_states))
            obs.create_dataset("ee_states", data=ee)
            obs.create_dataset("ee_pos", data=ee[:, :3])
            obs.create_dataset("ee_ori", data=ee[:, 3:])
            g.create_dataset("actions", data=np.stack(demo.actions))
            g.create_dataset("states", data=np.stack(demo.states))
            g.create_dataset("robot_states", data=np.stack(demo.robot_states))
            rewards = np.zeros(n, dtype=np.uint8)
            rewards[-1] = int(demo.success)
            dones = np.zeros(n, dtype=np.uint8)
            dones[-1] = 1
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=dones)
            g.attrs["num_samples"] = n
            g.attrs["model_file"] = demo.model_xml
            g.attrs["init_state"] = demo.states[0]
            g.attrs["init_state_index"] = demo.init_state_index
            g.attrs["seed"] = demo.seed
            g.attrs["episode_index"] = demo.episode_index
            g.attrs["scene_fingerprint"] = demo.scene_fingerprint
            g.attrs["success"] = demo.success
            total += n
        grp.attrs["num_demos"] = len(demos)
        grp.attrs["total"] = total
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class RecordConfig:
    """A resolved `evalharness record`: which policy, suite, tasks and episodes, and where."""

    suite: str
    policy: str
    out_dir: Path
    protocol: Protocol = field(default_factory=lambda: get_protocol("openvla"))
    task_ids: tuple[int, ...] | None = None
    camera_size: int = DEFAULT_CAMERA_SIZE
    only_success: bool = False
    #: Worker processes recording episodes side by side (`record --num-envs`); the files are
    #: the same for any number, since each episode depends only on its init state and seeds.
    num_envs: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.num_envs, bool) or not isinstance(self.num_envs, int):
            raise ValueError(f"num_envs must be an int >= 1, got {self.num_envs!r}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")

    def tasks(self) -> list[TaskInfo]:
        if self.task_ids is None:
            return list(list_tasks(self.suite))
        return [get_task(self.suite, t) for t in self.task_ids]


class _TaskEnv:
    """One task's env stack for recording: the bare env, its recorder, the policy's wrappers."""

    def __init__(self, config: RecordConfig, task: TaskInfo, policy: Policy) -> None:
        p = config.protocol
        self.task = task
        self.base = LiberoEnv(
            config.suite,
            task.task_id,
            camera_size=config.camera_size,
            max_steps=p.max_steps_for(config.suite),
            num_steps_wait=p.num_steps_wait,
            wait_action=p.wait_action,
            render_images=True,
            privileged=policy.spec.privileged,
        )
        self.recorder = DemoRecorder(self.base)
        self.env = _wrap_for_policy(self.recorder, policy)

    def episode(self, config: RecordConfig, policy: Policy, i: int) -> Demo:
        """Episode ``i`` of the task, as `evalharness run` schedules it (`task_episode`)."""
        return rollout(self.env, self.recorder, policy, task_episode(config.protocol, self.task, i))

    def close(self) -> None:
        self.base.close()


def record(config: RecordConfig, policy: Policy | None = None, progress: bool = True) -> list[Path]:
    """Roll `config.policy` out on each task and write one `<task_name>_demo.hdf5` per task.

    Episode i is `evalharness run --protocol P`'s episode i (`scheduling.task_episode`): init
    state i % 50, the scene the protocol's seeding gives it (so the same scene fingerprint),
    the same policy seed, recorded after the protocol's warm-up steps. With `only_success`,
    failed episodes are left out (a task may then get fewer demos, or none: its file is still
    written). With ``config.num_envs > 1`` the episodes run in that many spawned worker
    processes, each loading the policy from ``config.policy`` (``policy`` must then be None);
    the files written are the same as one process writes.
    """
    from evalharness.policies import load_policy

    if config.num_envs > 1:
        if policy is not None:
            raise ValueError(
                "record(num_envs > 1) loads the policy in each worker from config.policy; "
                "pass policy=None"
            )
        return _record_parallel(config, progress)
    if policy is None:
        policy = load_policy(config.policy, suite=config.suite)
    paths = []
    for task in config.tasks():
        stack = _TaskEnv(config, task, policy)
        try:
            demos = []
            for i in range(config.protocol.episodes_per_task):
                t0 = time.monotonic()
                demo = stack.episode(config, policy, i)
                if progress:
                    _say_episode(config, task, i, demo, time.monotonic() - t0)
                demos.append(demo)
            paths.append(_write_task(config, task, TaskFile.of(stack.base), demos, progress))
        finally:
            stack.close()
    return paths


def _say_episode(config: RecordConfig, task: TaskInfo, i: int, demo: Demo, seconds: float) -> None:
    outcome = "success" if demo.success else "failure"
    print(
        f"{config.suite} task {task.task_id} episode {i}: {outcome} in {len(demo)} steps "
        f"({seconds:.1f} s)",
        flush=True,
    )


def _write_task(
    config: RecordConfig, task: TaskInfo, info: TaskFile, demos: Sequence[Demo], progress: bool
) -> Path:
    kept = [d for d in demos if d.success or not config.only_success]
    provenance = {
        "policy": config.policy,
        "protocol": json.dumps(config.protocol.to_dict(), default=str),
        "only_success": config.only_success,
    }
    path = write_demos(Path(config.out_dir) / f"{task.name}_demo.hdf5", info, kept, provenance)
    if progress:
        successes = sum(d.success for d in kept)
        print(f"wrote {path} ({len(kept)} demos, {successes} successful)", flush=True)
    return path


# -- parallel recording: one policy and one env stack per worker process ----------------------

_WORKER: dict[str, Any] = {}


def _to_worker(config: RecordConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config as plain values: a Protocol's read-only mappings do not pickle."""
    import dataclasses

    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    protocol = fields.pop("protocol")
    steps = {
        f.name: dict(value) if isinstance(value, Mapping) else value
        for f in dataclasses.fields(protocol)
        for value in [getattr(protocol, f.name)]
    }
    return fields, steps


def _worker_init(
    fields: dict[str, Any],
    protocol: dict[str, Any],
    render_threads: int,
    egl_devices: list[int | None],
) -> None:
    """Spawned worker: cap Mesa's threads (as the runner's workers do), load the policy."""
    import multiprocessing as mp
    import os
    import signal

    from evalharness.policies import load_policy

    os.environ.setdefault("LP_NUM_THREADS", str(render_threads))
    identity = mp.current_process()._identity
    slot = (identity[0] - 1) if identity else 0
    device = egl_devices[slot % len(egl_devices)]
    if device is not None:
        os.environ.setdefault("MUJOCO_EGL_DEVICE_ID", str(device))
    # Ctrl-C reaches the whole process group; the parent decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = RecordConfig(**fields, protocol=Protocol(**protocol))
    _WORKER["config"] = config
    _WORKER["policy"] = load_policy(config.policy, suite=config.suite)
    _WORKER["stack"] = None


def _worker_episode(task_id: int, i: int) -> tuple[Demo, TaskFile, float]:
    """Record episode ``i`` of task ``task_id`` in this worker (its env kept for the next)."""
    config: RecordConfig = _WORKER["config"]
    policy: Policy = _WORKER["policy"]
    stack: _TaskEnv | None = _WORKER["stack"]
    if stack is None or stack.task.task_id != task_id:
        if stack is not None:
            stack.close()
        stack = _WORKER["stack"] = _TaskEnv(config, get_task(config.suite, task_id), policy)
    t0 = time.monotonic()
    demo = stack.episode(config, policy, i)
    return demo, TaskFile.of(stack.base), time.monotonic() - t0


def _record_parallel(config: RecordConfig, progress: bool) -> list[Path]:
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from evalharness import render_check

    n = config.num_envs
    tasks = config.tasks()
    episodes = config.protocol.episodes_per_task
    # Spawned, not forked: an EGL context made before a fork is invalid in the child.
    with ProcessPoolExecutor(
        max_workers=n,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(
            *_to_worker(config),
            max(1, (os.cpu_count() or 1) // n),
            [render_check.egl_device_for(slot) for slot in range(n)],
        ),
    ) as pool:
        futures = {
            task.task_id: [pool.submit(_worker_episode, task.task_id, i) for i in range(episodes)]
            for task in tasks
        }
        paths = []
        for task in tasks:
            demos, info = [], None
            for i, future in enumerate(futures[task.task_id]):
                demo, info, seconds = future.result()
                if progress:
                    _say_episode(config, task, i, demo, seconds)
                demos.append(demo)
            if info is None:
                raise ValueError(f"episodes_per_task is {episodes}; nothing to record")
            paths.append(_write_task(config, task, info, demos, progress))
    return paths


def record_demos(
    suite: str,
    task_ids: Sequence[int],
    out_dir: str | Path,
    *,
    policy: str = EXPERT_POLICY,
    episodes_per_task: int = 1,
    camera_size: int = 32,
    only_success: bool = True,
    protocol: str = "openvla",
    max_steps: int | None = None,
    num_envs: int = 1,
) -> list[Path]:
    """Small LIBERO-format demo files for tests and examples (the expert, tiny frames).

    E.g. `record_demos("libero_object", [1], tmp_path)` writes one successful ~100-step demo
    of "pick up the cream cheese and place it in the basket" at 32 px.
    """
    config = RecordConfig(
        suite=suite,
        policy=policy,
        out_dir=Path(out_dir),
        protocol=get_protocol(protocol).with_overrides(
            episodes_per_task=episodes_per_task, max_steps=max_steps
        ),
        task_ids=tuple(task_ids),
        camera_size=camera_size,
        only_success=only_success,
        num_envs=num_envs,
    )
    return record(config, progress=False)


def replay_demo(path: str | Path, demo: str = "demo_0", suite: str | None = None) -> bool:
    """Replay a recorded demo's `actions` from its first `states` row in a fresh env.

    Returns whether LIBERO's success check fires. The task is found from the file's
    `bddl_file_name`; pass `suite` if that file is not one of LIBERO's suites. A file that
    `record` wrote is replayed in its demo's scene (the fixture placement of the run episode
    it is, which `states` does not hold); other files with the env seeded 0.
    """
    import h5py

    with h5py.File(path, "r") as f:
        bddl = str(f["data"].attrs["bddl_file_name"])
        protocol = json.loads(f["data"].attrs.get("evalharness_protocol", "{}"))
        attrs = dict(f[f"data/{demo}"].attrs)
        states = np.asarray(f[f"data/{demo}/states"])
        actions = np.asarray(f[f"data/{demo}/actions"])
        size = int(f[f"data/{demo}/obs/agentview_rgb"].shape[1])
    task = _task_for_bddl(bddl, suite)
    seed: int | None = 0
    options: dict[str, Any] = {}
    if "episode_index" in attrs and "seeding" in protocol:
        episode = Episode(
            suite=task.suite,
            task_id=task.task_id,
            episode_index=int(attrs["episode_index"]),
            init_state_index=int(attrs["init_state_index"]),
            seed=int(attrs["seed"]),
            seeding=str(protocol["seeding"]),
        )
        seed, options = episode.reset_arguments()
    options["sim_state"] = states[0]
    env = LiberoEnv(
        task.suite,
        task.task_id,
        camera_size=size,
        max_steps=len(actions),
        num_steps_wait=0,
        render_images=False,
    )
    try:
        env.reset(seed=seed, options=options)
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated:
                return True
            if truncated:
                break
        return False
    finally:
        env.close()


def _task_for_bddl(bddl: str, suite: str | None) -> TaskInfo:
    from evalharness.envs.libero import SUITES

    name = Path(bddl).name
    for s in [suite] if suite else [Path(bddl).parent.name, *SUITES]:
        if s not in SUITES:
            continue
        for task in list_tasks(s):
            if Path(task.bddl_file).name == name:
                return task
    raise UnknownTaskError(
        f"bddl_file_name {bddl!r} names no task of {suite or 'any LIBERO suite'}; expected a "
        "file from LIBERO's bddl_files/<suite>/"
    )


__all__ = [
    "DemoRecorder",
    "RecordConfig",
    "TaskFile",
    "record",
    "record_demos",
    "replay_demo",
    "write_demos",
]
