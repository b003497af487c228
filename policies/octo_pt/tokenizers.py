"""Octo's tokenizers in torch: image stems with goal-image early fusion, T5 language, low-dim.

As upstream (``octo/model/components/tokenizers.py``, ``vit_encoders.py``): images are scaled
to [-1, 1], the task's goal images are stacked on the channels of every window step (zeros
when absent), SmallStem is StdConv (kernel standardized at use time, eps 1e-5 on the population
std) → GroupNorm(32, eps 1e-6) → ReLU per stage, then a patchifying ``embedding`` conv.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evalharness.policies.octo_pt.t5 import T5Encoder
from evalharness.policies.octo_pt.transformer import LN_EPS, STD_CONV_EPS, Batch, TokenGroup

# --------------------------------------------------------------------------------------------
# tokenizers


def normalize_images(images: torch.Tensor, norm_type: str = "default") -> torch.Tensor:
    """uint8 (..., C) → float; ``default`` = [-1, 1] as upstream, ``imagenet`` per RGB triple."""
    x = images.float()
    if norm_type == "default":
        return x / 127.5 - 1.0
    if norm_type == "imagenet":
        mean = torch.tensor([0.485, 0.456, 0.406], device=x.device)
        std = torch.tensor([0.229, 0.224, 0.225], device=x.device)
        tiles = x.shape[-1] // 3
        return (x / 255 - mean.repeat(tiles)) / std.repeat(tiles)
    raise ValueError(f"unknown img_norm_type {norm_type!r}; expected 'default' or 'imagenet'")


class StdConv2d(nn.Conv2d):
    """Conv with weight standardization at use time; the stored kernel stays raw (as in JAX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + STD_CONV_EPS)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class SmallStem(nn.Module):
    """Conv stem then patchify (upstream ``SmallStem``; ``SmallStem16`` = patch_size 16).

    Each stage is StdConv → GroupNorm(32 groups, eps 1e-6) → ReLU, then a ``patch_size // 16``
    conv named ``embedding`` to ``num_features``.
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 32,
        kernel_sizes: Sequence[int] = (3, 3, 3, 3),
        strides: Sequence[int] = (2, 2, 2, 2),
        features: Sequence[int] = (32, 96, 192, 384),
        padding: Sequence[int] = (1, 1, 1, 1),
        num_features: int = 512,
        img_norm_type: str = "default",
    ) -> None:
        super().__init__()
        self.img_norm_type = img_norm_type
        convs, norms = [], []
        channels = in_channels
        for kernel, stride, width, pad in zip(
            kernel_sizes, strides, features, padding, strict=True
        ):
            convs.append(StdConv2d(channels, width, kernel, stride=stride, padding=pad))
            norms.append(nn.GroupNorm(32, width, eps=LN_EPS))
            channels = width
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        patch = patch_size // 16
        self.embedding = nn.Conv2d(channels, num_features, patch, stride=patch)
        self._geometry = [(k, s, p) for k, s, p in zip(kernel_sizes, strides, padding, strict=True)]
        self._patch = patch

    def num_tokens(self, height: int, width: int) -> int:
        """How many tokens an image of this size becomes."""
        for kernel, stride, pad in self._geometry:
            height = (height + 2 * pad - kernel) // stride + 1
            width = (width + 2 * pad - kernel) // stride + 1
        return (height // self._patch) * (width // self._patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) uint8 → (N, h, w, num_features)."""
        x = normalize_images(images, self.img_norm_type).permute(0, 3, 1, 2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x)))
        return self.embedding(x).permute(0, 2, 3, 1)


