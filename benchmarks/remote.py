"""What a remote policy costs on top of its model: encoding and round trips over localhost.

Three measurements, against the no-op policy (``NO_OP_POLICY``) so that the model costs nothing
(the third makes it cost as much as an env step):

- serialization: pack + unpack of one openpi request (two 256² uint8 frames, an 8-float
  state and a prompt) and of its reply (a 10×7 chunk), in the openpi flavour of the codec;
- round trip: `act()` of a `remote:` policy against an in-process `evalharness serve`, per
  protocol, for batches of 1 and 8 observations (openpi opens one connection per episode
  and sends the batch's requests concurrently; evalharness sends the batch at once).

- pipelining: env steps/s of `evaluate` (libero_spatial task 0, one episode per env, 128 px
  renders of both cameras) with a remote policy whose every `act()` sleeps as long as one env
  step takes here (measured first, in-process), lockstep and pipelined, at 2 and 4 envs.

Pipelining overlaps one group's stepping with the other group's inference. With as many envs
as cores, lockstep already steps every env at once, so two groups of half the envs give the
same rate (each env still waits for its own actions); the gain comes from running twice the
envs on the same cores: a group of N/2 steps while the other's actions are computed, so the
cores stay busy during inference (ideally 2x over lockstep with N/2 envs, 1.5x over lockstep
with N envs that take turns on the cores).

    python benchmarks/remote.py              # 200 repetitions, pipelining with 60-step episodes
    python benchmarks/remote.py --repeat 50 --steps 30
    python benchmarks/remote.py --skip-pipelining
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.policies import load_policy
from evalharness.policies.base import Policy
from evalharness.policies.registry import NO_OP_POLICY
from evalharness.policies.remote import codec
from evalharness.serve import PolicyServer, ServeConfig


def serialization(repeat: int) -> dict[str, float]:
    """Mean milliseconds to pack and unpack one request and one reply."""
    rng = np.random.default_rng(0)
    request = {
        "observation/image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8),
        "prompt": "pick up the black bowl and place it on the plate",
    }
    reply = {"actions": rng.normal(size=(10, 7))}
    out: dict[str, float] = {}
    for name, message in (("request", request), ("reply", reply)):
        data = codec.pack(message)
        start = time.perf_counter()
        for _ in range(repeat):
            codec.pack(message)
        packed = time.perf_counter()
        for _ in range(repeat):
            codec.unpack(data)
        done = time.perf_counter()
        out[f"{name}_bytes"] = len(data)
        out[f"{name}_pack_ms"] = 1000 * (packed - start) / repeat
        out[f"{name}_unpack_ms"] = 1000 * (done - packed) / repeat
    return out


def _batch(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(1)
    obs = {
        "image_primary": rng.integers(0, 256, (n, 1, 256, 256, 3), dtype=np.uint8),
        "image_wrist": rng.integers(0, 256, (n, 1, 256, 256, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(n, 1, 8)).astype(np.float32),
        "timestep_pad_mask": np.ones((n, 1), bool),
    }
    tasks = {
        "language_instruction": ["pick up the black bowl"] * n,
        "episode_seed": np.arange(n, dtype=np.int64),
        "episode_start": np.zeros(n, bool),
    }
    return obs, tasks


def round_trips(repeat: int) -> list[dict[str, Any]]:
    """Mean milliseconds per `act()` of a remote policy, per protocol and batch size."""
    policy = load_policy(f"{NO_OP_POLICY}?action_horizon=10&exec_horizon=5")
    server = PolicyServer(ServeConfig(policy=NO_OP_POLICY, port=0, max_batch=8), policy)
    url = f"ws://127.0.0.1:{server.start()}"
    rows = []
    try:
        for protocol, suffix in (
            ("evalharness", ""),
            ("openpi", "?protocol=openpi&action_horizon=10&image_size=0"),
        ):
            remote = load_policy(f"remote:{url}{suffix}")
            for n in (1, 8):
                obs, tasks = _batch(n)
                remote.act(obs, tasks)  # connections open, threads start
                start = time.perf_counter()
                for _ in range(repeat):
                    remote.act(obs, tasks)
                ms = 1000 * (time.perf_counter() - start) / repeat
                rows.append({"protocol": protocol, "batch": n, "act_ms": round(ms, 3)})
            remote.close()  # type: ignore[attr-defined]
    finally:
        server.stop()
    return rows


class SlowPolicy(Policy):
    """The no-op policy, each `act()` taking `delay` seconds (a model as slow as an env step)."""

    def __init__(self, delay: float) -> None:
        self.inner = load_policy(NO_OP_POLICY)
        self.spec, self.pad_batch, self.delay = self.inner.spec, False, delay

    def act(self, obs: Mapping[str, Any], tasks: Mapping[str, Sequence[Any] | np.ndarray]):
        time.sleep(self.delay)
        return self.inner.act(obs, tasks)


def _steps_per_s(policy: str, num_envs: int, steps: int, out: Path, **kw: Any) -> float:
    from evalharness.api import evaluate

    result = evaluate(
        policy,
        "libero_spatial",
        tasks=[0],
        episodes_per_task=num_envs,
        num_envs=num_envs,
        max_steps=steps,
        out=out,
        progress=False,
        episode_timeout=3600.0,  # a loaded machine is slow, not broken
        **kw,
    )
    return float(result.run["env_steps_per_s"])


def pipelining(steps: int) -> dict[str, Any]:
    """Env steps/s, lockstep and pipelined, against a server as slow as an env step."""
    tmp = Path(tempfile.mkdtemp(prefix="remote-bench-"))
    local = _steps_per_s(NO_OP_POLICY, 2, steps, tmp / "local")
    step_s = 2 / local  # two envs step at once on two cores
    server = PolicyServer(ServeConfig(policy="slow", port=0), SlowPolicy(step_s))
    url = f"remote:ws://127.0.0.1:{server.start()}"
    figures: dict[str, Any] = {
        "in_process_2_envs_steps_per_s": round(local, 2),
        "env_step_s": round(step_s, 4),
        "server_act_s": round(step_s, 4),
    }
    try:
        for n in (2, 4):
            for pipeline in (False, True):
                name = f"{'pipelined' if pipeline else 'lockstep'}_{n}_envs_steps_per_s"
                rate = _steps_per_s(url, n, steps, tmp / name, pipeline=pipeline)
                figures[name] = round(rate, 2)
    finally:
        server.stop()
    pipelined = figures["pipelined_4_envs_steps_per_s"]
    for n in (2, 4):
        lockstep = figures[f"lockstep_{n}_envs_steps_per_s"]
        figures[f"pipelined_4_over_lockstep_{n}"] = round(pipelined / lockstep, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--steps", type=int, default=60, help="episode length when pipelining")
    parser.add_argument("--skip-pipelining", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "serialization": serialization(args.repeat),
        "round_trip": round_trips(args.repeat),
    }
    if not args.skip_pipelining:
        figures["pipelining"] = pipelining(args.steps)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
