"""The open-loop check: does a policy reproduce the demonstrations it learned from?

Closed-loop success mixes many things (compounding error, the scene, luck). Replaying recorded
demonstrations through a policy's own ``act()`` isolates one: given exactly the observations a
demo saw, does the policy command what the demo commanded? A finetuned policy that cannot do
this on its *training* demos has a bug between training and evaluation (an image flipped, a
gripper convention swapped, actions normalized one way and un-normalized another) or has not
learned; either way evaluating it in simulation is wasted time.

    evalharness doctor --policy FAMILY:ckpts/ft --data demos/ --open-loop
    >>> report = open_loop(load_policy("FAMILY:ckpts/ft"), replay_episodes("demos/"))
    >>> print(report.format())

How a demo is replayed. Observations are rebuilt as the environment hands them to a policy
(``envs.libero.LiberoEnv`` standard keys: upright ``image_primary``/``image_wrist``, ``proprio``
= eef pos 3 + axis-angle 3 + gripper qpos 2, ``joint_states`` 7), then put through the same
steps the runner's wrappers apply for this policy's ``spec`` (orientation, resize, a
``window_size`` history padded at the start). The policy is queried every ``exec_horizon``
steps (one action per query with temporal ensembling), as a run would execute it, so every
demo step is compared with exactly one predicted action: chunk entry ``k`` of the query at
step ``t`` against the demo's action ``t + k``. Each query is its own "episode" for the
policy's noise streams (``episode_start`` True), so queries can be batched.

What is reported, per action dimension and overall:

- the policy's mean absolute error against the demonstrated action;
- the same for two trivial predictors, for scale: *zero* (always 0) and *mean* (always the
  replayed demos' mean action) — a policy no better than these has learned nothing usable;
- gripper sign agreement: the fraction of steps where the sign of the predicted gripper
  command equals the demo's (LIBERO: −1 open, +1 close; 0 counts as a disagreement);
- translation error: the mean Euclidean norm of the xyz error, and the zero predictor's
  (the demo's own mean xyz magnitude).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.data import DatasetSpec, open_dataset
from evalharness.data.dataset import detect_format
from evalharness.data.spec import LIBERO, LIBERO_RLDS
from evalharness.data.windows import window_indices
from evalharness.envs.rotations import rotate180
from evalharness.policies.common import hub
from evalharness.policies.common.normalization import Gripper

__all__ = [
    "ACTION_NAMES",
    "OpenLoopReport",
    "ReplayEpisode",
    "open_loop",
    "replay_episodes",
    "select_demos",
]

#: LIBERO's 7-d OSC_POSE action: delta position, delta axis-angle, gripper.
ACTION_NAMES = ("x", "y", "z", "rx", "ry", "rz", "gripper")

#: The environment's view of a LIBERO HDF5 demo: frames upright, proprio as the env's
#: (ee_states + gripper_states) followed by the joint angles (split off again below),
#: actions in LIBERO's gripper convention.
_HDF5_ENV_VIEW = dataclasses.replace(
    LIBERO,
    name="libero_env_view",
    proprio_keys=("obs/ee_states", "obs/gripper_states", "obs/joint_states"),
    proprio_dims=(6, 2, 7),
    model_orientation="upright",
    gripper_for_model=Gripper.LIBERO,
)
#: The same for OpenVLA-style RLDS (``state`` = ee 6 + gripper 2; no joint angles).
_RLDS_ENV_VIEW = dataclasses.replace(
    LIBERO_RLDS, name="libero_rlds_env_view", gripper_for_model=Gripper.LIBERO
)
_PROPRIO_DIM = 8


@dataclass(frozen=True)
class ReplayEpisode:
    """One demo as the environment would have shown it to a policy, step by step."""

    episode_id: str
    language_instruction: str
    observations: Mapping[str, np.ndarray]  # key -> (T, ...) standard observation
    actions: np.ndarray  # (T, 7) env actions (LIBERO gripper convention)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


def select_demos(count: int, demos: str | Sequence[int] | None) -> list[int]:
    """Indices of the demos to replay: all of ``count``, or ``demos`` ("0,7,21", "0-4" or
    a list of ints), each checked against the number of demos."""
    if demos is None:
        return list(range(count))
    if isinstance(demos, str):
        picked: list[int] = []
        for part in demos.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                picked.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
            except ValueError:
                raise ValueError(
                    f"demos {demos!r}: expected indices like 0,7,21 or ranges like 0-4"
                ) from None
    else:
        picked = [int(d) for d in demos]
    bad = [d for d in picked if not 0 <= d < count]
    if bad:
        raise ValueError(f"demo index {bad[0]} is out of range: the data holds {count} demos")
    return list(dict.fromkeys(picked))


def replay_episodes(
    path: str | Path, demos: str | Sequence[int] | None = None
) -> list[ReplayEpisode]:
    """Demos at ``path`` (LIBERO HDF5 file/folder, or OpenVLA-style RLDS) as the env's view.

    ``demos`` picks some by index in reading order (see :func:`select_demos`). ``path`` may
    be a hub reference (``hf://datasets/ORG/NAME[@REV]``), resolved once here.
    """
    path = hub.local_path(str(path), default_repo_type="dataset")
    spec: DatasetSpec = _RLDS_ENV_VIEW if detect_format(path) == "rlds" else _HDF5_ENV_VIEW
    episodes = open_dataset(path, spec).load()
    out = []
    for index in select_demos(len(episodes), demos):
        ep = episodes[index]
        obs = {k: np.asarray(v) for k, v in ep.items() if k.startswith("image_")}
        proprio = np.asarray(ep["proprio"], np.float32)
        obs["proprio"] = proprio[:, :_PROPRIO_DIM]
        if proprio.shape[1] > _PROPRIO_DIM:
            obs["joint_states"] = proprio[:, _PROPRIO_DIM:]
        out.append(
            ReplayEpisode(
                episode_id=str(ep["episode_id"]),
                language_instruction=str(ep["language_instruction"]),
                observations=obs,
                actions=np.asarray(ep["action"], np.float64),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# the report


@dataclass(frozen=True)
class OpenLoopReport:
    """Per-dimension errors of a policy and of the trivial predictors on replayed demos."""

    policy: str
    episodes: tuple[str, ...]
    steps: int  # compared actions
    queries: int
    dims: tuple[str, ...]
    policy_mae: tuple[float, ...]
    zero_mae: tuple[float, ...]
    mean_mae: tuple[float, ...]
    gripper_agreement: float
    translation_error: float
    zero_translation_error: float
    mean_translation_error: float

    @property
    def translation_ratio(self) -> float:
        """Translation error over the zero predictor's: < 1 beats predicting no motion."""
        return self.translation_error / max(self.zero_translation_error, 1e-12)

    def meets(self, gripper_agreement: float = 0.95, translation_ratio: float = 0.5) -> bool:
        """The bar a finetuned policy should clear on its training demos (issue 16's)."""
        return (
            self.gripper_agreement >= gripper_agreement
            and self.translation_ratio <= translation_ratio
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``translation_ratio`` added."""
        return dataclasses.asdict(self) | {"translation_ratio": self.translation_ratio}

    def format(self) -> str:
        """A table: one row per action dimension, then the gripper and translation summary."""
        width = max(len(d) for d in self.dims)
        lines = [
            f"open loop: {self.policy} on {len(self.episodes)} demo(s), {self.steps} actions "
            f"from {self.queries} queries",
            f"  {'dim':<{width}}  {'policy':>8}  {'zero':>8}  {'mean':>8}   (mean abs. error)",
        ]
        for i, name in enumerate(self.dims):
            lines.append(
                f"  {name:<{width}}  {self.policy_mae[i]:8.4f}  {self.zero_mae[i]:8.4f}  "
                f"{self.mean_mae[i]:8.4f}"
            )
        lines.append(f"  gripper sign agreement: {self.gripper_agreement:.1%}")
        lines.append(
            f"  translation error (mean xyz norm): policy {self.translation_error:.4f}, zero "
            f"{self.zero_translation_error:.4f}, mean {self.mean_translation_error:.4f} "
            f"(policy/zero = {self.translation_ratio:.2f})"
        )
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


# --------------------------------------------------------------------------------------------
# replaying


def _queries(length: int, exec_horizon: int) -> list[tuple[int, int]]:
    """(query step, number of its actions compared) covering every step once."""
    return [(t, min(exec_horizon, length - t)) for t in range(0, length, exec_horizon)]


def _view(
    episode: ReplayEpisode,
    steps: Sequence[int],
    window: int,
    orientation: str,
    image_sizes: Mapping[str, tuple[int, int]],
) -> dict[str, np.ndarray]:
    """The windowed observations (len(steps), window, ...) the runner's wrappers would give."""
    history, pad, _, _ = window_indices(episode.length, window, 1)
    rows = history[list(steps)]
    out: dict[str, np.ndarray] = {}
    for key, values in episode.observations.items():
        frames = values[rows]
        if key.startswith("image_"):
            if orientation != "upright":
                frames = rotate180(frames)
            if key in image_sizes and frames.shape[-3:-1] != tuple(image_sizes[key]):
                from evalharness.envs.wrappers import resize_frames

                h, w = image_sizes[key]
                frames = resize_frames(frames, h, w)
        out[key] = frames
    out["timestep_pad_mask"] = pad[list(steps)]
    return out


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def open_loop(
    policy: Any,
    episodes: Iterable[ReplayEpisode],
    *,
    name: str | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> OpenLoopReport:
    """Replay ``episodes`` through ``policy.act()`` and compare with the demos' actions.

    ``policy`` is any `evalharness.policies.base.Policy`; see the module docstring for how
    observations are rebuilt and which predicted action is compared with which demo action.
    """
    spec = policy.spec
    episodes = list(episodes)
    if not episodes:
        raise ValueError("open loop: no demos to replay")
    ensemble = spec.temporal_ensemble_weight is not None
    exec_horizon = 1 if ensemble else int(spec.exec_horizon or spec.action_horizon)
    exec_horizon = min(exec_horizon, int(spec.action_horizon))
    orientation = getattr(spec, "image_orientation", "upright")
    image_sizes = dict(spec.image_sizes or {})
    # Every (episode, query step) is one row; rows are batched across episodes.
    rows = [
        (e, t, n) for e, ep in enumerate(episodes) for t, n in _queries(ep.length, exec_horizon)
    ]
    predicted: list[np.ndarray] = []
    demonstrated: list[np.ndarray] = []
    policy.reset(min(batch_size, len(rows)))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        parts = [
            _view(episodes[e], [t], spec.window_size, orientation, image_sizes) for e, t, _ in chunk
        ]
        obs = _concat(parts)
        tasks = {
            "language_instruction": [episodes[e].language_instruction for e, _, _ in chunk],
            "episode_seed": np.arange(seed + start, seed + start + len(chunk), dtype=np.int64),
            "episode_start": np.ones(len(chunk), dtype=bool),
        }
        actions = np.asarray(policy.act(obs, tasks), dtype=np.float64)
        if actions.ndim != 3 or actions.shape[0] != len(chunk):
            raise ValueError(
                f"open loop: {name or spec.name}.act() returned shape {actions.shape}; expected "
                f"({len(chunk)}, action_horizon, action_dim)"
            )
        for row, (e, t, n) in enumerate(chunk):
            demo = episodes[e].actions[t : t + n]
            if actions.shape[2] != demo.shape[1]:
                raise ValueError(
                    f"open loop: the policy predicts {actions.shape[2]}-d actions, demo "
                    f"{episodes[e].episode_id} has {demo.shape[1]}-d actions"
                )
            predicted.append(actions[row, :n])
            demonstrated.append(demo)
    pred = np.concatenate(predicted)
    demo = np.concatenate(demonstrated)
    mean = demo.mean(axis=0)
    dim = demo.shape[1]
    dims = ACTION_NAMES if dim == len(ACTION_NAMES) else tuple(f"a{i}" for i in range(dim))
    grip_pred, grip_demo = np.sign(pred[:, -1]), np.sign(demo[:, -1])
    xyz = slice(0, min(3, dim))
    return OpenLoopReport(
        policy=name or spec.name,
        episodes=tuple(ep.episode_id for ep in episodes),
        steps=int(demo.shape[0]),
        queries=len(rows),
        dims=tuple(dims),
        policy_mae=tuple(float(v) for v in np.abs(pred - demo).mean(axis=0)),
        zero_mae=tuple(float(v) for v in np.abs(demo).mean(axis=0)),
        mean_mae=tuple(float(v) for v in np.abs(demo - mean).mean(axis=0)),
        gripper_agreement=float(np.mean((grip_pred == grip_demo) & (grip_pred != 0))),
        translation_error=float(np.linalg.norm(pred[:, xyz] - demo[:, xyz], axis=1).mean()),
        zero_translation_error=float(np.linalg.norm(demo[:, xyz], axis=1).mean()),
        mean_translation_error=float(np.linalg.norm(demo[:, xyz] - mean[xyz], axis=1).mean()),
    )
