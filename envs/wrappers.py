"""Composable gymnasium wrappers for policy evaluation: image orientation and resizing,
observation history, action chunking and temporal ensembling.

Each wrapper handles one concern, works on any gymnasium env whose observations are a
``spaces.Dict`` (the LIBERO env here, a fake env in tests) and declares the observation and
action spaces it actually produces and accepts. Names follow the field (Octo, ACT) so a
policy's config maps onto them directly. A typical Octo-style stack::

    env = ResizeImage(env, {"image_primary": 256, "image_wrist": 128})
    env = History(env, window=2)
    env = ActionChunk(env, exec_horizon=4)  # or TemporalEnsemble(env, pred_horizon=4)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from PIL import Image

from evalharness.envs.rotations import ORIENTATIONS, rotate180

__all__ = [
    "ActionChunk",
    "History",
    "ImageOrientation",
    "ResizeImage",
    "TemporalEnsemble",
    "resize_frames",
]

PAD_MASK_KEY = "timestep_pad_mask"

SizeLike = int | tuple[int, int] | Sequence[int]


def _positive_int(value: Any, what: str) -> int:
    # bool is an int subclass; History(env, True) is a bug, not a window of 1.
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


def _dict_space(env: gym.Env[Any, Any], owner: str) -> spaces.Dict:
    space = env.observation_space
    if not isinstance(space, spaces.Dict):
        raise ValueError(f"{owner} needs a spaces.Dict observation space, got {space}")
    return space


def _inner_action_box(env: gym.Env[Any, Any], owner: str) -> spaces.Box:
    space = env.action_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{owner} needs an inner Box action space of shape (A,), got {space}")
    return space


def _chunk_box(inner: spaces.Box, horizon: int) -> spaces.Box:
    return spaces.Box(
        low=np.tile(inner.low, (horizon, 1)),
        high=np.tile(inner.high, (horizon, 1)),
        dtype=inner.dtype.type,
    )


def _as_chunk(action: Any, horizon: int, action_dim: int, owner: str) -> NDArray[Any]:
    """Validate ``action`` as a chunk of at least ``horizon`` rows of ``action_dim`` each."""
    # A copy, because inner envs and recorders may keep the rows we hand them while policies
    # are free to reuse their output buffer for the next query.
    chunk = np.array(action, copy=True)
    if chunk.ndim == 1 and horizon == 1:
        chunk = chunk[None]
    if chunk.ndim != 2 or chunk.shape[0] < horizon or chunk.shape[1] != action_dim:
        raise ValueError(
            f"{owner} expected an action chunk of shape (H, {action_dim}) with H >= {horizon}, "
            f"i.e. at least {(horizon, action_dim)}, received shape {np.shape(action)}"
        )
    return chunk


def _parse_size(size: Any, what: str) -> tuple[int, int]:
    if isinstance(size, Integral) and not isinstance(size, bool):
        hw: tuple[Any, Any] = (size, size)
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        hw = (size[0], size[1])
    else:
        raise ValueError(f"{what} must be an int or a (height, width) pair, got {size!r}")
    for v in hw:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise ValueError(f"{what} must contain ints, got {size!r}")
        if v <= 0:
            raise ValueError(f"{what} must be positive, got {size!r}")
    return int(hw[0]), int(hw[1])


def resize_frames(image: NDArray[np.uint8], height: int, width: int) -> NDArray[np.uint8]:
    """Lanczos-resize an (..., H, W, C) uint8 array to (..., height, width, C)."""
    *lead, _, _, channels = image.shape
    frames = np.ascontiguousarray(image).reshape(-1, *image.shape[-3:])
    out = np.empty((frames.shape[0], height, width, channels), dtype=np.uint8)
    for i, frame in enumerate(frames):
        if channels == 3:
            out[i] = np.asarray(
                Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS)
            )
        else:
            # Per-channel 8-bit planes: PIL has no mode for arbitrary channel counts, and
            # resizing RGBA as a whole would premultiply alpha into the colour channels.
            for c in range(channels):
                plane = Image.fromarray(np.ascontiguousarray(frame[..., c]))
                out[i, ..., c] = np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS))
    return out.reshape(*lead, height, width, channels)


class ImageOrientation(gym.ObservationWrapper[dict[str, Any], Any, dict[str, Any]]):
    """Show a policy its camera frames in the orientation it was trained on.

    The env produces upright frames. A policy trained on raw LIBERO HDF5 frames (a finetune
    whose dataset spec kept ``model_orientation="raw"``) declares ``image_orientation="raw"``
    in its spec, and this wrapper rotates every ``image_*`` observation by 180° back. With
    ``"upright"`` it passes observations through untouched. Frames a skipped render left out
    stay out; videos are recorded below this wrapper and stay upright.
    """

    def __init__(self, env: gym.Env[dict[str, Any], Any], orientation: str) -> None:
        super().__init__(env)
        if orientation not in ORIENTATIONS:
            raise ValueError(
                f"ImageOrientation: unknown orientation {orientation!r}; expected one of "
                f"{ORIENTATIONS}"
            )
        self.orientation = orientation
        self.observation_space = _dict_space(env, "ImageOrientation")

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        if self.orientation == "upright":
            return observation
        out = dict(observation)
        for key, value in observation.items():
            if key.startswith("image_") and isinstance(value, np.ndarray) and value.ndim >= 3:
                out[key] = rotate180(value)
        return out


class ResizeImage(gym.ObservationWrapper[dict[str, Any], Any, dict[str, Any]]):
    """Resize uint8 image observations with Lanczos filtering.

    Mirrors Octo's preprocessing (``tf.image.resize(method="lanczos3", antialias=True)``)
    with PIL's ``Image.Resampling.LANCZOS`` on uint8, so a policy sees images resampled the
    way its training data was.

    Args:
        env: env with a ``spaces.Dict`` observation space.
        size: an int (square), a ``(height, width)`` pair, or a dict mapping image key to
            either; with a dict only its keys are resized and ``keys`` must be omitted.
        keys: image keys to resize with a non-dict ``size``; default every key starting with
            ``image_``.

    Images are ``(..., H, W, C)`` uint8 Boxes, so the wrapper also works after ``History``.
    Images already at the target size are returned as the very same array (no copy, no
    resampling), which keeps a resize to the native resolution free and bit-exact. Other
    observation keys pass through unchanged.

    Example::

        env = ResizeImage(env, {"image_primary": 256, "image_wrist": (128, 128)})
        obs, info = env.reset(seed=0)
        obs["image_primary"].shape  # (256, 256, 3), dtype uint8
    """

    def __init__(
        self,
        env: gym.Env[dict[str, Any], Any],
        size: SizeLike | Mapping[str, SizeLike],
        keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__(env)
        inner = _dict_space(env, "ResizeImage")
        if isinstance(size, Mapping):
            if keys is not None:
                raise ValueError("ResizeImage: give keys either via `keys` or as size's dict keys")
            requested = {k: _parse_size(v, f"ResizeImage size for {k!r}") for k, v in size.items()}
        else:
            hw = _parse_size(size, "ResizeImage size")
            if keys is None:
                keys = [k for k in inner.spaces if k.startswith("image_")]
                if not keys:
                    raise ValueError(
                        f"ResizeImage found no 'image_*' keys; available keys: {list(inner.spaces)}"
                    )
            requested = {k: hw for k in keys}

        new_spaces = dict(inner.spaces)
        for key, (h, w) in requested.items():
            sub = inner.spaces.get(key)
            if sub is None:
                raise ValueError(
                    f"ResizeImage: unknown observation key {key!r}; "
                    f"available keys: {list(inner.spaces)}"
                )
            if not (isinstance(sub, spaces.Box) and sub.dtype == np.uint8 and len(sub.shape) >= 3):
                raise ValueError(
                    f"ResizeImage: key {key!r} is not a uint8 (..., H, W, C) image Box: {sub}"
                )
            # Lanczos rings, so the output can hit any uint8 value whatever the input bounds.
            new_spaces[key] = spaces.Box(
                low=0, high=255, shape=(*sub.shape[:-3], h, w, sub.shape[-1]), dtype=np.uint8
            )
        self.sizes: dict[str, tuple[int, int]] = requested
        self.observation_space = spaces.Dict(new_spaces)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        """Return a new dict with the configured images resized; other values are shared."""
        out = dict(observation)
        for key, (h, w) in self.sizes.items():
            # An env that skipped a step's renders (LiberoEnv.set_render_schedule) omits it.
            image = observation.get(key)
            if image is None or image.shape[-3:-1] == (h, w):
                continue
            if image.dtype != np.uint8:
                raise ValueError(f"ResizeImage: {key!r} must be uint8, got {image.dtype}")
            out[key] = resize_frames(image, h, w)
        return out


class History(gym.Wrapper[dict[str, Any], Any, dict[str, Any], Any]):
    """Stack the last ``window`` observations along a new leading axis.

    Every array observation (Box, MultiBinary, MultiDiscrete space) becomes ``(window, ...)``
    with the newest observation last; other values (the ``language_instruction`` string) are
    passed through from the newest observation, unstacked. A ``timestep_pad_mask`` of shape
    ``(window,)`` and dtype bool marks real observations True and padding False. A key missing
    from an observation (a step whose renders the env skipped) is missing from every window
    that holds that observation.

    On reset the window is filled by repeating the first observation, as Octo's
    HistoryWrapper does: with ``window=3`` the mask is ``[False, False, True]`` after reset,
    ``[False, True, True]`` after one step and all True from the second step on.

    Args:
        env: env with a ``spaces.Dict`` observation space and no ``timestep_pad_mask`` key.
        window: number of observations to stack, an int >= 1.

    Example::

        env = History(env, window=2)
        obs, info = env.reset(seed=0)
        obs["proprio"].shape            # (2, 8)
        obs["timestep_pad_mask"]        # array([False,  True])
    """

    def __init__(self, env: gym.Env[dict[str, Any], Any], window: int) -> None:
        super().__init__(env)
        self.window = _positive_int(window, "History window")
        inner = _dict_space(env, "History")
        if PAD_MASK_KEY in inner.spaces:
            raise ValueError(f"History: the inner env already has a {PAD_MASK_KEY!r} key")

        new_spaces: dict[str, spaces.Space[Any]] = {}
        self._stacked: list[str] = []
        for key, sub in inner.spaces.items():
            stacked = self._stack_space(sub)
            if stacked is None:
                new_spaces[key] = sub
            else:
                new_spaces[key] = stacked
                self._stacked.append(key)
        new_spaces[PAD_MASK_KEY] = spaces.Box(low=0, high=1, shape=(self.window,), dtype=np.bool_)
        self.observation_space = spaces.Dict(new_spaces)

        self._frames: deque[dict[str, NDArray[Any]]] = deque(maxlen=self.window)
        self._latest: dict[str, Any] = {}
        self._num_obs = 0

    def _stack_space(self, sub: spaces.Space[Any]) -> spaces.Space[Any] | None:
        n = self.window
        if isinstance(sub, spaces.Box):
            return spaces.Box(
                low=np.repeat(sub.low[None], n, axis=0),
                high=np.repeat(sub.high[None], n, axis=0),
                dtype=sub.dtype.type,
            )
        if isinstance(sub, spaces.MultiBinary):
            return spaces.MultiBinary([n, *sub.shape])
        if isinstance(sub, spaces.MultiDiscrete):
            return spaces.MultiDiscrete(
                np.repeat(sub.nvec[None], n, axis=0),
                dtype=sub.dtype.type,
                start=np.repeat(sub.start[None], n, axis=0),
            )
        return None

    def _push(self, obs: dict[str, Any]) -> None:
        # Copies, because some simulators refill the same observation buffers every step,
        # which would silently overwrite the older frames held here.
        self._frames.append({k: np.array(obs[k], copy=True) for k in self._stacked if k in obs})
        self._latest = obs
        self._num_obs += 1

    def _stacked_obs(self) -> dict[str, Any]:
        out = dict(self._latest)
        for key in self._stacked:
            if any(key not in frame for frame in self._frames):
                # A step whose renders were skipped: nothing will read this window's images.
                out.pop(key, None)
                continue
            out[key] = np.stack([frame[key] for frame in self._frames])
        real = min(self._num_obs, self.window)
        out[PAD_MASK_KEY] = np.arange(self.window) >= self.window - real
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset the inner env and fill the window with copies of its first observation."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._frames.clear()
        self._num_obs = 0
        self._push(obs)
        while len(self._frames) < self.window:
            self._frames.append(self._frames[-1])
        return self._stacked_obs(), info

    def step(self, action: Any) -> tuple[dict[str, Any], SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the inner env once and append its observation to the window."""
        if not self._frames:
            raise RuntimeError("History: call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._push(obs)
        return self._stacked_obs(), reward, terminated, truncated, info


class ActionChunk(gym.Wrapper[Any, NDArray[Any], Any, NDArray[Any]]):
    """Receding-horizon control: execute the first ``exec_horizon`` actions of a chunk.

    Like Octo's RHCWrapper. The action is a chunk of shape ``(H, A)``; rows
    ``0 .. exec_horizon - 1`` are sent to the inner env in order, stopping early as soon as
    it reports ``terminated`` or ``truncated``. ``step`` returns the last observation, the
    summed reward, the last ``terminated``/``truncated`` flags and the last step's info with
    ``info["chunk_steps"]`` set to the number of inner steps executed.

    ``action_space`` is a Box of shape ``(exec_horizon, A)`` with the inner bounds repeated
    per row. Longer chunks ``(H > exec_horizon, A)`` are accepted as well and their tail is
    ignored, so a policy's full prediction can be passed without slicing. A 1-D action
    ``(A,)`` is accepted as a chunk of one only when ``exec_horizon == 1``.

    Args:
        env: env with a Box action space of shape ``(A,)``.
        exec_horizon: actions executed per call, an int >= 1.

    Example::

        env = ActionChunk(env, exec_horizon=4)
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(policy_chunk)  # (pred_horizon, 7)
        info["chunk_steps"]  # 4, or fewer if the episode ended inside the chunk
    """

    def __init__(self, env: gym.Env[Any, Any], exec_horizon: int) -> None:
        super().__init__(env)
        self.exec_horizon = _positive_int(exec_horizon, "ActionChunk exec_horizon")
        inner = _inner_action_box(env, "ActionChunk")
        self._action_dim = inner.shape[0]
        self.action_space = _chunk_box(inner, self.exec_horizon)

    def step(self, action: NDArray[Any]) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Execute up to ``exec_horizon`` rows of ``action`` in the inner env."""
        chunk = _as_chunk(action, self.exec_horizon, self._action_dim, "ActionChunk")
        obs, reward, terminated, truncated, info = self.env.step(chunk[0])
        total = float(reward)
        steps = 1
        while steps < self.exec_horizon and not (terminated or truncated):
            obs, reward, terminated, truncated, info = self.env.step(chunk[steps])
            total += float(reward)
            steps += 1
        info = dict(info)
        info["chunk_steps"] = steps
        return obs, total, terminated, truncated, info


class TemporalEnsemble(gym.Wrapper[Any, NDArray[Any], Any, NDArray[Any]]):
    """Temporal ensembling of overlapping action chunks (ACT; Octo's TemporalEnsembleWrapper).

    Each call takes a chunk ``(pred_horizon, A)`` predicted for the current step and executes
    exactly one inner step. The executed action is a weighted average of every stored
    prediction for the current step: the chunk predicted ``i`` calls ago contributes its row
    ``i``, and chunks older than ``pred_horizon - 1`` calls have nothing left to say and drop
    out. With predictions ordered oldest first, prediction ``j`` gets weight
    ``exp(-exp_weight * j)`` (normalized), exactly as upstream Octo: a positive
    ``exp_weight`` favours older predictions, ``0`` is the plain mean. The average is computed
    in float64. The history is cleared on reset.

    ``action_space`` is a Box of shape ``(pred_horizon, A)``; longer chunks are accepted and
    truncated to ``pred_horizon`` rows, and a 1-D ``(A,)`` action only when
    ``pred_horizon == 1``.

    Args:
        env: env with a Box action space of shape ``(A,)``.
        pred_horizon: rows of each chunk that are used, an int >= 1.
        exp_weight: exponential weighting rate over predictions, a finite float.

    Example::

        env = TemporalEnsemble(env, pred_horizon=4, exp_weight=0.01)
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(policy_chunk)  # (4, 7)
    """

    def __init__(self, env: gym.Env[Any, Any], pred_horizon: int, exp_weight: float = 0.0) -> None:
        super().__init__(env)
        self.pred_horizon = _positive_int(pred_horizon, "TemporalEnsemble pred_horizon")
        if not np.isfinite(exp_weight):
            raise ValueError(f"TemporalEnsemble exp_weight must be finite, got {exp_weight!r}")
        self.exp_weight = float(exp_weight)
        inner = _inner_action_box(env, "TemporalEnsemble")
        self._action_dim = inner.shape[0]
        self.action_space = _chunk_box(inner, self.pred_horizon)
        self._history: deque[NDArray[Any]] = deque(maxlen=self.pred_horizon)

    def ensembled_action(self, action: NDArray[Any]) -> NDArray[np.float64]:
        """Record ``action`` as the newest chunk and return the action to execute now."""
        chunk = _as_chunk(action, self.pred_horizon, self._action_dim, "TemporalEnsemble")
        self._history.append(chunk[: self.pred_horizon])
        n = len(self._history)
        # Oldest first: the oldest chunk was predicted n - 1 calls ago, so it holds row n - 1.
        preds = np.stack(
            [c[i] for i, c in zip(range(n - 1, -1, -1), self._history, strict=True)]
        ).astype(np.float64)
        weights = np.exp(-self.exp_weight * np.arange(n))
        weights /= weights.sum()
        return np.asarray(np.sum(weights[:, None] * preds, axis=0), dtype=np.float64)

    def step(self, action: NDArray[Any]) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Execute one inner step with the ensembled action for the current step."""
        return self.env.step(self.ensembled_action(action))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the inner env and forget all past predictions."""
        self._history.clear()
        return self.env.reset(seed=seed, options=options)
