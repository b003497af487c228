"""Models ``benchmarks/policy_latency.py`` times for ``diffusion`` besides its example.

robomimic's default shape with random weights: two 84² cameras through ResNet18 +
SpatialSoftmax (crops 76²), UNet 256/512/1024, DDIM 100/10, ~92M parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from evalharness.policies.base import Policy

__all__ = ["latency_models", "resnet18_policy"]


def resnet18_policy(device: str = "cpu") -> Policy:
    """A randomly initialized ``DiffusionPolicy`` of robomimic's default (ResNet18) shape."""
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
    return DiffusionPolicy(loaded, device=device)


def latency_models(fixtures: Path, options: Mapping[str, str]) -> dict[str, Callable[[], Policy]]:
    """``{model name: make() -> Policy}`` on ``options``' ``device``."""
    device = options.get("device", "cpu")
    return {"resnet18 (random, default UNet)": lambda: resnet18_policy(device)}
