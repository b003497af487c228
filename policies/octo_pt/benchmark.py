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
    from evalharness.policies.common.normalization import select_statistics
    from evalharness.policies.octo.checkpoint import load_checkpoint
    from evalharness.policies.octo.config import OctoConfig
    from evalharness.policies.octo.examples import (
        EXAMPLE_CHECKPOINT,
        EXAMPLE_STATS,
        EXAMPLE_TOKENIZER,
        OCTO_SMALL_T5,
        example_batch,
        octo_small_config,
    )
    from evalharness.policies.octo.text import T5EncoderConfig, TextTokenizer
    from evalharness.policies.octo_pt.checkpoint import LoadedOcto
    from evalharness.policies.octo_pt.model import build_octo_model
    from evalharness.policies.octo_pt.policy import OctoPtPolicy

    fixture = load_checkpoint(fixtures / EXAMPLE_CHECKPOINT)
    raw = octo_small_config(fixture.config)
    config = OctoConfig.from_checkpoint_config(raw)
    t5 = T5EncoderConfig(**OCTO_SMALL_T5)
    batch = example_batch()
    model = build_octo_model(config.model, batch, t5)
    loaded = LoadedOcto(
        model.eval(), config, raw, batch, fixture.dataset_statistics, CompatibilityReport([]),
        Path("random-octo-small"), "jax", 0, {"t5": t5},
    )  # fmt: skip
    assert config.text_processor is not None
    # Offline: the tiny tokenizer's ids are valid T5-base ids (cost does not depend on them).
    tokenizer = TextTokenizer(fixtures / EXAMPLE_TOKENIZER, config.text_processor)
    stats = select_statistics(fixture.dataset_statistics, EXAMPLE_STATS)
    return OctoPtPolicy(
        loaded, statistics=stats, tokenizer=tokenizer, device=device, compile=compile
    )


def latency_models(fixtures: Path, options: Mapping[str, str]) -> dict[str, Callable[[], Policy]]:
    """``{model name: make() -> Policy}`` on ``options``' ``device`` and ``compile``."""
    device = options.get("device", "cpu")
    compile = options.get("compile", "false").lower() in ("1", "true", "yes", "on")
    return {"octo-small shape (random)": lambda: octo_small_policy(fixtures, device, compile)}
