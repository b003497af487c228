"""Examples and benchmark shapes both Octo families share (``policies.examples``).

The example checkpoint is Octo's tiny test model written by upstream octo-models/octo
(``octo_tiny_lang``: SmallStem16 on 64² + 32², a 2-layer transformer, T5 language, diffusion
head of horizon 4), with its tokenizer in the sibling folder ``tiny_t5``.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.policies.examples import PolicyExample, standard_observations

__all__ = [
    "EXAMPLE_CAMERAS",
    "EXAMPLE_CHECKPOINT",
    "EXAMPLE_STATS",
    "OCTO_SMALL_T5",
    "OctoSmallShape",
    "example_batch",
    "horizon_edited_copy",
    "octo_example",
    "octo_small_config",
]

#: the tiny upstream checkpoint's folder and tokenizer folder, inside the fixtures folder.
EXAMPLE_CHECKPOINT = "octo_tiny_lang"
EXAMPLE_TOKENIZER = "tiny_t5"
#: the dataset whose statistics un-normalize its actions.
EXAMPLE_STATS = "libero_spatial_no_noops"
#: the cameras it was trained on: frames at these sizes need no resizing in ``act()``.
EXAMPLE_CAMERAS = {"image_primary": (64, 64), "image_wrist": (32, 32)}
#: octo-small-1.5's text encoder: T5-base's encoder shape.
OCTO_SMALL_T5: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "num_heads": 12,
    "d_ff": 3072,
    "num_layers": 12,
}


def horizon_edited_copy(source: Path, target: Path, action_horizon: int = 2) -> Path:
    """``target``: the checkpoint at ``source`` under a config whose action head predicts
    ``action_horizon`` steps, so its head's weights no longer fit (a non-strict load).
    Everything but ``config.json`` is linked, not copied."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "config.json" and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry.resolve())
    config = json.loads((source / "config.json").read_text())
    config["model"]["heads"]["action"]["kwargs"]["action_horizon"] = action_horizon
    (target / "config.json").write_text(json.dumps(config))
    return target


def octo_example(family: str, fixtures: Path, options: str = "") -> PolicyExample:
    """``family`` (an Octo family) on the tiny upstream checkpoint."""
    checkpoint = fixtures / EXAMPLE_CHECKPOINT
    tokenizer = fixtures / EXAMPLE_TOKENIZER
    query = f"stats={EXAMPLE_STATS}" + (f"&{options}" if options else "")

    def non_strict(tmp: Path) -> str:
        edited = horizon_edited_copy(checkpoint, tmp / "octo_horizon_2")
        return f"{family}:{edited}?{query}&strict=false&tokenizer={tokenizer}"

    return PolicyExample(
        f"{family}:{checkpoint}?{query}",
        model=f"{EXAMPLE_CHECKPOINT} (upstream test checkpoint)",
        files=(checkpoint / "config.json", tokenizer / "tokenizer.json"),
        observations=functools.partial(standard_observations, camera_sizes=EXAMPLE_CAMERAS),
        non_strict=non_strict,
        finetune=f"{family}:{checkpoint}",
    )


def octo_small_config(base: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint config ``base`` with octo-small-1.5's model sizes (upstream defaults):
    SmallStem16 trunks, 384-wide tokens, 12 layers of 6 heads, a 256-wide diffusion head."""
    config = copy.deepcopy(base)
    model = config["model"]
    for tok in model["observation_tokenizers"].values():
        tok["kwargs"]["encoder"]["kwargs"] = {}  # SmallStem16 defaults: 32/96/192/384 → 512
    model["token_embedding_size"] = 384
    model["transformer_kwargs"].update(num_layers=12, mlp_dim=1536, num_attention_heads=6)
    model["heads"]["action"]["kwargs"].pop("hidden_dim", None)  # default 256
    return config


@dataclass(frozen=True)
class OctoSmallShape:
    """What both families' latency benchmarks build an octo-small-1.5-shaped model from: the
    tiny example checkpoint's config resized (`octo_small_config`), T5-base's encoder shape, a
    256² + 128² example batch, and the tiny checkpoint's tokenizer and statistics.

    T5-base's sentencepiece vocabulary is not available offline; the tiny tokenizer's ids are
    valid T5-base ids, and the encoder's cost does not depend on which ids they are.
    """

    fixture: Any  # the example checkpoint (`policies.octo.checkpoint.OctoCheckpoint`)
    raw: dict[str, Any]  # the octo-small checkpoint config
    config: Any  # `policies.octo.config.OctoConfig` of ``raw``
    t5: Any  # `policies.octo.text.T5EncoderConfig`, T5-base-shaped
    batch: dict[str, Any]  # the example batch the model is built for
    tokenizer: Any  # `policies.octo.text.TextTokenizer`
    statistics: Any  # the example's action/proprio statistics

    @classmethod
    def build(cls, fixtures: Path) -> OctoSmallShape:
        """The shape, from the example checkpoint in ``fixtures``."""
        from evalharness.policies.common.normalization import select_statistics
        from evalharness.policies.octo.checkpoint import load_checkpoint
        from evalharness.policies.octo.config import OctoConfig
        from evalharness.policies.octo.text import T5EncoderConfig, TextTokenizer

        fixture = load_checkpoint(fixtures / EXAMPLE_CHECKPOINT)
        raw = octo_small_config(fixture.config)
        config = OctoConfig.from_checkpoint_config(raw)
        assert config.text_processor is not None
        return cls(
            fixture=fixture,
            raw=raw,
            config=config,
            t5=T5EncoderConfig(**OCTO_SMALL_T5),
            batch=example_batch(),
            tokenizer=TextTokenizer(fixtures / EXAMPLE_TOKENIZER, config.text_processor),
            statistics=select_statistics(fixture.dataset_statistics, EXAMPLE_STATS),
        )


def example_batch(window: int = 2, primary: int = 256, wrist: int = 128) -> dict[str, Any]:
    """An ``example_batch`` in upstream's layout for octo-small-1.5's inputs (256² primary,
    128² wrist, 16 instruction tokens), from which the model's input shapes are read."""
    keys = ("image_primary", "image_wrist", "timestep")
    return {
        "observation": {
            "image_primary": np.zeros((1, window, primary, primary, 3), np.uint8),
            "image_wrist": np.zeros((1, window, wrist, wrist, 3), np.uint8),
            "timestep": np.zeros((1, window), np.int32),
            "timestep_pad_mask": np.ones((1, window), bool),
            "pad_mask_dict": {k: np.ones((1, window), bool) for k in keys},
        },
        "task": {
            "image_primary": np.zeros((1, primary, primary, 3), np.uint8),
            "image_wrist": np.zeros((1, wrist, wrist, 3), np.uint8),
            "timestep": np.zeros((1,), np.int32),
            "language_instruction": {
                "input_ids": np.zeros((1, 16), np.int32),
                "attention_mask": np.ones((1, 16), np.int32),
            },
            "pad_mask_dict": {k: np.ones((1,), bool) for k in (*keys, "language_instruction")},
        },
    }
