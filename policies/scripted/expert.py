"""A waypoint expert for LIBERO: BDDL goal -> plan of skills -> OSC_POSE delta actions.

Read top to bottom: `plan_for_goal` turns the parsed BDDL goal into skills (pick-and-place,
open/close a drawer, turn on a stove); `Expert` runs them one after another as generators
that yield one 7-d action per control step, reading the privileged simulator state
(`LiberoEnv.privileged_state`) the env refreshes after every step.

Conventions (robosuite OSC_POSE, LIBERO): `action[:3]` is a position delta scaled so 1.0 is
5 cm, `action[3:6]` an axis-angle rotation delta in the world frame scaled so 1.0 is 0.5 rad,
`action[6]` the gripper, -1 open and +1 closed. The gripper points down; its fingers close
along the gripper frame's x axis, and "yaw" below is that axis' angle from world x.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalharness.errors import EvalharnessError
from evalharness.policies.common.rotations import matrix_to_axis_angle

POS_SCALE = 0.05  # metres per unit action (controller output_max)
ROT_SCALE = 0.5  # radians per unit action
OPEN, CLOSE = -1.0, 1.0
RIM_GRASP_WIDTH = 0.1  # objects wider than this (bowls) are pinched at the rim

Action = np.ndarray
Skill = Generator[Action, None, None]


class UnsupportedTaskError(EvalharnessError, ValueError):
    """A goal the scripted expert has no skill for; the message names the predicate."""


@dataclass(frozen=True)
class Step:
    """One skill of a plan: `kind` in pick_place, open, close, turn_on; its BDDL arguments."""

    kind: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(self.args)})"


def _is_drawer_region(name: str) -> bool:
    return "cabinet" in name and name.endswith("_region")


def plan_for_goal(goal: Sequence[Sequence[str]]) -> list[Step]:
    """The skills that achieve a BDDL goal (a conjunction), in an order that works.

    Drawers are opened before something goes into them and closed last; a stove is turned on
    before a pot goes on it. Raises `UnsupportedTaskError` for predicates without a skill.
    """
    opens: list[Step] = []
    places: list[Step] = []
    closes: list[Step] = []
    for predicate in goal:
        name, *args = (str(a).lower() for a in predicate)
        if name in ("on", "in") and len(args) == 2:
            obj, target = args
            if name == "in" and _is_drawer_region(target):
                opens.append(Step("open", (target,)))
            if obj.startswith("plate"):
                raise UnsupportedTaskError(
                    f"goal predicate {list(predicate)}: plates are pushed, not picked, and the "
                    "scripted expert has no push skill"
                )
            places.append(Step("pick_place", (obj, target)))
        elif name == "open" and len(args) == 1:
            opens.append(Step("open", (args[0],)))
        elif name == "close" and len(args) == 1:
            closes.append(Step("close", (args[0],)))
        elif name == "turnon" and len(args) == 1:
            opens.append(Step("turn_on", (args[0],)))
        else:
            raise UnsupportedTaskError(
                f"goal predicate {list(predicate)} has no scripted skill; supported: On/In "
                "(pick and place), Open/Close (drawers), TurnOn (stove)"
            )
    unique_opens = list(dict.fromkeys(opens))
    return unique_opens + places + closes


# -- geometry --------------------------------------------------------------------------------

#: Gripper pointing down with its fingers closing along world x (yaw 0).
DOWN = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def gripper_yaw(mat: np.ndarray) -> float:
    """Yaw of a down-pointing gripper: angle of its finger axis (x column) from world x."""
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def closest_yaw(direction_yaw: float, current: float) -> float:
    """The yaw that closes the fingers along `direction_yaw` (mod pi), nearest `current`."""
    options = direction_yaw + np.pi * np.arange(-2, 3)
    return float(options[np.argmin(np.abs(options - current))])


# -- the expert ------------------------------------------------------------------------------


class Expert:
    """Runs a plan for one episode; `act(privileged) -> (7,)` once per control step."""

    def __init__(self, goal: Sequence[Sequence[str]]) -> None:
        self.plan = plan_for_goal(goal)
        self.p: Mapping[str, Any] = {}
        self.grip = OPEN
        self.phase = "start"
        self._skills = self._run()

    def act(self, privileged: Mapping[str, Any]) -> Action:
        """The next action, given the simulator state observed after the previous one."""
        self.p = privileged
        try:
            return next(self._skills)
        except StopIteration:
            self.phase = "done"
            return self._hold()

    # -- state --------------------------------------------------------------------------
    @property
    def eef(self) -> np.ndarray:
        return np.asarray(self.p["eef_pos"], dtype=float)

    @property
    def yaw(self) -> float:
        return gripper_yaw(np.asarray(self.p["eef_mat"]))

    def obj(self, name: str) -> Mapping[str, Any]:
        objects = self.p["objects"]
        if name not in objects:
            raise UnsupportedTaskError(f"object {name!r} is not in the scene ({sorted(objects)})")
        return objects[name]

    def _hold(self) -> Action:
        return np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self.grip])

    def servo(self, target: np.ndarray, yaw: float, gain: float = 1.5) -> Action:
        """One proportional step towards `target` (gripper site) at `yaw`, pointing down."""
        action = np.zeros(7)
        action[:3] = np.clip(gain * (target - self.eef) / POS_SCALE, -1.0, 1.0)
        error = rot_z(yaw) @ DOWN @ np.asarray(self.p["eef_mat"]).T
        action[3:6] = np.clip(1.5 * matrix_to_axis_angle(error) / ROT_SCALE, -1.0, 1.0)
        action[6] = self.grip
        return action

    # -- primitives (generators) --------------------------------------------------------
    def move(
        self, target: np.ndarray, yaw: float, tol: float = 0.01, max_steps: int = 60
    ) -> Generator[Action, None, bool]:
        """Servo until within `tol` of `target` and aligned in yaw; False if out of steps."""
        for _ in range(max_steps):
            yaw_error = abs((self.yaw - yaw + np.pi) % (2 * np.pi) - np.pi)
            if np.linalg.norm(target - self.eef) < tol and yaw_error < 0.1:
                return True
            yield self.servo(target, yaw)
        return False

    def gripper(self, command: float, steps: int, yaw: float) -> Generator[Action, None, None]:
        """Hold position and drive the gripper for `steps` control steps."""
        self.grip = command
        hold = self.eef.copy()
        for _ in range(steps):
            yield self.servo(hold, yaw)

    def _run(self) -> Skill:
        for step in self.plan:
            self.phase = str(step)
            if step.kind == "pick_place":
                yield from self.pick_place(*step.args)
            else:
                raise UnsupportedTaskError(f"no skill for {step}")

    # -- pick and place -----------------------------------------------------------------
    def _others(self, *exclude: str) -> list[Mapping[str, Any]]:
        return [v for k, v in self.p["objects"].items() if k not in exclude]

    def grasp_pose(self, name: str) -> tuple[np.ndarray, float]:
        """Where the gripper site goes to grasp `name`, and the yaw its fingers close along."""
        o = self.obj(name)
        lo, hi = np.asarray(o["bbox"])
        ext_lo, ext_hi = np.asarray(o["extent"])
        mat = np.asarray(o["mat"])
        # Object frames differ (many stand on their local y); find the two horizontal axes.
        up = int(np.argmax(np.abs(mat[2])))
        horizontal = [i for i in range(3) if i != up]
        size = (ext_hi - ext_lo)[horizontal]
        center = (lo + hi) / 2.0
        height = hi[2] - lo[2]
        if min(size) > RIM_GRASP_WIDTH:
            # Too wide to span (bowls): pinch the rim on the side with most room around it.
            radius = min(size) / 2.0
            others = self._others(name)
            best, best_clear = 0.0, -np.inf
            for angle in np.linspace(-np.pi, np.pi, 16, endpoint=False):
                d = np.array([np.cos(angle), np.sin(angle)])
                point = center[:2] + d * (radius + 0.03)
                clear = min(
                    (_xy_distance_to_box(point, np.asarray(v["bbox"])) for v in others),
                    default=1.0,
                )
                # Prefer the robot's side a little: the arm reaches it without folding.
                clear += 0.01 * -d[0]
                if clear > best_clear:
                    best, best_clear = angle, clear
            d = np.array([np.cos(best), np.sin(best)])
            xy = center[:2] + d * (radius - 0.012)
            z = hi[2] - min(0.02, height / 2.0)
            return np.array([xy[0], xy[1], z]), closest_yaw(best, self.yaw)
        # Close the fingers across the object's narrower horizontal side.
        axis = mat[:, horizontal[int(np.argmin(size))]]
        direction = float(np.arctan2(axis[1], axis[0]))
        z = hi[2] - min(0.035, height / 2.0)
        return np.array([center[0], center[1], z]), closest_yaw(direction, self.yaw)

    def place_xy(self, target: str) -> np.ndarray:
        """Where the held object's origin should end up, horizontally."""
        if target in self.p["sites"]:
            return np.asarray(self.p["sites"][target]["pos"], dtype=float)[:2]
        return np.asarray(self.obj(target)["pos"], dtype=float)[:2]

    def surface_z(self, target: str, xy: np.ndarray, held: str) -> float:
        """Height of whatever the object will be set down on at `xy`."""
        if target in self.p["objects"]:
            return float(np.asarray(self.obj(target)["bbox"])[1, 2])
        tops = [
            float(np.asarray(v["bbox"])[1, 2])
            for k, v in self.p["objects"].items()
            if k != held and _xy_distance_to_box(xy, np.asarray(v["bbox"])) <= 0.0
        ]
        site = self.p["sites"][target]
        site_z = float(np.asarray(site["pos"])[2])
        if "contain" in target:
            # Set things down on the container's floor: resting on it inside the region is
            # what `In` checks, and a tall object released high can stay wedged in the fingers.
            return site_z - float(np.asarray(site["size"])[-1])
        return max([site_z, *tops])

    def clearance_z(self, a: np.ndarray, b: np.ndarray, held: str) -> float:
        """Highest top of anything near the straight path a -> b (xy)."""
        top = 0.0
        for k, v in self.p["objects"].items():
            if k == held:
                continue
            box = np.asarray(v["bbox"])
            if _segment_box_distance(a[:2], b[:2], box) < 0.08:
                top = max(top, float(box[1, 2]))
        return top

    def pick_place(self, name: str, target: str) -> Skill:
        for _attempt in range(3):
            grasp, yaw = self.grasp_pose(name)
            start = self.eef.copy()
            above = grasp + np.array([0.0, 0.0, 0.08])
            above[2] = max(above[2], self.clearance_z(start, grasp, name) + 0.05)
            self.grip = OPEN
            yield from self.move(above, yaw, tol=0.02, max_steps=50)
            yield from self.move(grasp, yaw, tol=0.008, max_steps=30)
            yield from self.gripper(CLOSE, 12, yaw)
            # Thin rims leave the fingers almost shut, so test the grasp by lifting a little.
            z0 = float(np.asarray(self.obj(name)["pos"])[2])
            yield from self.move(self.eef + np.array([0.0, 0.0, 0.04]), yaw, 0.01, 15)
            if float(np.asarray(self.obj(name)["pos"])[2]) - z0 > 0.02:
                break
            yield from self.gripper(OPEN, 5, yaw)
            yield from self.move(above, yaw, tol=0.02, max_steps=20)
        o = self.obj(name)
        hang = self.eef[2] - float(np.asarray(o["bbox"])[0, 2])  # grip site above object bottom
        goal_xy = self.place_xy(target)
        surface = self.surface_z(target, goal_xy, name)
        carry = max(self.clearance_z(self.eef, goal_xy, name), surface) + hang + 0.04
        carry = max(carry, self.eef[2] + 0.05)
        lift = self.eef.copy()
        lift[2] = carry
        yield from self.move(lift, self.yaw, tol=0.02, max_steps=40)
        yaw = self.yaw
        # Aim the object's origin (what LIBERO's checks use) at the goal, not the gripper.
        for _ in range(80):
            offset = self.eef[:2] - np.asarray(self.obj(name)["pos"])[:2]
            over = np.array([*(goal_xy + offset), carry])
            if np.linalg.norm(over - self.eef) < 0.015:
                break
            yield self.servo(over, yaw)
        release_z = surface + hang + 0.015
        last = self.eef[2]
        for _ in range(40):
            offset = self.eef[:2] - np.asarray(self.obj(name)["pos"])[:2]
            down = np.array([*(goal_xy + offset), release_z])
            if self.eef[2] - release_z < 0.01:
                break
            yield self.servo(down, yaw)
            if last - self.eef[2] < 0.0005 and self.eef[2] - release_z < 0.04:
                break  # resting on something already
            last = self.eef[2]
        yield from self.gripper(OPEN, 6, yaw)
        up = self.eef + np.array([0.0, 0.0, 0.08])
        yield from self.move(up, yaw, tol=0.02, max_steps=20)


def _xy_distance_to_box(point: np.ndarray, box: np.ndarray) -> float:
    """Horizontal distance from a point to a (2, 3) box; 0 inside it."""
    d = np.maximum(np.maximum(box[0, :2] - point, point - box[1, :2]), 0.0)
    return float(np.linalg.norm(d))


def _segment_box_distance(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    """Horizontal distance from the segment a-b to a box, sampled finely enough for tables."""
    return min(_xy_distance_to_box(a + t * (b - a), box) for t in np.linspace(0.0, 1.0, 11))
