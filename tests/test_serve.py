"""`evalharness serve`: openpi requests made into windowed batch rows, request batching,
safety settings, a served Octo equal to the in-process one, and a server that dies mid-run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalharness.batching import pad_batch, padded_size
from evalharness.cli import main
from evalharness.policies import load_policy
from evalharness.policies.base import EpisodeStreams, Policy, PolicySpec
from evalharness.policies.remote.client import Endpoint, OpenpiSession
from evalharness.serve import (
    Batcher,
    OpenpiEpisodes,
    PolicyServer,
    RequestError,
    ServeConfig,
    ServeError,
    exposure_warnings,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "octo_tiny_lang"


class Recorder(Policy):
    """Records each act()'s seeds; returns zeros."""

    def __init__(self, spec: PolicySpec | None = None) -> None:
        self.spec = spec or PolicySpec(name="recorder")
        self.pad_batch = False
        self.calls: list[list[int]] = []

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Sequence[Any] | np.ndarray]):
        self.calls.append(np.asarray(tasks["episode_seed"]).tolist())
        return np.zeros((len(self.calls[-1]), self.spec.action_horizon, 7))


# -- openpi requests -> windowed rows --------------------------------------------------------


def _openpi(state: float, prompt: str = "stack", size: int = 8) -> dict[str, Any]:
    image = np.zeros((size, size, 3), np.uint8)
    image[0, 0] = 255  # top-left marker
    return {"observation/image": image, "observation/state": np.full(8, state), "prompt": prompt}


def test_an_openpi_episode_gets_a_padded_history_window_and_a_seed_of_its_own():
    episodes = OpenpiEpisodes(Recorder(PolicySpec(name="w", window_size=2)))
    obs, tasks = episodes.request(_openpi(1.0))
    assert obs["timestep_pad_mask"].tolist() == [[False, True]]
    assert obs["proprio"][0, :, 0].tolist() == [1.0, 1.0]  # the start repeats the first frame
    assert tasks["episode_start"].tolist() == [True]
    seed = int(tasks["episode_seed"][0])
    obs, tasks = episodes.request(_openpi(2.0))
    assert obs["timestep_pad_mask"].tolist() == [[True, True]]
    assert obs["proprio"][0, :, 0].tolist() == [1.0, 2.0]
    assert (tasks["episode_start"].tolist(), int(tasks["episode_seed"][0])) == ([False], seed)
    # No control messages: a new prompt is a new episode.
    obs, tasks = episodes.request(_openpi(3.0, prompt="open"))
    assert obs["timestep_pad_mask"].tolist() == [[False, True]]
    assert tasks["episode_start"].tolist() == [True] and int(tasks["episode_seed"][0]) != seed


def test_openpi_frames_are_resized_and_turned_to_the_policys_orientation():
    spec = PolicySpec(name="r", image_sizes={"image_primary": (4, 4)}, image_orientation="raw")
    obs, _ = OpenpiEpisodes(Recorder(spec)).request(_openpi(0.0))
    image = obs["image_primary"][0, -1]
    assert image.shape == (4, 4, 3)
    assert image[-1, -1].max() > image[0, 0].max()  # the marker moved to the bottom right


def test_an_image_policy_without_observation_image_is_told_the_key():
    episodes = OpenpiEpisodes(Recorder())
    with pytest.raises(RequestError, match="send 'observation/image'"):
        episodes.request({"observation/state": np.zeros(8), "prompt": "x"})


# -- batching ------------------------------------------------------------------------------


