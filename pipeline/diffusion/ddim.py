"""DDIM sampling (deterministic or stochastic) and the progressive-distillation target.

Sampling runs on the uniform time grid ``t_i = 1 - i / steps``. One step from t to s < t:
``x_hat = alpha_t z - sigma_t v``, ``eps_hat = sigma_t z + alpha_t v`` and
``z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi`` with
``c = eta (sigma_s / sigma_t) sqrt(1 - alpha_t^2 / alpha_s^2)``: eta = 0 is DDIM, eta = 1 the ancestral
(DDPM posterior) sampler. The last step returns the prediction ``x_hat`` at the final evaluation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from pipeline.diffusion.schedule import CosineSchedule, ModelFn

#: per-step noise for stochastic sampling: step index (1-based) -> tensor shaped like z
StepNoise = Callable[[int], Tensor]


def time_grid(steps: int) -> list[float]:
    """``steps + 1`` times from 1 down to 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [1.0 - i / steps for i in range(steps + 1)]


def ddim_step(schedule: CosineSchedule, z: Tensor, v: Tensor, t: float | Tensor, s: float | Tensor,
              eta: float = 0.0, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One step from ``t`` to ``s`` (scalars or per-item (B,) tensors) -> ``(z_s, x_hat)``."""
    a_t, s_t = schedule.alpha_sigma(torch.as_tensor(t, dtype=torch.float64), like=z)
    a_s, s_s = schedule.alpha_sigma(torch.as_tensor(s, dtype=torch.float64), like=z)
    x_hat, eps_hat = a_t * z - s_t * v, s_t * z + a_t * v
    if eta == 0.0:
        return a_s * x_hat + s_s * eps_hat, x_hat
    if noise is None:
        raise ValueError("stochastic sampling (eta > 0) needs a noise tensor")
    c = eta * (s_s / s_t) * (1 - (a_t / a_s) ** 2).clamp_min(0).sqrt()
    return a_s * x_hat + (s_s**2 - c**2).clamp_min(0).sqrt() * eps_hat + c * noise, x_hat


def sample(model_fn: ModelFn, z: Tensor, schedule: CosineSchedule, steps: int, *, eta: float = 0.0,
           step_noise: StepNoise | None = None) -> Tensor:
    """Integrate from pure noise ``z`` (B, ...) at t = 1 to a clean sample in ``steps`` model calls.

    With ``eta > 0``, ``step_noise(i)`` supplies the fresh noise of step i = 1 .. steps - 1.
    """
    if eta > 0 and step_noise is None:
        raise ValueError("stochastic sampling (eta > 0) needs step_noise")
    grid = time_grid(steps)
    x_hat = z
    for i in range(steps):
        t = torch.full((z.shape[0],), grid[i], device=z.device, dtype=torch.float32)
        v = model_fn(z, t).to(z.dtype)
        if i == steps - 1:
            _, x_hat = ddim_step(schedule, z, v, grid[i], grid[i + 1])
            break
        noise = step_noise(i + 1) if eta > 0 else None  # type: ignore[misc]
        z, x_hat = ddim_step(schedule, z, v, grid[i], grid[i + 1], eta, noise)
    return x_hat


def distillation_target(teacher_fn: ModelFn, z: Tensor, t: Tensor, teacher_steps: int,
                        schedule: CosineSchedule) -> Tensor:
    """Student v-target for progressive distillation (Salimans & Ho 2022, Algorithm 2).

    Two deterministic teacher DDIM steps ``t -> t - 1/N -> t - 2/N`` (N = ``teacher_steps``, clamped at
    0) give ``z''``; the target ``x~ = (z'' - (sigma_s / sigma_t) z) / (alpha_s - (sigma_s / sigma_t) alpha_t)``
    is the clean prediction for which one DDIM step ``t -> s = t - 2/N`` lands exactly on ``z''``; it is
    returned in v form, ``v~ = (alpha_t z - x~) / sigma_t``. ``t`` is per item (B,).
    """
    t = t.to(torch.float64)
    dt = 1.0 / teacher_steps
    t_mid, s = (t - dt).clamp_min(0.0), (t - 2 * dt).clamp_min(0.0)
    with torch.no_grad():
        v1 = teacher_fn(z, t.float()).to(z.dtype)
        z_mid, _ = ddim_step(schedule, z, v1, t, t_mid)
        v2 = teacher_fn(z_mid, t_mid.float()).to(z.dtype)
        z_s, _ = ddim_step(schedule, z_mid, v2, t_mid, s)
    a_t, s_t = schedule.alpha_sigma(t, like=z)
    a_s, s_s = schedule.alpha_sigma(s, like=z)
    ratio = s_s / s_t
    x_target = (z_s - ratio * z) / (a_s - ratio * a_t)
    return (a_t * z - x_target) / s_t
