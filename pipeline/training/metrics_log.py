"""Training observability on rank 0: tqdm progress bar, CSV metrics and TensorBoard scalars.

``<run.dir>/logs/metrics.csv`` has one row per logging interval (``kind=train``: losses averaged over
the interval, learning rate, gradient norm, showers/s, peak memory) and per validation (``kind=val``:
loss of the trained weights and of the EMA); ``logs/monitor.csv`` one row per fidelity check
(:mod:`.monitor`). TensorBoard event files (scalars, and the monitor's figures) go to
``<run.dir>/logs/tensorboard`` when the ``tensorboard`` package is installed. Rows that a killed attempt wrote
after its last checkpoint are dropped when the run starts again (all of them on a fresh start, those after the
resumed step on a resume), and TensorBoard is told to purge the same steps, so the logs read like one
uninterrupted run: :func:`comparable_rows` of an interrupted and an uninterrupted run are equal.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.runtime.files import atomic_write_bytes
from pipeline.runtime.memory import peak_rss_mb

COLUMNS = ("step", "kind", "epoch", "loss", "layer_loss", "voxel_loss", "ema_loss", "lr", "grad_norm",
           "samples_per_s", "max_mem_mb", "elapsed_s")
TIMING_COLUMNS = frozenset({"samples_per_s", "max_mem_mb", "elapsed_s", "generation_ms_per_shower",
                            "monitor_seconds"})  # differ between runs of the same computation


@dataclass
class LogInterval:
    """The reduced losses (loss, layer, voxel) summed since the last ``train`` row of the metrics log; saved with
    every checkpoint, so a resumed run writes the same rows as an uninterrupted one."""

    n: int = 0
    seconds: float = 0.0
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))

    def add(self, losses: torch.Tensor, seconds: float) -> None:
        self.n += 1
        self.seconds += seconds
        self.sums += losses

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "seconds": self.seconds, "sums": self.sums.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> LogInterval:
        """From :meth:`state`; checkpoints written before it was saved start an empty interval."""
        if not state:
            return cls()
        return cls(int(state["n"]), float(state["seconds"]), torch.tensor(state["sums"], dtype=torch.float64))


def comparable_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV log without the :data:`TIMING_COLUMNS`: equal for an interrupted and resumed run and
    an uninterrupted one."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def max_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on ``device``, or this process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class TrainLogger:
    """Progress bar, CSV and TensorBoard; every method is a no-op except on rank 0.

    ``resumed``: the run continues from a checkpoint at ``start_step``, so the rows up to ``start_step`` stay;
    otherwise it starts afresh and rewrites every row, step 0 included.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool, start_step: int, max_steps: int, resumed: bool,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.csv_path = Path(run_dir) / "logs" / "metrics.csv"
        self.keep_through = start_step if resumed else -1  # the last step whose rows the checkpoint covers
        self.writer = self.bar = None
        self._tables: dict[str, tuple[Any, Any, tuple[str, ...]]] = {}
        if not enabled:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(self.csv_path, COLUMNS, self.keep_through)
        self._csv = open(self.csv_path, "a", newline="")
        self._rows = csv.writer(self._csv)
        if self._csv.tell() == 0:
            self._rows.writerow(COLUMNS)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed
                SummaryWriter = None
            if SummaryWriter is not None:
                # readers drop the earlier files' events from purge_step on: one value per step
                self.writer = SummaryWriter(str(self.csv_path.parent / "tensorboard"),
                                            purge_step=self.keep_through + 1)
        from tqdm import tqdm

        self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0, desc="train")

    @staticmethod
    def _truncate(path: Path, columns: tuple[str, ...], keep_through: int) -> None:
        """Drop rows after step ``keep_through`` (left by an interrupted run); set a file with other columns
        aside."""
        if not path.is_file():
            return
        rows = list(csv.reader(path.read_text().splitlines()))
        if not rows or tuple(rows[0]) != columns:
            path.rename(path.with_suffix(".csv.old"))
            return
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= keep_through]
        if len(keep) != len(rows):
            buf = io.StringIO()
            csv.writer(buf).writerows(keep)
            atomic_write_bytes(path, buf.getvalue().encode())

    def progress(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Advance the bar to ``step``."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", showers_per_s=f"{samples_per_s:.1f}",
                                 refresh=False)
            self.bar.update(step - self.bar.n)

    def row(self, step: int, kind: str, scalars: dict[str, Any]) -> None:
        """One CSV row (missing columns empty) and the same scalars under ``kind/`` in TensorBoard."""
        if not self.enabled:
            return
        values = {"step": step, "kind": kind, "elapsed_s": time.perf_counter() - self.t0, **scalars}
        self._rows.writerow([_fmt(values.get(c)) for c in COLUMNS])
        self._csv.flush()
        if self.writer is not None:
            for key, value in scalars.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
            self.writer.flush()

    def table_row(self, name: str, columns: tuple[str, ...], step: int, values: dict[str, Any]) -> None:
        """One row of ``logs/<name>.csv`` (columns fixed by the caller; ``step`` first) and the numbers as
        TensorBoard scalars under ``name/``."""
        if not self.enabled:
            return
        if name not in self._tables:
            path = self.csv_path.with_name(f"{name}.csv")
            self._truncate(path, columns, self.keep_through)
            handle = open(path, "a", newline="")
            writer = csv.writer(handle)
            if handle.tell() == 0:
                writer.writerow(columns)
            self._tables[name] = (handle, writer, columns)
        handle, writer, cols = self._tables[name]
        writer.writerow([_fmt({"step": step, **values}.get(c)) for c in cols])
        handle.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and value == value:  # not NaN
                    self.writer.add_scalar(f"{name}/{key}", value, step)
            self.writer.flush()

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """A matplotlib figure in TensorBoard (closed afterwards)."""
        if self.enabled and self.writer is not None:
            self.writer.add_figure(tag, fig, step, close=True)
            self.writer.flush()
        else:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def message(self, text: str) -> None:
        """A line on stderr that does not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self._csv.close()
        for handle, _, _ in self._tables.values():
            handle.close()
        if self.writer is not None:
            self.writer.close()
