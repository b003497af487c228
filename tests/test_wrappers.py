"""Spec tests for evalharness.envs.wrappers on a tiny deterministic fake env (no LIBERO)."""

from __future__ import annotations

import dataclasses
import string
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from PIL import Image

from evalharness.envs.wrappers import (
    ActionChunk,
    History,
    ImageOrientation,
    ResizeImage,
    TemporalEnsemble,
)

INSTRUCTION = "put the bowl on the plate"


class FakeEnv(gym.Env[dict[str, Any], np.ndarray]):
    """Deterministic env whose observations encode the step counter t.

    ``image_primary`` (16, 16, 3) and ``image_wrist`` (8, 8, 3) are filled with t, ``proprio``
    is ``[t] * 8``, the reward of the step that reaches t is ``t``, and the episode terminates
    when t reaches ``terminate_at``. Every action received is recorded.
    """

    def __init__(self, terminate_at: int = 100) -> None:
        self.terminate_at = terminate_at
        self.observation_space = spaces.Dict(
            {
                "image_primary": spaces.Box(0, 255, (16, 16, 3), np.uint8),
                "image_wrist": spaces.Box(0, 255, (8, 8, 3), np.uint8),
                "proprio": spaces.Box(-np.inf, np.inf, (8,), np.float32),
                "language_instruction": spaces.Text(
                    max_length=256, charset=string.ascii_letters + " "
                ),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.t = 0
        self.actions: list[np.ndarray] = []
        self.last_obs: dict[str, Any] = {}

    def _obs(self) -> dict[str, Any]:
        self.last_obs = {
            "image_primary": np.full((16, 16, 3), self.t, np.uint8),
            "image_wrist": np.full((8, 8, 3), self.t, np.uint8),
            "proprio": np.full(8, self.t, np.float32),
            "language_instruction": INSTRUCTION,
        }
        return self.last_obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        self.actions = []
        return self._obs(), {"t": self.t}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        self.actions.append(np.array(action, copy=True))
        self.t += 1
        return self._obs(), float(self.t), self.t >= self.terminate_at, False, {"t": self.t}


def chunk_of(rows: list[float], dim: int = 7) -> np.ndarray:
    """A chunk whose row r is the constant rows[r] in every action dimension."""
    return np.repeat(np.asarray(rows, dtype=np.float64)[:, None], dim, axis=1)


# --------------------------------------------------------------------------- ImageOrientation


def test_raw_orientation_rotates_every_image_180_and_nothing_else() -> None:
    inner = FakeEnv()
    env = ImageOrientation(inner, "raw")
    obs, _ = env.reset(seed=0)
    gradient = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    shown = env.observation({**inner.last_obs, "image_primary": gradient})
    assert shown["image_primary"][0, 0].tolist() == gradient[-1, -1].tolist()
    np.testing.assert_array_equal(shown["image_primary"], gradient[::-1, ::-1])
    assert shown["proprio"] is inner.last_obs["proprio"]
    assert env.observation_space == inner.observation_space
    # a step whose renders were skipped has no image keys: nothing to rotate, nothing added
    assert "image_wrist" not in env.observation({"proprio": obs["proprio"]})


def test_upright_orientation_passes_observations_through() -> None:
    inner = FakeEnv()
    env = ImageOrientation(inner, "upright")
    obs, _ = env.reset(seed=0)
    assert obs is inner.last_obs


def test_unknown_orientation_names_value_and_choices() -> None:
    with pytest.raises(ValueError, match=r"'sideways'.*'upright', 'raw'"):
        ImageOrientation(FakeEnv(), "sideways")


# --------------------------------------------------------------------------- ResizeImage


def test_resize_outputs_target_shape_uint8_and_matches_pil_lanczos() -> None:
    env = ResizeImage(FakeEnv(), (6, 10))
    obs, _ = env.reset(seed=0)
    assert obs["image_primary"].shape == (6, 10, 3)
    assert obs["image_wrist"].shape == (6, 10, 3)
    assert obs["image_primary"].dtype == np.uint8
    assert env.observation_space["image_primary"].shape == (6, 10, 3)
    assert env.observation_space.contains(obs)
    # Lanczos on a constant image reproduces the constant.
    env.step(np.zeros(7))
    obs, *_ = env.step(np.zeros(7))
    np.testing.assert_array_equal(obs["image_primary"], np.full((6, 10, 3), 2, np.uint8))


def test_resize_is_pil_lanczos_with_height_width_order() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    env = ResizeImage(FakeEnv(), {"image_primary": (6, 10)})
    out = env.observation({"image_primary": image})["image_primary"]
    expected = np.asarray(Image.fromarray(image).resize((10, 6), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out, expected)


def test_resize_passes_through_images_already_at_size() -> None:
    inner = FakeEnv()
    env = ResizeImage(inner, 16)
    obs, _ = env.reset(seed=0)
    assert obs["image_primary"] is inner.last_obs["image_primary"]
    assert obs["image_wrist"] is not inner.last_obs["image_wrist"]
    assert obs["image_wrist"].shape == (16, 16, 3)


def test_resize_dict_size_touches_only_listed_keys() -> None:
    inner = FakeEnv()
    env = ResizeImage(inner, {"image_wrist": 4})
    obs, _ = env.reset(seed=0)
    assert obs["image_wrist"].shape == (4, 4, 3)
    assert obs["image_primary"] is inner.last_obs["image_primary"]
    assert obs["proprio"] is inner.last_obs["proprio"]
    assert obs["language_instruction"] == INSTRUCTION


def test_resize_unknown_key_error_names_key_and_available_keys() -> None:
    with pytest.raises(ValueError) as excinfo:
        ResizeImage(FakeEnv(), {"image_third": 8})
    message = str(excinfo.value)
    assert "image_third" in message
    assert "image_primary" in message
    assert "image_wrist" in message


@pytest.mark.parametrize(("size", "shown"), [(0, "0"), (-3, "-3"), ((8, 0), "(8, 0)")])
def test_resize_nonpositive_size_error_names_value(size: Any, shown: str) -> None:
    with pytest.raises(ValueError, match="positive") as excinfo:
        ResizeImage(FakeEnv(), size)
    assert shown in str(excinfo.value)


def test_resize_rejects_non_image_key() -> None:
    with pytest.raises(ValueError, match="proprio"):
        ResizeImage(FakeEnv(), 8, keys=["proprio"])


# --------------------------------------------------------------------------- History


def test_history_pads_first_step_and_masks_it() -> None:
    env = History(FakeEnv(), window=3)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["timestep_pad_mask"], [False, False, True])
    # Padded slots repeat the first observation (t = 0).
    np.testing.assert_array_equal(obs["proprio"], np.zeros((3, 8), np.float32))
    np.testing.assert_array_equal(obs["image_primary"], np.zeros((3, 16, 16, 3), np.uint8))
    assert env.observation_space.contains(obs)


def test_history_mask_and_contents_over_reset_and_three_steps_newest_last() -> None:
    env = History(FakeEnv(), window=3)
    obs, _ = env.reset(seed=0)
    masks = [obs["timestep_pad_mask"].tolist()]
    proprio = [obs["proprio"][:, 0].tolist()]
    pixels = [obs["image_primary"][:, 0, 0, 0].tolist()]
    for _ in range(3):
        obs, *_ = env.step(np.zeros(7))
        masks.append(obs["timestep_pad_mask"].tolist())
        proprio.append(obs["proprio"][:, 0].tolist())
        pixels.append(obs["image_primary"][:, 0, 0, 0].tolist())
        assert env.observation_space.contains(obs)
    assert masks == [
        [False, False, True],
        [False, True, True],
        [True, True, True],
        [True, True, True],
    ]
    assert proprio == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]
    assert pixels == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]
    assert obs["timestep_pad_mask"].dtype == np.bool_


