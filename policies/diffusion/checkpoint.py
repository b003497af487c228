"""Read robomimic / DROID diffusion-policy ``.pth`` files without robomimic installed.

The file is ``torch.save(dict(model=algo.serialize(), config=<JSON>, algo_name, env_metadata,
shape_metadata, [obs|action]_normalization_stats, ...))``; ``model`` holds ``nets`` (trained
weights) and ``ema`` (their exponential moving average, which upstream uses for inference).

Loading steps:

1. ``torch.load(weights_only=True)``: tensors, containers and primitives only. A file that
   needs arbitrary unpickling (numpy arrays in the stats, custom classes) is refused unless the
   caller passes ``trust=True`` (policy option ``?trust=true``), because unpickling runs code.
2. Pick ``ema`` when present, else ``nets``; canonicalize key names: drop the ``module.``
   infix that DROID's ``DataParallel`` wrappers add, and map each VisualCore alias
   (``backbone.*`` <-> ``nets.0.*``, ``pool.*`` <-> ``nets.1.*``) when a file holds only one.
3. Build the model from the config (UNet sizes from the weights) and compare shapes with the
   shared compatibility report; strict by default, ``strict=False`` loads what fits.
   Corrupted weights (NaN/inf, a non-float tensor where a float one belongs) are refused
   either way, naming the file and key; float64/float16 weights are cast to float32.
4. A ``gripper_head`` entry (``{"hidden_dim", "nets", "ema"}``, written by ``evalharness
   finetune --option gripper_head=true``; robomimic ignores it) adds the gripper classifier,
   its weights loaded by the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evalharness.policies.common import hub
from evalharness.policies.common.compat import (
    CheckpointError,
    CompatibilityReport,
    check_dtypes,
    check_finite,
    compare_shapes,
)
from evalharness.policies.diffusion.config import DiffusionPolicyConfig
from evalharness.policies.diffusion.nets import (
    GRIPPER_HEAD_PREFIX,
    ConditionalUnet1D,
    DiffusionPolicyNets,
    GripperHead,
    ObservationGroupEncoder,
)

__all__ = [
    "LoadedCheckpoint",
    "build_nets",
    "canonical_state_dict",
    "gripper_head_weights",
    "load_checkpoint",
    "load_weights",
    "read_checkpoint_file",
]

TRUST_OPTION = "trust=true"

_OBS_NET = re.compile(r"^(policy\.obs_encoder\.nets\.obs\.obs_nets\.[^.]+\.)(.*)$")


#: Words in torch's refusal that mean "a class or function must be unpickled", which `trust`
#: allows; any other failure means the bytes are not a torch checkpoint.
_NEEDS_UNPICKLING = ("GLOBAL", "add_safe_globals", "legacy .tar format")


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load error (its WeightsUnpickler detail when it has one)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            return detail or (lines[i + 1] if i + 1 < len(lines) else line)
        if "GLOBAL" in line:
            return line
    if not lines:
        return type(exc).__name__
    first = lines[0].split(". ", 1)[0].rstrip(".")  # torch appends paragraphs of advice
    return f"{type(exc).__name__}: {first}"


def read_checkpoint_file(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """``torch.load`` a ``.pth`` onto the CPU, refusing pickled code unless `trust` is set.

    A truncated or corrupted file raises :class:`CheckpointError` naming it (and never
    suggests `trust`: only a file that names classes or functions to unpickle needs that).
    ``hf://org/name[@REV]/model.pth`` is read from the Hugging Face hub or its local cache.
    """
    try:
        path = Path(hub.local_path(str(path)))
    except hub.HubError as exc:
        raise CheckpointError(str(exc)) from exc
    if not path.is_file():
        raise CheckpointError(f"diffusion checkpoint {str(path)!r} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not any(word in str(exc) for word in _NEEDS_UNPICKLING):
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint ({_reason(exc)}); the file is "
                f"truncated or corrupted ({path.stat().st_size} bytes) — copy or save it again"
            ) from None
        if not trust:
            raise CheckpointError(
                f"{path} needs arbitrary unpickling to load (torch.load(weights_only=True) "
                f"refused it: {_reason(exc)}). Unpickling can run code from the file; if you "
                f"trust where it comes from, pass the policy option ?{TRUST_OPTION} "
                f"(e.g. diffusion:{path}?{TRUST_OPTION})."
            ) from None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint even unpickled with "
                f"?{TRUST_OPTION} ({_reason(exc)}); the file is truncated or corrupted"
            ) from None
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        raise CheckpointError(
            f"{path}: expected robomimic's checkpoint dict with a 'model' entry, got "
            f"{type(ckpt).__name__}{' with keys ' + str(sorted(ckpt)) if isinstance(ckpt, Mapping) else ''}"
        )
    return dict(ckpt)


def _alias(key: str) -> str | None:
    """The other spelling of a VisualCore key (upstream registers backbone/pool twice)."""
    match = _OBS_NET.match(key)
    if match is None:
        return None
    prefix, rest = match.groups()
    for a, b in (("backbone.", "nets.0."), ("pool.", "nets.1.")):
        if rest.startswith(a):
            return prefix + b + rest[len(a) :]
        if rest.startswith(b):
            return prefix + a + rest[len(b) :]
    return None


def canonical_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's ``module.`` segments so DROID keys read like robomimic's."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"state dict entry {key!r} is a {type(value).__name__}, not a tensor; expected "
                "a float tensor (int64 for BatchNorm's num_batches_tracked)"
            )
        name = ".".join(part for part in key.split(".") if part != "module")
        if name in out:
            raise CheckpointError(f"state dict keys {key!r} and another both map to {name!r}")
        out[name] = value
    return out


def select_weights(
    model: Mapping[str, Any], source: str, use_ema: bool = True
) -> tuple[dict[str, Any], str]:
    """``model['ema']`` when present and wanted (upstream's inference weights), else ``nets``."""
    if use_ema and model.get("ema") is not None:
        return dict(model["ema"]), "ema"
    if model.get("nets") is None:
        raise CheckpointError(
            f"{source}: checkpoint['model'] has no 'nets' state dict (keys {sorted(model)})"
        )
    return dict(model["nets"]), "nets"


def build_nets(config: DiffusionPolicyConfig) -> DiffusionPolicyNets:
    """A freshly initialized model for `config`; the obs feature size must match the UNet's."""
    encoder = ObservationGroupEncoder(config.obs_shapes, config.visual, combine=config.combine)
    expected = encoder.out_dim * config.observation_horizon
    if expected != config.unet.global_cond_dim:
        raise CheckpointError(
            f"observation features are {encoder.out_dim} per step x observation_horizon "
            f"{config.observation_horizon} = {expected}, but the noise prediction network is "
            f"conditioned on {config.unet.global_cond_dim}; the obs keys/shapes "
            f"{dict(config.obs_shapes)} or the horizon do not match the weights"
        )
    head = None
    if config.gripper_head:
        head = GripperHead(
            config.unet.global_cond_dim, config.gripper_head, config.prediction_horizon
        )
    return DiffusionPolicyNets(encoder, ConditionalUnet1D(config.unet), head)


def gripper_head_weights(
    ckpt: Mapping[str, Any], which: str, source: str = "checkpoint"
) -> dict[str, Any]:
    """The ``gripper_head`` entry's ``which`` (``ema`` or ``nets``) state dict, its keys
    prefixed as in ``DiffusionPolicyNets`` (``gripper_head.net.0.weight``); {} without a head."""
    entry = ckpt.get("gripper_head")
    if not isinstance(entry, Mapping):
        return {}
    weights = entry.get(which) if entry.get(which) is not None else entry.get("nets")
    if not isinstance(weights, Mapping):
        raise CheckpointError(
            f"{source}: 'gripper_head' has no {which!r} or 'nets' state dict (keys "
            f"{sorted(entry)}); it is written by `evalharness finetune --option gripper_head=true`"
        )
    return {GRIPPER_HEAD_PREFIX + k: v for k, v in weights.items()}


def _explainer(checkpoint_keys: set[str]) -> Callable[[str, Any, Any], str | None]:
    cameras = {m.group(1) for k in checkpoint_keys if (m := _OBS_NET.match(k))}

    def explain(key: str, ckpt_shape: Any, model_shape: Any) -> str | None:
        if ".obs_encoder.combine.0." in key and ckpt_shape and model_shape:
            return "observation routing changed: the combine MLP sees another concatenation of obs features"
        if ".noise_pred_net." in key and ("final_conv.1" in key or "down_modules.0.0." in key):
            return "action head: the action dimension differs, so the UNet's input/output convs are fresh"
        if ".cond_encoder." in key:
            return "UNet conditioning size differs (obs feature size x observation horizon)"
        match = _OBS_NET.match(key)
        if match is not None and ckpt_shape is None and match.group(1) not in cameras:
            return "the checkpoint has no encoder for this observation key"
        if match is not None and model_shape is None:
            return "the checkpoint encodes an observation key this model does not use"
        return None

    return explain


def load_weights(
    nets: DiffusionPolicyNets,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "checkpoint",
    key_map: Mapping[str, str] | None = None,
) -> CompatibilityReport:
    """Copy every tensor that fits into `nets` and return the compatibility report.

    `state_dict` uses canonical keys. `key_map` maps model keys to checkpoint keys where they
    differ (e.g. a camera renamed for transfer). Strict loading raises
    ``CheckpointMismatchError`` (naming every leaf) unless everything loads.

    Corrupted weights raise :class:`CheckpointError` naming `source` and the key, strict or
    not: NaN/inf values, or a dtype of another category than the model's tensor (an int or
    complex tensor where a float one belongs; BatchNorm's int64 ``num_batches_tracked`` is an
    integer on both sides). Floats of another width (float64, float16) are cast by ``copy_``
    to the model's dtype.
    """
    model_state = nets.state_dict()
    mapping = dict(key_map or {})
    for key in model_state:
        src = mapping.get(key, key)
        if src not in state_dict:
            alias = _alias(src)
            if alias is not None and alias in state_dict:
                mapping[key] = alias
    check_finite(state_dict, source)
    check_dtypes(state_dict, model_state, source, key_map=mapping)
    report = compare_shapes(
        {k: tuple(v.shape) for k, v in state_dict.items()},
        {k: tuple(v.shape) for k, v in model_state.items()},
        explain=_explainer(set(state_dict)),
        source=source,
        target="DiffusionPolicyUNet",
        key_map=mapping,
    )
    report.check(strict)
    with torch.no_grad():
        for entry in report.loaded:
            assert entry.source_key is not None
            model_state[entry.key].copy_(state_dict[entry.source_key])
    return report


@dataclass
class LoadedCheckpoint:
    """A model ready for inference plus what was read to build it."""

    nets: DiffusionPolicyNets
    config: DiffusionPolicyConfig
    report: CompatibilityReport
    weights: str  # "ema" or "nets"
    path: str
    env_metadata: Mapping[str, Any]


def load_checkpoint(
    path: str | Path,
    *,
    trust: bool = False,
    strict: bool = True,
    use_ema: bool = True,
    config: DiffusionPolicyConfig | None = None,
    key_map: Mapping[str, str] | None = None,
) -> LoadedCheckpoint:
    """Load a robomimic/DROID ``DiffusionPolicyUNet`` checkpoint into an eval-mode model.

    With `config` (a different target, e.g. LIBERO keys and 7-d actions for a DROID
    checkpoint) the model is built from it instead of the checkpoint's own config; load that
    non-strictly (``strict=False``) and read the returned report to see what transferred.
    """
    source = str(path)
    ckpt = read_checkpoint_file(path, trust=trust)
    raw, which = select_weights(ckpt["model"], source, use_ema)
    try:
        state = canonical_state_dict(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{source} [{which}]: {exc}") from None
    own = DiffusionPolicyConfig.from_checkpoint(ckpt, state, source) if config is None else config
    if own.gripper_head:
        state.update(canonical_state_dict(gripper_head_weights(ckpt, which, source)))
    nets = build_nets(own)
    report = load_weights(nets, state, strict=strict, source=f"{source} [{which}]", key_map=key_map)
    nets.eval()
    return LoadedCheckpoint(
        nets=nets,
        config=own,
        report=report,
        weights=which,
        path=source,
        env_metadata=dict(ckpt.get("env_metadata") or {}),
    )
