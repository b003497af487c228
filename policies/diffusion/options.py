"""The ``?key=value`` options of the ``diffusion`` policy, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DiffusionOptions"]


@dataclass(frozen=True)
class DiffusionOptions:
    """How a robomimic / DROID ``DiffusionPolicyUNet`` checkpoint is loaded and run."""

    device: str = "cpu"
    """torch device: ``cpu``, ``cuda`` or ``cuda:N``."""
    trust: bool = False
    """allow a checkpoint that needs arbitrary unpickling (runs code!)."""
    strict: bool = True
    """``false`` loads what fits and reports the rest."""
    ema: bool = True
    """``false`` uses the raw ``nets`` weights instead of the EMA ones upstream evaluates."""
    missing_obs: Literal["error", "zeros", "passthrough"] = "error"
    """a checkpoint key the standard observation cannot provide: ``error``, ``zeros`` (feed
    zeros; a smoke test, not an evaluation) or ``passthrough`` (expect the batch to carry the
    key under its own name)."""
    gripper_head: bool = True
    """use the checkpoint's gripper classifier, when it has one, for the gripper command
    (``false``: the diffusion model's own sampled gripper dimension)."""
    resize: Literal["policy", "env"] = "policy"
    """``policy`` resizes images in the adapter (bilinear, antialiased); ``env`` declares the
    sizes so the env's Lanczos ResizeImage wrapper does it. robomimic renders at the training
    size and never resizes: a camera size equal to the checkpoint's is the faithful setting."""
