"""The `remote` family: wire encodings, key maps, options, and the client against a live
`evalharness serve` (in-process servers on free ports; the sim test starts the CLI)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from evalharness.policies import load_policy
from evalharness.policies.base import Policy, PolicySpec
from evalharness.policies.common.options import OptionError
from evalharness.policies.remote import codec
from evalharness.policies.remote.client import (
    EVALHARNESS_KEY,
    TOKEN_ENV,
    Endpoint,
    OpenpiSession,
    RemoteError,
    RemoteTimeout,
    open_connection,
)
from evalharness.policies.remote.keymap import (
    parse_key_map,
    resize_with_pad,
    wire_observation,
)
from evalharness.policies.remote.policy import RemoteOptions, check_url
from evalharness.serve import PolicyServer, ServeConfig

REPO = Path(__file__).resolve().parents[1]

# -- codec ---------------------------------------------------------------------------------


def test_openpi_flavour_writes_openpi_client_array_maps_with_binary_keys():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(codec.pack({"a": array, "n": np.int64(5)}), raw=False)
    assert raw["a"] == {
        b"__ndarray__": True,
        b"data": array.tobytes(),
        b"dtype": "<f4",
        b"shape": [2, 3],
    }
    assert raw["n"] == {b"__npgeneric__": True, b"data": 5, b"dtype": "<i8"}


def test_vlaeval_flavour_writes_string_keys_and_plain_scalars():
    array = np.array([[1, 2]], dtype=np.uint8)
    raw = msgpack.unpackb(codec.pack({"a": array, "x": np.float32(0.5)}, "vlaeval"), raw=False)
    assert raw == {
        "a": {"__ndarray__": True, "data": b"\x01\x02", "dtype": "|u1", "shape": [1, 2]},
        "x": 0.5,
    }


@pytest.mark.parametrize("flavour", ["openpi", "vlaeval"])
def test_unpack_restores_writable_arrays_from_either_flavour(flavour):
    message = {"img": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "ok": np.array([True])}
    back = codec.unpack(codec.pack(message, flavour))
    np.testing.assert_array_equal(back["img"], message["img"])
    assert back["img"].dtype == np.uint8 and back["img"].flags.writeable
    assert back["ok"].tolist() == [True]


@pytest.mark.parametrize(
    "value", [np.array([{"a": 1}], dtype=object), np.zeros(2, "V4"), np.zeros(2, np.complex64)]
)
def test_object_void_and_complex_arrays_are_refused_when_packing(value):
    with pytest.raises(codec.CodecError, match="refused"):
        codec.pack({"x": value})


@pytest.mark.parametrize("dtype", ["|O", "|V8", "<c8", "<U4"])
def test_forged_object_void_complex_and_string_dtypes_are_refused_when_unpacking(dtype):
    forged = msgpack.packb(
        {"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": dtype, b"shape": [1]}}
    )
    with pytest.raises(codec.CodecError, match=f"dtype '{dtype}'"):
        codec.unpack(forged)


def test_extension_types_malformed_arrays_and_oversize_messages_are_refused():
    with pytest.raises(codec.CodecError, match="extension type 3"):
        codec.unpack(msgpack.packb({"x": msgpack.ExtType(3, b"pickle")}))
    short = msgpack.packb(
        {"x": {"__ndarray__": True, "data": b"\0" * 3, "dtype": "<f4", "shape": [1]}}
    )
    with pytest.raises(codec.CodecError, match="needs 4 bytes, got 3"):
        codec.unpack(short)
    with pytest.raises(codec.CodecError, match="over the limit of 100 bytes"):
        codec.pack({"x": np.zeros(100)}, max_bytes=100)
    with pytest.raises(codec.CodecError, match="over the limit of 10 bytes"):
        codec.unpack(b"\0" * 11, max_bytes=10)


# -- key maps and image preparation -------------------------------------------------------


def test_key_maps_default_to_each_peers_libero_names_and_take_overrides():
    assert parse_key_map("openpi", None, "p") == {
        "image_primary": "observation/image",
        "image_wrist": "observation/wrist_image",
        "proprio": "observation/state",
        "language_instruction": "prompt",
    }
    keys = parse_key_map("vlaeval", "image_wrist:,proprio:controller_states", "p")
    assert keys == {
        "image_primary": "images.agentview",
        "proprio": "controller_states",
        "language_instruction": "task_description",
    }
    with pytest.raises(OptionError, match="STANDARD one of"):
        parse_key_map("openpi", "depth:observation/depth", "p")


def test_resize_with_pad_keeps_the_aspect_ratio_and_centres_on_zeros():
    image = np.full((2, 4, 3), 200, dtype=np.uint8)
    out = resize_with_pad(image, 4, 4)
    assert out.shape == (4, 4, 3)
    assert out[0].max() == 0 and out[3].max() == 0  # one zero row above and below
    assert (out[1:3] == 200).all()
    assert resize_with_pad(image, 2, 4) is image


def test_wire_observation_sends_the_newest_frame_under_nested_names():
    obs = {
        "image_primary": np.stack([np.zeros((2, 4, 4, 3)), np.ones((2, 4, 4, 3))], 1).astype(
            np.uint8
        ),
        "proprio": np.arange(2 * 2 * 8, dtype=np.float32).reshape(2, 2, 8),
    }
    keys = {"image_primary": "images.agentview", "proprio": "states", "language_instruction": "t"}
    wire = wire_observation(obs, 1, "go", keys, image_size=None)
    assert sorted(wire) == ["images", "states", "t"]
    assert wire["images"]["agentview"].shape == (4, 4, 3) and wire["images"]["agentview"].max() == 1
    assert wire["states"].dtype == np.float64
    assert wire["states"].tolist() == list(range(24, 32))
    assert wire["t"] == "go"


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"protocol": "grpc"}, "protocol='grpc' must be one of"),
        ({"timeout": "-1"}, "must be > 0 seconds"),
        ({"action_horizon": "4"}, "apply to protocol=openpi|vlaeval"),
        ({"protocol": "openpi", "keys": "depth:x"}, "STANDARD one of"),
        ({"colour": "red"}, "has no option"),
    ],
)
def test_bad_remote_options_are_named(options, message):
    with pytest.raises(OptionError, match=message):
        RemoteOptions.parse(options)


@pytest.mark.parametrize(
    ("path", "message"), [(None, "needs the server's URL"), ("http://h:1", "not a WebSocket URL")]
)
def test_a_remote_string_needs_a_websocket_url(path, message):
    with pytest.raises(OptionError, match=message):
        check_url(path)


def test_openpi_defaults_follow_its_libero_client():
    options = RemoteOptions.parse({"protocol": "openpi"})
    assert options.resolved_image_size() == 224
    assert options.key_map()["image_primary"] == "observation/image"
    assert RemoteOptions.parse({"protocol": "vlaeval"}).resolved_image_size() is None


# -- against a live server ------------------------------------------------------------------


class CountingPolicy(Policy):
    """Actions that reveal what the policy saw: row i's chunk is filled with
    (episode_seed, queries so far for that seed, proprio[0] of the newest frame)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.spec = PolicySpec(name="counting", action_horizon=3, exec_horizon=2, window_size=2)
        self.pad_batch = False
        self.delay = delay
        self.calls: list[int] = []
        self.queries: dict[int, int] = {}

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Sequence[Any] | np.ndarray]):
        time.sleep(self.delay)
        seeds = np.asarray(tasks["episode_seed"]).tolist()
        self.calls.append(len(seeds))
        out = np.zeros((len(seeds), 3, 7))
        for i, (seed, start) in enumerate(zip(seeds, tasks["episode_start"], strict=True)):
            if start:
                self.queries[seed] = 0
            self.queries[seed] = self.queries.get(seed, 0) + 1
            out[i, :, 0] = seed
            out[i, :, 1] = self.queries[seed]
            out[i, :, 2] = obs["proprio"][i, -1, 0]
        return out


