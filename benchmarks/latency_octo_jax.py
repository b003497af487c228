"""act() latency of the octo_jax adapter, per batch size.

Two models: the upstream `octo_tiny_lang` fixture (E=64, 2 layers, 64²/32² images) and a
randomly initialized model with octo-small-1.5's shape (E=384, 12 layers, 6 heads, SmallStem16
on 256² primary + 128² wrist, T5-base-shaped text encoder, diffusion head, window 2,
horizon 4; ~137M parameters incl. T5) — random weights, nothing downloaded. act() is measured
in steady state: compiled for the batch size, instruction embeddings cached (T5 runs once per
distinct instruction), so a call is image resize + one transformer pass + 20 diffusion steps.
actions/s = batch × action_horizon / latency.

    python benchmarks/latency_octo_jax.py [--batch-sizes 1,8,32] [--repeats 3] [--models tiny,small]

`octo_jax_latency()` returns the rows; `policy_latency.py` calls it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FIXTURE = FIXTURES / "octo_tiny_lang"
STATS = "libero_spatial_no_noops"


def _fixture_policy() -> Any:
    from evalharness.policies.octo_jax.policy import make_octo_jax_policy

    return make_octo_jax_policy(str(FIXTURE), stats=STATS)


def octo_small_config(base: dict[str, Any]) -> dict[str, Any]:
    """The fixture's config.json with octo-small-1.5's model sizes (upstream defaults)."""
    config = copy.deepcopy(base)
    model = config["model"]
    for tok in model["observation_tokenizers"].values():
        tok["kwargs"]["encoder"]["kwargs"] = {}  # SmallStem16 defaults: 32/96/192/384 → 512
    model["token_embedding_size"] = 384
    model["transformer_kwargs"].update(num_layers=12, mlp_dim=1536, num_attention_heads=6)
    model["heads"]["action"]["kwargs"].pop("hidden_dim", None)  # default 256
    return config


def _small_policy() -> Any:
    from evalharness.policies.common.compat import CompatibilityReport
    from evalharness.policies.common.normalization import select_statistics
    from evalharness.policies.octo.checkpoint import OctoCheckpoint, load_checkpoint
    from evalharness.policies.octo.config import OctoConfig
    from evalharness.policies.octo.inputs import OctoInputSpec
    from evalharness.policies.octo.text import T5EncoderConfig, TextTokenizer
    from evalharness.policies.octo_jax.loader import LoadedOcto, build_module, init_params
    from evalharness.policies.octo_jax.policy import OctoJaxPolicy

    fixture = load_checkpoint(FIXTURE)
    raw = octo_small_config(fixture.config)
    config = OctoConfig.from_checkpoint_config(raw)
    t5 = T5EncoderConfig(
        vocab_size=32128, d_model=768, d_kv=64, num_heads=12, d_ff=3072, num_layers=12
    )
    batch = {
        "observation": {
            "image_primary": np.zeros((1, 2, 256, 256, 3), np.uint8),
            "image_wrist": np.zeros((1, 2, 128, 128, 3), np.uint8),
            "timestep": np.zeros((1, 2), np.int32),
            "timestep_pad_mask": np.ones((1, 2), bool),
            "pad_mask_dict": {
                k: np.ones((1, 2), bool) for k in ("image_primary", "image_wrist", "timestep")
            },
        },
        "task": {
            "image_primary": np.zeros((1, 256, 256, 3), np.uint8),
            "image_wrist": np.zeros((1, 128, 128, 3), np.uint8),
            "timestep": np.zeros((1,), np.int32),
            "language_instruction": {
                "input_ids": np.zeros((1, 16), np.int32),
                "attention_mask": np.ones((1, 16), np.int32),
            },
            "pad_mask_dict": {
                k: np.ones((1,), bool)
                for k in ("image_primary", "image_wrist", "timestep", "language_instruction")
            },
        },
    }
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
    # T5-base's sentencepiece vocabulary is not available offline; the tiny fixture tokenizer's
    # ids are valid T5-base ids, and the encoder's cost does not depend on which ids they are.
    assert config.text_processor is not None
    tokenizer = TextTokenizer(FIXTURES / "tiny_t5", config.text_processor)
    stats = select_statistics(fixture.dataset_statistics, STATS)
    return OctoJaxPolicy(loaded, stats, tokenizer)


def _inputs(batch: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    rng = np.random.default_rng(0)
    obs = {
        # LIBERO renders at 256 px under the default (openvla) protocol.
        "image_primary": rng.integers(0, 256, (batch, 2, 256, 256, 3), dtype=np.uint8),
        "image_wrist": rng.integers(0, 256, (batch, 2, 256, 256, 3), dtype=np.uint8),
        "proprio": rng.standard_normal((batch, 2, 8)).astype(np.float32),
        "timestep_pad_mask": np.ones((batch, 2), dtype=bool),
    }
    tasks = {
        "language_instruction": ["pick up the black bowl and place it on the plate"] * batch,
        "episode_seed": np.arange(batch),
    }
    return obs, tasks


def octo_jax_latency(
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    repeats: int = 3,
    models: tuple[str, ...] = ("tiny", "small"),
) -> list[dict[str, Any]]:
    """Median steady-state act() wall time and actions/s per (model, batch size)."""
    import jax

    makers = {}
    if "tiny" in models and FIXTURE.is_dir():
        makers["octo_tiny_lang fixture"] = _fixture_policy
    if "small" in models and FIXTURE.is_dir():
        makers["octo-small shape (random)"] = _small_policy
    rows = []
    for name, make in makers.items():
        policy = make()
        params = sum(int(np.size(x)) for x in jax.tree.leaves(policy.loaded.params))
        for batch in batch_sizes:
            obs, tasks = _inputs(batch)
            start = time.perf_counter()
            policy.act(obs, tasks)  # compile for this batch size + encode the instruction
            first = time.perf_counter() - start
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                actions = policy.act(obs, tasks)
                times.append(time.perf_counter() - start)
            latency = statistics.median(times)
            rows.append(
                {
                    "family": "octo_jax",
                    "model": name,
                    "params_M": round(params / 1e6, 2),
                    "device": jax.default_backend(),
                    "batch": batch,
                    "first_call_s": round(first, 2),
                    "act_ms": round(latency * 1e3, 1),
                    "actions_per_s": round(actions.shape[0] * actions.shape[1] / latency, 1),
                    "steps": policy.loaded.config.model.action_head.diffusion_steps
                    if hasattr(policy.loaded.config.model.action_head, "diffusion_steps")
                    else 1,
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of `octo_jax_latency` rows."""
    header = (
        f"{'model':28} {'params':>8} {'device':>6} {'batch':>5} {'1st call s':>10} "
        f"{'act() ms':>9} {'actions/s':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:28} {r['params_M']:>7}M {r['device']:>6} {r['batch']:>5} "
            f"{r['first_call_s']:>10} {r['act_ms']:>9} {r['actions_per_s']:>10}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tiny,small")
    args = parser.parse_args()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    print(format_rows(octo_jax_latency(sizes, args.repeats, tuple(args.models.split(",")))))


if __name__ == "__main__":
    main()
