"""Config keys that moved, and where to: a config that still uses one gets an error naming the new key.

Run directories written before a move hold their resolved config with the old keys; reading one of
those (a finished model's ``config.yaml``) moves the values instead (:func:`upgrade`).
"""

from __future__ import annotations

from typing import Any

from pipeline.config.loader import ConfigError

MOVED_KEYS: dict[str, str] = {  # old dotted key -> new dotted key (2026-12: one home per setting)
    "data.batch_size": "data.global_batch_size",
    "diffusion.sample_steps": "sampling.steps",
    "diffusion.eta": "sampling.eta",
    "generate.clip_x": "sampling.clip_x",
    "generate.threshold_fractions": "sampling.threshold_fractions",
    "generate.batch_size": "generate.per_rank_batch_size",
    "train.precision": "device.precision",
    "train.channels_last": "device.channels_last",
    "train.cudnn_benchmark": "device.cudnn_benchmark",
    "generate.precision": "device.precision",
    "generate.channels_last": "device.channels_last",
    "generate.cudnn_benchmark": "device.cudnn_benchmark",
    "train.betas": "optim.betas",
    "train.eps": "optim.eps",
    "train.weight_decay": "optim.weight_decay",
    "train.grad_clip": "optim.grad_clip",
    "train.min_lr_ratio": "optim.min_lr_ratio",
    "train.fused_optimizer": "optim.fused",
    "train.val_every_steps": "train.validation.every_steps",
    "train.val_batches": "train.validation.per_rank_batches",
    "train.eval_every_steps": "train.monitor.every_steps",
    "train.eval_showers": "train.monitor.showers",
    "train.eval_sample_steps": "train.monitor.sample_steps",
    "train.eval_bins": "train.monitor.bins",
}


def _lookup(data: dict, key: str) -> tuple[dict, str] | None:
    """The mapping that holds dotted ``key`` and its last part, or None when the key is absent."""
    *sections, name = key.split(".")
    node: Any = data
    for part in sections:
        node = node.get(part) if isinstance(node, dict) else None
    return (node, name) if isinstance(node, dict) and name in node else None


def reject_moved(data: dict) -> None:
    """Raise naming the new key for the first old key ``data`` uses."""
    for old, new in MOVED_KEYS.items():
        if _lookup(data, old) is not None:
            raise ConfigError(f"{old}: this key moved to {new}; rename it (see docs/configuration.md)")


def upgrade(data: dict) -> dict:
    """Move old keys to their new homes (the first old key wins where two moved into one)."""
    for old, new in MOVED_KEYS.items():
        found = _lookup(data, old)
        if found is None:
            continue
        node, name = found
        value = node.pop(name)
        *sections, last = new.split(".")
        target = data
        for part in sections:
            target = target.setdefault(part, {})
        target.setdefault(last, value)
    return data
