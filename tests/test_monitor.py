"""The fidelity monitor: its rows in logs/monitor.csv and TensorBoard, and that it leaves training
alone (the same weights with it on or off, and a bit-identical resume with it on)."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch
from train_runs import ONE_THREAD, run_train, write_config

from pipeline.data.run_record import read_record
from pipeline.data.shower_store import ShowerStore
from pipeline.runtime.exit_codes import EXIT_REQUEUE
from pipeline.training.metrics_log import comparable_rows
from pipeline.training.monitor import COLUMNS, preserved_rng, validation_showers

MONITOR = {"monitor": {"every_steps": 2, "showers": 24, "sample_steps": 2},
           "validation": {"every_steps": 0}, "max_steps": 6}


def monitor_rows(run) -> list[dict[str, str]]:
    with open(run / "logs" / "monitor.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_preserved_rng_restores_every_global_stream():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    with preserved_rng(torch.device("cpu")):
        torch.manual_seed(99)  # as the classifier does
        torch.rand(10), np.random.rand(10), random.random()
    assert (torch.equal(torch.rand(3), expected[0])
            and np.array_equal(np.random.rand(3), expected[1]))
    assert random.random() == expected[2]


def test_validation_showers_are_the_first_of_the_validation_chunks(store):
    s = ShowerStore(store)
    showers, energies = validation_showers(s, 20)
    first = s.chunk_ids("validation")[0] * s.chunk_rows
    assert showers.shape == (20, s.geometry.n_voxels) and energies.shape == (20,)
    np.testing.assert_array_equal(showers[0], np.asarray(s.showers[first]).reshape(-1))
    np.testing.assert_array_equal(energies[:16], s.energies[first:first + 16])  # chunks of 16


@pytest.mark.slow
def test_monitor_rows_and_no_effect_on_training(tmp_path, store):
    """Monitor on (every 2 steps, 24 showers) vs off: the same weights and EMA; rows at steps 0, 2,
    4, 6 with every metric its sample size allows, TensorBoard scalars and the profile figure;
    generated in batches of 5, the same rows."""
    on, off = tmp_path / "on", tmp_path / "off"
    assert run_train(write_config(tmp_path / "on.yaml", store, on, **MONITOR),
                     **ONE_THREAD).returncode == 0
    plain = {**MONITOR, "monitor": {"every_steps": 0}}
    assert run_train(write_config(tmp_path / "off.yaml", store, off, **plain),
                     **ONE_THREAD).returncode == 0
    assert (read_record(on).weights_sha256, read_record(on).ema_sha256) == \
        (read_record(off).weights_sha256, read_record(off).ema_sha256)
    assert not (off / "logs" / "monitor.csv").exists()

    rows = monitor_rows(on)
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6] and tuple(rows[0]) == COLUMNS
    for r in rows:
        assert (r["showers"] == "24" and 0 < float(r["etot_einc"]) <= 1
                and 0 < float(r["etot_einc_floor"]) < 1)
        assert float(r["e_layer"]) > 0 and float(r["generation_ms_per_shower"]) > 0
        # 24 showers: too few, and the log says so
        assert r["fpd"] == "" and r["classifier_auc"] == ""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(on / "logs" / "tensorboard"),
                              size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("monitor/etot_einc")] == [0, 2, 4, 6]
    assert [e.step for e in events.Images("monitor/profiles")] == [0, 2, 4, 6]

    # each rank's share in batches of 5: the same showers, so the same rows
    batched = tmp_path / "batched"
    config = write_config(tmp_path / "batched.yaml", store, batched, **MONITOR)
    assert run_train(config, "--set", "generate.per_rank_batch_size=5",
                     **ONE_THREAD).returncode == 0
    assert (comparable_rows(batched / "logs" / "monitor.csv")
            == comparable_rows(on / "logs" / "monitor.csv"))


@pytest.mark.slow
def test_resume_with_the_monitor_on_is_bit_identical(tmp_path, store):
    """Stopped by --time-limit after the first step, resumed: the weights of an uninterrupted run,
    and the monitor's log reads like one run."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert run_train(write_config(tmp_path / "ref.yaml", store, ref, **MONITOR),
                     **ONE_THREAD).returncode == 0
    cfg = write_config(tmp_path / "run.yaml", store, run, **MONITOR, checkpoint_every_steps=2)
    assert run_train(cfg, "--time-limit", "1s", **ONE_THREAD).returncode == EXIT_REQUEUE
    resumed = run_train(cfg, **ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_record(run).ema_sha256 == read_record(ref).ema_sha256
    assert read_record(run).weights_sha256 == read_record(ref).weights_sha256
    assert [int(r["step"]) for r in monitor_rows(run)] == [0, 2, 4, 6]
    assert ([r["etot_einc"] for r in monitor_rows(run)]
            == [r["etot_einc"] for r in monitor_rows(ref)])