def test_history_keeps_language_instruction_unstacked() -> None:
    env = History(FakeEnv(), window=2)
    obs, _ = env.reset(seed=0)
    assert obs["language_instruction"] == INSTRUCTION
    space = env.observation_space
    assert isinstance(space, spaces.Dict)
    assert space["language_instruction"] == spaces.Text(
        max_length=256, charset=string.ascii_letters + " "
    )


def test_history_space_adds_window_axis_and_broadcasts_bounds() -> None:
    env = History(FakeEnv(), window=4)
    space = env.observation_space
    assert space["image_primary"].shape == (4, 16, 16, 3)
    assert space["image_primary"].dtype == np.uint8
    np.testing.assert_array_equal(space["image_primary"].high, np.full((4, 16, 16, 3), 255))
    assert space["proprio"].shape == (4, 8)
    assert space["timestep_pad_mask"].shape == (4,)
    assert space["timestep_pad_mask"].dtype == np.bool_


def test_history_reset_clears_previous_episode() -> None:
    env = History(FakeEnv(), window=2)
    env.reset(seed=0)
    env.step(np.zeros(7))
    env.step(np.zeros(7))
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["timestep_pad_mask"], [False, True])
    np.testing.assert_array_equal(obs["proprio"][:, 0], [0, 0])


@pytest.mark.parametrize("window", [0, -1, 2.0, True])
def test_history_rejects_bad_window_naming_value(window: Any) -> None:
    with pytest.raises(ValueError) as excinfo:
        History(FakeEnv(), window)
    assert repr(window) in str(excinfo.value)


