"""The DeepSpeed engine of training: both networks in one module, AdamW, warm-up + cosine schedule.

- :class:`DiffusionPair` holds the layer-energy network and the voxel U-Net, so one engine and one
  optimiser cover both; its forward returns the v-losses of :func:`pipeline.diffusion.training_losses`.
  :class:`DistillationPair` is the same pair as a progressive-distillation student of a frozen teacher
  (:func:`pipeline.diffusion.distillation_losses`); its state dict is the plain pair's.
- The optimiser is a client ``torch.optim.AdamW`` (no FusedAdam compilation), weight decay on matrices
  and convolution kernels only; ZeRO stage 1 or 2 partitions its state over the ranks.
- Precision: ``bf16`` runs the forward pass under ``torch.autocast(bfloat16)`` while the weights, the
  gradients, their all-reduce and the optimiser stay fp32 (fp32 master weights); ``auto`` picks bf16 on
  GPU and fp32 on CPU.
- Learning rate (:func:`lr_factor`): linear warm-up over ``warmup_steps``, then a cosine decay to
  ``lr * min_lr_ratio`` at ``max_steps``; DeepSpeed steps the scheduler once per optimiser step.
- Loading is weights-only: :func:`make_loading_safe` makes the engine read its checkpoint files with
  ``torch.load(weights_only=True)``, allowing just three plain DeepSpeed classes (loss-scaler settings,
  the ZeRO stage enum, a (numel, start) named tuple) besides tensors and containers.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.config import Config, TrainConfig
from pipeline.diffusion import CosineSchedule, distillation_losses, training_losses
from pipeline.models import LayerEnergyNet, VoxelUNet


class DiffusionPair(nn.Module):
    """``forward(layers, voxels, cond, generator) -> {"loss", "layer", "voxel"}`` for both networks."""

    def __init__(self, layer_net: LayerEnergyNet, voxel_unet: VoxelUNet, schedule: CosineSchedule) -> None:
        super().__init__()
        self.layer_net, self.voxel_unet, self.schedule = layer_net, voxel_unet, schedule

    def forward(self, layers: Tensor, voxels: Tensor, cond: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return training_losses(self.layer_net, self.voxel_unet, layers, voxels, cond, self.schedule, generator)


class FrozenTeacher:
    """A frozen model shared, never copied: not a submodule (so it is neither trained, checkpointed nor
    partitioned), and ``copy.deepcopy`` (the EMA's copy of the student) returns the same object."""

    def __init__(self, model: DiffusionPair) -> None:
        self.model = model.eval().requires_grad_(False)

    def __deepcopy__(self, memo: dict) -> "FrozenTeacher":
        return self


class DistillationPair(DiffusionPair):
    """A student pair whose loss is the progressive-distillation loss against ``teacher`` (2N steps)."""

    def __init__(self, layer_net: LayerEnergyNet, voxel_unet: VoxelUNet, schedule: CosineSchedule,
                 teacher: DiffusionPair, student_steps: int) -> None:
        super().__init__(layer_net, voxel_unet, schedule)
        self.teacher, self.student_steps = FrozenTeacher(teacher), student_steps

    def forward(self, layers: Tensor, voxels: Tensor, cond: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        t = self.teacher.model
        return distillation_losses(self.layer_net, self.voxel_unet, t.layer_net, t.voxel_unet, layers, voxels, cond,
                                   self.schedule, self.student_steps, generator)


def lr_factor(step: int, t: TrainConfig) -> float:
    """Multiplier of ``t.lr`` for optimiser step ``step`` (0-based)."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    span = max(1, t.max_steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for the configured precision on ``device``."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on tensors with >= 2 dimensions (matrices, kernels); none on biases, norms, scalars."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def deepspeed_config(cfg: Config, world_size: int, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed config dict for this training config and world size."""
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": cfg.per_rank_batch(world_size),
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage, "contiguous_gradients": True,
                              "overlap_comm": device.type == "cuda"},
        "bf16": {"enabled": False},  # bf16 runs as autocast with fp32 weights (see module doc)
        "fp16": {"enabled": False},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_engine(cfg: Config, model: DiffusionPair, world_size: int, device: torch.device) -> Any:
    """A DeepSpeed engine with AdamW and the warm-up/cosine schedule; the process group must exist."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    t = cfg.train
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=tuple(t.betas), eps=t.eps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lambda opt: LambdaLR(opt, lambda s: lr_factor(s, t)),
        config=deepspeed_config(cfg, world_size, device), dist_init_required=False,
    )
    make_loading_safe(engine)
    return engine


def _safe_globals() -> list[Any]:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _weights_only_load(self: Any, path: str, map_location: Any = None) -> Any:
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def make_loading_safe(engine: Any) -> None:
    """Make ``engine.load_checkpoint`` read files weights-only (DeepSpeed's own engine unpickles freely)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    ckpt = engine.checkpoint_engine
    if type(ckpt) is not TorchCheckpointEngine:
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(ckpt).__name__}; cannot make loading safe")
    ckpt.load = _weights_only_load.__get__(ckpt)


def safe_load_module_weights(path: str, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The ``module`` state dict of a DeepSpeed ``mp_rank_00_model_states.pt`` file, loaded weights-only."""
    state = _weights_only_load(None, path, map_location=device)
    return state["module"]

