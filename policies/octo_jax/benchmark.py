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
    from evalharness.policies.common.normalization import select_statistics
    from evalharness.policies.octo.checkpoint import OctoCheckpoint, load_checkpoint
    from evalharness.policies.octo.config import OctoConfig
    from evalharness.policies.octo.examples import (
        EXAMPLE_CHECKPOINT,
        EXAMPLE_STATS,
        EXAMPLE_TOKENIZER,
        OCTO_SMALL_T5,
        example_batch,
        octo_small_config,
    )
    from evalharness.policies.octo.inputs import OctoInputSpec
    from evalharness.policies.octo.text import T5EncoderConfig, TextTokenizer
    from evalharness.policies.octo_jax.loader import LoadedOcto, build_module, init_params
    from evalharness.policies.octo_jax.policy import OctoJaxPolicy

    fixture = load_checkpoint(fixtures / EXAMPLE_CHECKPOINT)
    raw = octo_small_config(fixture.config)
    config = OctoConfig.from_checkpoint_config(raw)
    t5 = T5EncoderConfig(**OCTO_SMALL_T5)
    batch = example_batch()
    module = build_module(config, t5)
    params = init_params(module, batch, seed=0)
    ckpt = OctoCheckpoint(
        Path("random-octo-small"), 0, raw, batch, fixture.dataset_statistics, params
    )
    loaded = LoadedOcto(
        module,
        params,
        config,
        OctoInputSpec.from_example_batch(batch),
        ckpt,
        CompatibilityReport([]),
        t5,
    )
    # T5-base's sentencepiece vocabulary is not available offline; the tiny tokenizer's ids are
    # valid T5-base ids, and the encoder's cost does not depend on which ids they are.
    assert config.text_processor is not None
    tokenizer = TextTokenizer(fixtures / EXAMPLE_TOKENIZER, config.text_processor)
    stats = select_statistics(fixture.dataset_statistics, EXAMPLE_STATS)
    return OctoJaxPolicy(loaded, stats, tokenizer)


def latency_models(fixtures: Path, options: Mapping[str, str]) -> dict[str, Callable[[], Policy]]:
    """``{model name: make() -> Policy}``; ``options`` (e.g. a device) do not apply here."""
    return {"octo-small shape (random)": lambda: octo_small_policy(fixtures)}
