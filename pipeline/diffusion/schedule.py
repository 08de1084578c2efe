"""Continuous-time variance-preserving diffusion: clipped cosine log-SNR schedule, v-prediction, loss.

``z_t = alpha_t x + sigma_t eps`` with ``alpha_t = cos(theta_t)``, ``sigma_t = sin(theta_t)`` (so
``alpha^2 + sigma^2 = 1`` exactly), ``theta_t = theta_min + t (theta_max - theta_min)`` for t in [0, 1] and
``log SNR(t) = 2 log(alpha / sigma) = -2 log tan(theta_t)``: the cosine schedule, strictly decreasing,
clipped to ``[logsnr_min, logsnr_max]`` at t = 1 and t = 0 (``theta = arctan(exp(-logsnr / 2))``).
``diffusion.process: flow`` replaces it by rectified flow's straight path (:class:`FlowSchedule`,
``theta_t = arctan(t / (1 - t))``); everything below holds for both.

The networks predict ``v = alpha eps - sigma x`` (Salimans & Ho), from which
``x = alpha z - sigma v`` and ``eps = sigma z + alpha v``.

Loss weighting: plain MSE on v. Since ``v - v_hat = -(x - x_hat) / sigma = (eps - eps_hat) / alpha``,
it equals the x-MSE weighted by ``1 / sigma^2 = SNR + 1`` ("SNR+1" weighting of Salimans & Ho), i.e. the
eps-MSE weighted by ``1 + 1 / SNR``; t is drawn uniformly from [0, 1] (the voxel network's
alternatives: :mod:`pipeline.diffusion.training_objective`).

x-prediction (``diffusion.prediction: x``): the networks output ``x_hat`` instead; samplers see
``v = (alpha z - x_hat) / sigma`` (:func:`as_v`, exact). The loss stays the v-MSE, i.e. the x-MSE over
``sigma^2``, with sigma floored at :data:`X_LOSS_MIN_SIGMA` so that the few nearly clean times (sigma down to
4.5e-5) do not weight an untrained network's x error by up to 5e8 (as the v-loss of x-prediction in JiT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

#: a denoiser in v-parameterisation: (z_t (B, ...), t (B,)) -> v (B, ...)
ModelFn = Callable[[Tensor, Tensor], Tensor]
Prediction = Literal["v", "x"]
NETWORKS = ("layers", "voxels")  # the two networks a run may train (train.networks)
X_LOSS_MIN_SIGMA = 0.05  # x-prediction: loss weight 1 / max(sigma, this)^2 (at most 400 = SNR + 1 at log SNR 6)


@dataclass(frozen=True)
class CosineSchedule:
    """Cosine log-SNR schedule clipped to ``[logsnr_min, logsnr_max]``."""

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0

    def __post_init__(self) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"logsnr_min ({self.logsnr_min}) must be below logsnr_max ({self.logsnr_max})")

    @classmethod
    def from_config(cls, cfg: object) -> "CosineSchedule":
        """From a :class:`pipeline.config.DiffusionConfig` (its ``process``: this schedule for
        "vp", :class:`FlowSchedule` for "flow")."""
        kind = FlowSchedule if getattr(cfg, "process", "vp") == "flow" else CosineSchedule
        return kind(float(cfg.logsnr_min), float(cfg.logsnr_max))  # type: ignore[attr-defined]

    @property
    def theta_range(self) -> tuple[float, float]:
        return math.atan(math.exp(-0.5 * self.logsnr_max)), math.atan(math.exp(-0.5 * self.logsnr_min))

    def theta(self, t: Tensor) -> Tensor:
        lo, hi = self.theta_range
        return lo + t.double() * (hi - lo)

    def logsnr(self, t: Tensor) -> Tensor:
        """log(alpha^2 / sigma^2) at times t (float64)."""
        return -2.0 * torch.log(torch.tan(self.theta(t)))

    def time_of(self, logsnr: Tensor) -> Tensor:
        """The time (float64, in [0, 1]) at which the schedule has ``logsnr`` (clamped to its range)."""
        lam = torch.as_tensor(logsnr, dtype=torch.float64).clamp(self.logsnr_min, self.logsnr_max)
        lo, hi = self.theta_range
        return ((torch.atan(torch.exp(-0.5 * lam)) - lo) / (hi - lo)).clamp(0.0, 1.0)

    def alpha_sigma(self, t: Tensor, like: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t); with ``like`` given, in its dtype and shaped to broadcast against it."""
        th = self.theta(torch.as_tensor(t))
        alpha, sigma = torch.cos(th), torch.sin(th)
        if like is not None:
            shape = (-1,) + (1,) * (like.dim() - 1) if alpha.dim() else ()
            alpha, sigma = (a.to(like.dtype).reshape(shape) for a in (alpha, sigma))
        return alpha, sigma


