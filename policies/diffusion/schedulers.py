"""DDPM and DDIM samplers with the arithmetic of diffusers 0.11.1, the release robomimic pins.

robomimic builds ``diffusers.DDPMScheduler`` / ``DDIMScheduler`` from ``config.algo.ddpm`` /
``config.algo.ddim`` and calls ``set_timesteps(num_inference_timesteps)`` then ``step`` in a
loop. This module reproduces that in plain torch (float32, like diffusers), so no diffusers
install is needed. One 0.11.1 behaviour is kept deliberately: its DDPM ``step`` always looks
back one *training* step (``alphas_cumprod[t - 1]``) even when fewer inference steps are
configured. Checkpoints are evaluated with the sampler they were validated with; for the usual
DDPM setting (inference steps = train steps) every diffusers version agrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["NoiseScheduler", "SchedulerConfig", "betas_for_alpha_bar"]

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


@dataclass(frozen=True)
class SchedulerConfig:
    """The sampler a checkpoint was trained with (``config.algo.ddpm`` or ``config.algo.ddim``)."""

    kind: str  # "ddpm" or "ddim"
    num_train_timesteps: int = 100
    num_inference_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    clip_sample: bool = True
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = True  # DDIM only
    steps_offset: int = 0  # DDIM only
    eta: float = 0.0  # DDIM only; robomimic calls step() with the default 0

    def __post_init__(self) -> None:
        if self.kind not in ("ddpm", "ddim"):
            raise ValueError(f"scheduler kind must be 'ddpm' or 'ddim', got {self.kind!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule {self.beta_schedule!r} is not supported; expected one of "
                f"{BETA_SCHEDULES}"
            )
        if self.prediction_type not in ("epsilon", "sample"):
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported; expected 'epsilon' "
                "or 'sample'"
            )
        if not 1 <= self.num_inference_timesteps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_timesteps ({self.num_inference_timesteps}) must be in "
                f"1..num_train_timesteps ({self.num_train_timesteps})"
            )


def betas_for_alpha_bar(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """The ``squaredcos_cap_v2`` (Nichol & Dhariwal cosine) betas, in Python floats -> float32."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


class NoiseScheduler:
    """Reverse diffusion: ``timesteps`` to visit and ``step(eps, t, x_t) -> x_{t-1}``.

    DDPM draws fresh noise at every step but the last, from the `generator` passed to
    ``step`` (one per episode in the adapter, so an episode's actions do not depend on its
    batch neighbours); DDIM with ``eta = 0`` is deterministic given the initial noise.
    """

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        n = config.num_train_timesteps
        if config.beta_schedule == "squaredcos_cap_v2":
            self.betas = betas_for_alpha_bar(n)
        elif config.beta_schedule == "linear":
            self.betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
        else:
            self.betas = (
                torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float32)
                ** 2
            )
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        if config.kind == "ddim":
            self.final_alpha_cumprod = (
                torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
            )
        steps = config.num_inference_timesteps
        ratio = n // steps
        if config.kind == "ddim":
            ts = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + config.steps_offset
        else:
            ts = np.arange(0, n, ratio)[::-1].astype(np.int64)
        self.step_ratio = ratio
        self.timesteps: list[int] = [int(t) for t in ts]

    def _x0(self, model_output: torch.Tensor, sample: torch.Tensor, t: int) -> torch.Tensor:
        alpha_prod_t = self.alphas_cumprod[t]
        if self.config.prediction_type == "epsilon":
            x0 = (sample - (1 - alpha_prod_t) ** 0.5 * model_output) / alpha_prod_t**0.5
        else:
            x0 = model_output
        if self.config.clip_sample:
            x0 = torch.clamp(x0, -1, 1)
        return x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generators: list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """One reverse step. `generators`, one per batch row, feed DDPM's (and DDIM eta>0) noise."""
        t = int(timestep)
        if self.config.kind == "ddim":
            return self._ddim_step(model_output, t, sample, generators)
        return self._ddpm_step(model_output, t, sample, generators)

    def _noise(self, like: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        if generators is None:
            return torch.randn(like.shape, dtype=like.dtype).to(like.device)
        if len(generators) != like.shape[0]:
            raise ValueError(
                f"need one generator per batch row ({like.shape[0]}), got {len(generators)}"
            )
        rows = [torch.randn(like.shape[1:], generator=g, dtype=like.dtype) for g in generators]
        return torch.stack(rows).to(like.device)

    def _ddpm_step(
        self,
        model_output: torch.Tensor,
        t: int,
        sample: torch.Tensor,
        generators: list[torch.Generator] | None,
    ) -> torch.Tensor:
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[t - 1] if t > 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        x0 = self._x0(model_output, sample, t)
        x0_coeff = (alpha_prod_t_prev**0.5 * self.betas[t]) / beta_prod_t
        xt_coeff = self.alphas[t] ** 0.5 * beta_prod_t_prev / beta_prod_t
        prev = x0_coeff * x0 + xt_coeff * sample
        if t > 0:
            # "fixed_small" variance, clamped like diffusers.
            variance = torch.clamp(
                (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * self.betas[t], min=1e-20
            )
            prev = prev + variance**0.5 * self._noise(model_output, generators)
        return prev

    def _ddim_step(
        self,
        model_output: torch.Tensor,
        t: int,
        sample: torch.Tensor,
        generators: list[torch.Generator] | None,
    ) -> torch.Tensor:
        prev_t = t - self.step_ratio
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0 = self._x0(model_output, sample, t)
        eta = self.config.eta
        variance = (
            (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        )
        std = eta * variance**0.5
        direction = (1 - alpha_prod_t_prev - std**2) ** 0.5 * model_output
        prev = alpha_prod_t_prev**0.5 * x0 + direction
        if eta > 0:
            prev = prev + std * self._noise(model_output, generators)
        return prev
