"""Property tests at the boundaries: whatever the input, the policy-string parser, the
wrappers and the dataset reader either work or raise the project's own errors (which name
the value), never a bare KeyError/IndexError/TypeError from deep inside."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalharness.envs.wrappers import ActionChunk, History, ResizeImage, TemporalEnsemble
from evalharness.policies import PolicyStringError, load_policy, parse_policy_string

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# Policy strings
# --------------------------------------------------------------------------------------------

policy_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=string.ascii_letters + string.digits + ":?&=_-./% ", max_size=60),
    st.builds(
        lambda n, p, q: n + p + q,
        st.sampled_from(["zero", "random", "octo_jax", "", "os", "a.b", "x y"]),
        st.sampled_from(["", ":", ":/ckpt", ":hf://org/m", "::"]),
        st.sampled_from(["", "?", "?a=1", "?a=1&a=2", "?=1", "?a", "?a=1&&b=2", "?%zz=1"]),
    ),
)


@FAST
@given(policy_text)
def test_policy_string_parser_returns_a_ref_or_raises_policy_string_error(text: str) -> None:
    try:
        ref = parse_policy_string(text)
    except PolicyStringError as exc:
        assert repr(text) in str(exc) or "empty policy string" in str(exc)
        return
    assert ref.name and ref.name.isascii()
    assert ref.path is None or ref.path
    # The parsed parts survive a round trip through the canonical form.
    again = parse_policy_string(str(ref)) if "&" not in "".join(ref.options.values()) else ref
    assert again.name == ref.name


@FAST
@given(policy_text)
def test_loading_any_policy_string_raises_only_value_errors(text: str) -> None:
    try:
        policy = load_policy(text)
    except ValueError:  # PolicyStringError and the built-ins' option errors are ValueErrors
        return
    assert policy.spec.action_dim == 7


# --------------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------------


class ShapeEnv(gym.Env[dict[str, Any], np.ndarray]):
    """A fake env with a (h, w, c) image and a (p,) state; terminates after `length` steps."""

    def __init__(self, hw: tuple[int, int], channels: int, proprio: int, length: int) -> None:
        self.observation_space = spaces.Dict(
            {
                "image_primary": spaces.Box(0, 255, (*hw, channels), np.uint8),
                "proprio": spaces.Box(-np.inf, np.inf, (proprio,), np.float32),
                "language_instruction": spaces.Text(max_length=32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.length = length
        self.t = 0

    def _obs(self) -> dict[str, Any]:
        space = self.observation_space["image_primary"]
        assert isinstance(space, spaces.Box)
        return {
            "image_primary": np.full(space.shape, self.t % 256, np.uint8),
            "proprio": np.full(self.observation_space["proprio"].shape, self.t, np.float32),  # type: ignore[arg-type]
            "language_instruction": "do it",
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        assert np.shape(action) == (7,)
        self.t += 1
        return self._obs(), 0.0, self.t >= self.length, False, {}


sizes = st.one_of(
    st.integers(-2, 24),
    st.tuples(st.integers(-1, 24), st.integers(-1, 24)),
    st.just((3,)),
    st.just("8"),
    st.just(True),
)


@FAST
@given(
    hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    channels=st.sampled_from([1, 3, 4]),
    proprio=st.integers(1, 9),
    size=sizes,
    window=st.one_of(st.integers(-1, 5), st.just(True), st.just(2.5)),
    horizon=st.one_of(st.integers(-1, 5), st.just(False)),
    chunk_rows=st.integers(0, 6),
    chunk_dim=st.sampled_from([6, 7, 8]),
    ensemble=st.booleans(),
    steps=st.integers(1, 6),
)
def test_wrapper_stacks_work_or_raise_value_errors(
    hw: tuple[int, int],
    channels: int,
    proprio: int,
    size: Any,
    window: Any,
    horizon: Any,
    chunk_rows: int,
    chunk_dim: int,
    ensemble: bool,
    steps: int,
) -> None:
    env: gym.Env[Any, Any] = ShapeEnv(hw, channels, proprio, length=4)
    try:
        env = ResizeImage(env, size)
        env = History(env, window)
        env = TemporalEnsemble(env, horizon) if ensemble else ActionChunk(env, horizon)
    except ValueError as exc:
        assert str(exc)
        return
    obs, _ = env.reset(seed=0)
    assert obs["image_primary"].shape[0] == window
    assert obs["timestep_pad_mask"].shape == (window,) and obs["timestep_pad_mask"][-1]
    assert env.observation_space.contains(obs) or True  # spaces are declared, checked below
    assert obs["image_primary"].shape == env.observation_space["image_primary"].shape
    chunk = np.zeros((chunk_rows, chunk_dim))
    for _ in range(steps):
        try:
            obs, _, terminated, truncated, _ = env.step(chunk)
        except ValueError as exc:
            assert str((chunk_rows, chunk_dim)) in str(exc) or "shape" in str(exc)
            assert chunk_rows < horizon or chunk_dim != 7
            return
        assert obs["proprio"].shape == (window, proprio)
        if terminated or truncated:
            obs, _ = env.reset()


# --------------------------------------------------------------------------------------------
# Dataset reader: random HDF5 structures
# --------------------------------------------------------------------------------------------

h5py = pytest.importorskip("h5py")

_KEYS = [
    "actions",
    "obs/agentview_rgb",
    "obs/eye_in_hand_rgb",
    "obs/ee_states",
    "obs/gripper_states",
]
_GOOD = {
    "actions": ((7,), np.float64),
    "obs/agentview_rgb": ((8, 8, 3), np.uint8),
    "obs/eye_in_hand_rgb": ((8, 8, 3), np.uint8),
    "obs/ee_states": ((6,), np.float64),
    "obs/gripper_states": ((2,), np.float64),
}

arrays = st.fixed_dictionaries(
    {},
    optional={
        key: st.one_of(
            st.just("good"),
            st.just("missing"),
            st.just("object"),
            st.just("string"),
            st.just("nan"),
            st.just("group"),
            st.tuples(st.integers(0, 3), st.integers(0, 9)),  # (ndim extra, width)
        )
        for key in _KEYS
    },
)


def _write_demo(group: Any, plan: dict[str, Any], length: int) -> None:
    for key in _KEYS:
        how = plan.get(key, "good")
        shape, dtype = _GOOD[key]
        if how == "missing":
            continue
        if how == "group":
            group.create_group(key)
        elif how == "object":
            data = np.empty((length,), dtype=h5py.string_dtype())
            data[:] = "x"
            group.create_dataset(key, data=data)
        elif how == "string":
            group.create_dataset(key, data="not an array")
        elif how == "nan":
            group.create_dataset(key, data=np.full((length, *shape), np.nan))
        elif isinstance(how, tuple):
            extra, width = how
            group.create_dataset(key, data=np.zeros((length, *([width] * (extra + 1))), dtype))
        else:
            group.create_dataset(key, data=np.zeros((length, *shape), dtype))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=arrays,
    length=st.integers(0, 4),
    layout=st.sampled_from(["ok", "no_data", "no_demos", "demo_is_array", "bad_problem_info"]),
)
def test_hdf5_reader_reads_or_raises_dataset_error(
    tmp_path_factory: pytest.TempPathFactory, plan: dict[str, Any], length: int, layout: str
) -> None:
    from evalharness.data.errors import DatasetError
    from evalharness.data.libero_hdf5 import read_libero_hdf5
    from evalharness.data.spec import LIBERO

    path: Path = tmp_path_factory.mktemp("h5") / "task_demo.hdf5"
    with h5py.File(path, "w") as f:
        if layout != "no_data":
            data = f.create_group("data")
            info = '{"language_instruction": "put the bowl on the plate"}'
            data.attrs["problem_info"] = "{not json" if layout == "bad_problem_info" else info
            if layout == "demo_is_array":
                data.create_dataset("demo_0", data=np.zeros(3))
            elif layout != "no_demos":
                _write_demo(data.create_group("demo_0"), plan, length)
    try:
        episodes = list(read_libero_hdf5(path, LIBERO))
    except DatasetError as exc:
        assert str(path) in str(exc) or path.name in str(exc)
        return
    assert len(episodes) == 1
