"""The classifier follows the CaloChallenge protocol by default, reaches the optimal AUC of a known problem, and
the quick variant is named as such everywhere it reports."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from scipy.stats import norm

from pipeline.evaluation.classifier import (
    ClassifierConfig,
    DenseFeatures,
    classifier_test,
    protocol_config,
    train_once,
)


def test_defaults_are_the_challenge_protocol() -> None:
    cfg = ClassifierConfig()
    # evaluate.py: input layer + 2 hidden 512x512 layers (3 hidden layers of 512), dropout 0, Adam lr 2e-4,
    # batch 1000, 50 epochs with no early stopping, best epoch by accuracy on the held-out selection split
    assert (cfg.protocol, cfg.hidden, cfg.n_layers, cfg.dropout, cfg.lr, cfg.batch_size, cfg.max_epochs) == \
        ("calochallenge", 512, 3, 0.0, 2e-4, 1000, 50)
    assert cfg.patience is None and cfg.select == "accuracy" and not cfg.standardise and not cfg.adaptive_batch
    quick = ClassifierConfig.quick()
    assert quick.protocol == "quick" and quick.patience is not None and quick.dropout > 0
    assert protocol_config("calochallenge", 7).max_epochs == 7 and protocol_config("quick").protocol == "quick"
    with pytest.raises(ValueError, match="protocol"):
        ClassifierConfig(protocol="fast")


def _gaussians(n: int, shift: float, seed: int) -> tuple[DenseFeatures, DenseFeatures]:
    rng = np.random.default_rng(seed)
    return DenseFeatures(rng.normal(0.0, 1.0, (n, 2))), DenseFeatures(rng.normal(0.0, 1.0, (n, 2)) + [shift, 0.0])


def test_every_epoch_runs_and_the_best_validation_accuracy_is_kept() -> None:
    gen, ref = _gaussians(1500, 0.5, 1)
    r = train_once(gen, ref, ClassifierConfig(max_epochs=12))
    assert r["epochs"] == 12  # no early stopping
    accuracy = [h["val_accuracy"] for h in r["history"]]
    assert r["best_epoch"] == 1 + int(np.argmax(accuracy))  # the first epoch with the highest accuracy
    assert r["batch_size"] == 1000  # the protocol's batch, not shrunk for a small sample


def test_reaches_the_optimal_auc_of_two_shifted_gaussians() -> None:
    """N(0, 1) against N(0.5, 1) in one of two features: the best possible AUC is Phi(0.5 / sqrt 2) = 0.638; the
    protocol's classifier (50 epochs) must reach it within 3 sigma of the AUC's spread on its test split."""
    gen, ref = _gaussians(5000, 0.5, 2)
    result = classifier_test(gen, ref, ClassifierConfig(), label="gaussians")
    optimum = norm.cdf(0.5 / math.sqrt(2))
    # the AUC of a fixed score on 2 x 1000 test showers spreads by about sqrt(AUC(1-AUC)/1000) ~ 0.015
    assert abs(result["auc"] - optimum) < 0.045, (result["auc"], optimum)
    assert result["protocol"] == "calochallenge" and result["deviations"]
    same = classifier_test(*_gaussians(5000, 0.0, 3), ClassifierConfig(max_epochs=10), label="same")
    assert abs(same["auc"] - 0.5) < 4 * same["auc_null_std"]


def test_quick_results_are_named_quick() -> None:
    gen, ref = _gaussians(600, 0.5, 4)
    result = classifier_test(gen, ref, ClassifierConfig.quick(max_epochs=30))
    assert result["protocol"] == "quick" and "deviations" not in result
    run = result["runs"][0]
    assert run["epochs"] - run["best_epoch"] <= 3  # early stopping (patience 3) on the validation loss
    assert json.loads(json.dumps(asdict(ClassifierConfig.quick())))["protocol"] == "quick"