def _request(seeds: Sequence[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    n = len(seeds)
    obs = {"proprio": np.zeros((n, 1, 8), np.float32)}
    tasks = {
        "language_instruction": ["x"] * n,
        "episode_seed": np.array(seeds, np.int64),
        "episode_start": np.ones(n, bool),
    }
    return obs, tasks


def test_the_batcher_gathers_requests_up_to_max_batch_and_never_splits_one():
    policy = Recorder()
    batcher = Batcher(policy, max_batch=4, wait_s=0.5)
    batcher.clients = 4  # as if four connections were open: requests wait for each other
    futures = [batcher.submit(*_request(s)) for s in ([1], [2, 3], [4, 5], [6, 7, 8, 9, 10])]
    results = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert [len(r) for r in results] == [1, 2, 2, 5]
    assert policy.calls == [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]


def test_a_lone_client_does_not_wait_for_company():
    policy = Recorder()
    batcher = Batcher(policy, max_batch=8, wait_s=30.0)
    batcher.clients = 1
    assert len(batcher.submit(*_request([1])).result(timeout=5)) == 1
    batcher.close()


def test_two_rows_of_one_episode_never_share_an_act():
    policy = Recorder()
    batcher = Batcher(policy, max_batch=8, wait_s=0.5)
    batcher.clients = 3
    futures = [batcher.submit(*_request(s)) for s in ([1, 2], [2, 3], [4])]
    for f in futures:
        f.result(timeout=10)
    batcher.close()
    assert policy.calls == [[1, 2], [2, 3, 4]]


class StreamCounter(Policy):
    """Counts each episode's queries in an `EpisodeStreams`, as stochastic families keep
    their per-episode generators."""

    def __init__(self) -> None:
        self.spec = PolicySpec(name="streams")
        self.pad_batch = False
        self.counters = EpisodeStreams(lambda seed: [0])

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Sequence[Any] | np.ndarray]):
        counts = self.counters.rows(tasks)
        for count in counts:
            count[0] += 1
        return np.array([[[c[0], 0, 0, 0, 0, 0, 0]] for c in counts], dtype=float)


def test_episode_state_of_other_clients_survives_a_call_that_leaves_them_out():
    policy = StreamCounter()
    server = PolicyServer(ServeConfig(policy="streams", port=0, max_batch=1), policy)
    url = f"ws://127.0.0.1:{server.start()}"
    try:
        a, b = OpenpiSession(Endpoint(url)), OpenpiSession(Endpoint(url))
        request = {"observation/image": np.zeros((4, 4, 3), np.uint8), "prompt": "p"}
        counts = [
            (session.infer(request)["actions"][0, 0], name)
            for _ in range(3)
            for name, session in (("a", a), ("b", b))
        ]
        # Every call holds one client's episode only; the other's counter goes on.
        assert counts == [(1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, "a"), (3, "b")]
        a.close()
        time.sleep(0.2)  # the server sees a's connection close: its episode is over
        assert b.infer(request)["actions"][0, 0] == 4
        assert len(policy.counters) == 1
    finally:
        server.stop()


# -- safety ----------------------------------------------------------------------------------


def test_exposed_hosts_are_warned_about_and_more_so_without_a_token():
    assert exposure_warnings(ServeConfig(policy="zero")) == []
    assert len(exposure_warnings(ServeConfig(policy="zero", host="0.0.0.0"))) == 2
    assert len(exposure_warnings(ServeConfig(policy="zero", host="0.0.0.0", token="t"))) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_batch": 0}, "--max-batch must be >= 1, got 0"),
        ({"port": 70000}, "--port must be in 0..65535"),
        ({"batch_wait_ms": -1.0}, "--batch-wait-ms must be >= 0"),
    ],
)
def test_bad_serve_settings_are_named(changes, message):
    with pytest.raises(ServeError, match=message):
        ServeConfig(policy="zero", **changes)


