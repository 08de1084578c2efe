"""What training minimises: :func:`training_losses` of both networks, and the voxel network's noise
levels and loss weights (``diffusion.voxel_training``).

By default the voxel network trains like the layer network: times ``t ~ U(0, 1)`` on the cosine
schedule and the v-MSE, i.e. the x error weighted by ``1 / sigma^2 = SNR + 1`` (module doc of
:mod:`pipeline.diffusion.schedule`). Two families of alternatives from the image-diffusion
literature, each a config switch:

- which noise levels are trained: ``time_sampling: logit_normal`` draws ``t = sigmoid(m + s n)``
  (Esser et al. 2024), concentrating training on the middle of the schedule; ``logsnr_shift``
  moves every drawn time's log-SNR by a constant (< 0: noisier), as high-resolution models do for
  their many pixels (Hoogeboom et al. 2023). Only training changes: the samplers keep the uniform
  time grid of the unshifted schedule.
- how each noise level is weighted, as a weight on the x error ``|x_hat - x|^2``:
  ``min_snr`` uses ``min(SNR, gamma)`` (Hang et al. 2023), ``sigmoid`` the eps-error weight
  ``sigmoid(b - log SNR)`` of Kingma & Gao (2023), i.e. ``SNR sigmoid(b - log SNR)`` on x, and
  ``flow`` the flow-matching velocity MSE, ``1 / t_f^2`` on x with ``t_f = sigmoid(-log SNR / 2)``
  the flow time of that noise level (floored at 0.05 like the x-prediction loss, so at most 400).

:func:`loss_factor` gives each alternative as a factor on the default per-item loss, so that the
default path is untouched bit for bit. Progressive distillation (:mod:`.distillation`) keeps its
own student times and loss whatever these switches say.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from pipeline.config.schema import VoxelTrainingConfig
from pipeline.diffusion.schedule import (
    NETWORKS,
    X_LOSS_MIN_SIGMA,
    CosineSchedule,
    Prediction,
    v_loss,
)

DEFAULT_VOXEL_TRAINING = VoxelTrainingConfig()


def voxel_times(cfg: VoxelTrainingConfig, schedule: CosineSchedule, batch: int,
                device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """Training times ``(batch,)`` in [0, 1] for the voxel network (float32). The default draws
    exactly ``torch.rand(batch)``."""
    if cfg.time_sampling == "uniform":
        t = torch.rand(batch, device=device, generator=generator)
    else:
        n = torch.randn(batch, device=device, generator=generator)
        t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * n)
    if cfg.logsnr_shift == 0.0:
        return t
    logsnr = schedule.logsnr(t) + cfg.logsnr_shift
    return schedule.time_of(logsnr).to(torch.float32)


def loss_factor(cfg: VoxelTrainingConfig, schedule: CosineSchedule, t: Tensor,
                prediction: Prediction) -> Tensor | None:
    """Per-item factor ``(B,)`` on :func:`pipeline.diffusion.schedule.prediction_loss` that turns
    its weighting into ``cfg.weighting``'s; None for the default ("v")."""
    if cfg.weighting == "v":
        return None
    logsnr = schedule.logsnr(t)  # float64
    if cfg.weighting == "min_snr":
        x_weight = torch.clamp(logsnr.exp(), max=cfg.min_snr_gamma)
    elif cfg.weighting == "flow":  # |(x_hat - x) / t_f|^2: the error of the velocity eps - x
        x_weight = torch.sigmoid(-0.5 * logsnr).clamp_min(X_LOSS_MIN_SIGMA) ** -2
    else:  # sigmoid: SNR * sigmoid(b - logsnr) = exp(logsnr) / (1 + exp(logsnr - b)), overflow-free
        x_weight = torch.exp(logsnr - torch.nn.functional.softplus(logsnr - cfg.sigmoid_bias))
    sigma = schedule.alpha_sigma(t)[1]
    if prediction == "x":  # prediction_loss weights the x error by 1 / max(sigma, floor)^2
        sigma = sigma.clamp_min(X_LOSS_MIN_SIGMA)
    return (x_weight * sigma**2).to(torch.float32)  # for v: the v error is the x error / sigma^2


def training_losses(layer_model: Callable[..., Tensor], voxel_model: Callable[..., Tensor],
                    layers: Tensor, voxels: Tensor | None, cond: Tensor, schedule: CosineSchedule,
                    generator: torch.Generator | None = None, prediction: Prediction = "v",
                    networks: Sequence[str] = NETWORKS,
                    voxel_training: VoxelTrainingConfig = DEFAULT_VOXEL_TRAINING,
                    ) -> dict[str, Tensor]:
    """v-losses of the ``networks`` (``layers``, ``voxels``) on one preprocessed batch (see
    :class:`pipeline.physics.preprocessing.Preprocessed`).

    Each network gets its own times and Gaussian noise (from ``generator`` when given, which must
    live on the batch's device): uniform for the layer network, ``voxel_training``'s for the voxel
    network, whose per-item loss is also reweighted by it. The voxel network is conditioned on the
    true layer energies. Returns ``{"loss": layer + voxel, "layer": ..., "voxel": ...}`` (batch
    means; 0 for a network not trained, whose model is then not called: ``voxels`` may be None
    when only the layers are trained).
    """
    b, dev = layers.shape[0], layers.device
    train_layers, train_voxels = "layers" in networks, "voxels" in networks
    assert voxels is not None or not train_voxels, "training the voxel network needs the voxels"
    # the draw order as with both networks
    t_layer = torch.rand(b, device=dev, generator=generator) if train_layers else None
    t_voxel = (voxel_times(voxel_training, schedule, b, dev, generator) if train_voxels
               else None)
    layer = voxel = torch.zeros((), device=dev)
    if t_layer is not None:
        n_layer = torch.randn(layers.shape, device=dev, dtype=layers.dtype, generator=generator)
        layer = v_loss(lambda z, t: layer_model(z, t, cond), schedule, layers, t_layer, n_layer,
                       prediction).mean()
    if t_voxel is not None and voxels is not None:
        n_voxel = torch.randn(voxels.shape, device=dev, dtype=voxels.dtype, generator=generator)
        per_item = v_loss(lambda z, t: voxel_model(z, t, cond, layers), schedule, voxels, t_voxel,
                          n_voxel, prediction)
        factor = loss_factor(voxel_training, schedule, t_voxel, prediction)
        voxel = (per_item if factor is None else per_item * factor.to(per_item.device)).mean()
    return {"loss": layer + voxel, "layer": layer, "voxel": voxel}
