"""Classifier two-sample test (CaloChallenge): a DNN learns to tell generated from reference showers.

By default the CaloChallenge protocol (the challenge's ``evaluate.py``): a fully connected network
(3 hidden layers of 512, LeakyReLU, no dropout) with a logit output, BCE loss, Adam (lr 2e-4,
batch 1000) for 50 epochs; the classes are balanced and each split 60/20/20 into train / validation
/ test. The epoch with the best validation accuracy is kept, its sigmoid outputs are calibrated by
isotonic regression fitted on the validation split, and AUC and JSD = (ln 2 - BCE) / ln 2 are
measured on the test split, which takes no part in training, model selection or calibration.
Reference is label 1. :data:`PROTOCOL_DEVIATIONS` lists where this code differs and why; every
result carries them.

``ClassifierConfig.quick()`` is the faster variant for the training monitor and smoke runs (dropout
0.2, early stopping on the validation loss, inputs standardised, a batch that shrinks for small
samples); its results are named ``quick`` and must not be compared with the challenge's numbers.

Inputs: ``DenseFeatures`` (high-level features as the challenge scales them: log10 E_inc,
log10(E_layer + 1e-8), centres and widths / 100 mm) or ``LowLevelFeatures`` (log10 E_inc and
100 * E_voxel / E_inc, the challenge's low-level input, held as sparse rows and made dense batch by
batch).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
from scipy.special import expit
from torch import nn
from tqdm import tqdm

from pipeline.evaluation.calibration import (
    Isotonic,
    auc,
    auc_null_std,
    binary_cross_entropy,
    jsd_estimate,
)
from pipeline.evaluation.sparse_rows import SparseRows

SPLIT = (0.6, 0.2, 0.2)


#: where the default protocol differs from the challenge's evaluate.py, and why
PROTOCOL_DEVIATIONS = (
    "float32 arithmetic (the challenge sets float64 as torch's default dtype): the fast path on CPU and GPU",
    "the larger sample is subsampled to the smaller (the challenge requires equal sizes)",
    "the test split is 20 % of the same two samples (for ds3 the challenge scores a second pair of files): "
    "either way the scored showers took no part in training, epoch selection or calibration",
)

PROTOCOLS = ("calochallenge", "quick")


@dataclass
class ClassifierConfig:
    """Classifier settings; the defaults are the CaloChallenge protocol (see the module docstring)."""

    protocol: str = "calochallenge"  #: the name results carry: "calochallenge" or "quick"
    hidden: int = 512
    n_layers: int = 3
    dropout: float = 0.0
    lr: float = 2e-4
    batch_size: int = 1000
    max_epochs: int = 50
    patience: int | None = None  #: stop after this many epochs without improvement; None: all epochs
    select: str = "accuracy"  #: best epoch by validation "accuracy" (the challenge) or "loss"
    standardise: bool = False  #: standardise dense inputs by the training split (the challenge does not)
    adaptive_batch: bool = False  #: shrink the batch to n_train / 10 for small samples (at least 32)
    runs: int = 1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"classifier protocol: expected one of {PROTOCOLS}, got {self.protocol!r}")
        if self.select not in ("accuracy", "loss"):
            raise ValueError(f"classifier select: expected 'accuracy' or 'loss', got {self.select!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> "ClassifierConfig":
        """The fast variant (monitor, smoke runs): dropout 0.2, at most 20 epochs with early stopping on the
        validation loss (patience 3), standardised inputs, a batch that shrinks for small samples."""
        settings: dict[str, Any] = dict(protocol="quick", dropout=0.2, max_epochs=20, patience=3, select="loss",
                                        standardise=True, adaptive_batch=True)
        return cls(**(settings | overrides))


def protocol_config(protocol: str, epochs: int | None = None, **overrides: Any) -> ClassifierConfig:
    """The settings of ``protocol`` ("calochallenge" or "quick"), with ``epochs`` (None: the protocol's) and
    other fields overridden."""
    if epochs is not None:
        overrides["max_epochs"] = epochs
    if protocol == "quick":
        return ClassifierConfig.quick(**overrides)
    return ClassifierConfig(protocol=protocol, **overrides)


class Features(Protocol):
    n_features: int

    def __len__(self) -> int: ...

    def batch(self, rows: np.ndarray) -> np.ndarray: ...


class DenseFeatures:
    """Rows of a dense (n, d) array."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array, dtype=np.float32)
        self.n_features = self.array.shape[1]

    def __len__(self) -> int:
        return self.array.shape[0]

    def batch(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]


class LowLevelFeatures:
    """[log10 E_inc, voxels] with the voxels as sparse rows."""

    def __init__(self, voxels: SparseRows, energies: np.ndarray) -> None:
        if len(voxels) != len(energies):
            raise ValueError(f"{len(voxels)} voxel rows but {len(energies)} energies")
        self.voxels, self.log_e = voxels, np.log10(np.asarray(energies, dtype=np.float64)).astype(np.float32)
        self.n_features = voxels.n_cols + 1

    def __len__(self) -> int:
        return len(self.voxels)

    def batch(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([self.log_e[rows, None], self.voxels.dense(rows)], axis=1)


def make_network(n_in: int, cfg: ClassifierConfig, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> nn.Sequential:
    """The DNN; with ``mean``/``std`` its first step standardises the inputs."""
    layers: list[nn.Module] = []
    if mean is not None and std is not None:
        layers.append(_Standardise(mean, std))
    width = n_in
    for _ in range(cfg.n_layers):
        layers += [nn.Linear(width, cfg.hidden), nn.LeakyReLU(), nn.Dropout(cfg.dropout)]
        width = cfg.hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class _Standardise(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", 1.0 / torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.scale


@dataclass
class _Split:
    """(source, row) pairs of one split; source 0 generated, 1 reference (= the label)."""

    source: np.ndarray
    row: np.ndarray


def split_indices(n_generated: int, n_reference: int, rng: np.random.Generator) -> dict[str, _Split]:
    """Balanced train/validation/test splits: each class subsampled to the smaller size, split 60/20/20."""
    m = min(n_generated, n_reference)
    cuts = (np.cumsum(SPLIT)[:-1] * m).astype(int)
    parts = [np.split(rng.permutation(n)[:m], cuts) for n in (n_generated, n_reference)]
    out = {}
    for k, name in enumerate(("train", "validation", "test")):
        rows = np.concatenate([parts[0][k], parts[1][k]])
        source = np.repeat([0, 1], [parts[0][k].size, parts[1][k].size])
        order = rng.permutation(rows.size)
        out[name] = _Split(source[order], rows[order])
    return out


def _inputs(sources: tuple[Features, Features], split: _Split, idx: np.ndarray) -> np.ndarray:
    """Feature rows of ``split`` entries ``idx``, in that order."""
    src, rows = split.source[idx], split.row[idx]
    out = np.empty((idx.size, sources[0].n_features), dtype=np.float32)
    for s in (0, 1):
        sel = src == s
        if sel.any():
            out[sel] = sources[s].batch(rows[sel])
    return out


def _logits(model: nn.Module, sources: tuple[Features, Features], split: _Split, batch: int, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for a in range(0, split.row.size, batch):
            x = torch.from_numpy(_inputs(sources, split, np.arange(a, min(a + batch, split.row.size)))).to(device)
            out.append(model(x).squeeze(1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _bce_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def make_adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam, fused where torch supports it (5x faster on CPU for the 21M-parameter voxel classifier)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_once(generated: Features, reference: Features, cfg: ClassifierConfig, run: int = 0,
               label: str = "classifier", progress: bool = False) -> dict[str, Any]:
    """One seeded run: split, train with early stopping, calibrate on validation, score the test split."""
    t0 = time.perf_counter()
    seed = cfg.seed + 1000 * run
    rng = np.random.default_rng([seed, 0xC1A5])
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    sources = (generated, reference)
    splits = split_indices(len(generated), len(reference), rng)
    train = splits["train"]
    n_train = train.row.size
    if n_train < 2 or splits["test"].row.size < 2:
        raise ValueError(f"{label}: too few showers for a classifier test ({min(len(generated), len(reference))} per class)")
    batch = int(min(cfg.batch_size, max(32, n_train // 10))) if cfg.adaptive_batch else cfg.batch_size
    mean = std = None
    if cfg.standardise and isinstance(generated, DenseFeatures):
        x = _inputs(sources, train, np.arange(n_train)).astype(np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
    model = make_network(generated.n_features, cfg, mean, std).to(device)
    optimiser = make_adam(model, cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    val = splits["validation"]
    best = (-math.inf, 0, copy.deepcopy(model.state_dict()))  # (score, epoch, weights); higher score is better
    history = []
    bar = tqdm(range(cfg.max_epochs), desc=f"{label} run {run}", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = rng.permutation(n_train)
        total = 0.0
        steps = range(0, n_train, batch)
        for a in tqdm(steps, desc=f"epoch {epoch + 1}", unit="batch", disable=not progress or len(steps) < 20, leave=False):
            idx = order[a: a + batch]
            x = torch.from_numpy(_inputs(sources, train, idx)).to(device)
            y = torch.from_numpy(train.source[idx].astype(np.float32)).to(device)
            loss = loss_fn(model(x).squeeze(1), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * idx.size
        val_logits = _logits(model, sources, val, batch, device)
        val_loss = _bce_logits(val_logits, val.source)
        val_accuracy = float(np.mean((val_logits >= 0) == val.source.astype(bool)))
        history.append({"epoch": epoch + 1, "train_loss": total / n_train, "val_loss": val_loss,
                        "val_accuracy": val_accuracy})
        bar.set_postfix(train=f"{total / n_train:.4f}", val=f"{val_loss:.4f}", acc=f"{val_accuracy:.3f}")
        score = val_accuracy if cfg.select == "accuracy" else -val_loss
        if score > best[0]:
            best = (score, epoch + 1, copy.deepcopy(model.state_dict()))
        elif cfg.patience is not None and epoch + 1 - best[1] >= cfg.patience:
            break
        if cfg.select == "accuracy" and val_accuracy == 1.0:  # as the challenge: nothing left to learn
            break
    bar.close()
    model.load_state_dict(best[2])
    val_scores = expit(_logits(model, sources, val, batch, device))
    test = splits["test"]
    test_logits = _logits(model, sources, test, batch, device)
    calibrated = Isotonic.fit(val_scores, val.source)(expit(test_logits))
    n_pos = int(test.source.sum())
    return {
        "auc": auc(calibrated, test.source), "auc_raw": auc(test_logits, test.source),
        "jsd": jsd_estimate(calibrated, test.source), "bce": binary_cross_entropy(calibrated, test.source),
        "accuracy": float(np.mean((calibrated >= 0.5) == test.source.astype(bool))),
        "auc_null_std": auc_null_std(n_pos, test.source.size - n_pos),
        "n_train": n_train, "n_validation": int(val.row.size), "n_test": int(test.row.size),
        "best_epoch": best[1], "epochs": len(history), "batch_size": batch, "seconds": time.perf_counter() - t0,
        "history": history,
    }


def classifier_test(generated: Features, reference: Features, cfg: ClassifierConfig, label: str = "classifier",
                    progress: bool = False) -> dict[str, Any]:
    """``cfg.runs`` seeded runs (different splits and initialisations); mean and spread of AUC and JSD."""
    runs = [train_once(generated, reference, cfg, r, label, progress) for r in range(cfg.runs)]
    out: dict[str, Any] = {"protocol": cfg.protocol, "config": asdict(cfg), "n_features": generated.n_features,
                           "runs": runs}
    if cfg.protocol == "calochallenge":
        out["deviations"] = list(PROTOCOL_DEVIATIONS)
    for key in ("auc", "auc_raw", "jsd", "accuracy"):
        values = np.array([r[key] for r in runs])
        out[key] = float(values.mean())
        out[key + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
    out["auc_null_std"] = runs[0]["auc_null_std"]
    out["seconds"] = float(sum(r["seconds"] for r in runs))
    return out
