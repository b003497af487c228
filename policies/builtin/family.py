"""The built-in families, ``zero`` and ``random``: no checkpoint, no extra, no trainer."""

from __future__ import annotations

from pathlib import Path

from evalharness.policies.builtin.policy import BuiltinOptions, make_random, make_zero
from evalharness.policies.examples import PolicyExample
from evalharness.policies.registry import PolicyFamily


def zero_example(fixtures: Path) -> PolicyExample:
    """Chunks of 4, so the contract checks see a horizon above 1."""
    return PolicyExample("zero?action_horizon=4")


def random_example(fixtures: Path) -> PolicyExample:
    """Chunks of 4 from each episode's own generator."""
    return PolicyExample("random?action_horizon=4")


FAMILIES = (
    PolicyFamily(
        name="zero",
        summary="every action zero: the robot holds still (a floor for any task)",
        policy=make_zero,
        options=BuiltinOptions,
        usage="zero?action_horizon=4",
        example=zero_example,
    ),
    PolicyFamily(
        name="random",
        summary="uniform actions in [-1, 1] from each episode's own seed",
        policy=make_random,
        options=BuiltinOptions,
        usage="random?action_horizon=4&exec_horizon=2",
        example=random_example,
    ),
)
