"""``evalharness doctor``: what does not fit between a checkpoint, a dataset and the env.

    evalharness doctor --policy FAMILY:CHECKPOINT --data demos/ --suite libero_spatial

Without training or rolling out, each check reads what the three sides declare and reports a
:class:`Finding` (``ok`` / ``info`` / ``warning`` / ``error``) with the fix:

- checkpoint vs its own config: the family loader's non-strict compatibility report (an edited
  ``action_horizon`` shows ``444 = 32 + 384 + 7 × 4 … → action_horizon changed 4 → 2``);
- statistics: ``dataset_statistics.json`` present, one entry or which ``?stats=`` to pass,
  action dims against the head;
- dataset (``--data``): cameras, image sizes, proprio, action dim, language, the gripper
  convention of the stored actions and the model's;
- environment (``--suite``): cameras, camera size, proprio width, 7-dim actions, and the image
  transform recorded with a finetuned checkpoint (``dataset_spec.json``);
- conventions (``--protocol``): what the policy and the protocol combine to, each next to what
  the protocol's reference loop does and where each comes from: scenes, image rotation,
  resize method and size, gripper sign and binarization, the proprio rotation convention,
  the statistics that un-normalize actions, the replan length (`conventions`). These are
  the conventions that silently cost published reproductions points (allenai
  vla-evaluation-harness ``docs/reproductions/common-pitfalls.md``).

The checkpoint side belongs to the family: its registry entry's ``doctor`` hook
(``policies.common.doctor``) reads the checkpoint and returns its :class:`CheckpointFacts`; a
family without one gets the checks its loaded ``PolicySpec`` allows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evalharness.policies.common.doctor import SEVERITIES, CheckpointFacts, Finding
from evalharness.policies.registry import training_orientation

__all__ = ["SEVERITIES", "CheckpointFacts", "Finding", "conventions", "doctor", "format_findings"]


def format_findings(findings: list[Finding]) -> str:
    """Findings as readable lines, then a one-line verdict."""
    marks = {"ok": "ok  ", "info": "info", "warning": "WARN", "error": "FAIL"}
    lines = []
    for f in findings:
        head = f"[{marks[f.severity]}] {f.topic}: "
        body = f.message.replace("\n", "\n" + " " * len(head))
        lines.append(head + body)
        if f.fix:
            lines.append(" " * len(head) + f"fix: {f.fix}")
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    lines.append(
        f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s)"
    )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------


def _statistics_dim(stats: dict[str, Any], key: str | None) -> int | None:
    from evalharness.policies.common.normalization import select_statistics

    try:
        return select_statistics(stats, key).action.dim
    except Exception:
        return None


def _spec_facts(policy: str) -> CheckpointFacts:
    from evalharness.policies import load_policy

    spec = load_policy(policy).spec
    return CheckpointFacts(
        image_sizes=dict(spec.image_sizes),
        lowdim={},
        window_size=spec.window_size,
        action_horizon=spec.action_horizon,
        action_dim=spec.action_dim,
        needs_language=spec.needs_language,
        statistics={},
        directory=None,
    )


def _check_data(
    model: CheckpointFacts,
    data: str,
    spec_name: str,
    findings: list[Finding],
    stats_key: str | None,
) -> None:
    from evalharness.data import DatasetError, open_dataset
    from evalharness.policies.common.normalization import Gripper

    try:
        dataset = open_dataset(data, spec_name)
        episodes = dataset.load()
        statistics = dataset.statistics()
    except DatasetError as exc:
        findings.append(
            Finding("error", "dataset", str(exc), "fix the file or the --dataset-spec key map")
        )
        return
    spec = dataset.spec
    first = episodes[0]
    findings.append(
        Finding(
            "ok",
            "dataset",
            f"{len(episodes)} episodes, {statistics['num_transitions']} transitions ({spec.name})",
        )
    )
    for key, size in model.image_sizes.items():
        if key not in first:
            findings.append(
                Finding(
                    "warning",
                    "observation keys",
                    f"the model reads {key} but the data has only "
                    f"{[k for k in first if k.startswith('image_')]}",
                    f"map a camera to {key} in the spec's image_keys, or finetune: the {key} "
                    "tokenizer is dropped for this data",
                )
            )
            continue
        stored = tuple(np.shape(first[key])[1:3])
        if stored != size:
            findings.append(
                Finding(
                    "info",
                    "image sizes",
                    f"{key}: data {stored[0]}×{stored[1]}, model {size[0]}×{size[1]}",
                    f"none needed: the trainer resizes ({model.resize}); or set image_sizes in "
                    "the spec",
                )
            )
        else:
            findings.append(Finding("ok", "image sizes", f"{key}: {size[0]}×{size[1]}"))
    for check in model.data_checks:
        check(dataset, first, findings)
    extra = [k for k in first if k.startswith("image_") and k not in model.image_sizes]
    if extra:
        findings.append(
            Finding("info", "observation keys", f"the model does not read the data's {extra}")
        )
    for key, dim in model.lowdim.items():
        have = np.shape(first[key])[-1] if key in first else None
        if have != dim:
            findings.append(
                Finding(
                    "error",
                    "observation keys",
                    f"the model tokenizes {key} with {dim} dims; the data has "
                    f"{'none' if have is None else have}",
                    "set proprio_keys in the dataset spec to give it that width",
                )
            )
    data_dim = len(statistics["action"]["mean"])
    if data_dim != model.action_dim:
        fix = (
            f"finetuning builds a fresh {data_dim}-dim action head (the report names it)"
            if data_dim > model.action_dim
            else f"finetuning pads actions to {model.action_dim} dims (action_pad_mask False)"
        )
        findings.append(
            Finding(
                "warning",
                "action dim",
                f"data {data_dim}, checkpoint head {model.action_dim}",
                fix,
            )
        )
    else:
        findings.append(Finding("ok", "action dim", f"{data_dim}"))
    findings.append(
        Finding(
            "info",
            "window / horizon",
            f"model window {model.window_size}, action horizon {model.action_horizon}; "
            "finetuning cuts data windows to match",
            f"change them with {model.horizon_options} on --policy (fresh weights where "
            "shapes change)",
        )
    )
    if model.needs_language and not str(first.get("language_instruction", "")).strip():
        findings.append(
            Finding(
                "error",
                "language",
                "the model is language-conditioned but the data's instruction is empty",
                "set language_key in the spec (RLDS) or problem_info (HDF5)",
            )
        )
    gripper = np.asarray(first["action"])[:, -1]
    model_gripper = Gripper.parse(model.gripper) if model.gripper != "none" else None
    if model.gripper_converted_by:
        findings.append(
            Finding(
                "ok",
                "gripper",
                f"{spec.gripper_in_file.value} in the file; {model.gripper_converted_by} "
                f"converts {spec.gripper_for_model.value} → {model.gripper} (−1 open, +1 close)",
            )
        )
    elif model_gripper is not None and spec.gripper_for_model != model_gripper:
        findings.append(
            Finding(
                "error",
                "gripper",
                f"the spec converts the gripper to {spec.gripper_for_model.value}, the policy "
                f"assumes {model_gripper.value}",
                f"set gripper_for_model={model_gripper.value} in the spec, or pass "
                f"?gripper={spec.gripper_for_model.value} to the policy",
            )
        )
    elif model_gripper == Gripper.OCTO and gripper.min() < -0.5:
        findings.append(
            Finding(
                "error",
                "gripper",
                f"model convention is octo (1 open, 0 close) but converted data actions reach "
                f"{gripper.min():.2f}",
                "set gripper_in_file correctly in the dataset spec (libero: −1 open / +1 close)",
            )
        )
    else:
        findings.append(
            Finding(
                "ok",
                "gripper",
                f"{spec.gripper_in_file.value} in the file → {spec.gripper_for_model.value}",
            )
        )
    if model.statistics:
        ckpt_dim = _statistics_dim(model.statistics, stats_key)
        if ckpt_dim is not None and ckpt_dim != data_dim:
            findings.append(
                Finding(
                    "info",
                    "statistics",
                    f"checkpoint statistics have {ckpt_dim} action dims, the data {data_dim}",
                    "finetuning writes the data's statistics beside the new checkpoint",
                )
            )


def _check_env(
    model: CheckpointFacts,
    suite: str,
    protocol_name: str,
    findings: list[Finding],
    stats_key: str | None,
) -> None:
    from evalharness.envs.libero import PROPRIO_DIM, SUITES
    from evalharness.protocols import get_protocol

    if suite not in SUITES:
        findings.append(
            Finding("error", "suite", f"unknown suite {suite!r}", f"one of {', '.join(SUITES)}")
        )
        return
    protocol = get_protocol(protocol_name)
    env_keys = ("image_primary", "image_wrist")
    for key, size in model.image_sizes.items():
        if key not in env_keys:
            findings.append(
                Finding(
                    "error",
                    "env cameras",
                    f"the model reads {key}; LIBERO gives {list(env_keys)}",
                    "the policy feeds zeros with pad_mask False; finetune without that camera",
                )
            )
        elif size != (protocol.camera_size, protocol.camera_size):
            findings.append(
                Finding(
                    "info",
                    "env image size",
                    f"{key}: env renders {protocol.camera_size}² ({protocol.name}), model takes "
                    f"{size[0]}×{size[1]}",
                    f"none needed: the policy resizes ({model.resize})",
                )
            )
    for key, dim in model.lowdim.items():
        if key != "proprio" or dim != PROPRIO_DIM:
            findings.append(
                Finding(
                    "error",
                    "env proprio",
                    f"the model tokenizes {key} ({dim} dims); LIBERO's proprio has {PROPRIO_DIM}",
                    "finetune on data whose proprio is LIBERO's (eef pos 3 + axis-angle 3 + "
                    "gripper qpos 2)",
                )
            )
    action_dim = model.action_dim
    if model.statistics:
        action_dim = _statistics_dim(model.statistics, stats_key) or action_dim
    if action_dim < 7:
        findings.append(
            Finding(
                "error",
                "env actions",
                f"the policy outputs {action_dim} action dims; LIBERO takes 7",
                "finetune on 7-dim LIBERO actions",
            )
        )
    elif action_dim > 7:
        findings.append(
            Finding(
                "warning",
                "env actions",
                f"the policy outputs {action_dim} dims; LIBERO uses the first 7",
                "evaluate a checkpoint finetuned on LIBERO's 7-dim actions",
            )
        )
    else:
        findings.append(Finding("ok", "env actions", "7 dims"))
    findings.append(
        Finding(
            "ok" if model.gripper == "octo" else "info",
            "gripper",
            f"policy converts {model.gripper} → LIBERO (−1 open, +1 close)",
        )
    )
    orientation = training_orientation(str(model.directory)) if model.directory else None
    if orientation is not None:
        findings.append(
            Finding("ok", "orientation", "trained on upright frames, as the env renders them")
            if orientation == "upright"
            else Finding(
                "info",
                "orientation",
                "trained on raw (upside-down) LIBERO frames: the runner rotates the env's "
                "frames 180° before the policy sees them (dataset_spec.json)",
            )
        )


def _convention(name: str, ours: str, reference: str, source: str) -> Finding:
    return Finding("info", f"convention: {name}", f"{ours} [{source}]\nreference: {reference}")


def _statistics_convention(
    model: CheckpointFacts, options: dict[str, str], suite: str | None
) -> str:
    from evalharness.policies.common.normalization import statistics_keys

    if not model.statistics:
        return "none: the policy returns actions in the env's units"
    keys = statistics_keys(model.statistics)
    if not keys:
        chosen = "its single entry"
    elif options.get("stats"):
        chosen = f"[{options['stats']!r}] (?stats=)"
    elif suite and any(k == suite or k.startswith(f"{suite}_") for k in keys):
        chosen = f"the entry named after {suite} (of {', '.join(keys)})"
    else:
        chosen = f"one of {', '.join(keys)}: pass ?stats=KEY"
    kind = options.get("normalization", "the checkpoint config's")
    return (
        f"dataset_statistics.json {chosen}, action normalization {kind} (normal: mean/std, "
        "bounds: q01/q99)"
    )


def conventions(
    policy: str,
    protocol_name: str,
    model: CheckpointFacts,
    suite: str | None = None,
    from_spec: bool = False,
) -> list[Finding]:
    """The conventions ``policy`` evaluated under ``protocol_name`` uses, one `Finding` each,
    with where each comes from and what the protocol's reference loop does. ``from_spec``:
    ``model`` comes from the policy's spec (no checkpoint read), whose actions are the env's."""
    from evalharness.policies.registry import parse_policy_string
    from evalharness.protocols import get_protocol

    protocol = get_protocol(protocol_name)
    ref = parse_policy_string(policy)
    options = dict(ref.options)
    semantics = protocol.semantics
    origin = f"reference loop of preset {protocol.name} ({protocol.source})"

    def reference(key: str) -> str:
        return semantics.get(key, "not stated") + f" -- {origin}"

    orientation = training_orientation(str(model.directory)) if model.directory else None
    if orientation == "raw":
        rotation = (
            "the env rotates LIBERO's upside-down frames 180 deg, and the policy's wrapper "
            "rotates them back to the raw orientation it was trained on"
        )
        rotation_source = "envs/libero.py upright, envs/wrappers.py ImageOrientation, the "
        rotation_source += "checkpoint's dataset_spec.json"
    else:
        rotation = "the env rotates LIBERO's upside-down frames 180 deg (upright, img[::-1, ::-1])"
        rotation_source = "evalharness/envs/libero.py upright; the policy reads upright frames"
    sizes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in model.image_sizes.items())
    resize = (
        f"the policy takes {sizes}, resized by {model.resize}"
        if sizes
        else "the policy takes the frames as rendered (no resize)"
    )
    horizon = model.action_horizon
    exec_horizon = int(options.get("exec_horizon", horizon))
    ensemble = options.get("temporal_ensemble")
    replan = (
        f"temporal ensembling of overlapping {horizon}-action chunks (weight {ensemble}), one "
        "query per step"
        if ensemble
        else f"executes {exec_horizon} of each {horizon}-action chunk, then queries again"
    )
    gripper = {
        "octo": "the model's [0, 1] (1 = open) binarized at 0.5 and sign-flipped to LIBERO's "
        "-1 open / +1 close, as OpenVLA's normalize_gripper_action + invert_gripper_action",
        "libero": "the model outputs LIBERO's -1 open / +1 close: passed through",
    }.get(model.gripper, f"{model.gripper}: no conversion")
    if from_spec:
        gripper = "the policy returns LIBERO's -1 open / +1 close itself (its act() contract)"
    reads_proprio = "proprio" in model.lowdim
    return [
        _convention(
            "scenes",
            f"{protocol.seeding}, env seed {protocol.resolved_env_seed}; init state i % 50; "
            f"warm-up {protocol.num_steps_wait} x {list(protocol.wait_action)}",
            reference("seeding") + "; " + semantics.get("warm_up", ""),
            f"evalharness/protocols.py preset {protocol.name}, evalharness/envs/scenes.py",
        ),
        _convention("image rotation", rotation, reference("images"), rotation_source),
        _convention(
            "resize",
            f"env renders {protocol.camera_size}x{protocol.camera_size}; {resize}",
            reference("images"),
            "the checkpoint's config (image sizes), evalharness/envs/wrappers.py ResizeImage",
        ),
        _convention(
            "gripper",
            gripper,
            reference("actions"),
            "policies/common/normalization.py convert_gripper, the family's gripper option",
        ),
        _convention(
            "proprio",
            "eef pos (3) + axis-angle (3, robosuite's quat2axisangle, no antipodal flip) + "
            f"gripper qpos (2), float32; this policy {'reads' if reads_proprio else 'ignores'} it",
            reference("proprio"),
            "evalharness/envs/libero.py, evalharness/envs/rotations.py quat2axisangle",
        ),
        _convention(
            "un-normalization",
            _statistics_convention(model, options, suite),
            reference("actions"),
            "the checkpoint's dataset_statistics.json, ?stats= and ?normalization= options",
        ),
        _convention(
            "replan",
            replan,
            reference("replan"),
            "the policy's action_horizon and ?exec_horizon= / ?temporal_ensemble=",
        ),
    ]


def doctor(
    policy: str,
    data: str | None = None,
    dataset_spec: str = "libero",
    suite: str | None = None,
    protocol: str = "openvla",
    open_loop: bool = False,
    demos: str | None = None,
    list_conventions: bool = False,
) -> list[Finding]:
    """Every mismatch between ``policy``'s checkpoint, ``data`` and ``suite`` (see the module).

    ``open_loop`` also replays ``data``'s demos (``demos``: "0,7,21", default all) through the
    policy's ``act()`` and reports how well it reproduces them (`evalharness.openloop`).
    ``list_conventions`` lists the conventions the policy uses under ``protocol``
    (`conventions`)."""
    from evalharness.policies.registry import get_family, parse_policy_string

    ref = parse_policy_string(policy)
    findings: list[Finding] = []
    try:
        describe = get_family(ref.name).load("doctor")
        from_spec = describe is None or not ref.path
        if not from_spec:
            model = describe(ref.path, dict(ref.options), findings)
        else:
            model = _spec_facts(policy)
    except (ValueError, FileNotFoundError) as exc:
        findings.append(Finding("error", "checkpoint", str(exc), "check the path and the files"))
        return findings
    findings.append(
        Finding(
            "info",
            "checkpoint",
            f"cameras {model.image_sizes or 'any'}, window {model.window_size}, action "
            f"{model.action_dim} × horizon {model.action_horizon}, "
            f"{'language' if model.needs_language else 'no language'}",
        )
    )
    stats_key = ref.options.get("stats")
    if list_conventions:
        findings.extend(conventions(policy, protocol, model, suite, from_spec))
    if data is not None:
        _check_data(model, data, dataset_spec, findings, stats_key)
    if suite is not None:
        _check_env(model, suite, protocol, findings, stats_key)
    if open_loop:
        findings.append(_open_loop(policy, data, demos, suite))
    return findings


def _open_loop(policy: str, data: str | None, demos: str | None, suite: str | None) -> Finding:
    """The open-loop check as a finding: ok when the policy reproduces its demos (gripper sign
    agreement >= 95 %, translation error <= half the zero predictor's), else a warning."""
    from evalharness.openloop import open_loop, replay_episodes
    from evalharness.policies.registry import load_policy

    if data is None:
        return Finding("error", "open loop", "--open-loop replays demos: --data is missing")
    try:
        report = open_loop(
            load_policy(policy, suite=suite), replay_episodes(data, demos), name=policy
        )
    except (ValueError, KeyError, OSError) as exc:
        return Finding("error", "open loop", str(exc), "check --data and --demos")
    table = report.format().removeprefix("open loop: ")
    if report.meets():
        return Finding("ok", "open loop", table)
    return Finding(
        "warning",
        "open loop",
        table,
        "a policy that does not reproduce its own training demos has a train/act mismatch "
        "(orientation, gripper, normalization: tests/test_parity.py) or has not learned",
    )
