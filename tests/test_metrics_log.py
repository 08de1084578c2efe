"""The training logs after kills and re-runs read like one uninterrupted run: CSV rows and TensorBoard steps.

A killed attempt is simulated by a :class:`TrainLogger` that writes rows and is dropped without a checkpoint
covering them; the re-run starts afresh (no checkpoint) or resumes from the step of the last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.training.metrics_log import TIMING_COLUMNS, TrainLogger, comparable_rows


def attempt(run: Path, start: int, stop: int, *, resumed: bool) -> None:
    """What the trainer logs from ``start`` (exclusive when resumed) to ``stop``: a validation and a monitor row
    at step 0, a train row every step, a validation and a monitor row every 4 steps."""
    time.sleep(1.01 - time.time() % 1)  # TensorBoard orders event files by name: the second they were opened first
    log = TrainLogger(run, enabled=True, start_step=start, max_steps=stop, resumed=resumed)
    first = start + 1 if resumed else 0
    for step in range(first, stop + 1):
        if step:
            log.row(step, "train", {"loss": 1.0 / step, "lr": 1e-3, "samples_per_s": 100.0 + step})
        if step % 4 == 0:
            log.row(step, "val", {"loss": 2.0 / (step + 1), "ema_loss": 3.0 / (step + 1)})
            log.table_row("monitor", ("step", "etot_einc", "monitor_seconds"), step,
                          {"etot_einc": 0.5 / (step + 1), "monitor_seconds": 0.1})
    log.close()


def logs(run: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    return comparable_rows(run / "logs" / "metrics.csv"), comparable_rows(run / "logs" / "monitor.csv")


def tensorboard_steps(run: Path) -> dict[str, list[int]]:
    """Steps of every scalar as TensorBoard shows them (orphaned events of killed attempts purged)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(run / "logs" / "tensorboard"))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("attempts", [
    [(0, 3, False), (0, 10, False)],                                  # killed before its first checkpoint
    [(0, 2, False), (0, 0, False), (0, 10, False)],                   # twice, once right after step 0's rows
    [(0, 6, False), (4, 9, True), (8, 10, True)],                     # checkpoints at 4 and 8, killed after them
    [(0, 5, False), (4, 4, True), (4, 10, True)],                     # killed right after resuming
])
def test_interrupted_logs_equal_an_uninterrupted_run(tmp_path, attempts):
    attempt(tmp_path / "reference", 0, 10, resumed=False)
    run = tmp_path / "run"
    for start, stop, resumed in attempts:
        attempt(run, start, stop, resumed=resumed)
    reference = logs(tmp_path / "reference")
    assert logs(run) == reference
    assert [r["step"] for r in reference[0] if r["kind"] == "val"] == ["0", "4", "8"]
    assert not TIMING_COLUMNS & reference[0][0].keys()
    steps = tensorboard_steps(run)
    assert steps == tensorboard_steps(tmp_path / "reference")
    assert steps["val/loss"] == [0, 4, 8] and steps["train/loss"] == list(range(1, 11))


def test_a_log_with_other_columns_is_set_aside(tmp_path):
    path = tmp_path / "logs" / "metrics.csv"
    path.parent.mkdir()
    path.write_text("step,loss\n1,0.5\n")
    attempt(tmp_path, 0, 4, resumed=False)
    assert (tmp_path / "logs" / "metrics.csv.old").read_text() == "step,loss\n1,0.5\n"
    assert [r["step"] for r in comparable_rows(path)] == ["0", "1", "2", "3", "4", "4"]
