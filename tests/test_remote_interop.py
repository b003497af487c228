"""Interop with the peers' own code, not with our reading of it.

- openpi: ``openpi-client``'s ``WebsocketClientPolicy`` (PyPI ``openpi-client==0.1.2``)
  against `evalharness serve`. It pins ``numpy<2``, so it runs in an environment of its own
  that this test creates once and caches under ``~/.cache/evalharness/peer-envs/``
  (``EVALHARNESS_PEER_ENVS`` moves it); creating it needs PyPI.
- vla-eval: a model server built on the ``vla-eval`` package's own ``PredictModelServer`` and
  ``serve_async``, serving a small linear model, evaluated through ``protocol=vlaeval``
  (vla-eval shares the project environment: it is in the dev extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalharness.policies import load_policy
from evalharness.policies.base import Policy, PolicySpec
from evalharness.serve import PolicyServer, ServeConfig

REPO = Path(__file__).resolve().parents[1]
OPENPI_CLIENT = "openpi-client==0.1.2"
PEER_ENVS = Path(
    os.environ.get("EVALHARNESS_PEER_ENVS", Path.home() / ".cache" / "evalharness" / "peer-envs")
)


class EchoPolicy(Policy):
    """Chunks that say what the policy saw: (mean of the primary image, sum of the newest
    proprio, length of the instruction, image height, episode_start) in every action."""

    def __init__(self) -> None:
        self.spec = PolicySpec(
            name="echo", action_horizon=4, exec_horizon=2, image_sizes={"image_primary": (32, 32)}
        )
        self.pad_batch = False

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Sequence[Any] | np.ndarray]):
        out = np.zeros((len(tasks["language_instruction"]), 4, 7))
        for i, text in enumerate(tasks["language_instruction"]):
            image = obs["image_primary"][i, -1]
            out[i, :, 0] = image.mean()
            out[i, :, 1] = obs["proprio"][i, -1].sum()
            out[i, :, 2] = len(text)
            out[i, :, 3] = image.shape[0]
            out[i, :, 4] = float(tasks["episode_start"][i])
        return out


# -- openpi-client ---------------------------------------------------------------------------

CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
from openpi_client import websocket_client_policy

port, key = int(sys.argv[1]), (sys.argv[2] or None)
try:
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key=key)
except Exception as exc:
    print(json.dumps({"refused": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
obs = {
    "observation/image": np.full((224, 224, 3), 100, dtype=np.uint8),
    "observation/wrist_image": np.zeros((224, 224, 3), dtype=np.uint8),
    "observation/state": np.arange(8, dtype=np.float64),
    "prompt": "put the bowl on the plate",
}
first = client.infer(obs)["actions"]
second = client.infer(obs)["actions"]
print(json.dumps({
    "metadata": sorted(client.get_server_metadata()),
    "action_horizon": client.get_server_metadata()["action_horizon"],
    "numpy": np.__version__,
    "first": first.tolist(),
    "second_start": float(second[0, 4]),
}))
"""


def openpi_client_python() -> Path:
    """The Python of a cached venv holding openpi-client (made on first use)."""
    env = PEER_ENVS / OPENPI_CLIENT.replace("==", "-")
    python = env / "bin" / "python"
    ready = env / "ready"
    if ready.exists():
        return python
    env.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    # openpi-client imports typing_extensions without declaring it.
    install = [str(python), "-m", "pip", "install", "--quiet", OPENPI_CLIENT, "numpy<2"]
    result = subprocess.run(
        [*install, "typing_extensions"], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        pytest.skip(f"cannot install {OPENPI_CLIENT} into {env} (needs PyPI): {result.stderr}")
    ready.write_text(OPENPI_CLIENT + "\n")
    return python


@pytest.fixture
def echo_server() -> Iterator[PolicyServer]:
    server = PolicyServer(ServeConfig(policy="echo", port=0, token="k3y"), EchoPolicy())
    server.start()
    yield server
    server.stop()


def _client(python: Path, port: int, key: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), "-c", CLIENT_SCRIPT, str(port), key],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_openpi_clients_own_websocket_client_policy_evaluates_a_served_policy(echo_server):
    python = openpi_client_python()
    out = _client(python, echo_server.port or 0, "k3y")
    assert out["numpy"].startswith("1.")  # its own environment, numpy < 2
    assert {"__evalharness__", "action_horizon", "policy"} <= set(out["metadata"])
    assert out["action_horizon"] == 4
    first = np.array(out["first"])
    assert first.shape == (4, 7)
    # Image resized 224 -> 32 for the policy (uniform, so its mean stays 100), state summed,
    # prompt length, and the first request of the connection starts an episode.
    assert first[0, :5].tolist() == [100.0, 28.0, 25.0, 32.0, 1.0]
    assert out["second_start"] == 0.0


@pytest.mark.slow
def test_openpi_clients_api_key_is_checked_against_the_token(echo_server):
    python = openpi_client_python()
    refused = _client(python, echo_server.port or 0, "wrong")
    assert "401" in refused["refused"]


