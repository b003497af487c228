"""Models ``benchmarks/policy_latency.py`` times for ``octo_jax`` besides its example.

octo-small-1.5's shape (E=384, 12 layers, 6 heads, SmallStem16 on 256² primary + 128² wrist,
T5-base-shaped text encoder, diffusion head, window 2, horizon 4; ~137M parameters with T5)
with random weights: nothing is downloaded, and latency does not depend on the weights' values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from evalharness.policies.base import Policy

__all__ = ["latency_models", "octo_small_policy"]


def octo_small_policy(fixtures: Path) -> Policy:
    """A randomly initialized octo-small-1.5-shaped ``OctoJaxPolicy`` (config, statistics and
    tokenizer taken from the tiny example checkpoint in ``fixtures``)."""
    from evalharness.policies.common.compat import CompatibilityReport
    from evalharness.policies.octo.checkpoint import OctoCheckpoint
    from evalharness.policies.octo.examples import OctoSmallShape
    from evalharness.policies.octo.inputs import OctoInputSpec
    from evalharness.policies.octo_jax.loader import LoadedOcto, build_module, init_params
    from evalharness.policies.octo_jax.policy import OctoJaxPolicy

    shape = OctoSmallShape.build(fixtures)
    module = build_module(shape.config, shape.t5)
    params = init_params(module, shape.batch, seed=0)
    ckpt = OctoCheckpoint(
        Path("random-octo-small"), 0, shape.raw, shape.batch, shape.fixture.dataset_statistics,
        params,
    )  # fmt: skip
    loaded = LoadedOcto(
        module,
        params,
        shape.config,
        OctoInputSpec.from_example_batch(shape.batch),
        ckpt,
        CompatibilityReport([]),
        shape.t5,
    )
    return OctoJaxPolicy(loaded, shape.statistics, shape.tokenizer)


def latency_models(fixtures: Path, options: Mapping[str, str]) -> dict[str, Callable[[], Policy]]:
    """``{model name: make() -> Policy}``; ``options`` (e.g. a device) do not apply here."""
    return {"octo-small shape (random)": lambda: octo_small_policy(fixtures)}