def test_the_serve_command_reports_a_bad_setting_in_one_line(capsys):
    assert main(["serve", "--policy", "zero", "--max-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-batch must be >= 1, got 0"


# -- a served Octo equals the in-process one -------------------------------------------------


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared fixtures not present")
def test_octo_jax_served_remotely_returns_the_in_process_actions_within_1e_6():
    pytest.importorskip("jax")
    text = f"octo_jax:{FIXTURE}?stats=libero_spatial_no_noops"
    # One instance serves both paths (loading Octo twice doubles the test's time); every
    # episode restarts its sample stream at episode_start, so the order does not matter.
    local = load_policy(text)
    server = PolicyServer(ServeConfig(policy=text, port=0), local)
    port = server.start()
    try:
        remote = load_policy(f"remote:ws://127.0.0.1:{port}")
        assert remote.spec.window_size == local.spec.window_size == 2
        assert remote.spec.image_sizes == local.spec.image_sizes
        rng = np.random.default_rng(0)
        obs = {
            "image_primary": rng.integers(0, 256, (3, 2, 64, 64, 3), dtype=np.uint8),
            "image_wrist": rng.integers(0, 256, (3, 2, 32, 32, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(3, 2, 8)).astype(np.float32),
            "timestep_pad_mask": np.array([[False, True]] * 3),
        }

        def tasks(query: int) -> dict[str, Any]:
            return {
                "language_instruction": ["open the top drawer", "put the bowl away", "stack"],
                "episode_seed": np.array([11, 12, 13], np.int64),
                "episode_start": np.array([query == 0] * 3),
            }

        # In-process as the runner calls it: padded to a fixed batch size.
        expected = [local.act(*pad_batch(obs, tasks(q), 3, padded_size(3)))[:3] for q in (0, 1)]
        got = [remote.act(obs, tasks(q)) for q in (0, 1)]
        assert not np.allclose(expected[0], expected[1])  # the second query samples anew
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    finally:
        server.stop()


# -- a server that dies mid-run ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(policy: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalharness", "serve", "--policy", policy, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("serving "), line + proc.stdout.read()
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


def _run(port: int, out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "evalharness", "run", "--suite", "libero_spatial"]
    command += ["--policy", f"remote:ws://127.0.0.1:{port}?retries=1", "--tasks", "0"]
    # One env: the episodes run one after the other, so the server dies between them.
    command += ["--episodes-per-task", "2", "--num-envs", "1", "--envs-per-worker", "1"]
    command += ["--no-progress"]
    return subprocess.Popen(
        [*command, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _rows(out: Path) -> int:
    csv = out / "episodes.csv"
    return max(0, len(csv.read_text().splitlines()) - 1) if csv.exists() else 0


@pytest.mark.sim
@pytest.mark.slow
def test_a_server_killed_mid_run_stops_it_cleanly_and_resume_finishes_after_restart(tmp_path):
    port, out = _free_port(), tmp_path / "run"
    server = _serve("scripted", port)
    run = _run(port, out)
    try:
        deadline = time.monotonic() + 300
        while _rows(out) < 1 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _rows(out) == 1, "the first episode did not finish"
        server.kill()
        server.wait()
        _, stderr = run.communicate(timeout=300)
    finally:
        server.kill()
        run.kill()
    assert run.returncode == 2, stderr
    assert f"ws://127.0.0.1:{port}" in stderr
    assert _rows(out) == 1
    assert json.loads((out / "run.json").read_text())["status"] == "failed"

    # Another model on the same port: the resume is refused before any env is built.
    other = _serve("zero", port)
    try:
        refused = _run(port, out, "--resume")
        _, stderr = refused.communicate(timeout=120)
    finally:
        other.kill()
        other.wait()
    assert refused.returncode == 2 and "policy_identity" in stderr

    server = _serve("scripted", port)
    try:
        resumed = _run(port, out, "--resume")
        _, stderr = resumed.communicate(timeout=300)
    finally:
        server.kill()
    assert resumed.returncode == 0, stderr
    assert _rows(out) == 2
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_the_serve_your_own_policy_example_serves_its_policy():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "serve_my_policy", REPO / "docs" / "examples" / "serve_my_policy.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = PolicyServer(ServeConfig(policy="my_policy", port=0), module.MyPolicy())
    try:
        remote = load_policy(f"remote:ws://127.0.0.1:{server.start()}")
        assert (remote.spec.action_horizon, remote.spec.exec_horizon) == (8, 4)
        assert remote.spec.image_sizes == {"image_primary": (128, 128), "image_wrist": (128, 128)}
        obs = {"image_primary": np.zeros((2, 1, 128, 128, 3), np.uint8)}
        tasks = {
            "language_instruction": ["a", "b"],
            "episode_seed": np.array([1, 2]),
            "episode_start": np.array([True, True]),
        }
        assert remote.act(obs, tasks)[..., -1].tolist() == [[-1.0] * 8] * 2
    finally:
        server.stop()
