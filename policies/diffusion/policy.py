"""The ``diffusion`` policy: a robomimic / DROID ``DiffusionPolicyUNet`` behind ``act()``.

    evalharness run --suite libero_spatial --policy diffusion:/path/model.pth
    evalharness run ... --policy "diffusion:/path/model.pth?device=cuda&missing_obs=zeros"

Per query, for a batch of envs: map standard observations to the checkpoint's keys
(:mod:`.keymap`), turn images into float CHW in [0, 1] at the checkpoint's size, encode the
last ``observation_horizon`` frames, run the configured DDPM/DDIM sampler from per-episode
noise, keep ``naction[To-1 : To-1+Ta]`` (upstream's executed slice), un-normalize and decode to
LIBERO's 7-d delta actions (:mod:`.actions`). The runner executes the whole Ta-step chunk before
asking again, which is robomimic's action queue. A checkpoint with a gripper head (written by
``finetune --option gripper_head=true``) takes the chunk's gripper commands from the head's
most likely open/close decision instead of the sampled gripper dimension (``?gripper_head=false``
keeps the sample).

Options: :class:`~evalharness.policies.diffusion.options.DiffusionOptions` (``evalharness
policies`` lists them). Noise comes from one torch generator per episode, seeded by its
``episode_seed`` and kept in the policy's ``EpisodeStreams``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F

from evalharness.policies.base import EpisodeStreams, Policy, PolicySpec
from evalharness.policies.common.compat import report_non_strict_load
from evalharness.policies.common.options import OptionError, option_device, parse_options
from evalharness.policies.diffusion.actions import decode_to_libero, split_unnormalize
from evalharness.policies.diffusion.checkpoint import LoadedCheckpoint, load_checkpoint
from evalharness.policies.diffusion.config import DiffusionPolicyConfig
from evalharness.policies.diffusion.keymap import STANDARD_SOURCES, ObsSource, gather
from evalharness.policies.diffusion.options import DiffusionOptions
from evalharness.policies.diffusion.schedulers import NoiseScheduler

__all__ = ["DiffusionPolicy", "make_diffusion_policy"]

LIBERO_ACTION_DIM = 7
MISSING_OBS_MODES: tuple[str, ...] = get_args(get_type_hints(DiffusionOptions)["missing_obs"])
RESIZE_MODES: tuple[str, ...] = get_args(get_type_hints(DiffusionOptions)["resize"])
_OWNER = "policy 'diffusion'"


class DiffusionPolicy(Policy):
    """Batched inference for a loaded diffusion-policy checkpoint."""

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        *,
        device: str | torch.device = "cpu",
        missing_obs: str = "error",
        resize: str = "policy",
        sources: Mapping[str, ObsSource] | None = None,
        gripper_head: bool = True,
    ) -> None:
        if missing_obs not in MISSING_OBS_MODES:
            raise ValueError(f"missing_obs={missing_obs!r}; expected one of {MISSING_OBS_MODES}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize={resize!r}; expected one of {RESIZE_MODES}")
        self.loaded = loaded
        self.config = config = loaded.config
        self.checkpoint = loaded.path
        self.device = torch.device(device)
        self.nets = loaded.nets.to(self.device).eval()
        self.gripper_head = self.nets.gripper_head if gripper_head else None
        self.scheduler = NoiseScheduler(config.scheduler)
        self.sources = dict(STANDARD_SOURCES if sources is None else sources)
        self.missing_obs = missing_obs
        unmapped = [k for k in config.obs_shapes if k not in self.sources]
        if unmapped and missing_obs == "error":
            raise ValueError(
                f"{loaded.path}: the checkpoint needs observation(s) {unmapped} that the standard "
                f"LIBERO observation (image_primary, image_wrist, proprio = eef pos 3 + axis-angle "
                f"3 + gripper qpos 2, joint_states 7) does not provide. Pass ?missing_obs=zeros to feed zeros "
                f"(a smoke test, not an evaluation) or ?missing_obs=passthrough if your env "
                f"emits them under these names. Mapped keys: "
                f"{ {k: self.sources[k].describe() for k in config.obs_shapes if k in self.sources} }"
            )
        if unmapped and missing_obs == "zeros":
            warnings.warn(
                f"diffusion policy {loaded.path}: feeding zeros for {unmapped}; results are not "
                "an evaluation of this checkpoint",
                stacklevel=2,
            )
        self._unmapped = unmapped
        image_sizes: dict[str, tuple[int, int]] = {}
        if resize == "env":
            for key in config.rgb_keys:
                src = self.sources.get(key)
                if src is not None:
                    image_sizes[src.key] = config.obs_shapes[key][1:3]  # type: ignore[assignment]
        self.spec = PolicySpec(
            name="diffusion",
            window_size=config.observation_horizon,
            action_horizon=config.action_horizon,
            action_dim=LIBERO_ACTION_DIM,
            image_sizes=image_sizes,
            exec_horizon=config.action_horizon,
        )
        self.episodes: EpisodeStreams[torch.Generator] = EpisodeStreams(
            lambda seed: torch.Generator().manual_seed(seed)
        )
        self._obs_normalization = obs_normalizers(config, self.device)
        # (t, t as a device tensor) once, rather than a host-to-device copy per denoising step
        self._timesteps = [
            (t, torch.tensor(t, device=self.device)) for t in self.scheduler.timesteps
        ]

    def reset(self, batch_size: int) -> None:
        """Forget the per-episode noise generators."""
        self.episodes.clear()

    # -- observations ----------------------------------------------------------------------
    def _raw(self, obs: Mapping[str, np.ndarray], key: str, batch: int) -> np.ndarray:
        if key in obs:
            return np.asarray(obs[key])
        source = self.sources.get(key)
        if source is not None and source.key in obs:
            return gather(obs, key, source)
        if key in self._unmapped and self.missing_obs == "zeros":
            return np.zeros((batch, self.config.observation_horizon, *self.config.obs_shapes[key]))
        where = source.describe() if source is not None else "no standard key"
        raise KeyError(
            f"diffusion policy: observation {key!r} (from {where}) is not in the batch; "
            f"batch keys: {sorted(obs)}"
        )

    def prepare(self, obs: Mapping[str, np.ndarray], batch: int) -> dict[str, torch.Tensor]:
        """Checkpoint-keyed float tensors (B, To, ...) as the encoder expects them."""
        to = self.config.observation_horizon
        out: dict[str, torch.Tensor] = {}
        for key, shape in self.config.obs_shapes.items():
            value = self._raw(obs, key, batch)
            if value.ndim == len(shape) + 1:
                value = value[:, None]  # no window axis: a single frame
            if value.shape[1] < to:
                raise ValueError(
                    f"diffusion policy: {key!r} has a window of {value.shape[1]} frames, the "
                    f"checkpoint needs observation_horizon={to}"
                )
            value = value[:, -to:]
            tensor = torch.as_tensor(np.ascontiguousarray(value)).to(self.device)
            tensor = tensor.float()
            if key in self._obs_normalization:
                offset, scale = self._obs_normalization[key]
                tensor = (tensor - offset) / scale
            if key in self.config.visual:
                tensor = process_frames(tensor, key, shape)
            elif tuple(tensor.shape[2:]) != tuple(shape):
                raise ValueError(
                    f"diffusion policy: {key!r} has per-step shape {tuple(tensor.shape[2:])}, the "
                    f"checkpoint expects {tuple(shape)}"
                )
            out[key] = tensor
        return out

    # -- sampling --------------------------------------------------------------------------
    def initial_noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(B, Tp, Da) standard normal noise, one row from each episode's generator (CPU)."""
        shape = (self.config.prediction_horizon, self.config.action_dim)
        rows = [torch.randn(shape, generator=gen) for gen in generators]
        return torch.stack(rows).to(self.device)

    @torch.inference_mode()
    def encode(self, obs_t: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The UNet's conditioning (B, To·D): the encoded observation window."""
        return self.nets.encode(obs_t)

    @torch.inference_mode()
    def sample(
        self,
        obs_t: Mapping[str, torch.Tensor],
        noise: torch.Tensor,
        generators: Sequence[torch.Generator] | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The full normalized trajectory (B, Tp, Da) from `noise`, as upstream's loop; the
        schedulers' per-step noise comes from ``generators`` (one per row) when given.
        ``cond`` is ``nets.encode(obs_t)`` when the caller already has it."""
        if cond is None:
            cond = self.nets.encode(obs_t)
        gens = None if generators is None else list(generators)
        x = noise
        for t, t_device in self._timesteps:
            eps = self.nets.noise_pred_net(x, t_device, cond)
            x = self.scheduler.step(eps, t, x, gens)
        return x

    def act(
        self, obs: Mapping[str, np.ndarray], tasks: Mapping[str, Sequence[Any] | np.ndarray]
    ) -> np.ndarray:
        """LIBERO action chunks (B, Ta, 7) for a batch of windowed observations."""
        generators = self.episodes.rows(tasks)
        obs_t = self.prepare(obs, len(generators))
        noise = self.initial_noise(generators)
        cond = self.encode(obs_t)
        naction = self.sample(obs_t, noise, generators, cond=cond)
        start = self.config.observation_horizon - 1
        executed = slice(start, start + self.config.action_horizon)
        chunk = naction[:, executed].float().cpu().numpy()
        parts = split_unnormalize(chunk, self.config.action_keys)
        proprio = obs.get("proprio")
        latest = None if proprio is None else np.asarray(proprio)[:, -1]
        actions = decode_to_libero(parts, self.config.action_keys, latest)
        if self.gripper_head is not None:
            with torch.inference_mode():
                logits = self.gripper_head(cond)[:, executed].float().cpu().numpy()
            actions[..., -1] = np.where(logits > 0, 1.0, -1.0)  # LIBERO: +1 closes
        return actions


def obs_normalizers(
    config: DiffusionPolicyConfig, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """robomimic's ``obs_normalization_stats`` as float32 (offset, scale) on ``device``, made
    once so that each batch only subtracts and divides."""
    return {
        key: (
            torch.as_tensor(offset, device=device).float(),
            torch.as_tensor(scale, device=device).float(),
        )
        for key, (offset, scale) in config.obs_normalization.items()
    }


def process_frames(tensor: torch.Tensor, key: str, shape: Sequence[int]) -> torch.Tensor:
    """(B, T, H, W, C) [0, 255] → (B, T, C, H, W) [0, 1] at the checkpoint's (C, H, W):
    robomimic's ``process_frame``, then an antialiased bilinear resize when sizes differ.
    The adapter and the diffusion trainer both use it, so training sees what evaluation does."""
    if tensor.ndim != 5 or tensor.shape[-1] != shape[0]:
        raise ValueError(
            f"diffusion policy: image {key!r} must be (B, T, H, W, {shape[0]}), got "
            f"{tuple(tensor.shape)}"
        )
    tensor = (tensor / 255.0).clip(0.0, 1.0).permute(0, 1, 4, 2, 3)
    height, width = int(shape[1]), int(shape[2])
    if tuple(tensor.shape[-2:]) != (height, width):
        b, t = tensor.shape[:2]
        flat = tensor.reshape(b * t, *tensor.shape[2:])
        flat = F.interpolate(
            flat, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
        tensor = flat.reshape(b, t, *flat.shape[1:]).clip(0.0, 1.0)
    return tensor


def make_diffusion_policy(path: str | None = None, **options: str) -> Policy:
    """Factory for ``diffusion:PATH[?options]`` (:class:`DiffusionOptions`)."""
    if path is None:
        raise OptionError(
            "policy 'diffusion' needs a checkpoint: diffusion:/path/to/model.pth (a robomimic or "
            "DROID DiffusionPolicyUNet .pth)"
        )
    opts = parse_options(DiffusionOptions, options, _OWNER)
    device = option_device({"device": opts.device}, _OWNER)
    loaded = load_checkpoint(path, trust=opts.trust, strict=opts.strict, use_ema=opts.ema)
    report_non_strict_load(f"diffusion {path}", loaded.report)
    return DiffusionPolicy(
        loaded,
        device=device,
        missing_obs=opts.missing_obs,
        resize=opts.resize,
        gripper_head=opts.gripper_head,
    )
