"""The ``octo_pt`` family: the same Octo model in PyTorch, from JAX or torch checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from evalharness.policies.base import Policy
from evalharness.policies.examples import PolicyExample, replaced
from evalharness.policies.octo.examples import octo_example
from evalharness.policies.octo.options import OctoOptions
from evalharness.policies.registry import PolicyFamily

NAME = "octo_pt"


def cheap_network(policy: Policy) -> contextlib.AbstractContextManager[Any]:
    """Zeros instead of the transformer and the denoising loop; each row's noise is still
    drawn from its episode's generator before the network would run."""
    import torch

    head = policy.head  # type: ignore[attr-defined]

    def zeros(observations: Any, tasks: Any, **kwargs: Any) -> torch.Tensor:
        batch = observations["timestep_pad_mask"].shape[0]
        return torch.zeros((batch, head.action_horizon, head.action_dim))

    return replaced(policy.model, "sample_actions", zeros)  # type: ignore[attr-defined]


def example(fixtures: Path) -> PolicyExample:
    """The tiny upstream Octo checkpoint (a JAX checkpoint, converted at load)."""
    ex = octo_example(NAME, fixtures)
    return dataclasses.replace(ex, cheap_network=cheap_network)


FAMILIES = (
    PolicyFamily(
        name=NAME,
        summary="Octo in PyTorch (upstream JAX checkpoints or its own safetensors; no JAX)",
        policy="evalharness.policies.octo_pt.policy:make_octo_pt_policy",
        options=OctoOptions,
        usage="octo_pt:hf://rail-berkeley/octo-small-1.5?stats=DATASET&device=cuda",
        trainer="evalharness.policies.octo_pt.train:from_pretrained",
        doctor="evalharness.policies.octo.doctor:describe_checkpoint",
        example=example,
        benchmarks="evalharness.policies.octo_pt.benchmark:latency_models",
        extra="torch",
        requires=("torch", "safetensors"),
    ),
)
