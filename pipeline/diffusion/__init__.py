"""Continuous-time v-prediction diffusion: schedule and loss (:mod:`.schedule`), what training
minimises (:mod:`.training_objective`), DDIM sampling and the
distillation target (:mod:`.ddim`), distillation losses (:mod:`.distillation`), per-shower noise
(:mod:`.noise`), and the two-network shower synthesis (:mod:`.synthesis`: layer energies, then voxels,
then the inverse preprocessing).

Owns: the mathematics of training targets and sampling; networks are passed in as callables. May import:
:mod:`pipeline.runtime`, :mod:`pipeline.config`, :mod:`pipeline.physics` (never :mod:`pipeline.models`).
"""

from pipeline.diffusion.ddim import ddim_step, distillation_target, sample, time_grid
from pipeline.diffusion.distillation import distillation_losses, student_times
from pipeline.diffusion.noise import (
    NoiseSource,
    counter_normals,
    shower_seed,
    stream_keys,
    uniform_from_seeds,
)
from pipeline.diffusion.schedule import (
    NETWORKS,
    CosineSchedule,
    ModelFn,
    Prediction,
    as_v,
    diffuse,
    predict_x_eps,
    prediction_loss,
    v_loss,
)
from pipeline.diffusion.synthesis import NetworkSampling, synthesize, synthesize_layers
from pipeline.diffusion.training_objective import loss_factor, training_losses, voxel_times

__all__ = ["NETWORKS", "CosineSchedule", "NetworkSampling", "ModelFn", "NoiseSource", "Prediction",
           "as_v", "counter_normals", "ddim_step", "diffuse", "distillation_losses",
           "distillation_target", "loss_factor", "predict_x_eps", "prediction_loss", "sample",
           "shower_seed", "stream_keys", "student_times", "synthesize", "synthesize_layers",
           "time_grid", "training_losses", "uniform_from_seeds", "v_loss", "voxel_times"]