@pytest.fixture
def served() -> Iterator[Any]:
    """Start a server for a policy object; yields a function (policy, **config) -> url."""
    servers: list[PolicyServer] = []

    def start(policy: Policy, **config: Any) -> str:
        server = PolicyServer(ServeConfig(policy="counting", port=0, **config), policy)
        servers.append(server)
        return f"ws://127.0.0.1:{server.start()}"

    yield start
    for server in servers:
        server.stop()


def _batch(seeds: Sequence[int], starts: Sequence[bool], size: int = 8) -> tuple[dict, dict]:
    n = len(seeds)
    obs = {
        "image_primary": np.zeros((n, 2, size, size, 3), np.uint8),
        "image_wrist": np.zeros((n, 2, size, size, 3), np.uint8),
        "proprio": np.tile(np.arange(n, dtype=np.float32)[:, None, None], (1, 2, 8)),
        "timestep_pad_mask": np.ones((n, 2), bool),
    }
    tasks = {
        "language_instruction": [f"task {s}" for s in seeds],
        "episode_seed": np.array(seeds, np.int64),
        "episode_start": np.array(starts),
    }
    return obs, tasks


def test_the_batched_protocol_mirrors_the_served_spec_and_returns_its_actions(served):
    url = served(CountingPolicy())
    remote = load_policy(f"remote:{url}")
    assert (remote.spec.window_size, remote.spec.action_horizon, remote.spec.exec_horizon) == (
        2,
        3,
        2,
    )
    assert remote.identity["policy"] == "counting"
    assert remote.identity["spec"]["window_size"] == 2
    actions = remote.act(*_batch([11, 12], [True, True]))
    assert actions[:, 0, :3].tolist() == [[11, 1, 0], [12, 1, 1]]
    actions = remote.act(*_batch([11, 12], [False, True]))
    assert actions[:, 0, :3].tolist() == [[11, 2, 0], [12, 1, 1]]


