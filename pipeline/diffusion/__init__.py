"""Continuous-time v-prediction diffusion: schedule and loss (:mod:`.schedule`), DDIM sampling and the
distillation target (:mod:`.sampler`), per-shower noise (:mod:`.noise`), generation (:mod:`.generate`)."""

from pipeline.diffusion.generate import generate
from pipeline.diffusion.noise import NoiseSource, item_seed
from pipeline.diffusion.sampler import ddim_step, distillation_target, sample, time_grid
from pipeline.diffusion.schedule import CosineSchedule, ModelFn, diffuse, predict_x_eps, training_losses, v_loss

__all__ = ["CosineSchedule", "ModelFn", "NoiseSource", "ddim_step", "diffuse", "distillation_target", "generate",
           "item_seed", "predict_x_eps", "sample", "time_grid", "training_losses", "v_loss"]
