"""The robomimic / DROID diffusion policy networks in plain ``torch.nn``.

Module and parameter names equal upstream's (robomimic v0.5 ``DiffusionPolicyUNet``, the DROID
fork, torchvision's ResNets), so a checkpoint's ``state_dict`` loads strictly without renames:

    policy.obs_encoder.nets.obs.obs_nets.<obs key>.{backbone,pool,nets}.*   VisualCore per camera
    policy.obs_encoder.combine.{0,2,4}                                       DROID only
    policy.noise_pred_net.{diffusion_step_encoder,down_modules,mid_modules,up_modules,final_conv}

Two upstream layout quirks are reproduced on purpose: a ``VisualCore`` registers its backbone
and pool twice (as ``backbone``/``pool`` and inside the ``nets`` Sequential), so both key
spellings exist; and every BatchNorm of a ResNet trunk is a ``GroupNorm(C // 16, C)``, because
``DiffusionPolicyUNet`` calls ``replace_bn_with_gn`` before training.

Everything here is inference code: randomizers act as at eval time (``CropRandomizer`` is a
center crop, ``ColorRandomizer`` the identity) and ``SpatialSoftmax`` adds no keypoint noise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GRIPPER_HEAD_PREFIX",
    "ConditionalUnet1D",
    "DiffusionPolicyNets",
    "GripperHead",
    "ObservationEncoder",
    "ObservationGroupEncoder",
    "ResNetTrunk",
    "ShallowConv",
    "SpatialSoftmax",
    "UnetDims",
    "VisualCore",
    "VisualCoreSpec",
]

#: ``replace_bn_with_gn(features_per_group=16)`` in robomimic's diffusion_policy.py.
GN_FEATURES_PER_GROUP = 16


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels // GN_FEATURES_PER_GROUP, channels)


# --------------------------------------------------------------------------------------------
# Visual backbones
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (two 3x3 convs), BatchNorm replaced by GroupNorm."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _group_norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _group_norm(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), _group_norm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 Bottleneck (stride on the 3x3 conv), GroupNorm for BatchNorm."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _group_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _group_norm(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _group_norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), _group_norm(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_RESNET_LAYOUTS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    "ResNet18Conv": (BasicBlock, (2, 2, 2, 2)),
    "ResNet50Conv": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetTrunk(nn.Module):
    """robomimic's ``ResNet18Conv`` / ``ResNet50Conv``: torchvision's ResNet without pool and fc.

    ``self.nets`` is ``Sequential(conv1, bn1, relu, maxpool, layer1, ..., layer4)``, so the
    keys read ``nets.0.weight``, ``nets.4.0.conv1.weight`` exactly as upstream's
    ``Sequential(*list(resnet.children())[:-2])``.
    """

    def __init__(self, name: str = "ResNet18Conv", input_channel: int = 3) -> None:
        super().__init__()
        if name not in _RESNET_LAYOUTS:
            raise ValueError(
                f"unknown ResNet trunk {name!r}; expected one of {sorted(_RESNET_LAYOUTS)}"
            )
        block, depths = _RESNET_LAYOUTS[name]
        self.name = name
        layers: list[nn.Module] = [
            nn.Conv2d(input_channel, 64, 7, 2, 3, bias=False),
            _group_norm(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        inplanes = 64
        for i, depth in enumerate(depths):
            planes = 64 * 2**i
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(block(inplanes, planes, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.out_channels = inplanes
        self.nets = nn.Sequential(*layers)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) after the trunk: five stride-2 stages, rounding up like robomimic."""
        return (self.out_channels, math.ceil(input_shape[1] / 32), math.ceil(input_shape[2] / 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nets(x)


class ShallowConv(nn.Module):
    """robomimic's ``ShallowConv`` (the DSAE encoder): one stride-2 conv, then three convs."""

    def __init__(self, input_channel: int = 3, output_channel: int = 32) -> None:
        super().__init__()
        self.out_channels = output_channel
        self.nets = nn.Sequential(
            nn.Conv2d(input_channel, 64, 7, 2, 3),
            nn.ReLU(),
            nn.Conv2d(64, 32, 1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(32, output_channel, 3, 1, 1),
        )

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) after the stride-2 first conv, rounding down like robomimic."""
        return (self.out_channels, input_shape[1] // 2, input_shape[2] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nets(x)


BACKBONES = ("ResNet18Conv", "ResNet50Conv", "ShallowConv")


class SpatialSoftmax(nn.Module):
    """Keypoints as the softmax-weighted mean pixel position of each feature map (DSAE).

    A 1x1 conv maps C channels to ``num_kp`` maps; each is softmaxed over H*W and reduced to its
    expected (x, y) in [-1, 1]. ``temperature``, ``pos_x`` and ``pos_y`` are buffers, as in
    robomimic, so they travel with the checkpoint. Output (B, num_kp, 2).
    """

    temperature: torch.Tensor
    pos_x: torch.Tensor
    pos_y: torch.Tensor

    def __init__(
        self,
        input_shape: Sequence[int],
        num_kp: int | None = 32,
        temperature: float = 1.0,
        learnable_temperature: bool = False,
    ) -> None:
        super().__init__()
        channels, height, width = (int(v) for v in input_shape)
        self._in_shape = (channels, height, width)
        self.nets: nn.Conv2d | None = None
        if num_kp is not None:
            self.nets = nn.Conv2d(channels, num_kp, kernel_size=1)
        self.num_kp = channels if num_kp is None else num_kp
        temp = torch.ones(1) * temperature
        if learnable_temperature:
            self.temperature = nn.Parameter(temp)
        else:
            self.register_buffer("temperature", temp)
        # The same grid as robomimic: np.meshgrid(linspace(-1, 1, W), linspace(-1, 1, H)),
        # computed in float64 then cast, so the buffers match a checkpoint's bit for bit.
        xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float64)
        ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float64)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        self.register_buffer("pos_x", grid_x.reshape(1, height * width).float())
        self.register_buffer("pos_y", grid_y.reshape(1, height * width).float())

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, int]:
        """(num_kp, 2)."""
        return (self.num_kp, 2)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if tuple(feature.shape[1:]) != self._in_shape:
            raise ValueError(
                f"SpatialSoftmax expects features of shape (B, {self._in_shape}), got "
                f"{tuple(feature.shape)}; the image size differs from the checkpoint's"
            )
        if self.nets is not None:
            feature = self.nets(feature)
        _, _, height, width = feature.shape
        attention = F.softmax(feature.reshape(-1, height * width) / self.temperature, dim=-1)
        expected_x = torch.sum(self.pos_x * attention, dim=1, keepdim=True)
        expected_y = torch.sum(self.pos_y * attention, dim=1, keepdim=True)
        return torch.cat([expected_x, expected_y], dim=1).view(-1, self.num_kp, 2)


@dataclass(frozen=True)
class VisualCoreSpec:
    """One camera's encoder: robomimic ``VisualCore`` kwargs plus its eval-time crop.

    `input_shape` is (C, H, W) as the checkpoint's ``shape_metadata`` records it; `crop` is the
    ``CropRandomizer`` (height, width), applied as a center crop before the backbone.
    """

    input_shape: tuple[int, int, int]
    backbone: str = "ResNet18Conv"
    pool: str | None = "SpatialSoftmax"
    num_kp: int | None = 32
    temperature: float = 1.0
    learnable_temperature: bool = False
    flatten: bool = True
    feature_dimension: int | None = 64
    crop: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"visual backbone {self.backbone!r} is not supported; expected one of {BACKBONES}"
            )
        if self.pool not in (None, "SpatialSoftmax"):
            raise ValueError(
                f"visual pool {self.pool!r} is not supported; expected 'SpatialSoftmax' or None"
            )
        if self.feature_dimension is not None and not self.flatten:
            raise ValueError("VisualCore: feature_dimension needs flatten=True (as upstream)")
        if len(self.input_shape) != 3:
            raise ValueError(f"VisualCore input_shape must be (C, H, W), got {self.input_shape}")
        if self.crop is not None:
            _, h, w = self.input_shape
            if not (0 < self.crop[0] <= h and 0 < self.crop[1] <= w):
                raise ValueError(
                    f"crop {self.crop} does not fit images of shape {self.input_shape}"
                )

    @property
    def core_input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the backbone sees: after the crop."""
        c, h, w = self.input_shape
        return (c, *self.crop) if self.crop is not None else (c, h, w)


class VisualCore(nn.Module):
    """robomimic ``VisualCore``: backbone -> [SpatialSoftmax] -> [Flatten] -> [Linear]."""

    def __init__(self, spec: VisualCoreSpec) -> None:
        super().__init__()
        self.spec = spec
        channels = spec.input_shape[0]
        self.backbone: ResNetTrunk | ShallowConv
        if spec.backbone == "ShallowConv":
            self.backbone = ShallowConv(channels)
        else:
            self.backbone = ResNetTrunk(spec.backbone, channels)
        feat_shape: tuple[int, ...] = self.backbone.output_shape(spec.core_input_shape)
        layers: list[nn.Module] = [self.backbone]
        self.pool: SpatialSoftmax | None = None
        if spec.pool is not None:
            self.pool = SpatialSoftmax(
                feat_shape, spec.num_kp, spec.temperature, spec.learnable_temperature
            )
            feat_shape = self.pool.output_shape(feat_shape)
            layers.append(self.pool)
        if spec.flatten:
            layers.append(nn.Flatten(start_dim=1, end_dim=-1))
        if spec.feature_dimension is not None:
            layers.append(nn.Linear(math.prod(feat_shape), spec.feature_dimension))
            feat_shape = (spec.feature_dimension,)
        elif spec.flatten:
            feat_shape = (math.prod(feat_shape),)
        self.out_dim: int = math.prod(feat_shape)
        # Upstream registers backbone/pool again inside this Sequential; the checkpoint holds
        # both spellings of each key, and so does this module's state_dict.
        self.nets = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] at `input_shape` -> (B, out_dim) features."""
        if self.spec.crop is not None:
            th, tw = self.spec.crop
            h, w = image.shape[-2:]
            top, left = int((h - th) / 2), int((w - tw) / 2)
            image = image[..., top : top + th, left : left + tw]
        return self.nets(image).reshape(image.shape[0], -1)


class ObservationEncoder(nn.Module):
    """robomimic ``ObservationEncoder`` for one observation group, in key order.

    Cameras go through their ``VisualCore`` and a ReLU (upstream's default
    ``feature_activation``); low-dim keys pass through flattened. Features are concatenated in
    the order of `obs_shapes`, which must be the checkpoint's ``shape_metadata`` order.
    """

    def __init__(
        self, obs_shapes: Mapping[str, tuple[int, ...]], visual: Mapping[str, VisualCoreSpec]
    ) -> None:
        super().__init__()
        self.obs_shapes = dict(obs_shapes)
        self.obs_nets = nn.ModuleDict()
        self.activation = nn.ReLU()
        self.out_dim: int = 0
        for key, shape in self.obs_shapes.items():
            if key in visual:
                core = VisualCore(visual[key])
                self.obs_nets[key] = core
                self.out_dim += core.out_dim
            else:
                self.out_dim += math.prod(shape)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        for key in self.obs_shapes:
            x = obs[key]
            if key in self.obs_nets:
                x = self.activation(self.obs_nets[key](x))
            feats.append(x.reshape(x.shape[0], -1))
        return torch.cat(feats, dim=-1)


class ObservationGroupEncoder(nn.Module):
    """robomimic ``ObservationGroupEncoder`` with the single group ``obs``.

    With `combine` set (the DROID fork) the concatenated features go through
    ``Linear(D, 1024) -> ReLU -> Linear(1024, 512) -> ReLU -> Linear(512, 512)``.
    """

    def __init__(
        self,
        obs_shapes: Mapping[str, tuple[int, ...]],
        visual: Mapping[str, VisualCoreSpec],
        combine: bool = False,
    ) -> None:
        super().__init__()
        encoder = ObservationEncoder(obs_shapes, visual)
        self.nets = nn.ModuleDict({"obs": encoder})
        concat = encoder.out_dim
        self.combine: nn.Sequential | None = None
        self.out_dim: int = concat
        if combine:
            self.combine = nn.Sequential(
                nn.Linear(concat, 1024),
                nn.ReLU(),
                nn.Linear(1024, 512),
                nn.ReLU(),
                nn.Linear(512, 512),
            )
            self.out_dim = 512

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = self.nets["obs"](obs)
        if self.combine is not None:
            out = self.combine(out)
        return out


# --------------------------------------------------------------------------------------------
# Noise prediction network
# --------------------------------------------------------------------------------------------


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of the diffusion step: [sin | cos]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=x.device) * -(math.log(10000) / (half - 1)))
        emb = x[:, None] * freqs[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Downsample1d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM in between: ``scale * h + bias`` from the conditioning."""

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
            ]
        )
        self.cond_encoder = nn.Sequential(
            nn.Mish(), nn.Linear(cond_dim, 2 * out_channels), nn.Unflatten(-1, (-1, 1))
        )
        self.residual_conv: nn.Module = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        embed = self.cond_encoder(cond).reshape(cond.shape[0], 2, self.out_channels, 1)
        out = embed[:, 0] * out + embed[:, 1]  # first half scales, second half shifts
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