def test_the_openpi_protocol_opens_one_connection_per_live_episode(served):
    policy = CountingPolicy()
    url = served(policy)
    remote = load_policy(f"remote:{url}?protocol=openpi&action_horizon=3&image_size=8")
    assert remote.identity["server"]["action_horizon"] == 3
    obs, tasks = _batch([5, 6, 7], [True] * 3, size=16)
    first = remote.act(obs, tasks)
    assert first.shape == (3, 3, 7)
    # The server gives openpi episodes seeds of its own; proprio arrives in its row.
    assert first[:, 0, 2].tolist() == [0, 1, 2]
    assert len(set(first[:, 0, 0].tolist())) == 3
    tasks["episode_start"][:] = False
    second = remote.act(obs, tasks)
    assert second[:, 0, 0].tolist() == first[:, 0, 0].tolist()
    assert second[:, 0, 1].tolist() == [2, 2, 2]


def test_openpi_control_messages_are_acknowledged_and_start_a_new_episode(served):
    url = served(CountingPolicy())
    session = OpenpiSession(Endpoint(url))
    assert session.metadata[EVALHARNESS_KEY]["policy"] == "counting"
    observation = {"observation/state": np.zeros(8), "prompt": "p"}
    observation["observation/image"] = np.zeros((8, 8, 3), np.uint8)
    assert session.control({"__ctrl__": "episode_start"}) == {"__ack__": "episode_start"}
    first = session.infer(observation)["actions"]
    assert first.shape == (3, 7) and first[0, 1] == 1
    assert session.infer(observation)["actions"][0, 1] == 2
    session.control({"__ctrl__": "episode_start"})
    again = session.infer(observation)["actions"]
    assert again[0, 1] == 1 and again[0, 0] != first[0, 0]


def test_concurrent_requests_share_one_act_up_to_max_batch(served):
    policy = CountingPolicy(delay=0.05)
    url = served(policy, max_batch=4, batch_wait_ms=50)
    remote = load_policy(f"remote:{url}?protocol=openpi&action_horizon=3&image_size=8")
    remote.act(*_batch(list(range(6)), [True] * 6))
    assert sum(policy.calls) == 6
    assert max(policy.calls) <= 4 and len(policy.calls) < 6


def test_health_answers_with_the_policy_name(served):
    url = served(CountingPolicy(), token="s3cret")
    with urllib.request.urlopen(url.replace("ws://", "http://") + "/health", timeout=10) as r:
        assert r.status == 200
        assert json.loads(r.read()) == {"status": "ok", "policy": "counting"}


def test_a_wrong_token_is_refused_and_the_right_one_accepted(served, monkeypatch):
    url = served(CountingPolicy(), token="s3cret")
    monkeypatch.setenv(TOKEN_ENV, "guess")
    with pytest.raises(RemoteError, match=r"HTTP 401.*wrong or missing token"):
        load_policy(f"remote:{url}?retries=0")
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    assert load_policy(f"remote:{url}?retries=0").spec.action_horizon == 3


def test_an_oversize_message_closes_the_connection_with_1009(served):
    url = served(CountingPolicy(), max_message_bytes=64 * 1024)
    remote = load_policy(f"remote:{url}")
    with pytest.raises(RemoteError, match=r"size limit.*1009"):
        remote.act(*_batch([1, 2], [True, True], size=128))