class PatchEncoder(nn.Module):
    """Patchify only (upstream ``PatchEncoder``)."""

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 32,
        num_features: int = 512,
        img_norm_type: str = "default",
    ) -> None:
        super().__init__()
        self.img_norm_type = img_norm_type
        self._patch = patch_size
        self.embedding = nn.Conv2d(in_channels, num_features, patch_size, stride=patch_size)

    def num_tokens(self, height: int, width: int) -> int:
        return (height // self._patch) * (width // self._patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_images(images, self.img_norm_type).permute(0, 3, 1, 2)
        return self.embedding(x).permute(0, 2, 3, 1)


def regex_filter(patterns: Sequence[str], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if any(re.match(p, k) for p in patterns)]


def _pad_mask(
    pad_mask_dict: Mapping[str, torch.Tensor] | None,
    keys: Sequence[str],
    shape: torch.Size,
    device: torch.device,
) -> torch.Tensor:
    """Upstream ``generate_proper_pad_mask``: valid if any stacked key is; all valid if unknown."""
    if pad_mask_dict is None or not all(k in pad_mask_dict for k in keys):
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.stack([pad_mask_dict[k].bool() for k in keys], dim=-1).any(dim=-1)
    return mask[..., None].expand(shape)


class ImageTokenizer(nn.Module):
    """Stacks obs images (and the task's goal images, early fusion) on channels, then encodes."""

    def __init__(
        self,
        encoder: nn.Module,
        obs_stack_keys: Sequence[str],
        task_stack_keys: Sequence[str] = (),
        proper_pad_mask: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.obs_stack_keys = tuple(obs_stack_keys)
        self.task_stack_keys = tuple(task_stack_keys)
        self.proper_pad_mask = proper_pad_mask

    def stack_keys(self, observations: Batch) -> list[str]:
        return regex_filter(self.obs_stack_keys, sorted(observations))

    def forward(self, observations: Batch, tasks: Batch) -> TokenGroup | None:
        obs_keys = self.stack_keys(observations)
        if not obs_keys:
            return None  # upstream skips the tokenizer and drops its group
        inputs = torch.cat([observations[k] for k in obs_keys], dim=-1)
        if self.task_stack_keys:
            tasks = dict(tasks)
            for key in regex_filter(self.task_stack_keys, list(observations)):
                if key not in tasks:  # no goal image: zeros, as upstream
                    tasks[key] = torch.zeros_like(observations[key][:, 0])
            task_keys = regex_filter(self.task_stack_keys, sorted(tasks))
            if not task_keys:
                raise ValueError(f"no task inputs match task_stack_keys {self.task_stack_keys}")
            goal = torch.cat([tasks[k] for k in task_keys], dim=-1)
            goal = goal[:, None].expand(-1, inputs.shape[1], *goal.shape[1:])
            inputs = torch.cat([inputs, goal], dim=-1)
        b, t = inputs.shape[:2]
        features = self.encoder(inputs.reshape(b * t, *inputs.shape[2:]))
        tokens = features.reshape(b, t, -1, features.shape[-1])
        if self.proper_pad_mask:
            mask = _pad_mask(
                observations.get("pad_mask_dict"), obs_keys, tokens.shape[:-1], tokens.device
            )
        else:
            mask = torch.ones(tokens.shape[:-1], dtype=torch.bool, device=tokens.device)
        return TokenGroup(tokens, mask)


class LanguageTokenizer(nn.Module):
    """T5-encodes ``language_instruction`` token ids; or passes precomputed embeddings through.

    The mask ignores T5's attention mask (upstream TODO): all tokens are valid iff
    ``pad_mask_dict["language_instruction"]``.
    """

    def __init__(self, t5: T5Encoder | None, proper_pad_mask: bool = True) -> None:
        super().__init__()
        self.t5 = t5
        self.proper_pad_mask = proper_pad_mask

    def forward(self, observations: Batch, tasks: Batch) -> TokenGroup | None:
        if "language_instruction" not in tasks:
            return None
        language = tasks["language_instruction"]
        if isinstance(language, Mapping):
            if self.t5 is None:
                raise ValueError("got language token ids but this tokenizer has no encoder")
            tokens = self.t5(language["input_ids"], language.get("attention_mask"))
        else:
            tokens = language[:, None, :] if language.ndim == 2 else language
        if self.proper_pad_mask:
            mask = _pad_mask(
                tasks.get("pad_mask_dict"),
                ("language_instruction",),
                tokens.shape[:-1],
                tokens.device,
            )
        else:
            mask = torch.ones(tokens.shape[:-1], dtype=torch.bool, device=tokens.device)
        return TokenGroup(tokens, mask)


class LowdimObsTokenizer(nn.Module):
    """One token per low-dimensional observation value (e.g. ``proprio``).

    Raw values as 1-feature tokens by default; with ``discretize`` a one-hot over ``n_bins``
    bins (uniform in [low, high], or Gaussian quantiles), as upstream's ``BinTokenizer``.
    """

    thresholds: torch.Tensor

    def __init__(
        self,
        obs_keys: Sequence[str],
        discretize: bool = False,
        n_bins: int = 256,
        bin_type: str = "uniform",
        low: float = 0.0,
        high: float = 1.0,
    ) -> None:
        super().__init__()
        self.obs_keys = tuple(obs_keys)
        self.discretize = discretize
        self.n_bins = n_bins
        self.bin_type = bin_type
        self.low, self.high = low, high
        if bin_type == "uniform":
            thresholds = np.linspace(low, high, n_bins + 1, dtype=np.float32)
        else:
            from statistics import NormalDist

            quantiles = np.linspace(1e-6, 1 - 1e-6, n_bins + 1, dtype=np.float32)
            thresholds = np.array([NormalDist().inv_cdf(float(q)) for q in quantiles], np.float32)
        self.register_buffer("thresholds", torch.as_tensor(thresholds), persistent=False)

    def keys(self, observations: Batch) -> list[str]:
        # Upstream's order: pattern by pattern, matching keys sorted within each pattern.
        return [k for p in self.obs_keys for k in sorted(observations) if re.match(p, k)]

    def forward(self, observations: Batch, tasks: Batch) -> TokenGroup | None:
        keys = self.keys(observations)
        if not keys:
            return None
        values = torch.cat([observations[k].float() for k in keys], dim=-1)
        if self.discretize:
            if self.bin_type == "uniform":
                values = values.clamp(self.low + 1e-6, self.high - 1e-6)
            v = values[..., None]
            hot = (v < self.thresholds[1:]) & (v >= self.thresholds[:-1])
            tokens = F.one_hot(hot.to(torch.uint8).argmax(-1), self.n_bins).to(values.dtype)
        else:
            tokens = values[..., None]
        mask = torch.ones(tokens.shape[:-1], dtype=torch.bool, device=tokens.device)
        return TokenGroup(tokens, mask)
