"""No wasted work: fixed batch sizes, render skipping that changes no frame a policy reads,
env reuse that equals a fresh build, and the rendering-backend probe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from evalharness import render_check
from evalharness.batching import PAD_SEED_BASE, pad_batch, padded_size
from evalharness.policies import Policy, PolicySpec
from evalharness.scheduling import act_batch


def test_batches_are_padded_to_a_few_fixed_sizes() -> None:
    assert [padded_size(b) for b in (1, 2, 3, 5, 8, 9, 33, 64)] == [1, 2, 4, 8, 8, 16, 64, 64]
    assert padded_size(65) == 128 and padded_size(130) == 192
    with pytest.raises(ValueError, match="batch must be >= 1"):
        padded_size(0)


def test_padded_rows_repeat_the_last_row_with_throwaway_seeds() -> None:
    obs = {"proprio": np.arange(6.0).reshape(3, 2), "privileged": np.array([{}, {}, {"a": 1}])}
    tasks = {
        "language_instruction": ["a", "b", "c"],
        "episode_seed": np.array([7, 8, 9]),
        "episode_start": np.array([False, True, False]),
    }
    padded_obs, padded_tasks = pad_batch(obs, tasks, 3, 4)
    assert padded_obs["proprio"].tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]]
    assert padded_obs["privileged"][3] == {"a": 1}
    assert padded_tasks["language_instruction"] == ["a", "b", "c", "c"]
    assert padded_tasks["episode_seed"].tolist() == [7, 8, 9, PAD_SEED_BASE]
    assert padded_tasks["episode_start"].tolist() == [False, True, False, True]
    assert obs["proprio"].shape == (3, 2)  # the caller's batch is untouched


class _BatchSizes(Policy):
    """Returns row i filled with episode_seed[i]; remembers the batch sizes it was called with."""

    def __init__(self, pad: bool = True) -> None:
        self.spec = PolicySpec(name="sizes", action_horizon=2)
        self.pad_batch = pad
        self.sizes: list[int] = []

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        seeds = np.asarray(tasks["episode_seed"], dtype=np.float64)
        self.sizes.append(len(seeds))
        return np.broadcast_to(seeds[:, None, None], (len(seeds), 2, 7)).copy()


@pytest.mark.parametrize("pad", [True, False])
def test_runner_calls_the_policy_with_padded_batches_and_keeps_the_real_rows(pad: bool) -> None:
    policy = _BatchSizes(pad)
    obs = {"proprio": np.zeros((3, 1, 8), np.float32)}
    tasks = {"episode_seed": np.array([5, 6, 7]), "language_instruction": ["x"] * 3}
    # The one batched call every executor makes (evalharness.scheduling).
    actions = act_batch(policy, obs, tasks, 3, "sizes")
    assert policy.sizes == [4 if pad else 3]
    assert actions.shape == (3, 2, 7) and actions[:, 0, 0].tolist() == [5, 6, 7]


def test_renderer_kind_reads_the_gl_renderer_string() -> None:
    kind = render_check.renderer_kind
    assert kind("llvmpipe (LLVM 15.0.6, 256 bits)", "Mesa/X.org") == "mesa-software"
    assert kind("NVIDIA H100 80GB HBM3/PCIe/SSE2", "NVIDIA Corporation") == "nvidia"
    assert kind("AMD Radeon Pro (radeonsi, navi21, LLVM 15)", "Mesa") == "mesa-gpu"


def test_each_worker_gets_an_egl_device_only_with_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.delenv("MUJOCO_EGL_DEVICE_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [render_check.egl_device_for(i, gpus=2) for i in range(4)] == [0, 1, 0, 1]
    assert render_check.egl_device_for(3, gpus=0) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # physical numbers, as robosuite reads
    assert [render_check.egl_device_for(i) for i in range(3)] == [2, 3, 2]
    monkeypatch.setenv("MUJOCO_EGL_DEVICE_ID", "1")  # the user's choice wins
    assert render_check.egl_device_for(0, gpus=2) is None


@pytest.mark.sim
def test_render_probe_names_the_renderer_and_times_a_frame() -> None:
    result = render_check.probe(camera_size=32)
    assert "error" not in result, result
    assert result["backend"] == "egl" and result["frame_ms"] > 0
    assert result["kind"] == render_check.renderer_kind(result["gl_renderer"], result["gl_vendor"])
    if result["nvidia_gpus"] == 0:  # this CI machine: Mesa's software rasterizer
        assert result["kind"] == "mesa-software" and "llvmpipe" in result["gl_renderer"]
    assert result["gl_renderer"] in render_check.describe(result)


def _rollout(
    schedule: tuple[int, int] | None, wait: int, steps: int
) -> tuple[list[dict[str, Any]], int]:
    """Observations of one seeded random-action episode, and how many frames were rendered."""
    from evalharness.envs.libero import LiberoEnv

    env = LiberoEnv("libero_spatial", 0, camera_size=32, max_steps=200, num_steps_wait=wait)
    sim = env.sim
    render = sim.render
    rendered = [0]

    def counting_render(*args: Any, **kwargs: Any) -> Any:
        rendered[0] += 1
        return render(*args, **kwargs)

    sim.render = counting_render
    if schedule is not None:
        env.set_render_schedule(*schedule)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=7, options={"init_state_index": 1})
    observations = [obs]
    for _ in range(steps):
        obs, *_ = env.step(rng.uniform(-0.5, 0.5, 7))
        observations.append(obs)
    env.close()
    return observations, rendered[0]


@pytest.mark.sim
@pytest.mark.parametrize(("exec_horizon", "window", "wait"), [(4, 1, 10), (3, 2, 1)])
def test_render_skipping_gives_the_same_frames_at_every_query_and_renders_less(
    exec_horizon: int, window: int, wait: int
) -> None:
    steps = 60  # past robosuite's camera clock drifting a whole control step (every 25)
    full, full_renders = _rollout(None, wait, steps)
    skipped, skipped_renders = _rollout((exec_horizon, window), wait, steps)
    read = 0
    for t, (a, b) in enumerate(zip(full, skipped, strict=True)):
        assert np.array_equal(a["proprio"], b["proprio"]), t  # rendering never touches physics
        if (-t) % exec_horizon < window:
            read += 1
            for key in ("image_primary", "image_wrist"):
                assert np.array_equal(a[key], b[key]), (t, key)
        else:
            assert "image_primary" not in b and "image_wrist" not in b
    assert read == sum(1 for t in range(steps + 1) if (-t) % exec_horizon < window)
    # Two cameras per rendered step; skipping renders a read step, now and then the step
    # before it (robosuite's camera clock), and never the warm-up steps.
    assert full_renders >= 2 * steps
    assert skipped_renders <= 2 * (read + steps // 20 + 2)


@pytest.mark.sim
def test_first_observation_after_set_init_state_on_a_reused_env_equals_a_fresh_env() -> None:
    from evalharness.envs.libero import LiberoEnv

    kw: dict[str, Any] = dict(camera_size=32, max_steps=50, num_steps_wait=3)
    reused = LiberoEnv("libero_spatial", 0, **kw)
    reused.reset(seed=1, options={"init_state_index": 0})
    rng = np.random.default_rng(0)
    for _ in range(5):
        reused.step(rng.uniform(-1, 1, 7))  # move the arm, close the gripper
    fresh = LiberoEnv("libero_spatial", 0, **kw)
    a, _ = reused.reset(seed=8, options={"init_state_index": 2})
    b, _ = fresh.reset(seed=8, options={"init_state_index": 2})
    for key in ("image_primary", "image_wrist", "proprio"):
        assert np.array_equal(a[key], b[key]), key
    action = np.array([0.3, -0.2, 0.1, 0.0, 0.0, 0.1, 1.0])
    a, *_ = reused.step(action)
    b, *_ = fresh.step(action)
    for key in ("image_primary", "image_wrist", "proprio"):
        assert np.array_equal(a[key], b[key]), key
    reused.close()
    fresh.close()