def test_an_object_dtype_payload_is_refused_and_the_connection_closed(served):
    url = served(CountingPolicy())
    conn = open_connection(Endpoint(url))
    conn.recv(timeout=10)  # metadata
    forged = {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}
    conn.send(msgpack.packb({"observation/state": forged}))
    reply = conn.recv(timeout=10)
    assert isinstance(reply, str) and "refused" in reply and "'|O'" in reply
    with pytest.raises(Exception) as closed:
        conn.recv(timeout=10)
    assert closed.value.rcvd.code == 1003


class SlowOnRow(CountingPolicy):
    """Sleeps `delay` s before answering a batch whose proprio[0] holds `slow_row`."""

    def __init__(self, slow_row: float, delay: float) -> None:
        super().__init__()
        self.slow_row, self.slow_delay = slow_row, delay

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Sequence[Any] | np.ndarray]):
        if self.slow_row in np.asarray(obs["proprio"])[:, -1, 0].tolist():
            time.sleep(self.slow_delay)
        return super().act(obs, tasks)


def test_a_reply_slower_than_the_timeout_raises_remote_timeout_from_the_session(served):
    url = served(CountingPolicy(delay=1.0))
    session = OpenpiSession(Endpoint(url, timeout=0.2))
    observation = {"observation/state": np.zeros(8), "prompt": "p"}
    observation["observation/image"] = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(RemoteTimeout, match=r"no reply .* within 0.2 s"):
        session.infer(observation)
    assert session.closed


def test_a_timed_out_batch_marks_its_episodes_policy_timeout_and_the_next_call_reconnects(served):
    url = served(SlowOnRow(slow_row=0.0, delay=1.0))
    remote = load_policy(f"remote:{url}?timeout=0.3")
    actions = remote.act(*_batch([11], [True]))
    assert actions.tolist() == np.zeros((1, 3, 7)).tolist()
    assert remote.failure_reason(11) == "policy_timeout"
    assert "no reply to a batch of observations within 0.3 s" in remote.failure_detail(11)
    time.sleep(0.8)  # the server finishes the slow act() before the next request
    obs, tasks = _batch([12], [True])
    obs["proprio"][:] = 5.0
    assert remote.act(obs, tasks)[0, 0, :3].tolist() == [12, 1, 5]
    assert (remote.failure_reason(12), remote.failure_detail(12)) == ("", "")
    remote.reset(1)
    assert remote.failure_reason(11) == ""


def test_an_openpi_request_that_times_out_marks_only_its_own_episode(served):
    url = served(SlowOnRow(slow_row=1.0, delay=1.0), max_batch=1)
    remote = load_policy(f"remote:{url}?protocol=openpi&action_horizon=3&image_size=8&timeout=0.5")
    actions = remote.act(*_batch([5, 6], [True, True]))
    assert actions[0, 0, 2] == 0 and actions[0, 0, 1] == 1
    assert actions[1].tolist() == np.zeros((3, 7)).tolist()
    assert [remote.failure_reason(s) for s in (5, 6)] == ["", "policy_timeout"]


def test_pipeline_lanes_are_connections_of_their_own_to_the_same_server(served):
    policy = CountingPolicy()
    url = served(policy)
    remote = load_policy(f"remote:{url}")
    assert remote.pipelines
    lanes = remote.pipeline_lanes(2)
    assert lanes[0] is remote and lanes[1] is not remote
    assert lanes[1].identity == remote.identity
    # Each lane's calls carry only its own group; the server keeps both groups' episodes.
    assert lanes[0].act(*_batch([1], [True]))[0, 0, :2].tolist() == [1, 1]
    assert lanes[1].act(*_batch([2], [True]))[0, 0, :2].tolist() == [2, 1]
    assert lanes[0].act(*_batch([1], [False]))[0, 0, :2].tolist() == [1, 2]
    lanes[1].close()


def test_an_unreachable_server_is_named_after_the_retries():
    sleeps: list[float] = []
    with pytest.raises(RemoteError, match=r"ws://127.0.0.1:9 after 3 attempts"):
        open_connection(Endpoint("ws://127.0.0.1:9", retries=2), sleep=sleeps.append)
    assert sleeps == [0.5, 1.0]


