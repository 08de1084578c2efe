"""The voxel network's training noise levels and loss weights (``diffusion.voxel_training``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, ModelConfig, load_config
from pipeline.config.schema import VoxelTrainingConfig
from pipeline.data.stream import ShowerStream
from pipeline.diffusion import (
    CosineSchedule,
    diffuse,
    loss_factor,
    prediction_loss,
    training_losses,
    voxel_times,
)
from pipeline.models import build_models
from pipeline.physics.preprocessing import Preprocessor

from conftest import stand_in_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCHEDULE = CosineSchedule()
CPU = torch.device("cpu")


def test_the_default_draws_exactly_the_uniform_times():
    got = voxel_times(VoxelTrainingConfig(), SCHEDULE, 1000, CPU, torch.Generator().manual_seed(3))
    assert torch.equal(got, torch.rand(1000, generator=torch.Generator().manual_seed(3)))
    assert loss_factor(VoxelTrainingConfig(), SCHEDULE, got, "x") is None


def test_time_of_inverts_the_schedule_and_clamps():
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    torch.testing.assert_close(SCHEDULE.time_of(SCHEDULE.logsnr(t)), t, atol=1e-9, rtol=0)
    assert SCHEDULE.time_of(torch.tensor([50.0, -50.0])).tolist() == [0.0, 1.0]


def test_logit_normal_times_follow_their_distribution():
    cfg = VoxelTrainingConfig(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    t = voxel_times(cfg, SCHEDULE, 200_000, CPU, torch.Generator().manual_seed(0)).double()
    assert t.dtype == torch.float64 and 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.01 and abs(logit.std() - 0.8) < 0.01


@pytest.mark.parametrize("shift", [-2.0, 1.5])
def test_a_logsnr_shift_moves_every_time_by_the_shift(shift):
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    plain = voxel_times(VoxelTrainingConfig(), SCHEDULE, 5000, CPU, gen())
    shifted = voxel_times(VoxelTrainingConfig(logsnr_shift=shift), SCHEDULE, 5000, CPU, gen())
    lam, lam_shifted = SCHEDULE.logsnr(plain), SCHEDULE.logsnr(shifted)
    inside = (lam + shift).abs() < 15  # away from the clipping at +-20 and float32's steep ends
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(lam_shifted[inside], lam[inside] + shift, atol=1e-3, rtol=0)
    assert shifted.dtype == torch.float32 and 0 <= shifted.min() and shifted.max() <= 1


def _x_errors(prediction: str, n: int = 4096):
    """A batch of noisy samples, a wrong prediction and the x error it makes at each item."""
    g = torch.Generator().manual_seed(0)
    x, noise, guess = (torch.randn(n, 6, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(n, generator=g, dtype=torch.float64)
    z, v = diffuse(SCHEDULE, x, t, noise)
    alpha, sigma = SCHEDULE.alpha_sigma(t, like=z)
    x_hat = guess if prediction == "x" else alpha * z - sigma * guess
    base = prediction_loss(guess, z, v, t, SCHEDULE, prediction).double()
    return t, base, ((x_hat - x) ** 2).mean(dim=1)


@pytest.mark.parametrize("prediction", ["v", "x"])
def test_min_snr_weights_the_x_error_by_min_snr_gamma(prediction):
    t, base, x_err = _x_errors(prediction)
    cfg = VoxelTrainingConfig(weighting="min_snr", min_snr_gamma=5.0)
    weighted = base * loss_factor(cfg, SCHEDULE, t, prediction).double()
    snr = SCHEDULE.logsnr(t).exp()
    torch.testing.assert_close(weighted, torch.clamp(snr, max=5.0) * x_err, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("prediction", ["v", "x"])
def test_sigmoid_weights_the_eps_error_by_sigmoid_of_bias_minus_logsnr(prediction):
    t, base, x_err = _x_errors(prediction)
    cfg = VoxelTrainingConfig(weighting="sigmoid", sigmoid_bias=-1.0)
    weighted = base * loss_factor(cfg, SCHEDULE, t, prediction).double()
    lam = SCHEDULE.logsnr(t)
    eps_err = lam.exp() * x_err  # eps - eps_hat = sqrt(SNR) (x_hat - x)
    torch.testing.assert_close(weighted, torch.sigmoid(-1.0 - lam) * eps_err, rtol=1e-5, atol=1e-9)
    ends = loss_factor(cfg, SCHEDULE, torch.tensor([0.0, 1.0]), prediction)
    assert torch.isfinite(ends).all() and (ends > 0).all()


def test_the_switches_are_config_keys_with_clear_errors(tmp_path):
    cfg = load_config("configs/smoke.yaml", ["diffusion.voxel_training.weighting=min_snr",
                                             "diffusion.voxel_training.logsnr_shift=-2"])
    expected = VoxelTrainingConfig(weighting="min_snr", logsnr_shift=-2.0)
    assert cfg.diffusion.voxel_training == expected
    with pytest.raises(ConfigError, match="diffusion.voxel_training.weighting"):
        load_config("configs/smoke.yaml", ["diffusion.voxel_training.weighting=snr"])
    with pytest.raises(ConfigError, match="diffusion.voxel_training.logit_std"):
        load_config("configs/smoke.yaml", ["diffusion.voxel_training.logit_std=0"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return stand_in_store(tmp_path_factory.mktemp("objective"), "ds2", 64)


@pytest.mark.parametrize("cfg", [
    VoxelTrainingConfig(time_sampling="logit_normal"),
    VoxelTrainingConfig(logsnr_shift=-2.0),
    VoxelTrainingConfig(weighting="min_snr"),
    VoxelTrainingConfig(weighting="sigmoid", sigmoid_bias=-2.0),
    VoxelTrainingConfig(weighting="flow", time_sampling="logit_normal"),
], ids=["logit_normal", "shift", "min_snr", "sigmoid", "flow"])
def test_each_switch_trains_the_voxel_network(store, cfg):
    """Thirty Adam steps of the tiny transformer (x-prediction) with the switch lower its voxel
    loss, measured on a fixed batch with the same switch."""
    torch.manual_seed(0)
    pre = Preprocessor.from_store(store)
    model = ModelConfig(preset="tiny", backbone="transformer")
    layer_net, voxel_net = build_models(model, store.geometry)
    opt = torch.optim.Adam(voxel_net.parameters(), lr=3e-3)
    stream = ShowerStream(store, 8, seed=0, num_workers=1, shuffle_chunks=4)
    fixed = None

    def voxel_loss(p, seed: int) -> torch.Tensor:
        return training_losses(layer_net, voxel_net, p.layers, p.voxels, p.cond, SCHEDULE,
                               torch.Generator().manual_seed(seed), "x", ("voxels",), cfg)["voxel"]

    before = None
    for step, batch in zip(range(30), stream):
        p = pre(batch["showers"], batch["energies"])
        if fixed is None:
            fixed = p
            with torch.no_grad():
                before = float(np.mean([voxel_loss(fixed, s).item() for s in range(8)]))
        loss = voxel_loss(p, 100 + step)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(np.mean([voxel_loss(fixed, s).item() for s in range(8)]))
    assert math.isfinite(after) and after < 0.8 * before, (before, after)
