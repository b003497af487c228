"""act() latency of the octo_pt adapter, per batch size — the same models as latency_octo_jax.py.

Models: the upstream ``octo_tiny_lang`` fixture, and octo-small-1.5's shape (E=384, 12 layers,
SmallStem16 on 256² + 128², T5-base-shaped encoder, diffusion head; ~137M parameters incl. T5).
Where JAX is installed the octo-small model gets the octo_jax benchmark's very parameters
(``init_params(seed=0)``, mapped JAX → torch), so the two families run the same network;
without JAX it is a torch random init of the same shape. Steady state: the instruction's T5
embedding is cached, so a call is image resize + one transformer pass + 20 diffusion steps.
actions/s = batch × action_horizon / latency. Device: CUDA when available (``--device``). On
CPU the row records torch's intra-op threads; ``OMP_NUM_THREADS=1`` (or ``--threads 1``) avoids
the oversubscription that slows small-op models severalfold on a busy machine.

    python benchmarks/latency_octo_pt.py [--batch-sizes 1,8,32] [--repeats 3] [--models tiny,small]

`octo_pt_latency()` returns the rows; `policy_latency.py` calls it beside octo_jax.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parents[0].parent / "shared" / "fixtures"
FIXTURE = FIXTURES / "octo_tiny_lang"
STATS = "libero_spatial_no_noops"


def _sibling(name: str) -> Any:
    """The octo_jax benchmark module (it imports only numpy at the top), for shared shapes."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fixture_policy(device: str, compile: bool) -> Any:
    from evalharness.policies.octo_pt.policy import make_octo_pt_policy

    return make_octo_pt_policy(
        str(FIXTURE), stats=STATS, device=device, compile=str(compile).lower()
    )


def _example_batch() -> dict[str, Any]:
    keys = ("image_primary", "image_wrist", "timestep")
    return {
        "observation": {
            "image_primary": np.zeros((1, 2, 256, 256, 3), np.uint8),
            "image_wrist": np.zeros((1, 2, 128, 128, 3), np.uint8),
            "timestep": np.zeros((1, 2), np.int32),
            "timestep_pad_mask": np.ones((1, 2), bool),
            "pad_mask_dict": {k: np.ones((1, 2), bool) for k in keys},
        },
        "task": {
            "image_primary": np.zeros((1, 256, 256, 3), np.uint8),
            "image_wrist": np.zeros((1, 128, 128, 3), np.uint8),
            "timestep": np.zeros((1,), np.int32),
            "language_instruction": {
                "input_ids": np.zeros((1, 16), np.int32),
                "attention_mask": np.ones((1, 16), np.int32),
            },
            "pad_mask_dict": {k: np.ones((1,), bool) for k in (*keys, "language_instruction")},
        },
    }


def _jax_params(config: Any, t5: Any, batch: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The octo_jax benchmark's random parameters, flattened, or None without JAX."""
    try:
        from evalharness.policies.octo_jax.loader import build_module, init_params
    except ImportError:
        return None
    from evalharness.policies.common.compat import flatten_tree

    return flatten_tree(init_params(build_module(config, t5), batch, seed=0))


def _small_policy(device: str, compile: bool) -> tuple[Any, str]:
    from evalharness.policies.common.compat import CompatibilityReport
    from evalharness.policies.common.normalization import select_statistics
    from evalharness.policies.octo.checkpoint import load_checkpoint
    from evalharness.policies.octo.config import OctoConfig
    from evalharness.policies.octo.text import T5EncoderConfig, TextTokenizer
    from evalharness.policies.octo_pt.checkpoint import LoadedOcto
    from evalharness.policies.octo_pt.jax_weights import load_jax_params
    from evalharness.policies.octo_pt.model import build_octo_model
    from evalharness.policies.octo_pt.policy import OctoPtPolicy

    fixture = load_checkpoint(FIXTURE)
    raw = _sibling("latency_octo_jax").octo_small_config(fixture.config)
    config = OctoConfig.from_checkpoint_config(raw)
    t5 = T5EncoderConfig(
        vocab_size=32128, d_model=768, d_kv=64, num_heads=12, d_ff=3072, num_layers=12
    )
    batch = _example_batch()
    model = build_octo_model(config.model, batch, t5)
    report = CompatibilityReport([])
    weights = "torch random init"
    flat = _jax_params(config, t5, batch)
    if flat is not None:
        report = load_jax_params(
            model, flat, encoder_names={"primary": "SmallStem16", "wrist": "SmallStem16"}
        )
        weights = "octo_jax's init_params(seed=0)"
    loaded = LoadedOcto(
        model.eval(), config, raw, batch, fixture.dataset_statistics, report,
        Path("random-octo-small"), "jax", 0, {"t5": t5},
    )  # fmt: skip
    assert config.text_processor is not None
    # Offline: the tiny fixture tokenizer's ids are valid T5-base ids (cost does not depend on them).
    tokenizer = TextTokenizer(FIXTURES / "tiny_t5", config.text_processor)
    stats = select_statistics(fixture.dataset_statistics, STATS)
    policy = OctoPtPolicy(
        loaded, statistics=stats, tokenizer=tokenizer, device=device, compile=compile
    )
    return policy, weights


def octo_pt_latency(
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    repeats: int = 3,
    models: tuple[str, ...] = ("tiny", "small"),
    device: str | None = None,
    compile: bool = False,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Median steady-state act() wall time and actions/s per (model, batch size)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    inputs = _sibling("latency_octo_jax")._inputs
    makers: dict[str, Any] = {}
    if "tiny" in models and FIXTURE.is_dir():
        makers["octo_tiny_lang fixture"] = lambda: (_fixture_policy(device, compile), "fixture")
    if "small" in models and FIXTURE.is_dir():
        makers["octo-small shape (random)"] = lambda: _small_policy(device, compile)
    rows = []
    for name, make in makers.items():
        policy, weights = make()
        params = sum(p.numel() for p in policy.model.parameters())
        for batch in batch_sizes:
            obs, tasks = inputs(batch)
            start = time.perf_counter()
            policy.act(obs, tasks)  # warm-up: encodes the instruction (and compiles)
            first = time.perf_counter() - start
            times = []
            for _ in range(repeats):
                policy.reset(batch)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                actions = policy.act(obs, tasks)  # returns numpy: the GPU work is done
                times.append(time.perf_counter() - start)
            latency = statistics.median(times)
            rows.append(
                {
                    "family": "octo_pt",
                    "model": name,
                    "weights": weights,
                    "params_M": round(params / 1e6, 2),
                    "device": device,
                    "compile": compile,
                    "torch_threads": torch.get_num_threads(),
                    "batch": batch,
                    "first_call_s": round(first, 2),
                    "act_ms": round(latency * 1e3, 1),
                    "actions_per_s": round(actions.shape[0] * actions.shape[1] / latency, 1),
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of `octo_pt_latency` rows."""
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
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads")
    args = parser.parse_args()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    rows = octo_pt_latency(
        sizes, args.repeats, tuple(args.models.split(",")), args.device, args.compile, args.threads
    )
    print(format_rows(rows))


if __name__ == "__main__":
    main()
