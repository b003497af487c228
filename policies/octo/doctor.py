"""``evalharness doctor`` for Octo checkpoints (both families: one format).

Read with the framework-free ``policies.octo`` code; the weight check uses ``octo_jax``'s model
shapes when JAX is installed and says so when it is not.
"""

from __future__ import annotations

from evalharness.policies.common.doctor import CheckpointFacts, Finding

__all__ = ["describe_checkpoint"]


def describe_checkpoint(
    path: str, options: dict[str, str], findings: list[Finding]
) -> CheckpointFacts:
    """Weights against ``config.json``, the dataset statistics, and the model's inputs."""
    from evalharness.policies.common.normalization import statistics_keys
    from evalharness.policies.octo.checkpoint import load_checkpoint, parse_step
    from evalharness.policies.octo.config import OctoConfig
    from evalharness.policies.octo.inputs import OctoInputSpec

    step = parse_step(options.get("step"))
    ckpt = load_checkpoint(path, step)
    config = OctoConfig.from_checkpoint_config(ckpt.config, source=str(ckpt.directory))
    inputs = OctoInputSpec.from_example_batch(ckpt.example_batch, config.window_size)
    head = config.model.action_head
    try:
        from evalharness.policies.octo_jax.train import checkpoint_report
    except ImportError:
        findings.append(
            Finding("info", "weights", "JAX is not installed: weight shapes were not compared")
        )
    else:
        _, report = checkpoint_report(path, step)
        if report.compatible:
            findings.append(
                Finding("ok", "weights", f"all {len(report.loaded)} leaves fit config.json")
            )
        else:
            explained = " ".join(report.explanations)
            fix = "restore config.json to what the weights were trained with"
            if "action_horizon changed" in explained or "action_dim changed" in explained:
                fix = (
                    "undo the head edit in config.json, or keep it and finetune: `evalharness "
                    "finetune --policy FAMILY:CKPT?action_horizon=N` builds a fresh head "
                    "(strict=false loads it now with that head freshly initialized)"
                )
            findings.append(Finding("error", "weights", report.format(), fix))
    stats = ckpt.dataset_statistics
    keys = statistics_keys(stats) if stats else []
    if not stats:
        findings.append(
            Finding(
                "warning",
                "statistics",
                f"{ckpt.directory / 'dataset_statistics.json'} is missing: actions come out "
                "normalized",
                "copy the training data's dataset_statistics.json beside config.json",
            )
        )
    elif len(keys) > 1 and "stats" not in options:
        findings.append(
            Finding(
                "warning",
                "statistics",
                f"dataset_statistics.json holds {len(keys)} datasets: {', '.join(keys)}",
                f"pick one with ?stats=KEY on --policy, e.g. ?stats={keys[0]}",
            )
        )
    else:
        findings.append(Finding("ok", "statistics", f"dataset_statistics.json: {keys or 'one'}"))
    return CheckpointFacts(
        image_sizes=dict(inputs.obs_images),
        lowdim=dict(inputs.lowdim),
        window_size=inputs.window_size,
        action_horizon=head.action_horizon,
        action_dim=head.action_dim,
        needs_language=config.model.language_tokenizer is not None,
        statistics=stats,
        directory=ckpt.directory,
        gripper=options.get("gripper", "octo"),
    )
