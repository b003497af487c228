"""act() latency of the diffusion policy adapter, per batch size.

Two models: the upstream `robomimic_dp_tiny` fixture (ShallowConv, UNet 16/32/64) and a
randomly initialized model with robomimic's default shape (two 84x84 cameras through
ResNet18 + SpatialSoftmax, UNet 256/512/1024, ~69M parameters). Both sample with DDIM, 10
steps, as configured. One act() returns a chunk of Ta = 8 actions per env, so
actions/s = batch * 8 / latency.

    python benchmarks/latency_diffusion.py [--device cpu] [--batch-sizes 1,8,32] [--repeats 3] [--threads N]

On a loaded CPU pass ``--threads 1``: torch's OpenMP workers spin-wait, and with more threads
than free cores one act() of the tiny model went from 0.08 s to 12.8 s here (load 16 on 2 cores).

`diffusion_latency()` returns the rows; `policy_latency.py` calls it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "robomimic_dp_tiny"


def _resnet18_policy(device: str) -> Any:
    from evalharness.policies.common.compat import CompatibilityReport
    from evalharness.policies.diffusion.checkpoint import LoadedCheckpoint, build_nets
    from evalharness.policies.diffusion.config import ActionKey, DiffusionPolicyConfig
    from evalharness.policies.diffusion.nets import UnetDims, VisualCoreSpec
    from evalharness.policies.diffusion.policy import DiffusionPolicy
    from evalharness.policies.diffusion.schedulers import SchedulerConfig

    camera = VisualCoreSpec((3, 84, 84), "ResNet18Conv", crop=(76, 76))
    config = DiffusionPolicyConfig(
        obs_shapes={"agentview_rgb": (3, 84, 84), "eye_in_hand_rgb": (3, 84, 84),
                    "gripper_states": (2,), "joint_states": (7,)},
        visual={"agentview_rgb": camera, "eye_in_hand_rgb": camera},
        unet=UnetDims(input_dim=7, global_cond_dim=274),
        scheduler=SchedulerConfig("ddim", 100, 10),
        action_keys=(ActionKey("actions", 7),),
    )  # fmt: skip
    loaded = LoadedCheckpoint(
        build_nets(config).eval(), config, CompatibilityReport([]), "nets", "random-resnet18", {}
    )
    return DiffusionPolicy(loaded, device=device, missing_obs="passthrough")


def _fixture_policy(device: str) -> Any:
    from evalharness.policies.diffusion.checkpoint import load_checkpoint
    from evalharness.policies.diffusion.policy import DiffusionPolicy

    return DiffusionPolicy(
        load_checkpoint(FIXTURE / "model.pth"), device=device, missing_obs="passthrough"
    )


def _batch(policy: Any, batch: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    rng = np.random.default_rng(0)
    to = policy.config.observation_horizon
    obs: dict[str, np.ndarray] = {}
    for key, shape in policy.config.obs_shapes.items():
        if key in policy.config.visual:
            obs[key] = rng.integers(
                0, 256, (batch, to, shape[1], shape[2], shape[0]), dtype=np.uint8
            )
        else:
            obs[key] = rng.standard_normal((batch, to, *shape)).astype(np.float32)
    tasks = {"language_instruction": ["bench"] * batch, "episode_seed": np.arange(batch)}
    return obs, tasks


def diffusion_latency(
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    repeats: int = 3,
    device: str = "cpu",
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Median act() wall time and actions/s per (model, batch size); `threads` sets torch's."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    models = {"resnet18 (random, default UNet)": _resnet18_policy}
    if (FIXTURE / "model.pth").exists():
        models = {"robomimic_dp_tiny fixture": _fixture_policy, **models}
    rows = []
    for name, make in models.items():
        policy = make(device)
        params = sum(p.numel() for p in policy.nets.parameters())
        for batch in batch_sizes:
            obs, tasks = _batch(policy, batch)
            policy.act(obs, tasks)  # warm-up
            times = []
            for _ in range(repeats):
                if policy.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                actions = policy.act(obs, tasks)
                if policy.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            latency = statistics.median(times)
            rows.append(
                {
                    "model": name,
                    "params_M": round(params / 1e6, 2),
                    "device": str(policy.device),
                    "batch": batch,
                    "act_ms": round(latency * 1e3, 1),
                    "actions_per_s": round(actions.shape[0] * actions.shape[1] / latency, 1),
                    "steps": len(policy.scheduler.timesteps),
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of `diffusion_latency` rows."""
    header = (
        f"{'model':34} {'params':>8} {'device':>6} {'threads':>7} {'batch':>5} "
        f"{'act() ms':>9} {'actions/s':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:34} {r['params_M']:>7}M {r['device']:>6} {r['threads']:>7} {r['batch']:>5} "
            f"{r['act_ms']:>9} {r['actions_per_s']:>10}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    print(format_rows(diffusion_latency(sizes, args.repeats, args.device, args.threads)))


if __name__ == "__main__":
    main()
