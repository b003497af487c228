"""The batched runner: scheduling, determinism, crash safety and resume.

The end-to-end tests build real LIBERO envs in worker processes, so they use one task, a few
episodes of a few steps and 32 px renders.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rundirs import outcomes

from evalharness.policies import Policy, PolicySpec, load_policy
from evalharness.protocols import get_protocol
from evalharness.results import read_episodes, read_summary
from evalharness.runner import (
    RunConfig,
    RunError,
    Runner,
    env_config,
    parse_task_ids,
    policy_seed,
    schedule,
)

SMALL = get_protocol("openvla").with_overrides(
    episodes_per_task=3, max_steps=4, num_steps_wait=2, camera_size=32
)


class RecordingPolicy(Policy):
    """Random chunks from the episode seed; remembers a hash of every observation it saw."""

    def __init__(self) -> None:
        self.spec = PolicySpec(name="recording", window_size=2, action_horizon=3, exec_horizon=2)
        self.seen: dict[tuple[int, int], str] = {}
        self.batch_sizes: list[int] = []

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        seeds = np.asarray(tasks["episode_seed"]).tolist()
        self.batch_sizes.append(len(seeds))
        out = []
        for b, seed in enumerate(seeds):
            query = sum(1 for s, _ in self.seen if s == seed)
            digest = hashlib.sha256()
            for key in ("image_primary", "image_wrist", "proprio", "timestep_pad_mask"):
                digest.update(np.ascontiguousarray(obs[key][b]).tobytes())
            self.seen[(seed, query)] = digest.hexdigest()
            rng = np.random.default_rng([seed, query])
            out.append(rng.uniform(-1, 1, size=(3, 7)))
        return np.stack(out)


def _config(out: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        suite="libero_spatial",
        policy="recording",
        out_dir=out,
        protocol=SMALL,
        task_ids=(0,),
        num_envs=2,
        progress=False,
    )
    base.update(kw)
    return RunConfig(**base)


def test_task_list_parses_ids_and_ranges_in_order() -> None:
    assert parse_task_ids("0,3,5-7") == (0, 3, 5, 6, 7)
    assert parse_task_ids("2, 2,1") == (2, 1)
    with pytest.raises(ValueError, match="'x'"):
        parse_task_ids("1,x")
    with pytest.raises(ValueError, match="7-5"):
        parse_task_ids("7-5")


def test_schedule_uses_init_state_i_and_seed_plus_i_per_task(tmp_path: Path) -> None:
    protocol = get_protocol("lerobot").with_overrides(episodes_per_task=52, seed=7)
    episodes = schedule(_config(tmp_path, protocol=protocol, task_ids=(4, 1), video_episodes=2))
    assert len(episodes) == 104
    first = episodes[0]
    assert (first.task_id, first.episode_index, first.init_state_index, first.seed) == (4, 0, 0, 7)
    assert first.reset_arguments() == (7, {"init_state_index": 0})
    # 50 official init states: episode 51 wraps to init state 1 but keeps its own seed.
    e51 = episodes[51]
    assert (e51.task_id, e51.episode_index, e51.init_state_index, e51.seed) == (4, 51, 1, 58)
    assert episodes[52].task_id == 1 and episodes[52].seed == 7
    # Env seeds repeat across tasks; the policy's sampling streams must not.
    policy_seeds = {e.policy_seed for e in episodes}
    assert len(policy_seeds) == len(episodes)
    assert [e.record_video for e in episodes[:3]] == [True, True, False]


def test_schedule_of_a_task_stream_places_episode_i_at_place_i_of_its_tasks_stream(
    tmp_path: Path,
) -> None:
    protocol = get_protocol("openvla").with_overrides(episodes_per_task=52)
    episodes = schedule(_config(tmp_path, protocol=protocol, task_ids=(4, 1)))
    e51 = episodes[51]
    assert (e51.task_id, e51.init_state_index, e51.seed, e51.seeding) == (4, 1, 0, "task_stream")
    # No seed of its own: the env replays task 4's stream (seeded 0) to place 51.
    assert e51.reset_arguments() == (None, {"init_state_index": 1, "scene_stream": (0, 51)})
    assert episodes[52].reset_arguments() == (
        None,
        {"init_state_index": 0, "scene_stream": (0, 0)},
    )
    # Policy seeds still come from `seed` (7), one stream per episode.
    assert episodes[0].policy_seed == policy_seed(7, 4, 0)


def test_wrapper_stack_follows_the_policy_spec_and_flags(tmp_path: Path) -> None:
    policy = load_policy("random?action_horizon=4&exec_horizon=2")
    assert env_config(_config(tmp_path), policy).exec_horizon == 2
    assert env_config(_config(tmp_path, exec_horizon=3), policy).exec_horizon == 3
    ensemble = env_config(_config(tmp_path, temporal_ensemble_weight=0.5), policy)
    assert (ensemble.action_horizon, ensemble.temporal_ensemble_weight) == (4, 0.5)
    with pytest.raises(RunError, match="exceeds"):
        env_config(_config(tmp_path, exec_horizon=5), policy)


@pytest.mark.sim
@pytest.mark.slow
def test_same_seed_twice_gives_identical_episodes_and_observations(tmp_path: Path) -> None:
    first, second = RecordingPolicy(), RecordingPolicy()
    Runner(_config(tmp_path / "a", video_episodes=1), first).run()
    Runner(_config(tmp_path / "b", num_envs=1), second).run()

    pd.testing.assert_frame_equal(outcomes(tmp_path / "a"), outcomes(tmp_path / "b"))
    # Not just the same outcomes: every observation each episode saw is bit-identical,
    # whether it ran two envs in lockstep or one.
    assert first.seen == second.seen
    assert len(first.seen) == 3 * 2  # 3 episodes x ceil(4 steps / exec_horizon 2) queries
    assert max(first.batch_sizes) == 2 and max(second.batch_sizes) == 1
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["status"] == "finished" and run["env_steps"] == 3 * 4
    assert run["env_steps_per_s"] > 0 and run["versions"]["mujoco"] == "3.3.2"
    assert run["protocol"]["max_steps"]["libero_spatial"] == 4
    rows = outcomes(tmp_path / "a")
    assert rows["steps"].tolist() == [4, 4, 4]
    assert rows["init_state_index"].tolist() == [0, 1, 2]
    assert rows["failure_reason"].tolist() == ["step_limit"] * 3

    # --video 1: the first episode of the task, named by task, episode, outcome, instruction.
    videos = sorted((tmp_path / "a" / "videos" / "libero_spatial").glob("*.mp4"))
    assert [v.name for v in videos] == [
        "task00_ep000_failure_pick_up_the_black_bowl_between_the_plate_and_the_ramekin"
        "_and_place_it_on_the_plate.mp4"
    ]
    import imageio.v2 as imageio

    frames = imageio.mimread(videos[0])
    assert len(frames) == 1 + 4  # the reset observation and one frame per env step
    assert frames[0].shape == (32, 32, 3)


def test_existing_run_directory_is_not_overwritten_without_resume(tmp_path: Path) -> None:
    (tmp_path / "episodes.csv").write_text("x\n")
    with pytest.raises(RunError, match="--resume"):
        Runner(_config(tmp_path), RecordingPolicy()).run()


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "evalharness.cli", "run", "--suite", "libero_spatial",
        "--policy", "zero", "--tasks", "0", "--episodes-per-task", "4", "--max-steps", "12",
        "--num-steps-wait", "0", "--camera-size", "32", "--num-envs", "1", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.sim
@pytest.mark.slow
def test_sigkill_mid_run_leaves_whole_rows_and_resume_matches_uninterrupted_run(
    tmp_path: Path,
) -> None:
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(killed), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    csv = killed / "episodes.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and csv.read_text().count("\n") >= 2:  # header + one episode
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    text = csv.read_text()
    assert text.endswith("\n")
    done = read_episodes(csv)
    assert 1 <= len(done) < 4
    # A crash in the middle of a write leaves a cut line; resume must drop it, not choke.
    with csv.open("a") as f:
        f.write("libero_spatial,0,pick_up_the_black_bo")

    resumed = subprocess.run(_cli(killed, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference"
    plain = subprocess.run(_cli(reference), capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr

    pd.testing.assert_frame_equal(outcomes(killed), outcomes(reference))
    pd.testing.assert_frame_equal(
        read_summary(killed / "summary.csv"), read_summary(reference / "summary.csv")
    )
    assert len(read_episodes(killed / "episodes.csv")) == 4

    # Resuming the same directory with another policy would mix two runs: refused, naming it.
    other = [a if a != "zero" else "random" for a in _cli(killed, "--resume")]
    refused = subprocess.run(other, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "policy" in refused.stderr and "'zero'" in refused.stderr
