"""Rectified flow: noising, timestep sampling, the velocity loss and an Euler sampler with classifier-free guidance.

Time runs from data (t = 0) to noise (t = 1): x_t = (1 - t) x0 + t noise, so dx_t/dt = noise - x0 is the velocity
the DiT predicts, and sampling integrates it from t = 1 down to 0.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from cinema_model.config import FlowConfig


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift: the same noise level lands later in t for larger shift."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(cfg: FlowConfig, batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shifted logit-normal timesteps (B,): most training steps at intermediate noise levels."""
    z = torch.randn(batch, generator=generator, device=device) * cfg.logit_std + cfg.logit_mean
    return shift_time(torch.sigmoid(z), cfg.shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *[1] * (x0.dim() - 1))
    return (1 - t) * x0 + t * noise


def velocity_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), (noise - x0).float())


def sample_times(steps: int, shift: float, device=None) -> torch.Tensor:
    """steps + 1 times from 1 (noise) to 0 (data), uniform before the shift."""
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def guided(cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: v_u + g (v_c - v_u); the conditional velocity alone without an unconditional one."""
    return cond if uncond is None else uncond + guidance * (cond - uncond)


@torch.no_grad()
def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
                 noise: torch.Tensor, steps: int, shift: float, guidance: float) -> torch.Tensor:
    """Integrate from ``noise`` to data, in float32 whatever dtype the model runs in. ``velocity(x, t)`` returns
    the conditional and the unconditional velocity (the latter None when guidance is 1)."""
    x = noise.float()
    times = sample_times(steps, shift, device=noise.device)
    for t, t_next in zip(times[:-1], times[1:]):
        cond, uncond = velocity(x, t.expand(x.shape[0]))
        x = x + (t_next - t) * guided(cond.float(), None if uncond is None else uncond.float(), guidance)
    return x
