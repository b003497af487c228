"""The ``diffusion`` family: robomimic / DROID ``DiffusionPolicyUNet`` checkpoints, in torch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evalharness.policies.base import Policy
from evalharness.policies.diffusion.options import DiffusionOptions
from evalharness.policies.examples import PolicyExample, replaced
from evalharness.policies.registry import PolicyFamily

NAME = "diffusion"
#: robomimic's own train.py wrote this tiny checkpoint (ShallowConv cameras, UNet 16/32/64).
EXAMPLE_CHECKPOINT = Path("robomimic_dp_tiny") / "model.pth"


@contextlib.contextmanager
def cheap_network(policy: Policy) -> Iterator[None]:
    """The initial noise as the trajectory: no image processing, no encoder, no denoising
    steps, no gripper head; the noise is still drawn from each episode's generator."""

    def no_inputs(obs: Any, batch: int) -> dict[str, Any]:
        return {}

    def no_features(obs_t: Any) -> None:
        return None

    def noise_only(obs_t: Any, noise: Any, generators: Any = None, cond: Any = None) -> Any:
        return noise

    with (
        replaced(policy, "prepare", no_inputs),
        replaced(policy, "encode", no_features),
        replaced(policy, "sample", noise_only),
        replaced(policy, "gripper_head", None),
    ):
        yield


def example(fixtures: Path) -> PolicyExample:
    """The tiny robomimic checkpoint; ``joint_states`` come with the standard observation."""
    checkpoint = fixtures / EXAMPLE_CHECKPOINT

    def non_strict(tmp: Path) -> str:
        import torch

        saved = torch.load(checkpoint, weights_only=True)
        for which in ("nets", "ema"):
            del saved["model"][which]["policy.noise_pred_net.final_conv.1.bias"]
        path = tmp / "missing_bias.pth"
        torch.save(saved, path)
        return f"{NAME}:{path}?strict=false"

    return PolicyExample(
        f"{NAME}:{checkpoint}",
        model="robomimic_dp_tiny (written by robomimic)",
        files=(checkpoint,),
        non_strict=non_strict,
        finetune=f"{NAME}:{checkpoint}",
        # robomimic's keys (joint_states, gripper_states), raw frames, LIBERO's gripper
        finetune_data="libero_robomimic",
        # A model sized for LIBERO from scratch: the fixture's untrained 16-wide UNet and flat
        # default-initialized ShallowConv keypoints do not condition on what they see.
        learning_recipe=(
            *("--mode", "full", "--steps", "3000", "--batch-size", "32", "--lr", "1e-3"),
            *("--option", "init=fresh", "--option", "image_size=64", "--option", "temperature=0.1"),
            *("--option", "down_dims=64,128,256", "--option", "step_embed_dim=64"),
            *("--option", "gripper_head=true", "--option", "action_horizon=2"),
        ),
        cheap_network=cheap_network,
    )


FAMILIES = (
    PolicyFamily(
        name=NAME,
        summary="robomimic / DROID DiffusionPolicyUNet checkpoints (.pth), loaded without robomimic",
        policy="evalharness.policies.diffusion.policy:make_diffusion_policy",
        options=DiffusionOptions,
        usage="diffusion:/path/to/model.pth?device=cuda",
        trainer="evalharness.policies.diffusion.train:from_pretrained",
        doctor="evalharness.policies.diffusion.doctor:describe_checkpoint",
        example=example,
        benchmarks="evalharness.policies.diffusion.benchmark:latency_models",
        extra="torch",
        requires=("torch",),
    ),
)
