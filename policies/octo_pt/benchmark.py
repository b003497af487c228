"""Models ``benchmarks/policy_latency.py`` times for ``octo_pt`` besides its example.

octo-small-1.5's shape (the same network the JAX family's benchmark builds: E=384, 12 layers,
SmallStem16 on 256² + 128², T5-base-shaped encoder, diffusion head; ~137M parameters with T5),
randomly initialized in torch: latency does not depend on the weights' values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from evalharness.policies.base import Policy

__all__ = ["latency_models", "octo_small_policy"]


def octo_small_policy(fixtures: Path, device: str = "cpu", compile: bool = False) -> Policy:
    """A randomly initialized octo-small-1.5-shaped ``OctoPtPolicy`` (config, statistics and
    tokenizer taken from the tiny example checkpoint in ``fixtures``)."""
    from evalharness.policies.common.compat import CompatibilityReport
    from evalharness.policies.octo.examples import OctoSmallShape
    from evalharness.policies.octo_pt.checkpoint import LoadedOcto
    from evalharness.policies.octo_pt.model import build_octo_model
    from evalharness.policies.octo_pt.policy import OctoPtPolicy

    shape = OctoSmallShape.build(fixtures)
    model = build_octo_model(shape.config.model, shape.batch, shape.t5)
    loaded = LoadedOcto(
        model.eval(), shape.config, shape.raw, shape.batch, shape.fixture.dataset_statistics,
        CompatibilityReport([]), Path("random-octo-small"), "jax", 0, {"t5": shape.t5},
    )  # fmt: skip
    return OctoPtPolicy(
        loaded,
        statistics=shape.statistics,
        tokenizer=shape.tokenizer,
        device=device,
        compile=compile,
    )


def latency_models(fixtures: Path, options: Mapping[str, str]) -> dict[str, Callable[[], Policy]]:
    """``{model name: make() -> Policy}`` on ``options``' ``device`` and ``compile``."""
    device = options.get("device", "cpu")
    compile = options.get("compile", "false").lower() in ("1", "true", "yes", "on")
    return {"octo-small shape (random)": lambda: octo_small_policy(fixtures, device, compile)}