# -- vla-eval --------------------------------------------------------------------------------


def _vla_eval_server(chunk: int | None) -> tuple[Any, int]:
    """A vla-eval PredictModelServer serving a linear model on a thread; (server, port)."""
    anyio = pytest.importorskip("anyio")
    pytest.importorskip("vla_eval")
    from vla_eval.model_servers.predict import PredictModelServer
    from vla_eval.model_servers.serve import serve_async

    class LinearModel(PredictModelServer):
        """actions[t] = W @ states + t/10, a chunk of 4; records the episode messages."""

        weights = np.linspace(-1, 1, 7 * 8).reshape(7, 8)

        def __init__(self) -> None:
            super().__init__(chunk_size=chunk)
            self.events: list[str] = []
            self.tasks: list[dict[str, Any]] = []

        async def on_episode_start(self, config: dict[str, Any], ctx: Any) -> None:
            self.events.append("start")
            self.tasks.append(config["task"])
            await super().on_episode_start(config, ctx)

        async def on_episode_end(self, result: dict[str, Any], ctx: Any) -> None:
            self.events.append("end")

        def predict(self, obs: dict[str, Any], ctx: Any) -> dict[str, Any]:
            self.events.append("obs")
            assert obs["images"]["agentview"].dtype == np.uint8
            state = np.asarray(obs["states"], dtype=np.float64)
            chunk_actions = self.weights @ state + np.arange(4)[:, None] / 10
            return {"actions": chunk_actions.astype(np.float32)}

    model = LinearModel()
    port: list[int] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port.append(await tg.start(serve_async, model, "127.0.0.1", 0))

    threading.Thread(target=lambda: anyio.run(main), daemon=True).start()
    deadline = time.monotonic() + 30
    while not port and time.monotonic() < deadline:
        time.sleep(0.02)
    assert port, "the vla-eval server did not start"
    return model, port[0]


def _libero_batch(states: np.ndarray, starts: Sequence[bool]) -> tuple[dict, dict]:
    n = len(states)
    obs = {
        "image_primary": np.full((n, 1, 16, 16, 3), 9, np.uint8),
        "image_wrist": np.zeros((n, 1, 16, 16, 3), np.uint8),
        "proprio": states[:, None].astype(np.float32),
    }
    tasks = {
        "language_instruction": ["open the drawer"] * n,
        "episode_seed": np.arange(100, 100 + n),
        "episode_start": np.array(starts),
    }
    return obs, tasks


def test_a_vla_eval_model_server_is_evaluated_through_protocol_vlaeval():
    model, port = _vla_eval_server(chunk=None)
    remote = load_policy(f"remote:ws://127.0.0.1:{port}?protocol=vlaeval&action_horizon=4")
    assert remote.identity["server"]["model_server"] == "LinearModel"
    assert (remote.spec.action_horizon, remote.spec.exec_horizon) == (4, 4)
    states = np.arange(16, dtype=np.float32).reshape(2, 8) / 10
    actions = remote.act(*_libero_batch(states, [True, True]))
    expected = np.stack([model.weights @ s + np.arange(4)[:, None] / 10 for s in states])
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
    assert model.events.count("start") == 2 and model.events.count("obs") == 2
    assert model.tasks[0]["name"] == "open the drawer"
    remote.act(*_libero_batch(states[:1], [False]))  # episode 101 ended: absent from the batch
    assert model.events.count("end") == 1
    remote.close()


def test_a_vla_eval_server_that_buffers_chunks_is_queried_every_step():
    model, port = _vla_eval_server(chunk=4)
    remote = load_policy(f"remote:ws://127.0.0.1:{port}?protocol=vlaeval")
    assert (remote.spec.action_horizon, remote.spec.exec_horizon) == (1, 1)
    state = np.ones((1, 8), np.float32)
    got = [remote.act(*_libero_batch(state, [i == 0]))[0, 0] for i in range(3)]
    expected = [model.weights @ state[0] + t / 10 for t in range(3)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert model.events.count("obs") == 1  # the server served steps 2 and 3 from its buffer
    remote.close()


@pytest.mark.sim
@pytest.mark.slow
def test_evalharness_run_evaluates_a_vla_eval_server_in_the_simulator(tmp_path):
    model, port = _vla_eval_server(chunk=None)
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evalharness",
            "run",
            "--suite",
            "libero_spatial",
            "--policy",
            f"remote:ws://127.0.0.1:{port}?protocol=vlaeval&action_horizon=4",
            "--tasks",
            "0",
            "--episodes-per-task",
            "1",
            "--max-steps",
            "8",
            "--num-steps-wait",
            "2",
            "--camera-size",
            "64",
            "--num-envs",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["policy_identity"]["server"]["model_server"] == "LinearModel"
    episodes = (out / "episodes.csv").read_text().splitlines()
    assert len(episodes) == 2  # header and one episode
    # 8 steps in chunks of 4: two observations, between one episode start and its end.
    assert model.events == ["start", "obs", "obs", "end"]
