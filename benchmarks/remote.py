"""What a remote policy costs on top of its model: encoding and round trips over localhost.

Two measurements, both against the no-op policy (``NO_OP_POLICY``) so that the model costs nothing:

- serialization: pack + unpack of one openpi request (two 256² uint8 frames, an 8-float
  state and a prompt) and of its reply (a 10×7 chunk), in the openpi flavour of the codec;
- round trip: `act()` of a `remote:` policy against an in-process `evalharness serve`, per
  protocol, for batches of 1 and 8 observations (openpi opens one connection per episode
  and sends the batch's requests concurrently; evalharness sends the batch at once).

    python benchmarks/remote.py              # 200 repetitions
    python benchmarks/remote.py --repeat 50

Pipelined rollouts (one half of the envs stepping while the other half's actions are
computed) are not implemented yet, so their speed-up is not measured here.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from evalharness.policies import load_policy
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    figures = {"serialization": serialization(args.repeat), "round_trip": round_trips(args.repeat)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
