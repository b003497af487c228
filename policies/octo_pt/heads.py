"""Octo's action heads in torch: DDPM diffusion over an MLP-ResNet, and L1/MSE regression.

As upstream (``octo/model/components/action_heads.py``, ``diffusion.py``): the readout tokens
are mean-pooled (or MAP-pooled), the diffusion head denoises 20 cosine-schedule steps clipped
to ±max_action, and dimensions beyond the embodiment's get the training-time noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evalharness.policies.octo_pt.transformer import LN_EPS, MAPHead, TokenGroup

# --------------------------------------------------------------------------------------------
# heads


def cosine_beta_schedule(steps: int, s: float = 0.008) -> np.ndarray:
    """Upstream's schedule, computed in float32 like ``jnp`` does."""
    t = np.linspace(0, steps, steps + 1, dtype=np.float32) / np.float32(steps)
    alphas_cumprod = (
        np.cos((t + np.float32(s)) / np.float32(1 + s) * np.float32(np.pi) * np.float32(0.5)) ** 2
    )
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return np.clip(betas, 0, 0.999).astype(np.float32)


class FourierFeatures(nn.Module):
    """Learnable Fourier time features: ``[cos 2π t Wᵀ, sin 2π t Wᵀ]``; W stored (out/2, in)."""

    def __init__(self, output_size: int, input_dim: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.2 * torch.randn(output_size // 2, input_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t @ self.weight.T
        return torch.cat([torch.cos(f), torch.sin(f)], dim=-1)


class MLPResNetBlock(nn.Module):
    def __init__(self, features: int, use_layer_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(features, eps=LN_EPS) if use_layer_norm else nn.Identity()
        self.fc1 = nn.Linear(features, 4 * features)
        self.fc2 = nn.Linear(4 * features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.silu(self.fc1(self.norm(x))))


class ScoreNetwork(nn.Module):
    """Upstream ``ScoreActor``: Fourier time → MLP cond; [cond, obs, noisy actions] → MLPResNet."""

    def __init__(
        self,
        obs_dim: int,
        out_dim: int,
        time_dim: int,
        num_blocks: int,
        hidden_dim: int,
        use_layer_norm: bool,
    ) -> None:
        super().__init__()
        self.time_preprocess = FourierFeatures(time_dim)
        self.cond_fc1 = nn.Linear(time_dim, 2 * time_dim)
        self.cond_fc2 = nn.Linear(2 * time_dim, time_dim)
        self.input_proj = nn.Linear(time_dim + obs_dim + out_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            [MLPResNetBlock(hidden_dim, use_layer_norm) for _ in range(num_blocks)]
        )
        self.output_proj = nn.Linear(hidden_dim, out_dim)

    def forward(
        self, obs_enc: torch.Tensor, actions: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        cond = self.cond_fc2(F.silu(self.cond_fc1(self.time_preprocess(time.to(obs_enc.dtype)))))
        obs_enc = obs_enc.expand(*cond.shape[:-1], obs_enc.shape[-1])
        x = self.input_proj(torch.cat([cond, obs_enc, actions], dim=-1))
        for block in self.blocks:
            x = block(x)
        return self.output_proj(F.silu(x))


def _pool(readout: TokenGroup, map_head: MAPHead | None) -> torch.Tensor:
    if map_head is not None:
        return map_head(readout)[:, :, 0]
    return readout.tokens.mean(dim=-2)


class DiffusionActionHead(nn.Module):
    """DDPM head over the pooled readout: 20 cosine-schedule steps, clipped to ±max_action."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_hats: torch.Tensor

    def __init__(
        self,
        readout_key: str,
        embedding_dim: int,
        action_horizon: int = 1,
        action_dim: int = 7,
        use_map: bool = False,
        max_action: float = 5.0,
        time_dim: int = 32,
        num_blocks: int = 3,
        hidden_dim: int = 256,
        use_layer_norm: bool = True,
        diffusion_steps: int = 20,
    ) -> None:
        super().__init__()
        self.readout_key = readout_key
        self.action_horizon = action_horizon
        self.action_dim = action_dim
        self.max_action = max_action
        self.diffusion_steps = diffusion_steps
        self.map_head = MAPHead(embedding_dim) if use_map else None
        self.diffusion_model = ScoreNetwork(
            embedding_dim,
            action_horizon * action_dim,
            time_dim,
            num_blocks,
            hidden_dim,
            use_layer_norm,
        )
        betas = torch.as_tensor(cosine_beta_schedule(diffusion_steps))
        alphas = 1 - betas
        # Non-persistent: a function of the config, not weights to save.
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas", alphas, persistent=False)
        self.register_buffer("alpha_hats", torch.cumprod(alphas, 0), persistent=False)

    def embeddings(self, outputs: Mapping[str, TokenGroup]) -> torch.Tensor:
        return _pool(outputs[self.readout_key], self.map_head)

    def forward(
        self, outputs: Mapping[str, TokenGroup], time: torch.Tensor, noisy_actions: torch.Tensor
    ) -> torch.Tensor:
        """One score-network call: predicted noise (B, W, H·A)."""
        return self.diffusion_model(self.embeddings(outputs), noisy_actions, time)

    def predict_action(
        self,
        outputs: Mapping[str, TokenGroup],
        generator: torch.Generator | None = None,
        embodiment_action_dim: int | None = None,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Denoise to actions (B, H, A) for the last window step.

        ``noise`` = (initial noise (B, W, H·A), per-iteration noise (steps, B, W, H·A)) replaces
        drawing from ``generator``, e.g. to replay upstream's JAX draws. ``trajectory``, if given,
        receives x after every iteration.
        """
        emb = self.embeddings(outputs)
        batch, window = emb.shape[:2]
        flat = self.action_horizon * self.action_dim
        shape = (batch, window, flat)
        if noise is None:
            x = torch.randn(shape, generator=generator, device=emb.device, dtype=emb.dtype)
        else:
            x = noise[0].to(emb.device, emb.dtype)
        keep = torch.ones(self.action_horizon, self.action_dim, dtype=torch.bool, device=emb.device)
        if embodiment_action_dim is not None:
            keep[:, embodiment_action_dim:] = False
        keep = keep.reshape(flat)
        for i, t in enumerate(range(self.diffusion_steps - 1, -1, -1)):
            time = torch.full((batch, window, 1), float(t), device=emb.device, dtype=emb.dtype)
            eps = self.diffusion_model(emb, x, time)
            alpha_1 = 1 / torch.sqrt(self.alphas[t])
            alpha_2 = (1 - self.alphas[t]) / torch.sqrt(1 - self.alpha_hats[t])
            x = alpha_1 * (x - alpha_2 * eps)
            if noise is None:
                z = torch.randn(shape, generator=generator, device=emb.device, dtype=emb.dtype)
            else:
                z = noise[1][i].to(emb.device, emb.dtype)
            if t > 0:
                x = x + torch.sqrt(self.betas[t]) * z
            x = torch.clamp(x, -self.max_action, self.max_action)
            # Dimensions the embodiment lacks get the noise seen in training, as upstream.
            x = torch.where(keep, x, torch.sqrt(1 - self.alpha_hats[t]) * z)
            if trajectory is not None:
                trajectory.append(x)
        return x.reshape(batch, window, self.action_horizon, self.action_dim)[:, -1]


class ContinuousActionHead(nn.Module):
    """``tanh(Dense(pooled) / max) · max`` (upstream ``L1ActionHead`` / ``MSEActionHead``)."""

    def __init__(
        self,
        readout_key: str,
        embedding_dim: int,
        action_horizon: int = 1,
        action_dim: int = 7,
        use_map: bool = True,
        max_action: float = 5.0,
    ) -> None:
        super().__init__()
        self.readout_key = readout_key
        self.action_horizon = action_horizon
        self.action_dim = action_dim
        self.max_action = max_action
        self.map_head = MAPHead(embedding_dim) if use_map else None
        self.mean_proj = nn.Linear(embedding_dim, action_horizon * action_dim)

    def forward(self, outputs: Mapping[str, TokenGroup]) -> torch.Tensor:
        mean = self.mean_proj(_pool(outputs[self.readout_key], self.map_head))
        mean = mean.reshape(*mean.shape[:2], self.action_horizon, self.action_dim)
        return torch.tanh(mean / self.max_action) * self.max_action

    def predict_action(
        self,
        outputs: Mapping[str, TokenGroup],
        generator: torch.Generator | None = None,
        embodiment_action_dim: int | None = None,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self(outputs)[:, -1]


ActionHead = DiffusionActionHead | ContinuousActionHead