def test_a_plain_openpi_server_is_told_to_use_protocol_openpi():
    from websockets.sync.server import serve

    def handler(ws: Any) -> None:
        ws.send(codec.pack({"reset_pose": [0.0]}))
        with contextlib.suppress(Exception):
            ws.recv()

    with serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        with pytest.raises(RemoteError, match=r"speaks openpi without .*protocol=openpi"):
            load_policy(f"remote:{url}")
        remote = load_policy(f"remote:{url}?protocol=openpi")
        assert remote.identity == {"protocol": "openpi", "server": {"reset_pose": [0.0]}}
        server.shutdown()


# -- end to end in the simulator ---------------------------------------------------------------


def _start_cli_server(policy: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalharness", "serve", "--policy", policy, "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("serving "):
            url = line.split(" on ", 1)[1].split()[0]
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, url
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("evalharness serve did not start")


OUTCOME_COLUMNS = [
    "task_id",
    "episode_index",
    "seed",
    "success",
    "steps",
    "failure_reason",
    "scene_fingerprint",
]


def _outcomes(run_dir: Path) -> list[dict[str, Any]]:
    from evalharness.results import read_episodes

    df = read_episodes(run_dir / "episodes.csv").sort_values(["task_id", "episode_index"])
    return df[OUTCOME_COLUMNS].to_dict("records")


def _run(policy: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "evalharness",
            "run",
            "--suite",
            "libero_spatial",
            "--policy",
            policy,
            "--tasks",
            "0",
            "--episodes-per-task",
            "2",
            "--num-envs",
            "2",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ | {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        timeout=900,
    )


@pytest.mark.sim
@pytest.mark.slow
def test_scripted_served_remotely_gives_the_in_process_outcomes(tmp_path):
    local = _run("scripted", tmp_path / "local", "--episodes-per-task", "4")
    assert local.returncode == 0, local.stderr
    proc, url = _start_cli_server("scripted")
    try:
        remote = _run(f"remote:{url}", tmp_path / "remote", "--episodes-per-task", "4")
    finally:
        proc.kill()
        proc.wait()
    assert remote.returncode == 0, remote.stderr
    assert _outcomes(tmp_path / "remote") == _outcomes(tmp_path / "local")
    run = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert run["identity"]["policy_identity"]["policy"] == "scripted"
    assert run["config"]["checkpoint"] == f"scripted via {url}"
    # The remote run was pipelined on two workers of two envs each (one env of each worker
    # per group, a connection per group), the local one lockstep on two workers of one env:
    # the outcomes above, scenes included, are equal all the same.
    config = run["config"]
    assert (config["pipeline"], config["num_envs"], config["envs_per_worker"]) == (True, 2, 2)
    config = json.loads((tmp_path / "local" / "run.json").read_text())["config"]
    assert (config["pipeline"], config["num_envs"], config["envs_per_worker"]) == (False, 2, 1)


class SleepsOnOneEpisode(Policy):
    """The no-op policy, sleeping `delay` s on the first query of one episode seed."""

    def __init__(self, seed: int, delay: float) -> None:
        self.inner = load_policy("zero?action_horizon=4&exec_horizon=2")
        self.spec, self.pad_batch = self.inner.spec, False
        self.seed, self.delay = seed, delay

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Sequence[Any] | np.ndarray]):
        seeds = np.asarray(tasks["episode_seed"]).tolist()
        starts = dict(zip(seeds, tasks["episode_start"], strict=True))
        if starts.get(self.seed):
            time.sleep(self.delay)
        return self.inner.act(obs, tasks)


@pytest.mark.sim
@pytest.mark.slow
def test_a_timed_out_request_ends_its_episode_as_policy_timeout_and_the_run_goes_on(
    served, tmp_path
):
    from evalharness.api import evaluate
    from evalharness.protocols import get_protocol
    from evalharness.scheduling import policy_seed

    slow = policy_seed(get_protocol("openvla").seed, 0, 0)  # task 0, episode 0
    url = served(SleepsOnOneEpisode(slow, delay=3.0))
    result = evaluate(
        f"remote:{url}?timeout=2",
        "libero_spatial",
        tasks=[0],
        episodes_per_task=2,
        num_envs=2,
        max_steps=12,
        out=tmp_path / "run",
        progress=False,
    )
    rows = result.episodes.sort_values("episode_index")
    assert rows["failure_reason"].tolist() == ["policy_timeout", "step_limit"]
    assert rows["steps"].tolist() == [0, 12]
    summary = result.summary.iloc[0]
    assert (summary["episodes"], summary["excluded"]) == (1, 1)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["pipeline"] is True
