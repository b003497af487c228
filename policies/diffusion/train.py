"""Finetune a robomimic / DROID ``DiffusionPolicyUNet``: the ``diffusion`` finetune ``Trainer``.

robomimic's ``DiffusionPolicyUNet.train_on_batch`` on evalharness data::

    checkpoint ─► config edited for the new data (observation keys the data lacks are dropped,
                  the UNet predicts the data's action dim, horizons from the options) ─► new
                  nets built from it ─► the checkpoint's ``nets`` merged wherever name *and*
                  shape agree (``checkpoint.load_weights(strict=False)``: the report says what
                  is fresh and why, e.g. the UNet's input/output convs for another action dim,
                  the FiLM ``cond_encoder`` layers when the observation features change)
    loss:         obs (B, To) ─► encoder ─► global_cond (B, To·D); t ~ U{0 .. train_timesteps-1};
                  noisy = √ᾱ_t·a + √(1-ᾱ_t)·ε with the checkpoint's scheduler (its
                  ``num_train_timesteps`` and ``beta_schedule``, e.g. squaredcos_cap_v2);
                  MSE(noise_pred_net(noisy, t, global_cond), ε), unmasked, as upstream
                  (``prediction_type="sample"``: the target is the action sequence instead)
    optimizer:    AdamW with the driver's warmup-cosine learning rate, weight decay on weight
                  matrices/kernels only (not biases or norms), gradients clipped to
                  ``clip_gradient`` (upstream's ``max_grad_norm`` is null by default; the driver's
                  contract wins)
    data parallel: under torchrun each rank trains its rows of the global batch inside
                  DistributedDataParallel, crops/noise/times drawn for the global batch
                  (`evalharness.policies.common.distributed`); the EMA follows the
                  parameters, so it is the same on every rank
    EMA:          diffusers 0.11.1 ``EMAModel`` as robomimic uses it: decay
                  ``1 - (1 + k)^-power`` with ``k = max(0, step - 1)``, 0 for the first two
                  updates, capped at 0.9999, ``power`` from ``config.algo.ema.power`` (0.75 in
                  the fixture); buffers and frozen parameters are copied. The schedule restarts
                  at 0 (robomimic does not save the EMA step either), so the first updates copy
                  the trained weights; the EMA starts from the same merged weights as ``nets``.

Horizons. robomimic's ``SequenceDataset(seq_length=Tp, frame_stack=To, pad_frame_stack,
pad_seq_length)`` gives, for step ``t``, obs frames ``t-To+1 .. t`` and actions
``a[t-To+1 .. t-To+Tp]`` (``process_batch_for_training`` keeps ``obs[:, :To]`` and
``actions[:, :Tp]``); indices before 0 repeat step 0, past the end the last step. The data
layer's window is that obs history (``window_size = To``, frame 0 repeated) and its chunk for
window slot 0 starts at the same frame (``action_horizon = Tp``), except at an episode start,
where slot 0's chunk starts at frame 0 while upstream's sequence starts with ``k`` copies of
``a[0]`` (``k`` = padded slots). :func:`robomimic_action_sequence` rebuilds upstream's sequence
exactly from slot 0's chunk (``seq[j] = chunk0[max(j - k, 0)]``). The end padding (the last
action repeated) is upstream's too, and like upstream the loss is not masked.

Actions are trained in the LIBERO gripper convention (−1 open / +1 close), which the adapter
hands to the env as is: a spec whose ``gripper_for_model`` is Octo's (the ``libero`` preset) is
converted back. Normalization is robomimic's ``min_max`` to [-1, 1] (``output_min/max =
∓0.999999``, dims with range < 1e-4 get offset ``min - 0``) computed from the data, stored as
``action_normalization_stats["actions"]`` (scale, offset of shape (1, A)) so the adapter's
``x · scale + offset`` inverts it. Observations go in raw (the checkpoint's
``obs_normalization_stats``, if any, are applied and kept), images float [0, 1] at the
checkpoint's size (bilinear antialiased resize, as the adapter), rotated to the orientation the
adapter shows at evaluation (``keymap.STANDARD_SOURCES``: LIBERO keys see raw, upside-down
frames), then robomimic's training-time ``CropRandomizer`` (a random crop per frame; the
adapter center-crops at eval). ``random_crop=false`` uses the center crop.

Which data key feeds which checkpoint key: an image checkpoint key matches the standard image
whose spec source ends in that name (``obs/agentview_rgb`` → ``agentview_rgb``); a low-dim key
matches the slice of ``proprio`` from the proprio source of that name (widths from
``spec.proprio_dims``). So the ``libero`` preset feeds ``agentview_rgb``, ``eye_in_hand_rgb``,
``gripper_states`` (and ``ee_states``/``ee_pos``... where a checkpoint uses them); a checkpoint
key the data lacks (``joint_states`` with the preset) is dropped and named in ``changes``.

Modes::

    full        nothing frozen: observation encoder (VisualCores, DROID's combine MLP) + UNet
    head_only   frozen: ``policy.obs_encoder.*`` (run without gradients); the UNet
                (``policy.noise_pred_net.*``, including its FiLM conditioning) trains
    head_mlp_only  not available for this family (FinetuneError)

Saved: ``DIR/model.pth`` in robomimic's layout (``model.nets``, ``model.ema``, ``config`` as a
JSON string, ``algo_name``, ``env_metadata``, ``shape_metadata``, normalization stats), loadable
with ``torch.load(weights_only=True)`` by the family's strict loader (``diffusion:DIR/model.pth``).
robomimic's ``optimizers``/``lr_schedulers`` entries are not written; ``--resume`` uses
``state_dict()``.

Options (``?key=value``): ``observation_horizon``, ``action_horizon``, ``prediction_horizon``,
``random_crop`` (true), ``ema`` (true: EMA weights are saved as ``model.ema``, which evaluation
uses), ``ema_power`` (the checkpoint's), ``trust`` (checkpoints needing unpickling),
``device`` (``cpu``; ``cuda[:N]`` trains on a GPU: noise, timesteps and crops are drawn on the
CPU generator and moved, so a seed gives the same draws).

Conditioning and model size (``docs/learning-from-demos.md`` says why these matter):

- ``normalize_obs`` (true): low-dim observation keys the checkpoint does not normalize get
  robomimic's mean/std ``obs_normalization_stats`` from the data (saved with the model, applied
  by the adapter). Raw gripper qpos (spread ~0.01) and joint angles (~0.1 rad) are too small to
  condition the network next to O(1) noise and timestep features.
- ``init`` (``checkpoint``): ``fresh`` keeps only the checkpoint's architecture and trains from
  a new initialization, the camera encoders' convolutions He-initialized
  (:func:`fresh_visual_init`).
- ``image_size`` (e.g. ``64`` or ``64x64``), ``crop`` (default: the checkpoint's crop fraction),
  ``temperature`` (SpatialSoftmax keypoint temperature, a checkpoint buffer): every camera's
  encoder; ``down_dims`` (``64,128,256``) and ``step_embed_dim``: the UNet. Weights load
  wherever shapes still agree; the adapter resizes frames to the saved size.
- ``gripper_head`` (the checkpoint's; ``true`` adds one of width 256, a number >= 2 gives the
  width, ``false`` drops it): a gripper classifier (``nets.GripperHead``) on the detached observation features,
  trained with binary cross-entropy on "closed" (LIBERO +1) for every step of the target chunk
  beside the unchanged ε-prediction loss; gradients are clipped separately, so the diffusion
  model trains exactly as without it. Saved in the checkpoint's ``gripper_head`` entry;
  ``act()`` then takes the gripper from it. 7-d LIBERO actions only.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from evalharness.envs.rotations import rotate180
from evalharness.policies.common import distributed
from evalharness.policies.common.compat import CheckpointError, CompatibilityReport
from evalharness.policies.common.finetune import (
    DataRequest,
    FinetuneError,
    check_options,
    option_bool,
    option_int,
    warmup_cosine,
)
from evalharness.policies.common.normalization import Gripper, convert_gripper
from evalharness.policies.common.options import option_device
from evalharness.policies.diffusion.checkpoint import (
    canonical_state_dict,
    gripper_head_weights,
    load_weights,
    read_checkpoint_file,
    select_weights,
)
from evalharness.policies.diffusion.config import ActionKey, DiffusionPolicyConfig
from evalharness.policies.diffusion.keymap import STANDARD_SOURCES
from evalharness.policies.diffusion.nets import (
    GRIPPER_HEAD_PREFIX,
    ConditionalUnet1D,
    DiffusionPolicyNets,
    GripperHead,
    ObservationEncoder,
    ObservationGroupEncoder,
    UnetDims,
    VisualCore,
)
from evalharness.policies.diffusion.policy import obs_normalizers, process_frames
from evalharness.policies.diffusion.schedulers import NoiseScheduler

__all__ = [
    "MODES",
    "DiffusionTrainer",
    "ObsRoute",
    "from_pretrained",
    "min_max_stats",
    "robomimic_action_sequence",
]

MODES = ("full", "head_only")
CHECKPOINT_FILE = "model.pth"
FROZEN_PREFIX = "policy.obs_encoder."
_OPTIONS = (
    "observation_horizon",
    "action_horizon",
    "prediction_horizon",
    "random_crop",
    "ema",
    "ema_power",
    "trust",
    "device",
    "normalize_obs",
    "init",
    "image_size",
    "crop",
    "down_dims",
    "step_embed_dim",
    "temperature",
    "gripper_head",
)
INITS = ("checkpoint", "fresh")
#: robomimic adds this to each observation dimension's standard deviation, so constant
#: dimensions do not divide by zero.
OBS_STD_TOLERANCE = 1e-3
#: Hidden width of the gripper head that ``gripper_head=true`` adds.
GRIPPER_HEAD_WIDTH = 256
#: diffusers 0.11.1 EMAModel defaults that robomimic keeps.
EMA_MAX_DECAY = 0.9999


# --------------------------------------------------------------------------------------------
# pieces


def min_max_stats(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """robomimic's ``min_max`` normalization (``action_stats_to_normalization_stats``):
    (scale, offset) of shape (A,) with ``normalized = (x - offset) / scale`` in [-1, 1]."""
    actions = np.asarray(actions, np.float64).reshape(-1, np.shape(actions)[-1])
    lo = actions.min(0).astype(np.float32).astype(np.float64)
    hi = actions.max(0).astype(np.float32).astype(np.float64)
    out_lo, out_hi = -0.999999, 0.999999
    span = hi - lo
    flat = span < 1e-4
    span[flat] = out_hi - out_lo
    scale = span / (out_hi - out_lo)
    offset = lo - scale * out_lo
    offset[flat] = lo[flat] - (out_hi + out_lo) / 2
    return scale, offset


def low_dim_obs_stats(
    episodes: Sequence[Mapping[str, Any]], routes: Mapping[str, ObsRoute]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(offset, scale) of shape (1, D) per routed low-dim key: robomimic's observation
    normalization (``normalized = (x - offset) / scale``), offset = mean and scale = std +
    ``OBS_STD_TOLERANCE`` over every step of the data."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, route in routes.items():
        if route.start is None:
            continue
        values = np.concatenate(
            [np.asarray(e[route.source], np.float64)[:, route.start : route.stop] for e in episodes]
        )
        out[key] = (
            values.mean(axis=0, keepdims=True),
            values.std(axis=0, keepdims=True) + OBS_STD_TOLERANCE,
        )
    return out


def robomimic_action_sequence(action: np.ndarray, timestep_pad_mask: np.ndarray) -> np.ndarray:
    """Upstream's action sequence (B, Tp, A) from a data-layer chunk (B, W, Tp, A): window
    slot 0's chunk, shifted right by the number of padded slots, ``a[0]`` repeated in front."""
    chunk0 = np.asarray(action)[:, 0]
    pads = (~np.asarray(timestep_pad_mask, bool)).sum(axis=1)
    steps = chunk0.shape[1]
    index = np.maximum(np.arange(steps)[None, :] - pads[:, None], 0)
    return np.take_along_axis(chunk0, index[:, :, None], axis=1)