@dataclass(frozen=True)
class FlowSchedule(CosineSchedule):
    """Rectified flow's straight path ``z_f = (1 - t) x + t eps`` (flow matching), in
    variance-preserving form: ``z = z_f / sqrt((1 - t)^2 + t^2)``, i.e. ``alpha : sigma =
    (1 - t) : t`` and ``log SNR(t) = 2 log((1 - t) / t)``, clipped like the cosine schedule.

    The scaling changes nothing a sampler does: a deterministic DDIM step on this schedule is an
    Euler step of the flow ODE ``dz_f/dt = eps - x`` (both move along the line through the
    predicted x and eps; exactly, away from the ends clipped to ``logsnr_min/max``), so the DDIM
    sampler, x- or v-prediction and progressive distillation carry over unchanged; the network
    sees unit-variance inputs, as EDM's input scaling would give it. With
    ``diffusion.voxel_training.weighting: flow`` the voxel loss is the flow-matching velocity MSE.
    """

    def theta(self, t: Tensor) -> Tensor:
        lo, hi = self.theta_range
        t = torch.as_tensor(t).double()
        return torch.atan2(t, 1 - t).clamp(lo, hi)

    def time_of(self, logsnr: Tensor) -> Tensor:
        lam = torch.as_tensor(logsnr, dtype=torch.float64).clamp(self.logsnr_min, self.logsnr_max)
        return torch.sigmoid(-0.5 * lam)


def diffuse(schedule: CosineSchedule, x: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Noisy ``z_t`` and the v-target for clean ``x`` (B, ...), per-item times ``t`` (B,) and ``noise``."""
    alpha, sigma = schedule.alpha_sigma(t, like=x)
    return alpha * x + sigma * noise, alpha * noise - sigma * x


def predict_x_eps(schedule: CosineSchedule, z: Tensor, v: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(x_hat, eps_hat) from a v prediction at times ``t`` (scalar or (B,))."""
    alpha, sigma = schedule.alpha_sigma(t, like=z)
    return alpha * z - sigma * v, sigma * z + alpha * v


def as_v(fn: Callable[..., Tensor], schedule: CosineSchedule, prediction: Prediction) -> Callable[..., Tensor]:
    """``fn(z, t, *conditions)`` as a v-predictor: unchanged for v, ``(alpha z - x_hat) / sigma`` for x."""
    if prediction == "v":
        return fn

    def v_of(z: Tensor, t: Tensor, *args: Tensor) -> Tensor:
        alpha, sigma = schedule.alpha_sigma(t, like=z)
        return (alpha * z - fn(z, t, *args).to(z.dtype)) / sigma
    return v_of


def clipped_x(fn: Callable[..., Tensor], schedule: CosineSchedule, lo: Tensor, hi: Tensor) -> Callable[..., Tensor]:
    """The v-predictor ``fn(z, t, *conditions)`` with its clean-sample estimate ``x = alpha z - sigma v`` clipped to
    ``[lo, hi]`` (broadcast against x): returns the v of the clipped x, so a DDIM step uses the clipped x."""
    def v_of(z: Tensor, t: Tensor, *args: Tensor) -> Tensor:
        alpha, sigma = schedule.alpha_sigma(t, like=z)
        x = alpha * z - sigma * fn(z, t, *args).to(z.dtype)
        return (alpha * z - torch.maximum(torch.minimum(x, hi.to(z.dtype)), lo.to(z.dtype))) / sigma
    return v_of


def prediction_loss(out: Tensor, z: Tensor, v_target: Tensor, t: Tensor, schedule: CosineSchedule,
                    prediction: Prediction) -> Tensor:
    """Per-item loss -> (B,): ``mean((v_hat - v)^2)`` for v; for x the same with sigma floored (module doc)."""
    if prediction == "v":
        err = (out.float() - v_target.float()) ** 2
    else:
        alpha, sigma = schedule.alpha_sigma(t, like=z.float())
        x_target = alpha * z.float() - sigma * v_target.float()
        err = (out.float() - x_target) ** 2 / sigma.clamp_min(X_LOSS_MIN_SIGMA) ** 2
    return err.flatten(1).mean(dim=1)


def v_loss(model_fn: ModelFn, schedule: CosineSchedule, x: Tensor, t: Tensor, noise: Tensor,
           prediction: Prediction = "v") -> Tensor:
    """Per-item v-MSE ``mean((v_hat - v)^2)`` over all but the batch dimension -> (B,) (see the module doc for x)."""
    z, v = diffuse(schedule, x, t, noise)
    return prediction_loss(model_fn(z, t), z, v, t, schedule, prediction)