@dataclass(frozen=True)
class UnetDims:
    """``ConditionalUnet1D`` sizes. Read them from a checkpoint's weights
    (:func:`evalharness.policies.diffusion.config.unet_dims_from_state_dict`): upstream
    ignores ``config.algo.unet`` and always builds its class defaults."""

    input_dim: int
    global_cond_dim: int
    diffusion_step_embed_dim: int = 256
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8

    def __post_init__(self) -> None:
        if not self.down_dims:
            raise ValueError("UnetDims.down_dims must name at least one level")
        for name in ("input_dim", "global_cond_dim", "diffusion_step_embed_dim", "kernel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"UnetDims.{name} must be >= 1, got {getattr(self, name)}")


class ConditionalUnet1D(nn.Module):
    """Chi et al.'s 1-D temporal UNet with FiLM conditioning on (step embedding, obs features).

    ``forward(sample (B, T, A), timestep (B,) or scalar, global_cond (B, G)) -> (B, T, A)``.
    """

    def __init__(self, dims: UnetDims) -> None:
        super().__init__()
        self.dims = dims
        all_dims = [dims.input_dim, *dims.down_dims]
        dsed = dims.diffusion_step_embed_dim
        cond_dim = dsed + dims.global_cond_dim
        k, g = dims.kernel_size, dims.n_groups
        in_out = list(itertools.pairwise(all_dims))
        mid = all_dims[-1]
        self.mid_modules = nn.ModuleList(
            [ConditionalResidualBlock1D(mid, mid, cond_dim, k, g) for _ in range(2)]
        )
        self.down_modules = nn.ModuleList()
        for i, (dim_in, dim_out) in enumerate(in_out):
            last = i >= len(in_out) - 1
            self.down_modules.append(
                nn.ModuleList(
                    [
                        ConditionalResidualBlock1D(dim_in, dim_out, cond_dim, k, g),
                        ConditionalResidualBlock1D(dim_out, dim_out, cond_dim, k, g),
                        nn.Identity() if last else Downsample1d(dim_out),
                    ]
                )
            )
        self.up_modules = nn.ModuleList()
        for i, (dim_in, dim_out) in enumerate(reversed(in_out[1:])):
            # Upstream compares against len(in_out) - 1 here too, so every up level upsamples.
            last = i >= len(in_out) - 1
            self.up_modules.append(
                nn.ModuleList(
                    [
                        ConditionalResidualBlock1D(dim_out * 2, dim_in, cond_dim, k, g),
                        ConditionalResidualBlock1D(dim_in, dim_in, cond_dim, k, g),
                        nn.Identity() if last else Upsample1d(dim_in),
                    ]
                )
            )
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed)
        )
        start = dims.down_dims[0]
        # Upstream builds this Conv1dBlock with its default n_groups=8, whatever n_groups is.
        self.final_conv = nn.Sequential(
            Conv1dBlock(start, start, k), nn.Conv1d(start, dims.input_dim, 1)
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        global_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = sample.moveaxis(-1, -2)
        steps = torch.as_tensor(timestep, device=sample.device)
        if steps.ndim == 0:
            steps = steps[None]
        steps = steps.expand(sample.shape[0])
        cond = self.diffusion_step_encoder(steps)
        if global_cond is not None:
            cond = torch.cat([cond, global_cond], dim=-1)
        skips = []
        for level in self.down_modules:
            block1, block2, down = cast(nn.ModuleList, level)
            x = block2(block1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for level in self.up_modules:
            block1, block2, up = cast(nn.ModuleList, level)
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(block2(block1(x, cond), cond))
        return self.final_conv(x).moveaxis(-1, -2)


#: State-dict prefix of the optional gripper head (not part of robomimic's ``nets``).
GRIPPER_HEAD_PREFIX = "gripper_head."


class GripperHead(nn.Module):
    """A gripper classifier beside the diffusion model (evalharness's, not robomimic's).

    An MLP from the UNet's conditioning vector (the encoded observation window, To·D) to one
    open/close logit per step of the predicted trajectory (Tp). The diffusion model's own
    gripper dimension is a sample from its conditional distribution: near a switch, or after a
    failed grasp, the denoiser's gripper output lags the demonstrations even when the
    observation features tell the two cases apart (a linear probe on them does). Trained with
    binary cross-entropy on detached features, the head changes nothing in the diffusion model
    and returns the most likely command instead of a sample.
    """

    def __init__(self, cond_dim: int, hidden_dim: int, horizon: int) -> None:
        super().__init__()
        if min(cond_dim, hidden_dim, horizon) < 1:
            raise ValueError(
                f"GripperHead sizes must be positive: cond_dim={cond_dim}, "
                f"hidden_dim={hidden_dim}, horizon={horizon}"
            )
        self.net = nn.Sequential(
            nn.Linear(cond_dim, hidden_dim),
            nn.Mish(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Mish(),
            nn.Linear(hidden_dim, horizon),
        )

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, To·D) conditioning → (B, Tp) logits of "closed" (LIBERO +1)."""
        return cast(torch.Tensor, self.net(cond))


class DiffusionPolicyNets(nn.Module):
    """``nets`` of ``DiffusionPolicyUNet``: ``policy.obs_encoder`` and ``policy.noise_pred_net``,
    plus an optional :class:`GripperHead` (``gripper_head.*``, saved outside robomimic's
    ``model`` entry so that robomimic still loads the checkpoint)."""

    def __init__(
        self,
        obs_encoder: ObservationGroupEncoder,
        noise_pred_net: ConditionalUnet1D,
        gripper_head: GripperHead | None = None,
    ):
        super().__init__()
        self.policy = nn.ModuleDict({"obs_encoder": obs_encoder, "noise_pred_net": noise_pred_net})
        self.gripper_head = gripper_head

    @property
    def obs_encoder(self) -> ObservationGroupEncoder:
        module = self.policy["obs_encoder"]
        assert isinstance(module, ObservationGroupEncoder)
        return module

    @property
    def noise_pred_net(self) -> ConditionalUnet1D:
        module = self.policy["noise_pred_net"]
        assert isinstance(module, ConditionalUnet1D)
        return module

    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Observations (B, To, ...) per key -> (B, To * obs_dim), time-major like upstream."""
        first = next(iter(obs.values()))
        batch, window = first.shape[:2]
        flat = {k: v.reshape(batch * window, *v.shape[2:]) for k, v in obs.items()}
        return self.obs_encoder(flat).reshape(batch, -1)
