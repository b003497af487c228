"""The ``octo_jax`` family: Octo in JAX/Flax, checkpoint-compatible with upstream Octo."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.policies.base import Policy
from evalharness.policies.examples import PolicyExample, replaced
from evalharness.policies.octo.examples import octo_example
from evalharness.policies.octo.options import OctoOptions
from evalharness.policies.registry import PolicyFamily

NAME = "octo_jax"


def cheap_network(policy: Policy) -> contextlib.AbstractContextManager[Any]:
    """Zeros instead of the jitted transformer + sampler; PRNG keys are still drawn per row."""
    head = policy.loaded.config.model.action_head  # type: ignore[attr-defined]

    def zeros(observation: Any, task: Any, key: Any) -> np.ndarray:
        batch = observation["timestep_pad_mask"].shape[0]
        return np.zeros((batch, head.action_horizon, head.action_dim), np.float32)

    return replaced(policy, "sample_normalized", zeros)


def example(fixtures: Path) -> PolicyExample:
    """The tiny upstream Octo checkpoint."""
    ex = octo_example(NAME, fixtures)
    # An L1 head (upstream's choice for a new action space): the tiny diffusion head's DDPM
    # chain overshoots to the ±5σ clip after thousands of CPU steps; L1 learns task 0 in 3000.
    recipe = (
        *("--mode", "full", "--steps", "3000", "--batch-size", "32", "--lr", "1e-3"),
        *("--option", "action_head=l1"),
    )
    return dataclasses.replace(ex, cheap_network=cheap_network, learning_recipe=recipe)


FAMILIES = (
    PolicyFamily(
        name=NAME,
        summary="Octo in JAX/Flax (upstream octo-models/octo checkpoints, exact sampling)",
        policy="evalharness.policies.octo_jax.policy:make_octo_jax_policy",
        options=OctoOptions,
        usage="octo_jax:hf://rail-berkeley/octo-small-1.5?stats=DATASET",
        trainer="evalharness.policies.octo_jax.train:from_pretrained",
        doctor="evalharness.policies.octo.doctor:describe_checkpoint",
        example=example,
        benchmarks="evalharness.policies.octo_jax.benchmark:latency_models",
        extra="jax",
        requires=("jax", "flax"),
    ),
)
