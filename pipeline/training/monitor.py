"""Fidelity monitor: during training and distillation, how the showers the EMA weights make
compare with data.

Every ``train.monitor.every_steps`` steps, at step 0 of a fresh run and at the end, the ranks share
the generation of ``train.monitor.showers`` showers (M) with the current EMA weights and
``train.monitor.sample_steps`` DDIM steps (default: the run's sampler) for the incident energies of
the first M validation showers of the store, with the same seeds every time (so a curve shows the
model, not the noise), and rank 0 compares them with those validation showers with
:mod:`pipeline.evaluation`'s own code:

- separation powers, each with its noise floor for these sample sizes: E_tot/E_inc, and the mean
  over the layers of the layer energies, centres of energy and widths in x and y, sparsity;
- FPD and KPD of the high-level features when M >= :data:`DISTANCE_MIN_SHOWERS`, a high-level
  classifier AUC (the quick classifier, :meth:`ClassifierConfig.quick`: a trend, not the
  CaloChallenge protocol) when M >= :data:`CLASSIFIER_MIN_SHOWERS` (below that the log says why it
  is missing);
- generation ms per shower (per rank; each rank's share in batches of
  ``generate.per_rank_batch_size``, or :data:`MONITOR_BATCH`); in a distillation stage also how far
  the student's showers are from its teacher's (2x steps) for the same noise: relative L1 of the
  voxels and the mean |log E_tot ratio|.

A run that trains one network alone (``train.networks``) is monitored on that network: the layer
network alone by its layer energies (:mod:`pipeline.evaluation.layer_fidelity`: E_tot/E_inc and
layer separations, the response, and a classifier AUC on the layer energies when M >=
:data:`CLASSIFIER_MIN_SHOWERS`); the voxel network alone by whole showers whose voxels it samples
for the validation showers' true layer energies (every rank then reads the validation showers).

Rows go to ``logs/monitor.csv`` and TensorBoard (``monitor/*`` scalars, and a figure of the
longitudinal and radial profiles and the E_tot/E_inc histogram). The monitor draws from its own
random streams and restores every global RNG state, so a run ends with the same weights with it on
or off, and resumes bit for bit.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.config import Config
from pipeline.data.samples import ArraySample
from pipeline.data.shower_store import ShowerStore
from pipeline.diffusion import (
    CosineSchedule,
    NetworkSampling,
    shower_seed,
    synthesize,
    synthesize_layers,
)
from pipeline.evaluation.classifier import ClassifierConfig, DenseFeatures, classifier_test
from pipeline.evaluation.layer_fidelity import compare_layer_energies
from pipeline.evaluation.observables import FAMILIES, SampleObservables, compute_observables
from pipeline.evaluation.physics_distance import fpd, kpd
from pipeline.evaluation.plots import profiles_figure
from pipeline.evaluation.runner import separations, summarise
from pipeline.physics.preprocessing import Preprocessor
from pipeline.runtime.distributed import DistEnv, gathered
from pipeline.runtime.precision import autocast
from pipeline.training.metrics_log import TrainLogger

# shower i of the monitor's sample gets shower_seed(MONITOR_SEED, i): the same every time
MONITOR_SEED = 0x5EED
MONITOR_BATCH = 64  # showers per forward pass when generate.per_rank_batch_size is 0 (automatic)
DISTANCE_MIN_SHOWERS = 200
CLASSIFIER_MIN_SHOWERS = 2000
COLUMNS = ("step", "showers", "sample_steps", "etot_einc", "etot_einc_floor",
           *(f"{f}{s}" for f in FAMILIES for s in ("", "_floor")), "response_generated",
           "response_reference", "fpd", "fpd_error", "kpd", "kpd_error", "classifier_auc",
           "student_teacher_rel_l1",
           "student_teacher_log_etot", "generation_ms_per_shower", "monitor_seconds")


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Restore torch (CPU and this device), NumPy and Python random states afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def validation_showers(store: ShowerStore, m: int,
                       showers: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """The first ``m`` showers (flat; None unless ``showers``) and incident energies of the store's
    validation chunks, read chunk by chunk."""
    rows = [np.arange(c * store.chunk_rows, min((c + 1) * store.chunk_rows, store.n))
            for c in store.chunk_ids("validation")]
    rows_m = np.concatenate(rows)[:m] if rows else np.zeros(0, dtype=np.int64)
    energies = np.asarray(store.energies[rows_m], dtype=np.float64)
    if not showers:
        return None, energies
    parts = [np.asarray(store.showers[r[0]:r[-1] + 1]).reshape(len(r), -1)
             for r in rows if r[0] <= rows_m[-1]]
    return np.concatenate(parts)[:m], energies


class FidelityMonitor:
    """One per rank; :meth:`__call__` is collective (every rank generates its share)."""

    def __init__(self, cfg: Config, store: ShowerStore, pre: Preprocessor, env: DistEnv,
                 device: torch.device, precision: str, log: TrainLogger) -> None:
        t = cfg.train
        self.layers_only, voxels_only = "voxels" not in t.networks, "layers" not in t.networks
        m, s = t.monitor, cfg.sampling
        showers, self.energies = validation_showers(store, m.showers,
                                                    showers=env.is_main or voxels_only)
        if self.energies.size < 2:
            raise ValueError(f"train.monitor.every_steps: {store.path} has no validation showers "
                             f"to compare with")
        self.env, self.device, self.precision, self.log, self.pre = env, device, precision, log, pre
        self.geometry, self.bins = store.geometry, m.bins
        self.steps = m.sample_steps or s.steps
        self.schedule = CosineSchedule.from_config(cfg.diffusion)
        self.eta, self.clip, self.threshold_fractions = s.eta, s.clip_x, s.threshold_fractions
        self.batch = cfg.generate.per_rank_batch_size or MONITOR_BATCH
        # this rank's positions in the sample
        self.mine = np.arange(env.rank, self.energies.size, env.world_size)
        layer_energies = self.geometry.layer_energies(showers) if showers is not None else None
        # a voxels-only run: the voxel network's conditions, preprocessed once
        self.given_layers = None
        if voxels_only and layer_energies is not None:
            self.given_layers = pre.from_layer_energies(
                torch.from_numpy(layer_energies[self.mine]).float().to(device),
                torch.from_numpy(self.energies[self.mine]).to(device)).layers
        self.reference: SampleObservables | None = None
        self.reference_layers = layer_energies if self.layers_only else None
        if env.is_main and not self.layers_only:
            self.reference = compute_observables(ArraySample(showers, self.energies, self.geometry,
                                                             "validation"))
        self.teacher_showers: np.ndarray | None = None
        self.notes: set[str] = set()

    @torch.no_grad()
    def _generate(self, model: torch.nn.Module, steps: int) -> tuple[np.ndarray, float]:
        """All M showers (flat, in sample order), each rank generating its share; and this rank's ms
        per shower."""
        t0 = time.perf_counter()
        energies = torch.from_numpy(self.energies[self.mine])
        seeds = [shower_seed(MONITOR_SEED, int(i)) for i in self.mine]
        width = self.geometry.n_layers if self.layers_only else self.geometry.n_voxels
        mine = np.zeros((0, width), np.float32)
        layer = NetworkSampling(model.layer_net, steps, model.prediction, self.clip)
        voxel = replace(layer, model=model.voxel_net)
        parts = [mine]
        # the share in batches: 2048 large-model showers do not fit at once
        for a in range(0, len(seeds), self.batch):
            b = a + self.batch
            with autocast(self.precision, self.device):
                if self.layers_only:
                    out_t = synthesize_layers(energies[a:b], seeds[a:b], layer, self.pre,
                                              schedule=self.schedule, eta=self.eta)
                else:
                    given = self.given_layers[a:b] if self.given_layers is not None else None
                    out_t = synthesize(energies[a:b], seeds[a:b], layer, voxel, self.pre,
                                       schedule=self.schedule, eta=self.eta,
                                       threshold_fractions=self.threshold_fractions, layers=given)
            parts.append(out_t.float().cpu().numpy().reshape(len(seeds[a:b]), -1))
        mine = np.concatenate(parts)
        ms = 1e3 * (time.perf_counter() - t0) / max(len(seeds), 1)
        out = np.zeros((self.energies.size, width), np.float32)
        for rank, part in enumerate(gathered(mine)):
            out[rank::self.env.world_size] = part
        return out, ms

    def __call__(self, step: int, model: torch.nn.Module,
                 teacher: torch.nn.Module | None = None) -> float:
        """Generate, compare, log (rank 0); returns the seconds it took."""
        t0 = time.perf_counter()
        with preserved_rng(self.device):
            showers, gen_ms = self._generate(model, self.steps)
            if teacher is not None and self.teacher_showers is None and not self.layers_only:
                self.teacher_showers, _ = self._generate(teacher, 2 * self.steps)
            if self.env.is_main:
                self._report(step, showers, gen_ms, t0)
        return time.perf_counter() - t0

    def _report_layers(self, step: int, layers: np.ndarray, gen_ms: float, t0: float) -> None:
        assert self.reference_layers is not None
        n = layers.shape[0]
        cls = ClassifierConfig.quick() if n >= CLASSIFIER_MIN_SHOWERS else None
        if cls is None:
            self._note(f"the layer classifier AUC needs >= {CLASSIFIER_MIN_SHOWERS} showers "
                       f"per sample (train.monitor.showers is {n}): not computed")
        result = compare_layer_energies(layers.astype(np.float64), self.reference_layers,
                                        self.energies, self.energies, bins=self.bins,
                                        classifier=cls)
        keys = ("etot_einc", "etot_einc_floor", "e_layer", "e_layer_floor", "response_generated",
                "response_reference", "classifier_auc")
        row: dict[str, Any] = {"showers": n, "sample_steps": self.steps,
                               "generation_ms_per_shower": gen_ms,
                               **{k: result[k] for k in keys if k in result}}
        row["monitor_seconds"] = time.perf_counter() - t0
        self.log.table_row("monitor", COLUMNS, step, row)
        auc = (f", layer classifier AUC (quick) {row['classifier_auc']:.3f}"
               if "classifier_auc" in row else "")
        self.log.message(f"monitor step {step} (layer network): E_tot/E_inc {row['etot_einc']:.3f} "
                         f"(floor {row['etot_einc_floor']:.3f}), e_layer {row['e_layer']:.3f} "
                         f"({row['e_layer_floor']:.3f}), response {row['response_generated']:.4f} "
                         f"vs {row['response_reference']:.4f}{auc}; "
                         f"{gen_ms:.2f} ms/shower, {row['monitor_seconds']:.1f} s")

    def _report(self, step: int, showers: np.ndarray, gen_ms: float, t0: float) -> None:
        if self.layers_only:
            return self._report_layers(step, showers, gen_ms, t0)
        ref = self.reference
        assert ref is not None
        gen = compute_observables(ArraySample(showers, self.energies, self.geometry, "generated"))
        seps = separations(gen, ref, self.bins)
        summary = summarise(seps)
        row: dict[str, Any] = {"showers": int(showers.shape[0]), "sample_steps": self.steps,
                               "etot_einc": summary["etot_einc"]["value"],
                               "etot_einc_floor": summary["etot_einc"]["floor"],
                               "response_generated": float(np.mean(gen.hlf.e_tot / gen.hlf.e_inc)),
                               "response_reference": float(np.mean(ref.hlf.e_tot / ref.hlf.e_inc)),
                               "generation_ms_per_shower": gen_ms}
        for family in FAMILIES:
            row[family] = summary[family]["mean"]
            row[f"{family}_floor"] = summary[family]["floor_mean"]
        n = showers.shape[0]
        x_ref, x_gen = ref.hlf.classifier_features(), gen.hlf.classifier_features()
        if n >= DISTANCE_MIN_SHOWERS:
            f, k = (fpd(x_ref, x_gen, batches=5, points=5),
                    kpd(x_ref, x_gen, batch_size=n // 2, batches=5))
            row.update(fpd=f["value"], fpd_error=f["error"], kpd=k["value"], kpd_error=k["error"])
        else:
            self._note(f"FPD/KPD need >= {DISTANCE_MIN_SHOWERS} showers per sample "
                       f"(train.monitor.showers is {n})")
        if n >= CLASSIFIER_MIN_SHOWERS:
            cls = classifier_test(DenseFeatures(x_gen), DenseFeatures(x_ref),
                                  ClassifierConfig.quick())
            row["classifier_auc"] = cls["auc"]
        else:
            self._note(f"the classifier AUC needs >= {CLASSIFIER_MIN_SHOWERS} showers per sample "
                       f"to tell more than its noise (train.monitor.showers is {n}): not computed")
        if self.teacher_showers is not None:
            t = self.teacher_showers
            row["student_teacher_rel_l1"] = float(np.abs(showers - t).sum() / max(t.sum(), 1e-30))
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.log(showers.sum(axis=1) / t.sum(axis=1))
            row["student_teacher_log_etot"] = float(np.nanmean(np.abs(ratio[np.isfinite(ratio)]))) \
                if np.isfinite(ratio).any() else math.nan
        row["monitor_seconds"] = time.perf_counter() - t0
        self.log.table_row("monitor", COLUMNS, step, row)
        self.log.figure("monitor/profiles", profiles_figure(gen, ref, seps["etot_einc"]), step)
        parts = [f"E_tot/E_inc {row['etot_einc']:.3f} (floor {row['etot_einc_floor']:.3f})"]
        parts += [f"{f} {row[f]:.3f} ({row[f + '_floor']:.3f})"
                  for f in ("e_layer", "width_x", "sparsity")]
        parts += [f"FPD {row['fpd']:.3g}"] if "fpd" in row else []
        parts += ([f"student-teacher L1 {row['student_teacher_rel_l1']:.3f}"]
                  if "student_teacher_rel_l1" in row else [])
        self.log.message(f"monitor step {step}: {', '.join(parts)}; {gen_ms:.1f} ms/shower, "
                         f"{row['monitor_seconds']:.1f} s")

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.add(text)
            self.log.message(f"monitor: {text}")
