"""``diffusion.process: flow``: rectified flow's straight path as a variance-preserving schedule,
its DDIM steps as Euler steps of the flow ODE, the exact-toy sampler and the flow-matching loss
weight."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import load_config
from pipeline.config.schema import VoxelTrainingConfig
from pipeline.diffusion import CosineSchedule, as_v, ddim_step, diffuse, loss_factor, sample
from pipeline.diffusion.schedule import FlowSchedule, prediction_loss

FLOW = FlowSchedule()
MU, S = 1.5, 0.3  # toy data: every element ~ N(MU, S^2)


def test_the_flow_schedule_is_the_straight_path():
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    alpha, sigma = FLOW.alpha_sigma(t)
    torch.testing.assert_close(alpha / sigma, (1 - t) / t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    torch.testing.assert_close(FLOW.logsnr(t), 2 * torch.log((1 - t) / t))
    torch.testing.assert_close(FLOW.time_of(FLOW.logsnr(t)), t)
    ends = FLOW.logsnr(torch.tensor([0.0, 1.0]))  # clipped like the cosine schedule
    torch.testing.assert_close(ends, torch.tensor([20.0, -20.0], dtype=torch.float64))


def test_the_config_key_selects_it():
    flow = load_config("configs/smoke.yaml", ["diffusion.process=flow"])
    assert type(CosineSchedule.from_config(flow.diffusion)) is FlowSchedule
    vp = load_config("configs/smoke.yaml")
    assert type(CosineSchedule.from_config(vp.diffusion)) is CosineSchedule


@pytest.mark.parametrize("t,s", [(0.99, 0.75), (0.6, 0.3), (0.2, 0.01)])
def test_a_ddim_step_is_an_euler_step_of_the_flow_ode(t, s):
    """From z_f = (1 - t) x + t eps with any predicted x_hat, Euler on dz_f/dt = eps_hat - x_hat
    lands where a DDIM step of the variance-preserving form lands (times its norm); exactly, away
    from the ends t = 0 and 1 where the schedule clips the log-SNR to +-20 (alpha or sigma 4.5e-5
    instead of 0)."""
    g = torch.Generator().manual_seed(0)
    x, eps, x_hat = (torch.randn(64, 5, generator=g, dtype=torch.float64) for _ in range(3))
    norm = lambda u: math.sqrt((1 - u) ** 2 + u**2)  # noqa: E731 - |(alpha_f, sigma_f)|
    z_f = (1 - t) * x + t * eps
    eps_hat = (z_f - (1 - t) * x_hat) / t
    euler = z_f + (s - t) * (eps_hat - x_hat)
    tt = torch.full((64,), t, dtype=torch.float64)
    v = as_v(lambda z, _: x_hat, FLOW, "x")(z_f / norm(t), tt)
    z_s, x_pred = ddim_step(FLOW, z_f / norm(t), v, t, s)
    torch.testing.assert_close(x_pred, x_hat)
    torch.testing.assert_close(z_s * norm(s), euler, atol=1e-9, rtol=1e-9)


def exact_x(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x | z_t] on the flow schedule for x ~ N(MU, S^2)."""
    alpha, sigma = FLOW.alpha_sigma(t, like=z)
    return MU + alpha * S**2 * (z - alpha * MU) / (alpha**2 * S**2 + sigma**2)


def test_the_sampler_recovers_the_toy_distribution_on_the_flow_schedule():
    n, steps = 20000, 256
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = sample(as_v(exact_x, FLOW, "x"), z, FLOW, steps)
    assert abs(float(x.mean()) - MU) < 4 * S / math.sqrt(n)
    assert abs(float(x.std()) / S - 1) < 4 / math.sqrt(2 * n) + 0.015


def test_the_flow_weighting_is_the_velocity_mse():
    g = torch.Generator().manual_seed(2)
    x, eps, x_hat = (torch.randn(4096, 6, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(4096, generator=g, dtype=torch.float64).clamp(0.06, 1.0)  # above the floor
    z, v = diffuse(FLOW, x, t, eps)
    base = prediction_loss(x_hat, z, v, t, FLOW, "x").double()
    weighted = base * loss_factor(VoxelTrainingConfig(weighting="flow"), FLOW, t, "x").double()
    # the flow velocity eps - x and its prediction from x_hat at z_f = (1 - t) x + t eps
    z_f = (1 - t[:, None]) * x + t[:, None] * eps
    v_hat = (z_f - x_hat) / t[:, None]
    torch.testing.assert_close(weighted, ((v_hat - (eps - x)) ** 2).mean(dim=1), rtol=1e-6, atol=0)
    clean = loss_factor(VoxelTrainingConfig(weighting="flow"), FLOW, torch.tensor([0.0]), "x")
    assert torch.isfinite(clean).all()
