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
  step takes here (measured first, in-process, with one env per worker), at `--workers` (2)
  worker processes: lockstep with one env each, pipelined with two envs each (one per
  pipeline group), and lockstep with twice the workers (as many envs as the pipelined run).

Pipelining overlaps one group's stepping with the other group's inference, but each env still
waits for its own actions: with one env per worker, two groups of one worker each leave every
process idle half the time. With two envs per worker, each process steps its group-A env
while group B's actions are computed and its group-B env while A's are: the cores stay busy
during inference: ideally 2x lockstep at the same number of workers (the figure
`pipelined_2_workers_over_lockstep_2_workers`), and 1.5x lockstep with the same envs in twice
the processes, which take turns on the cores and then all wait for the server.

Measured on the shared 2-core development machine (docs/remote-policies.md, "Pipelined
rollouts", has the table): pipelined at 2 workers over lockstep at 2 workers 1.83x alone on
the machine (`--repeat 20 --steps 30`, load average 1.8-2.6); shared with a finetuning job,
1.69x and 1.36x (`--steps 15`, load 2.9-4.4 and 3.9-5.7) and 1.75x (`--steps 30`, load 3.9-5.9).

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


def _steps_per_s(
    policy: str, num_workers: int, episodes: int, steps: int, out: Path, **kw: Any
) -> float:
    from evalharness.api import evaluate

    result = evaluate(
        policy,
        "libero_spatial",
        tasks=[0],
        episodes_per_task=episodes,
        num_envs=num_workers,
        max_steps=steps,
        out=out,
        progress=False,
        episode_timeout=3600.0,  # a loaded machine is slow, not broken
        **kw,
    )
    return float(result.run["env_steps_per_s"])


def pipelining(steps: int, workers: int = 2) -> dict[str, Any]:
    """Env steps/s at `workers` worker processes, lockstep (one env each) and pipelined (two
    envs each, one per group), against a server as slow as an env step; and lockstep with
    as many envs as the pipelined run, one per process."""
    tmp = Path(tempfile.mkdtemp(prefix="remote-bench-"))
    local = _steps_per_s(NO_OP_POLICY, workers, workers, steps, tmp / "local")
    step_s = workers / local  # the workers step at once, one per core
    server = PolicyServer(ServeConfig(policy="slow", port=0), SlowPolicy(step_s))
    url = f"remote:ws://127.0.0.1:{server.start()}"
    w = workers
    figures: dict[str, Any] = {
        f"in_process_{w}_workers_steps_per_s": round(local, 3),
        "env_step_s": round(step_s, 4),
        "server_act_s": round(step_s, 4),
    }
    runs = {  # name: (worker processes, envs per worker, pipelined); one episode per env
        f"lockstep_{w}_workers": (w, 1, False),
        f"pipelined_{w}_workers_2_envs_each": (w, 2, True),
        f"lockstep_{2 * w}_workers": (2 * w, 1, False),
    }
    try:
        for name, (n, per_worker, pipeline) in runs.items():
            rate = _steps_per_s(
                url,
                n,
                n * per_worker,
                steps,
                tmp / name,
                pipeline=pipeline,
                envs_per_worker=per_worker,
            )
            figures[f"{name}_steps_per_s"] = round(rate, 3)
    finally:
        server.stop()
    pipelined = figures[f"pipelined_{w}_workers_2_envs_each_steps_per_s"]
    for name in (f"lockstep_{w}_workers", f"lockstep_{2 * w}_workers"):
        figures[f"pipelined_{w}_workers_over_{name}"] = round(
            pipelined / figures[f"{name}_steps_per_s"], 2
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--steps", type=int, default=60, help="episode length when pipelining")
    parser.add_argument("--workers", type=int, default=2, help="worker processes when pipelining")
    parser.add_argument("--skip-pipelining", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "serialization": serialization(args.repeat),
        "round_trip": round_trips(args.repeat),
    }
    if not args.skip_pipelining:
        figures["pipelining"] = pipelining(args.steps, args.workers)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
