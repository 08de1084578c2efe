"""The DeepSpeed engine of training: one engine and one optimiser over both networks
(:class:`pipeline.training.losses.DiffusionLoss`), AdamW, warm-up + cosine schedule.

- The optimiser is a client ``torch.optim.AdamW`` (its fused CUDA kernel on GPUs, ``optim.fused``;
  no DeepSpeed op compilation), weight decay on matrices and convolution kernels only; ZeRO stage 1
  or 2 partitions its state over the ranks.
- Precision (:mod:`pipeline.runtime.precision`): ``bf16`` runs the forward pass under autocast while
  the weights, the gradients, their all-reduce and the optimiser stay fp32 (fp32 master weights).
- Learning rate (:func:`lr_factor`): linear warm-up over ``train.warmup_steps``, then a cosine decay
  to ``lr * optim.min_lr_ratio`` at ``train.max_steps`` (a distillation stage: ``distill.*``);
  DeepSpeed steps the scheduler once per optimiser step.
- Loading is weights-only: :func:`make_loading_safe` makes the engine read its checkpoint files with
  ``torch.load(weights_only=True)``, allowing just three plain DeepSpeed classes (loss-scaler
  settings, the ZeRO stage enum, a (numel, start) named tuple) besides tensors and containers.
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.config import Config, StageSchedule
from pipeline.training.losses import DiffusionLoss


def lr_factor(step: int, t: StageSchedule, min_lr_ratio: float) -> float:
    """Multiplier of ``t.lr`` for optimiser step ``step`` (0-based): linear warm-up, then a cosine
    down to ``min_lr_ratio`` at ``t.max_steps``."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    span = max(1, t.max_steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on tensors with >= 2 dimensions (matrices, kernels); none on biases, norms,
    scalars."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def bucket_elements(n_params: int) -> int:
    """ZeRO's reduce and all-gather bucket size: a quarter of the parameters (at least 2**20
    elements, at most DeepSpeed's default 5e8). With the default every preset fits one bucket, so
    gradients would be reduced only after the backward pass (nothing to overlap) and
    ``overlap_comm`` would allocate ~4 GB of buckets per rank."""
    return int(min(5e8, max(2**20, math.ceil(n_params / 4))))


def deepspeed_config(cfg: Config, world_size: int, device: torch.device,
                     n_params: int) -> dict[str, Any]:
    """The DeepSpeed config dict for this training config, world size and parameter count."""
    t = cfg.train
    bucket = bucket_elements(n_params)
    return {
        "train_micro_batch_size_per_gpu": cfg.per_rank_batch(world_size),
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": t.zero_stage, "contiguous_gradients": True,
                              "overlap_comm": device.type == "cuda", "reduce_bucket_size": bucket,
                              "allgather_bucket_size": bucket},
        "bf16": {"enabled": False},  # bf16 runs as autocast with fp32 weights (see module doc)
        "fp16": {"enabled": False},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def engine_args(device: torch.device) -> SimpleNamespace | None:
    """What tells DeepSpeed the rank's device: ``device_rank``, where it would otherwise use
    ``LOCAL_RANK``, a device that does not exist when a task sees only its own GPUs
    (``--gpus-per-task=1``)."""
    return SimpleNamespace(device_rank=device.index) if device.type == "cuda" else None


def build_engine(cfg: Config, model: DiffusionLoss, world_size: int, device: torch.device) -> Any:
    """A DeepSpeed engine with AdamW and the warm-up/cosine schedule; the process group must
    exist."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    t, o = cfg.train, cfg.optim
    fused = o.fused and device.type == "cuda"  # one kernel launch for all tensors
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=t.lr,
                                  betas=tuple(o.betas), eps=o.eps, fused=fused or None)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    schedule = lambda opt: LambdaLR(opt, lambda s: lr_factor(s, t, o.min_lr_ratio))  # noqa: E731
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule,
        config=deepspeed_config(cfg, world_size, device, n_params), dist_init_required=False,
        args=engine_args(device),
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
    """Make ``engine.load_checkpoint`` read files weights-only (DeepSpeed's own engine unpickles
    freely)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    ckpt = engine.checkpoint_engine
    if type(ckpt) is not TorchCheckpointEngine:
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(ckpt).__name__}; "
                           f"cannot make loading safe")
    ckpt.load = _weights_only_load.__get__(ckpt)


def safe_load_module_weights(path: str, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The ``module`` state dict of a DeepSpeed ``mp_rank_00_model_states.pt`` file, loaded
    weights-only."""
    state = _weights_only_load(None, path, map_location=device)
    return state["module"]