@dataclasses.dataclass(frozen=True)
class ObsRoute:
    """Where checkpoint observation key ``key`` comes from in a data-layer batch."""

    key: str
    source: str  # standard key: image_primary, proprio, ...
    start: int | None = None
    stop: int | None = None
    rotate: bool = False  # rotate images by 180° to the orientation the adapter shows

    def describe(self) -> str:
        text = self.source
        if self.start is not None:
            text += f"[..., {self.start}:{self.stop}]"
        return text + (" rotated 180°" if self.rotate else "")


def _last(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def route_observations(
    config: DiffusionPolicyConfig, spec: Any, data_keys: Sequence[str], proprio_width: int | None
) -> tuple[dict[str, ObsRoute], list[str]]:
    """Routes for the checkpoint keys the data can feed, and the keys it cannot."""
    routes: dict[str, ObsRoute] = {}
    dropped: list[str] = []
    images = {_last(src): std for std, src in spec.image_keys.items() if std in data_keys}
    slices: dict[str, tuple[int, int]] = {}
    dims = list(spec.proprio_dims)
    if not dims and len(spec.proprio_keys) == 1 and proprio_width is not None:
        dims = [proprio_width]
    if dims and "proprio" in data_keys:
        start = 0
        for src, dim in zip(spec.proprio_keys, dims, strict=True):
            slices[_last(src)] = (start, start + dim)
            start += dim
    for key, shape in config.obs_shapes.items():
        if key in config.visual:
            if key in images:
                source = STANDARD_SOURCES.get(key)
                flip = bool(source is not None and source.flip)
                rotate = (spec.model_orientation == "upright") == flip
                routes[key] = ObsRoute(key, images[key], rotate=rotate)
                continue
        elif key in slices:
            start, stop = slices[key]
            if (stop - start,) == tuple(shape):
                routes[key] = ObsRoute(key, "proprio", start, stop)
                continue
        dropped.append(key)
    return routes, dropped


# --------------------------------------------------------------------------------------------
# the trainer


class DiffusionTrainer:
    """A diffusion policy being finetuned; implements ``evalharness.finetune.Trainer``."""

    family = "diffusion"
    #: Data parallel under torchrun (`evalharness.policies.common.distributed`).
    data_parallel = "torchrun"
    #: ``prepare_batch`` turns frames to what the adapter shows (``keymap.STANDARD_SOURCES``)
    #: from the env's upright frames, so evaluation passes frames upright whatever the spec.
    input_orientation = "upright"

    def __init__(
        self,
        *,
        config: DiffusionPolicyConfig,
        raw_config: dict[str, Any],
        ckpt: Mapping[str, Any],
        nets: DiffusionPolicyNets,
        report: CompatibilityReport,
        routes: Mapping[str, ObsRoute],
        gripper_for_model: Gripper,
        options: Any,
        changes: list[str],
        random_crop: bool,
        use_ema: bool,
        ema_power: float,
        source: str,
        device: str = "cpu",
    ) -> None:
        self.config = config
        self.raw_config = raw_config
        self.env_metadata = ckpt.get("env_metadata")
        self.nets = nets
        self.report = report
        self.routes = dict(routes)
        self.gripper_for_model = gripper_for_model
        self.options = options
        self.changes = changes
        self.mode = options.mode
        self.random_crop = random_crop
        self.use_ema = use_ema
        self.ema_power = ema_power
        self.source = source
        self.scheduler = NoiseScheduler(config.scheduler)
        self.data = DataRequest(
            window_size=config.observation_horizon,
            action_horizon=config.prediction_horizon,
            action_dim=None,
            normalization=None,
        )
        key = config.action_keys[0]
        assert key.scale is not None and key.offset is not None
        self.shard = distributed.current()
        self.device = torch.device(distributed.device_for(device, self.shard))
        nets.to(self.device)
        self.scale = torch.tensor(key.scale, dtype=torch.float32, device=self.device)
        self.offset = torch.tensor(key.offset, dtype=torch.float32, device=self.device)
        self.obs_normalization = obs_normalizers(config, self.device)
        frozen = self.mode == "head_only"
        for name, param in nets.named_parameters():
            param.requires_grad_(not (frozen and name.startswith(FROZEN_PREFIX)))
        self.ema = copy.deepcopy(nets).eval().requires_grad_(False)
        head = nets.gripper_head
        self._head_params = [] if head is None else list(head.parameters())
        in_head = {id(p) for p in self._head_params}
        #: The parameters clipped together (robomimic's); the gripper head's are clipped apart.
        self._clipped = [p for p in nets.parameters() if p.requires_grad and id(p) not in in_head]
        decay: list[torch.nn.Parameter] = []
        plain: list[torch.nn.Parameter] = []
        for _, param in nets.named_parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else plain).append(param)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": float(options.weight_decay)},
                {"params": plain, "weight_decay": 0.0},
            ],
            lr=0.0,
        )
        self.generator = torch.Generator().manual_seed(int(options.seed))
        # After freezing: DDP averages the gradients of the parameters that require them.
        self._loss = distributed.wrap_ddp(_DiffusionLoss(self), self.shard)
        self.step = 0
        self.ema_step = 0

    # -- the protocol -------------------------------------------------------------------------

    def frozen_keys(self) -> list[str]:
        """State-dict names of the frozen parameters (both VisualCore spellings)."""
        return [
            n for n, p in self.nets.named_parameters(remove_duplicate=False) if not p.requires_grad
        ]

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One AdamW step of robomimic's ε-prediction loss; loss, grad_norm, learning_rate."""
        obs, actions = self.prepare_batch(batch)
        lr = warmup_cosine(
            self.step, self.options.learning_rate, self.options.warmup_steps, self.options.steps
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.nets.train()
        if self.mode == "head_only":  # frozen means frozen: BatchNorm statistics included
            self.nets.obs_encoder.eval()
        loss = self._loss(obs, actions, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = float(self.options.clip_gradient)
        grad_norm = torch.nn.utils.clip_grad_norm_(self._clipped, clip)
        if self._head_params:  # clipped apart, so the head leaves the diffusion updates alone
            torch.nn.utils.clip_grad_norm_(self._head_params, clip)
        self.optimizer.step()
        self._ema_update()
        self.step += 1
        return {
            "loss": self.shard.mean(float(loss.detach())),
            "grad_norm": float(grad_norm),
            "learning_rate": lr,
        }

    def save(self, directory: str | Path, step: int) -> Path:
        """Write ``directory/model.pth`` (robomimic layout) atomically; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ema = self.ema if self.use_ema else None
        target = directory / CHECKPOINT_FILE
        tmp = directory / f"{CHECKPOINT_FILE}.tmp"
        torch.save(self.checkpoint_dict(step, ema), tmp)
        tmp.replace(target)
        return target

    def state_dict(self) -> bytes:
        """nets, EMA, optimizer, RNG and step, for ``--resume``."""
        buffer = io.BytesIO()
        torch.save(
            {
                "nets": self.nets.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "step": self.step,
                "ema_step": self.ema_step,
            },
            buffer,
        )
        return buffer.getvalue()

    def load_state_dict(self, data: bytes) -> None:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.nets.load_state_dict(state["nets"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.ema_step = int(state["ema_step"])

    def policy_string(self, directory: str | Path) -> str:
        return f"diffusion:{Path(directory) / CHECKPOINT_FILE}"

    # -- training -----------------------------------------------------------------------------

    def loss(
        self,
        obs: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        generator: torch.Generator,
        nets: DiffusionPolicyNets | None = None,
        shard: distributed.Shard | None = None,
    ) -> torch.Tensor:
        """robomimic ``train_on_batch``: MSE between predicted and drawn noise.

        With several ranks (``shard``) the batch is this rank's rows of the global batch:
        crops, noise and times are drawn for the global batch and this rank keeps its rows."""
        shard = shard or distributed.Shard()
        nets = self.nets if nets is None else nets
        if self.mode == "head_only" and nets is self.nets:
            with torch.no_grad():
                cond = self.encode(nets, obs, generator, shard)
        else:
            cond = self.encode(nets, obs, generator, shard)
        batch = actions.shape[0] * shard.world
        # Drawn on the CPU generator (seeded, device-independent), then moved.
        noise = shard.take(torch.randn((batch, *actions.shape[1:]), generator=generator))
        noise = noise.to(self.device)
        steps = torch.randint(
            0, self.config.scheduler.num_train_timesteps, (batch,), generator=generator
        )
        steps = shard.take(steps)
        alpha = self.scheduler.alphas_cumprod[steps][:, None, None].to(self.device)
        steps = steps.to(self.device)
        noisy = alpha.sqrt() * actions + (1 - alpha).sqrt() * noise
        pred = nets.noise_pred_net(noisy, steps, cond)
        target = noise if self.config.scheduler.prediction_type == "epsilon" else actions
        loss = F.mse_loss(pred, target)
        if nets.gripper_head is not None:
            logits = nets.gripper_head(cond.detach())
            loss = loss + F.binary_cross_entropy_with_logits(logits, self.gripper_closed(actions))
        return loss

    def gripper_closed(self, actions: torch.Tensor) -> torch.Tensor:
        """The gripper head's targets (B, Tp): 1 where the normalized chunk's gripper command
        un-normalizes to "closed" (LIBERO > 0), else 0."""
        raw = actions[..., -1] * self.scale[-1] + self.offset[-1]
        return (raw > 0).to(actions.dtype)

    def eval_loss(self, batch: Mapping[str, Any], seed: int = 0, ema: bool = False) -> float:
        """The loss on ``batch`` with fixed noise (``seed``), without updating anything."""
        obs, actions = self.prepare_batch(batch)
        nets = self.ema if ema else self.nets
        with torch.no_grad():
            return float(self.loss(obs, actions, torch.Generator().manual_seed(seed), nets))

    def encode(
        self,
        nets: DiffusionPolicyNets,
        obs: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
        shard: distributed.Shard | None = None,
    ) -> torch.Tensor:
        """(B, To, ...) per key → (B, To·D), with robomimic's training-time random crops."""
        group = nets.obs_encoder
        encoder = cast(ObservationEncoder, group.nets["obs"])
        first = next(iter(obs.values()))
        batch, window = first.shape[:2]
        feats = []
        for key in encoder.obs_shapes:
            x = obs[key].reshape(batch * window, *obs[key].shape[2:])
            if key in encoder.obs_nets:
                core = cast(VisualCore, encoder.obs_nets[key])
                crop = core.spec.crop
                if crop is not None and self.random_crop and generator is not None:
                    x = core.nets(_random_crop(x, crop, generator, shard))
                    x = encoder.activation(x.reshape(x.shape[0], -1))
                else:
                    x = encoder.activation(core(x))
            feats.append(x.reshape(x.shape[0], -1))
        out = torch.cat(feats, dim=-1)
        if group.combine is not None:
            out = group.combine(out)
        return out.reshape(batch, -1)

    @torch.no_grad()
    def _ema_update(self) -> None:
        k = max(0, self.ema_step - 1)
        decay = 0.0 if k <= 0 else min(1 - (1 + k) ** -self.ema_power, EMA_MAX_DECAY)
        ema_params = dict(self.ema.named_parameters())
        for name, param in self.nets.named_parameters():
            target = ema_params[name]
            if not param.requires_grad:
                target.copy_(param)
            else:
                target.mul_(decay).add_(param.detach(), alpha=1 - decay)
        ema_buffers = dict(self.ema.named_buffers())
        for name, buf in self.nets.named_buffers():
            ema_buffers[name].copy_(buf)
        self.ema_step += 1

    # -- batches ------------------------------------------------------------------------------

    def prepare_batch(
        self, batch: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """A data-layer batch → checkpoint-keyed obs (B, To, ...) and normalized (B, Tp, A)."""
        source = batch["observation"]
        obs: dict[str, torch.Tensor] = {}
        for key, shape in self.config.obs_shapes.items():
            route = self.routes[key]
            value = np.asarray(source[route.source])
            if route.start is not None:
                value = value[..., route.start : route.stop]
            if route.rotate:
                value = rotate180(value)
            tensor = torch.as_tensor(np.ascontiguousarray(value)).to(self.device).float()
            if key in self.obs_normalization:
                offset, scale = self.obs_normalization[key]
                tensor = (tensor - offset) / scale
            if key in self.config.visual:
                tensor = process_frames(tensor, key, shape)
            obs[key] = tensor
        pad = np.asarray(source["timestep_pad_mask"], bool)
        actions = robomimic_action_sequence(np.asarray(batch["action"], np.float64), pad)
        actions = actions.copy()
        actions[..., -1] = convert_gripper(actions[..., -1], self.gripper_for_model, Gripper.LIBERO)
        actions_t = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        normalized = (actions_t - self.offset) / self.scale
        return obs, normalized

    # -- saving -------------------------------------------------------------------------------

    def checkpoint_dict(self, step: int, ema: DiffusionPolicyNets | None) -> dict[str, Any]:
        """robomimic's ``TrainUtils.save_model`` dict (tensors, lists and strings only)."""
        key = self.config.action_keys[0]
        nets_state, head_nets = _split_head(self.nets.state_dict())
        model: dict[str, Any] = {"nets": nets_state}
        head_ema: dict[str, torch.Tensor] | None = None
        if ema is not None:
            model["ema"], head_ema = _split_head(ema.state_dict())
        shapes = {k: list(v) for k, v in self.config.obs_shapes.items()}
        out: dict[str, Any] = {
            "model": model,
            "config": json.dumps(self.raw_config, indent=4),
            "algo_name": "diffusion_policy",
            "env_metadata": self.env_metadata or {},
            "shape_metadata": {
                "ac_dim": self.config.action_dim,
                "all_shapes": shapes,
                "all_obs_keys": list(shapes),
                "use_images": bool(self.config.visual),
                "use_depths": False,
            },
            "variable_state": {"epoch": int(step), "finetune_step": int(step)},
            "action_normalization_stats": {
                key.name: {"scale": [list(key.scale or ())], "offset": [list(key.offset or ())]}
            },
        }
        if self.config.gripper_head:
            # Outside ``model``: robomimic loads ``model.nets`` strictly and ignores this entry.
            out["gripper_head"] = {"hidden_dim": self.config.gripper_head, "nets": head_nets}
            if head_ema is not None:
                out["gripper_head"]["ema"] = head_ema
        if self.config.obs_normalization:
            out["obs_normalization_stats"] = {
                key: {"offset": np.asarray(offset).tolist(), "scale": np.asarray(scale).tolist()}
                for key, (offset, scale) in self.config.obs_normalization.items()
            }
        return out


class _DiffusionLoss(torch.nn.Module):
    """The trainer's nets with its loss as their forward, so DistributedDataParallel can wrap
    them (the EMA copy stays outside: it follows the parameters, equal on every rank)."""

    def __init__(self, trainer: DiffusionTrainer) -> None:
        super().__init__()
        self.nets = trainer.nets
        self.trainer = [trainer]  # a list: not a submodule, not a parameter owner

    def forward(
        self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        trainer = self.trainer[0]
        return trainer.loss(obs, actions, generator, shard=trainer.shard)


def _detached(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _split_head(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(robomimic's ``policy.*`` weights, the gripper head's weights without its prefix)."""
    head = {
        k[len(GRIPPER_HEAD_PREFIX) :]: v
        for k, v in state.items()
        if k.startswith(GRIPPER_HEAD_PREFIX)
    }
    rest = {k: v for k, v in state.items() if not k.startswith(GRIPPER_HEAD_PREFIX)}
    return _detached(rest), _detached(head)


def _random_crop(
    images: torch.Tensor,
    crop: tuple[int, int],
    generator: torch.Generator,
    shard: distributed.Shard | None = None,
) -> torch.Tensor:
    """robomimic ``CropRandomizer`` in training: one random crop per image (N, C, H, W);
    with several ranks, offsets are drawn for the global batch and this rank keeps its rows."""
    shard = shard or distributed.Shard()
    th, tw = crop
    n, _, h, w = images.shape
    tops = shard.take(torch.randint(0, h - th + 1, (n * shard.world,), generator=generator))
    lefts = shard.take(torch.randint(0, w - tw + 1, (n * shard.world,), generator=generator))
    tops, lefts = tops.tolist(), lefts.tolist()
    return torch.stack(
        [
            images[i, :, t : t + th, s : s + tw]
            for i, (t, s) in enumerate(zip(tops, lefts, strict=True))
        ]
    )


# --------------------------------------------------------------------------------------------
# building the model for the data


def fresh_visual_init(nets: DiffusionPolicyNets) -> None:
    """He (fan-in, ReLU) initialization of the camera encoders' convolutions, zero biases.

    PyTorch's default conv init shrinks activations ~2.4x per ReLU layer, so a fresh
    ``ShallowConv`` hands ``SpatialSoftmax`` feature maps with a spatial spread of ~0.007:
    the softmax is flat, every keypoint sits at the image centre (1e-4 apart between
    observations) and the images do not condition the policy until training has grown the
    weights ~30x. He initialization keeps the maps' spread at the input's.
    """
    encoder = cast(ObservationEncoder, nets.obs_encoder.nets["obs"])
    for core in encoder.obs_nets.values():
        for module in core.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)


def _size_option(family: Mapping[str, str], key: str) -> tuple[int, int] | None:
    """``128`` or ``84x96`` (height x width) as a pair, None when absent."""
    text = family.get(key)
    if text is None:
        return None
    parts = str(text).lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise FinetuneError(
            f"diffusion finetune option {key}={text!r}: expected a size in pixels, 84 or 84x96"
        )
    return (size[0], size[1])


def _resize_cameras(
    obs_shapes: dict[str, tuple[int, ...]],
    visual: dict[str, Any],
    family: Mapping[str, str],
    changes: list[str],
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Apply ``image_size`` / ``crop`` / ``temperature`` to every camera's encoder."""
    size, crop = _size_option(family, "image_size"), _size_option(family, "crop")
    temperature = family.get("temperature")
    if size is None and crop is None and temperature is None:
        return obs_shapes, visual
    shapes, specs = dict(obs_shapes), dict(visual)
    for key, spec in visual.items():
        channels, height, width = spec.input_shape
        new_size = size or (height, width)
        new_crop = crop
        if new_crop is None and spec.crop is not None:
            # Keep the checkpoint's crop fraction (robomimic: 76 of 84).
            new_crop = (
                round(new_size[0] * spec.crop[0] / height),
                round(new_size[1] * spec.crop[1] / width),
            )
        try:
            specs[key] = dataclasses.replace(
                spec,
                input_shape=(channels, *new_size),
                crop=new_crop,
                temperature=float(temperature) if temperature is not None else spec.temperature,
            )
        except ValueError as exc:
            raise FinetuneError(f"diffusion finetune: camera {key!r}: {exc}") from None
        shapes[key] = (channels, *new_size)
        changes.append(
            f"camera {key!r}: {height}x{width} crop {spec.crop} → {new_size[0]}x{new_size[1]} "
            f"crop {new_crop}, keypoint temperature {specs[key].temperature}"
        )
    return shapes, specs


def _unet_dims(dims: UnetDims, family: Mapping[str, str], changes: list[str]) -> UnetDims:
    """The checkpoint's UNet sizes with ``down_dims`` / ``step_embed_dim`` applied."""
    out = dims
    if "down_dims" in family:
        try:
            down = tuple(int(v) for v in family["down_dims"].split(","))
        except ValueError:
            down = ()
        if not down or min(down) < 8 or any(d % 8 for d in down):
            raise FinetuneError(
                f"diffusion finetune option down_dims={family['down_dims']!r}: expected "
                "comma-separated channel counts, multiples of 8 (GroupNorm groups), e.g. 64,128,256"
            )
        out = dataclasses.replace(out, down_dims=down)
    if "step_embed_dim" in family:
        embed = option_int(family, "step_embed_dim", dims.diffusion_step_embed_dim, "diffusion")
        if embed % 2 or embed < 4:
            raise FinetuneError(
                f"diffusion finetune option step_embed_dim={embed}: expected an even number >= 4"
            )
        out = dataclasses.replace(out, diffusion_step_embed_dim=embed)
    if out != dims:
        changes.append(
            f"UNet down_dims {list(dims.down_dims)} → {list(out.down_dims)}, step embedding "
            f"{dims.diffusion_step_embed_dim} → {out.diffusion_step_embed_dim}"
        )
    return out


def _gripper_head_option(
    family: Mapping[str, str], current: int, action_dim: int, changes: list[str]
) -> int:
    """The gripper head's width: ``gripper_head`` = true (256), false (0) or a width; the
    checkpoint's own when not given."""
    text = str(family.get("gripper_head", "")).strip()
    if not text:
        width = current
    elif text.isdigit() and int(text) > 1:
        width = int(text)
    else:
        try:
            on = option_bool(family, "gripper_head", False, "diffusion")
        except FinetuneError:
            raise FinetuneError(
                f"diffusion finetune option gripper_head={text!r}: expected true, false or a "
                f"hidden width >= 2 (e.g. {GRIPPER_HEAD_WIDTH})"
            ) from None
        width = (current or GRIPPER_HEAD_WIDTH) if on else 0
    if width and action_dim != 7:
        raise FinetuneError(
            f"diffusion finetune option gripper_head: the data's actions are {action_dim}-d; the "
            "gripper head predicts LIBERO's gripper command, the last of 7-d actions (delta xyz, "
            "delta axis-angle, gripper)"
        )
    if width != current:
        changes.append(
            f"gripper head: {current or 'none'} → {width or 'none'} (a classifier on the "
            "observation features gives the gripper command)"
        )
    return width


def _edit_config(
    raw: Mapping[str, Any], config: DiffusionPolicyConfig, data_path: str
) -> dict[str, Any]:
    """The checkpoint's JSON config, edited to describe the finetuned model."""
    new = copy.deepcopy(dict(raw))
    algo = new.setdefault("algo", {})
    algo["horizon"] = {
        "observation_horizon": config.observation_horizon,
        "action_horizon": config.action_horizon,
        "prediction_horizon": config.prediction_horizon,
    }
    unet = config.unet
    algo["unet"] = {
        "enabled": True,
        "diffusion_step_embed_dim": unet.diffusion_step_embed_dim,
        "down_dims": list(unet.down_dims),
        "kernel_size": unet.kernel_size,
        "n_groups": unet.n_groups,
    }
    visual = next(iter(config.visual.values()), None)
    if visual is not None:
        # Every camera shares robomimic's one rgb encoder config; the model's specs are equal.
        rgb = new.setdefault("observation", {}).setdefault("encoder", {}).setdefault("rgb", {})
        pool = rgb.setdefault("core_kwargs", {}).setdefault("pool_kwargs", {})
        pool["temperature"] = visual.temperature
        if visual.crop is not None:
            rgb["obs_randomizer_class"] = "CropRandomizer"
            rgb["obs_randomizer_kwargs"] = {
                "crop_height": visual.crop[0],
                "crop_width": visual.crop[1],
                "num_crops": 1,
                "pos_enc": False,
            }
    modalities = new.setdefault("observation", {}).setdefault("modalities", {})
    obs = modalities.setdefault("obs", {})
    for modality, keys in list(obs.items()):
        obs[modality] = [k for k in keys or [] if k in config.obs_shapes]
    train = new.setdefault("train", {})
    train["action_keys"] = [k.name for k in config.action_keys]
    train["action_config"] = {k.name: {"normalization": "min_max"} for k in config.action_keys}
    train["seq_length"] = config.prediction_horizon
    train["frame_stack"] = config.observation_horizon
    train["data"] = [{"path": data_path}]
    return new


def from_pretrained(checkpoint: str, dataset: Any, options: Any) -> DiffusionTrainer:
    """Build the finetune model for ``dataset`` from a robomimic ``.pth`` (module docstring).

    ``options`` is an ``evalharness.finetune.FinetuneOptions``; ``family_options`` are this
    module's options.
    """
    family = dict(options.family_options)
    check_options(family, _OPTIONS, "diffusion")
    if options.mode not in MODES:
        raise FinetuneError(
            f"--mode {options.mode!r} is not available for the diffusion policy; expected one of "
            f"{', '.join(MODES)} (head_only freezes the observation encoder, trains the UNet)"
        )
    device = option_device(family, "diffusion finetune", FinetuneError)
    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    trust = option_bool(family, "trust", False, "diffusion")
    try:
        ckpt = read_checkpoint_file(path, trust=trust)
        nets_state, which = select_weights(ckpt["model"], str(path), use_ema=False)
        state = canonical_state_dict(nets_state)
        old = DiffusionPolicyConfig.from_checkpoint(ckpt, state, str(path))
        if old.gripper_head:
            state.update(canonical_state_dict(gripper_head_weights(ckpt, which, str(path))))
    except CheckpointError as exc:
        raise FinetuneError(str(exc)) from None
    raw_value = ckpt["config"]
    raw = json.loads(raw_value) if isinstance(raw_value, str) else dict(raw_value)

    episodes = dataset.load()
    first = episodes[0]
    spec = dataset.spec
    proprio_width = int(np.shape(first["proprio"])[-1]) if "proprio" in first else None
    routes, dropped = route_observations(old, spec, list(first), proprio_width)
    changes: list[str] = []
    if dropped:
        changes.append(
            f"observation key(s) {dropped} removed: the data (spec {spec.name!r}) has no source "
            f"named so (images {dict(spec.image_keys)}, proprio {list(spec.proprio_keys)} "
            f"{list(spec.proprio_dims)})"
        )
    if not routes:
        raise FinetuneError(
            f"none of the checkpoint's observation keys {list(old.obs_shapes)} is in the data "
            f"(spec {spec.name!r}); map them in the dataset spec (image_keys sources / "
            "proprio_keys named like the checkpoint's keys)"
        )
    for key, route in routes.items():
        changes.append(f"observation {key!r} ← data {route.describe()}")

    actions = np.concatenate([np.asarray(e["action"], np.float64) for e in episodes])
    actions[:, -1] = convert_gripper(actions[:, -1], spec.gripper_for_model, Gripper.LIBERO)
    action_dim = actions.shape[1]
    scale, offset = min_max_stats(actions)
    to = option_int(family, "observation_horizon", old.observation_horizon, "diffusion")
    ta = option_int(family, "action_horizon", old.action_horizon, "diffusion")
    tp = option_int(family, "prediction_horizon", old.prediction_horizon, "diffusion")
    for name, before, after in (
        ("To", old.observation_horizon, to),
        ("Ta", old.action_horizon, ta),
    ):
        if before != after:
            changes.append(f"{name} {before} → {after}")
    if tp != old.prediction_horizon:
        changes.append(f"Tp {old.prediction_horizon} → {tp}")
    if action_dim != old.action_dim:
        changes.append(
            f"action dim {old.action_dim} → {action_dim} (the data's): fresh UNet input/output "
            "convs"
        )
    obs_stats = {k: v for k, v in old.obs_normalization.items() if k in routes}
    if option_bool(family, "normalize_obs", True, "diffusion"):
        # Raw low-dim inputs (gripper qpos ~0.01, joint angles ~0.1 rad of spread) barely move
        # the FiLM conditioning of a network fed O(1) noise and timestep embeddings; robomimic's
        # mean/std normalization puts every key on the same scale. Keys the checkpoint already
        # normalizes keep its statistics, which its weights were trained with.
        fresh_stats = {
            k: v for k, v in low_dim_obs_stats(episodes, routes).items() if k not in obs_stats
        }
        obs_stats.update(fresh_stats)
        for key in fresh_stats:
            changes.append(f"observation {key!r} normalized to mean 0 / std 1 over the data")
    obs_shapes = {k: v for k, v in old.obs_shapes.items() if k in routes}
    visual = {k: v for k, v in old.visual.items() if k in routes}
    obs_shapes, visual = _resize_cameras(obs_shapes, visual, family, changes)
    head_width = _gripper_head_option(family, old.gripper_head, action_dim, changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(options.seed))
        encoder = ObservationGroupEncoder(obs_shapes, visual, combine=old.combine)
        unet = dataclasses.replace(
            _unet_dims(old.unet, family, changes),
            input_dim=action_dim,
            global_cond_dim=encoder.out_dim * to,
        )
        try:
            config = dataclasses.replace(
                old,
                obs_shapes=obs_shapes,
                visual=visual,
                unet=unet,
                action_keys=(
                    ActionKey(
                        "actions",
                        action_dim,
                        tuple(float(v) for v in scale),
                        tuple(float(v) for v in offset),
                    ),
                ),
                observation_horizon=to,
                action_horizon=ta,
                prediction_horizon=tp,
                obs_normalization=obs_stats,
                gripper_head=head_width,
            )
        except ValueError as exc:
            raise FinetuneError(f"diffusion finetune: {exc}") from None
        unet_net = ConditionalUnet1D(unet)
        # Built last, so the encoder's and the UNet's initial weights do not depend on it.
        head = GripperHead(unet.global_cond_dim, head_width, tp) if head_width else None
        nets = DiffusionPolicyNets(encoder, unet_net, head)
    init = family.get("init", "checkpoint")
    if init not in INITS:
        raise FinetuneError(
            f"diffusion finetune option init={init!r}: expected one of {', '.join(INITS)} "
            "(fresh: train from a new initialization, only the architecture comes from the "
            "checkpoint)"
        )
    if init == "fresh":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(options.seed))
            fresh_visual_init(nets)
        state = {}
        changes.append("fresh initialization: no pretrained weights loaded")
    report = load_weights(nets, state, strict=False, source=f"{path} [{which}]", key_map=None)
    if "temperature" in family:
        # A buffer: the checkpoint's value was just loaded over the one asked for.
        cameras = cast(ObservationEncoder, nets.obs_encoder.nets["obs"])
        for key, core in cameras.obs_nets.items():
            pool = cast(VisualCore, core).pool
            if pool is not None:
                with torch.no_grad():
                    pool.temperature.fill_(visual[key].temperature)
    report.target = f"DiffusionPolicyUNet for {dataset.path}"
    fresh = [e.key for e in report.entries if e.status != "loaded" and e.key.startswith("policy.")]
    fresh_frozen = [k for k in fresh if k.startswith(FROZEN_PREFIX) and options.mode == "head_only"]
    if fresh_frozen:
        changes.append(
            f"warning: {len(fresh_frozen)} freshly initialized encoder tensors are frozen in "
            f"head_only and stay random (e.g. {fresh_frozen[0]}); use --mode full"
        )
    ema_text = family.get("ema_power", raw.get("algo", {}).get("ema", {}).get("power", 0.75))
    try:
        ema_power = float(ema_text)
    except (TypeError, ValueError):
        raise FinetuneError(
            f"diffusion finetune option ema_power={ema_text!r}: expected a number (0.75 in "
            "robomimic's configs)"
        ) from None
    ema_enabled = bool(raw.get("algo", {}).get("ema", {}).get("enabled", True))
    use_ema = option_bool(family, "ema", ema_enabled, "diffusion")
    return DiffusionTrainer(
        config=config,
        raw_config=_edit_config(raw, config, str(dataset.path)),
        ckpt=ckpt,
        nets=nets,
        report=report,
        routes=routes,
        gripper_for_model=Gripper.parse(spec.gripper_for_model),
        options=options,
        changes=changes,
        random_crop=option_bool(family, "random_crop", True, "diffusion"),
        use_ema=use_ema,
        ema_power=ema_power,
        source=str(path),
        device=device,
    )