# --------------------------------------------------------------------------- ActionChunk


def test_action_chunk_executes_first_exec_horizon_rows_in_order() -> None:
    inner = FakeEnv()
    env = ActionChunk(inner, exec_horizon=2)
    env.reset(seed=0)
    chunk = np.arange(28, dtype=np.float64).reshape(4, 7) / 100
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert len(inner.actions) == 2
    np.testing.assert_array_equal(inner.actions[0], chunk[0])
    np.testing.assert_array_equal(inner.actions[1], chunk[1])
    assert reward == 3.0  # rewards 1 + 2
    assert info["chunk_steps"] == 2
    assert info["t"] == 2
    assert (terminated, truncated) == (False, False)
    np.testing.assert_array_equal(obs["proprio"], np.full(8, 2, np.float32))


def test_action_chunk_stops_early_when_episode_terminates() -> None:
    inner = FakeEnv(terminate_at=1)
    env = ActionChunk(inner, exec_horizon=3)
    env.reset(seed=0)
    chunk = chunk_of([0.1, 0.2, 0.3])
    obs, reward, terminated, _, info = env.step(chunk)
    assert terminated is True
    assert info["chunk_steps"] == 1
    assert reward == 1.0
    assert len(inner.actions) == 1
    np.testing.assert_array_equal(inner.actions[0], chunk[0])
    np.testing.assert_array_equal(obs["proprio"], np.full(8, 1, np.float32))


def test_action_chunk_action_space_is_exec_horizon_box_with_inner_bounds() -> None:
    env = ActionChunk(FakeEnv(), exec_horizon=2)
    assert isinstance(env.action_space, spaces.Box)
    assert env.action_space.shape == (2, 7)
    np.testing.assert_array_equal(env.action_space.low, -np.ones((2, 7), np.float32))
    np.testing.assert_array_equal(env.action_space.high, np.ones((2, 7), np.float32))


def test_action_chunk_accepts_1d_action_only_with_exec_horizon_1() -> None:
    inner = FakeEnv()
    env = ActionChunk(inner, exec_horizon=1)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.full(7, 0.5))
    assert info["chunk_steps"] == 1
    np.testing.assert_array_equal(inner.actions, [np.full(7, 0.5)])

    env2 = ActionChunk(FakeEnv(), exec_horizon=2)
    env2.reset(seed=0)
    with pytest.raises(ValueError) as excinfo:
        env2.step(np.full(7, 0.5))
    assert "(2, 7)" in str(excinfo.value)
    assert "(7,)" in str(excinfo.value)


@pytest.mark.parametrize(
    ("shape", "expected", "received"),
    [
        ((1, 7), "(2, 7)", "(1, 7)"),
        ((4, 6), "(2, 7)", "(4, 6)"),
        ((2, 7, 1), "(2, 7)", "(2, 7, 1)"),
    ],
)
def test_action_chunk_shape_error_names_expected_and_received(
    shape: tuple[int, ...], expected: str, received: str
) -> None:
    inner = FakeEnv()
    env = ActionChunk(inner, exec_horizon=2)
    env.reset(seed=0)
    with pytest.raises(ValueError) as excinfo:
        env.step(np.zeros(shape))
    assert expected in str(excinfo.value)
    assert received in str(excinfo.value)
    assert inner.actions == []


# --------------------------------------------------------------------------- TemporalEnsemble

# Chunk k (k = 1, 2, 3, ...) predicts 0.1 * k + 0.01 * r for its row r, so every executed
# value reveals which rows of which chunks were averaged.
CHUNKS = [chunk_of([0.1 * k + 0.01 * r for r in range(3)]) for k in range(1, 5)]


def test_temporal_ensemble_weights_oldest_first_hand_worked() -> None:
    inner = FakeEnv()
    env = TemporalEnsemble(inner, pred_horizon=3, exp_weight=0.5)
    env.reset(seed=0)
    for chunk in CHUNKS[:3]:
        env.step(chunk)
    # Step 3: the oldest chunk (k=1) gives its row 2 = 0.12, the middle (k=2) its row 1 = 0.21,
    # the newest (k=3) its row 0 = 0.30, weighted e^0, e^-0.5, e^-1 oldest first:
    #   e^-0.5 = 0.6065306597126334, e^-1 = 0.36787944117144233, sum = 1.9744101008840758
    #   (0.12 + 0.21 * 0.6065306597126334 + 0.30 * 0.36787944117144233) / 1.9744101008840758
    #   = 0.3577352708910857 / 1.9744101008840758 = 0.18118589989531741
    np.testing.assert_allclose(inner.actions[2], np.full(7, 0.18118589989531741), rtol=1e-12)
    # Steps 1 and 2 by the same rule: 0.10; (0.11 + 0.20 * e^-0.5) / (1 + e^-0.5).
    np.testing.assert_allclose(inner.actions[0], np.full(7, 0.1), rtol=1e-12)
    #   = (0.11 + 0.1213061319425267) / 1.6065306597126334 = 0.14397866019183309
    np.testing.assert_allclose(inner.actions[1], np.full(7, 0.14397866019183309), rtol=1e-12)


