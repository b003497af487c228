"""What a robomimic / DROID diffusion-policy checkpoint says about its model, as frozen data.

A robomimic ``.pth`` carries its training config as a JSON string, ``shape_metadata`` (obs key
-> shape, in the order features are concatenated) and, optionally, normalization stats. The
UNet's channel sizes are *not* taken from ``config.algo.unet``: upstream ignores that block and
builds its class defaults, so they are read from the weights (:func:`unet_dims_from_state_dict`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalharness.policies.common.compat import CheckpointError
from evalharness.policies.diffusion.nets import UnetDims, VisualCoreSpec
from evalharness.policies.diffusion.schedulers import SchedulerConfig

__all__ = [
    "ActionKey",
    "DiffusionPolicyConfig",
    "gripper_head_width",
    "unet_dims_from_state_dict",
]

UNET = "policy.noise_pred_net."
SUPPORTED_MODALITIES = ("low_dim", "rgb")


@dataclass(frozen=True)
class ActionKey:
    """One slice of the action vector: its normalization and rotation format.

    Un-normalization is robomimic's ``x * scale + offset`` (``scale``/``offset`` of shape (d,)).
    ``rotation_format="rot_6d"`` marks a 6-d rotation; ``convert_at_runtime`` is what upstream's
    ``RolloutPolicy`` would turn it into (``rot_axis_angle`` or ``rot_euler``).
    """

    name: str
    dim: int
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    rotation_format: str | None = None
    convert_at_runtime: str = "rot_axis_angle"

    def __post_init__(self) -> None:
        for what in ("scale", "offset"):
            value = getattr(self, what)
            if value is not None and len(value) != self.dim:
                raise ValueError(
                    f"action key {self.name!r}: {what} has {len(value)} values, expected {self.dim}"
                )
        if self.rotation_format not in (None, "rot_6d"):
            raise ValueError(
                f"action key {self.name!r}: format {self.rotation_format!r} is not supported; "
                "expected 'rot_6d' or none"
            )
        if self.rotation_format == "rot_6d" and self.dim != 6:
            raise ValueError(f"action key {self.name!r}: rot_6d needs 6 dims, has {self.dim}")


@dataclass(frozen=True)
class DiffusionPolicyConfig:
    """Everything needed to rebuild and run a ``DiffusionPolicyUNet`` checkpoint."""

    obs_shapes: Mapping[str, tuple[int, ...]]
    visual: Mapping[str, VisualCoreSpec]
    unet: UnetDims
    scheduler: SchedulerConfig
    action_keys: tuple[ActionKey, ...]
    observation_horizon: int = 2
    action_horizon: int = 8
    prediction_horizon: int = 16
    combine: bool = False
    obs_normalization: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    algo_name: str = "diffusion_policy"
    gripper_head: int = 0
    """hidden width of the checkpoint's gripper classifier (``nets.GripperHead``, stored in
    the checkpoint's ``gripper_head`` entry beside robomimic's); 0: none."""

    def __post_init__(self) -> None:
        to, ta, tp = self.observation_horizon, self.action_horizon, self.prediction_horizon
        if min(to, ta, tp) < 1:
            raise ValueError(f"horizons must be >= 1, got To={to}, Ta={ta}, Tp={tp}")
        if self.gripper_head < 0:
            raise ValueError(f"gripper_head width must be >= 0 (0: none), got {self.gripper_head}")
        if to - 1 + ta > tp:
            raise ValueError(
                f"action_horizon {ta} starting at observation_horizon - 1 = {to - 1} runs past "
                f"prediction_horizon {tp}"
            )
        if tp % 2 ** (len(self.unet.down_dims) - 1):
            raise ValueError(
                f"prediction_horizon {tp} must be divisible by 2^{len(self.unet.down_dims) - 1} "
                f"for a UNet with {len(self.unet.down_dims)} levels"
            )
        ac_dim = sum(k.dim for k in self.action_keys)
        if ac_dim != self.unet.input_dim:
            raise ValueError(
                f"action keys {[k.name for k in self.action_keys]} add up to {ac_dim} dims but the "
                f"noise prediction network predicts {self.unet.input_dim}"
            )
        unknown = set(self.visual) - set(self.obs_shapes)
        if unknown:
            raise ValueError(f"visual encoders for keys not in obs_shapes: {sorted(unknown)}")

    @property
    def action_dim(self) -> int:
        """Dimension the network predicts (before rotation decoding)."""
        return self.unet.input_dim

    @property
    def rgb_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.obs_shapes if k in self.visual)

    @property
    def low_dim_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.obs_shapes if k not in self.visual)

    @classmethod
    def from_checkpoint(
        cls, ckpt: Mapping[str, Any], state_dict: Mapping[str, Any], source: str = "checkpoint"
    ) -> DiffusionPolicyConfig:
        """Read a robomimic checkpoint dict (already loaded) and its canonical state dict."""
        for key in ("config", "shape_metadata"):
            if key not in ckpt:
                raise CheckpointError(
                    f"{source}: no {key!r} entry; a robomimic checkpoint holds 'model', 'config', "
                    f"'shape_metadata' (found {sorted(ckpt)})"
                )
        raw = ckpt["config"]
        try:
            config = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: 'config' is not robomimic's JSON string: {exc}"
            ) from None
        algo_name = str(ckpt.get("algo_name", config.get("algo_name", "")))
        if algo_name != "diffusion_policy":
            raise CheckpointError(
                f"{source}: algo_name is {algo_name!r}; the diffusion adapter loads "
                "'diffusion_policy' checkpoints only"
            )
        algo = _section(config, "algo", source)
        horizon = _section(algo, "horizon", f"{source} config.algo")
        shapes = _obs_shapes(ckpt["shape_metadata"], config, source)
        visual = {
            k: _visual_spec(config, k, shape, source)
            for k, shape in shapes.items()
            if _modality(config, k) == "rgb"
        }
        combine = any(k.startswith("policy.obs_encoder.combine.") for k in state_dict)
        unet = unet_dims_from_state_dict(state_dict, source)
        return cls(
            obs_shapes=shapes,
            visual=visual,
            unet=unet,
            scheduler=_scheduler(algo, source),
            action_keys=_action_keys(ckpt, config, unet.input_dim, source),
            observation_horizon=int(horizon.get("observation_horizon", 2)),
            action_horizon=int(horizon.get("action_horizon", 8)),
            prediction_horizon=int(horizon.get("prediction_horizon", 16)),
            combine=combine,
            obs_normalization=_obs_stats(ckpt.get("obs_normalization_stats"), source),
            algo_name=algo_name,
            gripper_head=gripper_head_width(ckpt, source),
        )


def gripper_head_width(ckpt: Mapping[str, Any], source: str = "checkpoint") -> int:
    """The hidden width in a checkpoint's ``gripper_head`` entry (0 when it has none)."""
    entry = ckpt.get("gripper_head")
    if entry is None:
        return 0
    expected = "a dict with a positive int 'hidden_dim' and the head's 'nets' (and 'ema')"
    if not isinstance(entry, Mapping):
        raise CheckpointError(
            f"{source}: 'gripper_head' is a {type(entry).__name__}; expected {expected}"
        )
    width = entry.get("hidden_dim")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise CheckpointError(
            f"{source}: 'gripper_head' has hidden_dim={width!r} (keys {sorted(entry)}); "
            f"expected {expected}"
        )
    return width


