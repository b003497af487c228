"""``evalharness doctor`` for robomimic / DROID diffusion-policy checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.policies.common.doctor import CheckpointFacts, Finding

__all__ = ["describe_checkpoint"]


def describe_checkpoint(
    path: str, options: dict[str, str], findings: list[Finding]
) -> CheckpointFacts:
    """Its weights against the config stored in the ``.pth``, cameras, horizons, statistics."""
    from evalharness.policies.common.compat import CheckpointMismatchError
    from evalharness.policies.diffusion.checkpoint import load_checkpoint
    from evalharness.policies.diffusion.keymap import STANDARD_SOURCES

    trust = options.get("trust", "false").lower() in ("1", "true", "yes", "on")
    try:
        loaded = load_checkpoint(path, trust=trust)
    except CheckpointMismatchError as exc:
        findings.append(
            Finding(
                "error",
                "weights",
                exc.report.format(),
                "restore the config stored in the .pth, or load with ?strict=false",
            )
        )
        loaded = load_checkpoint(path, trust=trust, strict=False)
    else:
        findings.append(
            Finding(
                "ok",
                "weights",
                f"all {len(loaded.report.loaded)} tensors fit the config ({loaded.weights})",
            )
        )
    config = loaded.config
    if all(key.scale is not None for key in config.action_keys):
        findings.append(Finding("ok", "statistics", "action_normalization_stats present"))
    else:
        findings.append(
            Finding(
                "warning",
                "statistics",
                f"{path} has no action_normalization_stats: actions come out normalized",
                "use a checkpoint saved by robomimic's train.py or evalharness finetune",
            )
        )
    images: dict[str, tuple[int, int]] = {}
    for key in config.visual:
        source = STANDARD_SOURCES.get(key)
        shape = config.obs_shapes[key]
        images[source.key if source else key] = (int(shape[1]), int(shape[2]))

    def route_keys(dataset: Any, first: Mapping[str, Any], found: list[Finding]) -> None:
        """Which data array feeds each checkpoint observation key (the finetune's routing)."""
        from evalharness.policies.diffusion.train import route_observations

        proprio = int(np.shape(first["proprio"])[-1]) if "proprio" in first else None
        routes, dropped = route_observations(config, dataset.spec, list(first), proprio)
        for key, route in routes.items():
            found.append(Finding("ok", "observation keys", f"{key} ← data {route.describe()}"))
        if dropped:
            found.append(
                Finding(
                    "warning",
                    "observation keys",
                    f"the checkpoint reads {dropped}, which the data (spec "
                    f"{dataset.spec.name!r}) does not hold: finetuning drops them",
                    "name them in the spec: proprio_keys (e.g. obs/joint_states) with "
                    "proprio_dims, or --dataset-spec libero_robomimic for LIBERO's robomimic keys",
                )
            )

    return CheckpointFacts(
        image_sizes=images,
        lowdim={},
        window_size=config.observation_horizon,
        action_horizon=config.prediction_horizon,
        action_dim=config.action_dim,
        needs_language=False,
        statistics={},
        directory=Path(path).parent,
        gripper="libero",
        gripper_converted_by="the diffusion trainer",
        resize="bilinear, antialiased, as robomimic",
        horizon_options="?observation_horizon=N / ?prediction_horizon=N / ?action_horizon=N",
        data_checks=[route_keys],
    )