def test_temporal_ensemble_zero_exp_weight_is_plain_mean() -> None:
    inner = FakeEnv()
    env = TemporalEnsemble(inner, pred_horizon=3)
    env.reset(seed=0)
    for chunk in CHUNKS[:3]:
        env.step(chunk)
    # (0.12 + 0.21 + 0.30) / 3
    np.testing.assert_allclose(inner.actions[2], np.full(7, 0.21), rtol=1e-12)


def test_temporal_ensemble_drops_oldest_after_pred_horizon_plus_one_queries() -> None:
    inner = FakeEnv()
    env = TemporalEnsemble(inner, pred_horizon=3)
    env.reset(seed=0)
    for chunk in CHUNKS:
        env.step(chunk)
    # Query 4 averages chunks 2..4 only: (0.22 + 0.31 + 0.40) / 3; chunk 1 has fallen out.
    np.testing.assert_allclose(inner.actions[3], np.full(7, 0.31), rtol=1e-12)


def test_temporal_ensemble_executes_one_inner_step_per_call_and_clears_on_reset() -> None:
    inner = FakeEnv()
    env = TemporalEnsemble(inner, pred_horizon=3)
    env.reset(seed=0)
    env.step(CHUNKS[0])
    env.step(CHUNKS[1])
    assert len(inner.actions) == 2
    env.reset(seed=0)
    env.step(CHUNKS[2])
    # Only chunk 3's row 0 remains after the reset.
    np.testing.assert_allclose(inner.actions[0], np.full(7, 0.3), rtol=1e-12)


def test_temporal_ensemble_shape_error_names_expected_and_received() -> None:
    env = TemporalEnsemble(FakeEnv(), pred_horizon=3)
    env.reset(seed=0)
    assert env.action_space.shape == (3, 7)
    with pytest.raises(ValueError) as excinfo:
        env.step(np.zeros((2, 7)))
    assert "(3, 7)" in str(excinfo.value)
    assert "(2, 7)" in str(excinfo.value)


# --------------------------------------------------------------------------- composition


def test_wrappers_compose_with_honest_spaces() -> None:
    inner = FakeEnv()
    env = ActionChunk(History(ResizeImage(inner, 4), window=2), exec_horizon=2)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["image_primary"].shape == (2, 4, 4, 3)
    obs, reward, _, _, info = env.step(np.zeros((2, 7)))
    assert env.observation_space.contains(obs)
    assert info["chunk_steps"] == 2
    assert reward == 3.0
    np.testing.assert_array_equal(obs["proprio"][:, 0], [1, 2])
    np.testing.assert_array_equal(obs["timestep_pad_mask"], [True, True])


def test_resize_after_history_resizes_every_frame() -> None:
    env = ResizeImage(History(FakeEnv(), window=2), {"image_primary": (5, 7)})
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.zeros(7))
    assert obs["image_primary"].shape == (2, 5, 7, 3)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs["image_primary"][:, 0, 0, 0], [0, 1])


def test_a_worker_rotates_frames_before_resizing_and_records_videos_upright(monkeypatch) -> None:
    import evalharness.envs.libero as libero
    from evalharness.worker import EnvConfig, EpisodeEnv, FrameRecorder

    monkeypatch.setattr(libero, "LiberoEnv", lambda *args, **kwargs: FakeEnv())
    config = EnvConfig(
        suite="libero_spatial",
        camera_size=16,
        max_steps=5,
        num_steps_wait=0,
        wait_action=(0.0,) * 7,
        image_sizes={"image_primary": (8, 8)},
        image_orientation="raw",
    )
    worker_env = EpisodeEnv(config)
    worker_env._build(0)
    chain = [type(w) for w in _wrappers(worker_env.env)]
    assert chain[::-1][:3] == [FrameRecorder, ImageOrientation, ResizeImage]
    upright = EpisodeEnv(dataclasses.replace(config, image_orientation="upright"))
    upright._build(0)
    assert not any(isinstance(w, ImageOrientation) for w in _wrappers(upright.env))


def _wrappers(env: Any) -> list[Any]:
    out = []
    while isinstance(env, gym.Wrapper):
        out.append(env)
        env = env.env
    return out