def _section(tree: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = tree.get(key)
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{where}: missing section {key!r} in the config")
    return value


def _modality(config: Mapping[str, Any], key: str) -> str | None:
    modalities = config.get("observation", {}).get("modalities", {}).get("obs", {})
    for modality, keys in modalities.items():
        if key in (keys or []):
            return str(modality)
    return None


def _obs_shapes(
    shape_metadata: Mapping[str, Any], config: Mapping[str, Any], source: str
) -> dict[str, tuple[int, ...]]:
    all_shapes = shape_metadata.get("all_shapes")
    if not isinstance(all_shapes, Mapping) or not all_shapes:
        raise CheckpointError(f"{source}: shape_metadata has no 'all_shapes' mapping")
    shapes: dict[str, tuple[int, ...]] = {}
    # Upstream's algo keeps shape_metadata's order and drops keys no modality lists.
    for key, shape in all_shapes.items():
        modality = _modality(config, key)
        if modality is None:
            continue
        if modality not in SUPPORTED_MODALITIES:
            raise CheckpointError(
                f"{source}: observation {key!r} has modality {modality!r}; the diffusion adapter "
                f"supports {SUPPORTED_MODALITIES}"
            )
        shapes[str(key)] = tuple(int(d) for d in shape)
    if not shapes:
        raise CheckpointError(
            f"{source}: none of shape_metadata's keys {list(all_shapes)} is listed in "
            "config.observation.modalities.obs"
        )
    return shapes


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _visual_spec(
    config: Mapping[str, Any], key: str, shape: tuple[int, ...], source: str
) -> VisualCoreSpec:
    encoder = config.get("observation", {}).get("encoder", {}).get("rgb", {})
    where = f"{source}: config.observation.encoder.rgb"
    core_class = encoder.get("core_class", "VisualCore")
    if core_class != "VisualCore":
        raise CheckpointError(
            f"{where}.core_class is {core_class!r}; only 'VisualCore' is supported"
        )
    kwargs = dict(encoder.get("core_kwargs") or {})
    backbone_kwargs = dict(kwargs.get("backbone_kwargs") or {})
    if backbone_kwargs.get("input_coord_conv"):
        raise CheckpointError(
            f"{where}.core_kwargs.backbone_kwargs.input_coord_conv=true is not supported"
        )
    pool_kwargs = dict(kwargs.get("pool_kwargs") or {})
    if pool_kwargs.get("output_variance"):
        raise CheckpointError(
            f"{where}.core_kwargs.pool_kwargs.output_variance=true is not supported"
        )
    crop: tuple[int, int] | None = None
    classes = _as_list(encoder.get("obs_randomizer_class"))
    kwargs_list = _as_list(encoder.get("obs_randomizer_kwargs"))
    for i, name in enumerate(classes):
        if name is None or name in ("ColorRandomizer", "GaussianNoiseRandomizer"):
            continue  # identity at eval time
        if name != "CropRandomizer":
            raise CheckpointError(f"{where}.obs_randomizer_class {name!r} is not supported")
        rk = kwargs_list[i] if i < len(kwargs_list) and kwargs_list[i] else {}
        if rk.get("pos_enc"):
            raise CheckpointError(f"{where}: CropRandomizer pos_enc=true is not supported")
        crop = (int(rk.get("crop_height", 76)), int(rk.get("crop_width", 76)))
    if len(shape) != 3:
        raise CheckpointError(
            f"{source}: rgb observation {key!r} has shape {shape}, expected (C, H, W)"
        )
    num_kp = pool_kwargs.get("num_kp", 32)
    feature_dimension = kwargs.get("feature_dimension", 64)
    try:
        return VisualCoreSpec(
            input_shape=(shape[0], shape[1], shape[2]),
            backbone=str(kwargs.get("backbone_class", "ResNet18Conv")),
            pool=kwargs.get("pool_class", "SpatialSoftmax"),
            num_kp=None if num_kp is None else int(num_kp),
            temperature=float(pool_kwargs.get("temperature", 1.0)),
            learnable_temperature=bool(pool_kwargs.get("learnable_temperature", False)),
            flatten=bool(kwargs.get("flatten", True)),
            feature_dimension=None if feature_dimension is None else int(feature_dimension),
            crop=crop,
        )
    except ValueError as exc:
        raise CheckpointError(f"{where} for {key!r}: {exc}") from None


def _scheduler(algo: Mapping[str, Any], source: str) -> SchedulerConfig:
    for kind in ("ddpm", "ddim"):
        section = algo.get(kind) or {}
        if section.get("enabled"):
            try:
                return SchedulerConfig(
                    kind=kind,
                    num_train_timesteps=int(section.get("num_train_timesteps", 100)),
                    num_inference_timesteps=int(section.get("num_inference_timesteps", 100)),
                    beta_schedule=str(section.get("beta_schedule", "squaredcos_cap_v2")),
                    clip_sample=bool(section.get("clip_sample", True)),
                    prediction_type=str(section.get("prediction_type", "epsilon")),
                    set_alpha_to_one=bool(section.get("set_alpha_to_one", True)),
                    steps_offset=int(section.get("steps_offset", 0)),
                )
            except ValueError as exc:
                raise CheckpointError(f"{source}: config.algo.{kind}: {exc}") from None
    raise CheckpointError(f"{source}: neither config.algo.ddpm nor config.algo.ddim is enabled")


def _stat_array(entry: Any, name: str, where: str) -> np.ndarray:
    """``entry[name]`` (``'offset'`` or ``'scale'``) of a normalization-stats entry as a finite
    float64 array, or a CheckpointError naming ``where`` and what was expected."""
    if not isinstance(entry, Mapping) or name not in entry:
        found = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
        raise CheckpointError(
            f"{where} has no {name!r}; expected a dict with 'offset' and 'scale', found {found}"
        )
    try:
        array = np.asarray(entry[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{where}[{name!r}] is not an array of numbers: {entry[name]!r}"
        ) from None
    if not np.all(np.isfinite(array)):
        raise CheckpointError(f"{where}[{name!r}] holds non-finite values")
    return array


def _action_keys(
    ckpt: Mapping[str, Any], config: Mapping[str, Any], ac_dim: int, source: str
) -> tuple[ActionKey, ...]:
    train = config.get("train", {})
    action_config = train.get("action_config") or {}
    stats = ckpt.get("action_normalization_stats")
    if not stats:
        return (ActionKey("actions", ac_dim),)
    names = list(train.get("action_keys") or list(stats))
    keys = []
    for name in names:
        if name not in stats:
            raise CheckpointError(
                f"{source}: action key {name!r} (config.train.action_keys) has no entry in "
                f"action_normalization_stats (keys {list(stats)})"
            )
        entry = stats[name]
        where = f"{source}: action_normalization_stats[{name!r}]"
        scale = _stat_array(entry, "scale", where).reshape(-1)
        offset = _stat_array(entry, "offset", where).reshape(-1)
        cfg = action_config.get(name) or {}
        try:
            keys.append(
                ActionKey(
                    name=name,
                    dim=offset.size,
                    scale=tuple(float(v) for v in scale),
                    offset=tuple(float(v) for v in offset),
                    rotation_format=cfg.get("format"),
                    convert_at_runtime=str(cfg.get("convert_at_runtime", "rot_axis_angle")),
                )
            )
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
    return tuple(keys)


def _obs_stats(stats: Any, source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not stats:
        return {}
    out = {}
    for key, entry in stats.items():
        where = f"{source}: obs_normalization_stats[{key!r}]"
        out[str(key)] = (_stat_array(entry, "offset", where), _stat_array(entry, "scale", where))
    return out


def unet_dims_from_state_dict(
    state_dict: Mapping[str, Any], source: str = "checkpoint"
) -> UnetDims:
    """``ConditionalUnet1D`` sizes from the weights (canonical keys, no ``module.`` infix).

    down_dims from ``down_modules.<i>.0.blocks.0.block.0.weight`` (out, in, kernel); the
    embedding size from ``diffusion_step_encoder.1.weight`` (4e, e); the conditioning size from
    a FiLM layer ``mid_modules.0.cond_encoder.1.weight`` (2C, e + G); n_groups stays upstream's 8
    (GroupNorm has no shape that records it).
    """

    def shape(key: str) -> tuple[int, ...]:
        if UNET + key not in state_dict:
            raise CheckpointError(
                f"{source}: the state dict has no {UNET + key!r}; is this a robomimic "
                "DiffusionPolicyUNet checkpoint?"
            )
        return tuple(int(d) for d in getattr(state_dict[UNET + key], "shape", ()))

    down = []
    i = 0
    while UNET + f"down_modules.{i}.0.blocks.0.block.0.weight" in state_dict:
        down.append(shape(f"down_modules.{i}.0.blocks.0.block.0.weight"))
        i += 1
    if not down:
        shape("down_modules.0.0.blocks.0.block.0.weight")
    embed = shape("diffusion_step_encoder.1.weight")[1]
    cond = shape("mid_modules.0.cond_encoder.1.weight")[1]
    return UnetDims(
        input_dim=down[0][1],
        global_cond_dim=cond - embed,
        diffusion_step_embed_dim=embed,
        down_dims=tuple(d[0] for d in down),
        kernel_size=down[0][2],
    )
