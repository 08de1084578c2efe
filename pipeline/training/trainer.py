"""The training loop behind :func:`pipeline.training.train_command.train` (one instance per rank,
process group started).

:meth:`Trainer.train_step` is one optimiser step: ``grad_accum`` micro-batches (preprocess, forward
under autocast, backward), one all-reduce of the losses and stop flags (signal, checkpoint due, time
limit) so all ranks decide alike (a non-finite loss stops the run before the update), the DeepSpeed
step and the EMA update; it returns a :class:`StepResult`. :meth:`Trainer._loop` logs, validates,
runs the fidelity monitor and checkpoints as due. The all-reduce is the step's only host sync:
losses are summed on device, the EMA is one fused update, the gradient norm is read only to log."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from pipeline.config import RESOLVED_CONFIG, Config, save_resolved, to_dict
from pipeline.data.run_layout import REQUEUE_FILE
from pipeline.data.run_record import DONE_FILE, RunRecord
from pipeline.data.shower_store import ShowerStore
from pipeline.data.stream import ShowerStream
from pipeline.diffusion import CosineSchedule
from pipeline.models import build_models, use_channels_last
from pipeline.physics.preprocessing import Preprocessed, Preprocessor
from pipeline.runtime.distributed import DistEnv, decided_on_main
from pipeline.runtime.files import atomic_write_json, utc_now
from pipeline.runtime.precision import autocast, resolve_precision
from pipeline.runtime.seeds import seed_for
from pipeline.runtime.signals import StopSignals
from pipeline.runtime.tensor_files import tensor_suffix
from pipeline.training.checkpoint import Checkpointer, agreed_digests, tag_for
from pipeline.training.ema import EMA, export_ema
from pipeline.training.engine import build_engine
from pipeline.training.initial_weights import Teacher, load_init_from, student_of
from pipeline.training.losses import DiffusionLoss, DistillationLoss
from pipeline.training.metrics_log import LogInterval, TrainLogger, max_memory_mb
from pipeline.training.monitor import FidelityMonitor
from pipeline.training.results import StepResult, TrainResult
from pipeline.training.validation import validation_sums

_NOISE, _TORCH, _VALIDATION = 1, 2, 3  # seed purposes
warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated",
                        category=FutureWarning)


class Trainer:
    """Builds everything from the config, resumes, and runs the loop (see module doc).

    With a ``teacher`` the run is a distillation stage: the student (and its EMA) starts from the
    teacher's EMA weights; the loss is progressive distillation against the frozen teacher."""

    def __init__(self, cfg: Config, env: DistEnv, store: ShowerStore, *, config_path: str | None,
                 started: float, time_limit: float | None, teacher: Teacher | None = None) -> None:
        self.cfg, self.env, self.store, self.config_path = cfg, env, store, config_path
        self.teacher = teacher
        self.t, self.started, self.time_limit = cfg.train, started, time_limit
        self.run_dir = Path(cfg.run.dir)
        # init_distributed bound the rank to the GPU it claimed (runtime.gpu_claim)
        cuda = torch.cuda.is_available()
        self.device = (torch.device("cuda", torch.cuda.current_device()) if cuda
                       else torch.device("cpu"))
        self.precision = resolve_precision(cfg.device.precision, self.device)
        self.per_rank = cfg.per_rank_batch(env.world_size)
        self.global_batch = cfg.data.global_batch_size * self.t.grad_accum
        seed = cfg.run.seed

        torch.manual_seed(seed)  # identical initial weights on every rank
        layer_net, voxel_net = build_models(cfg.model, store.geometry)
        use_channels_last(voxel_net, cfg.device.channels_last)
        torch.backends.cudnn.benchmark = cuda and cfg.device.cudnn_benchmark
        schedule = CosineSchedule.from_config(cfg.diffusion)
        self.networks = tuple(self.t.networks)
        model = DiffusionLoss(layer_net, voxel_net, schedule, cfg.diffusion.prediction,
                              self.networks, cfg.diffusion.voxel_training).to(self.device)
        if teacher is not None:
            model = student_of(teacher, model, self.device,
                               f"model.preset {cfg.model.preset!r} on {cfg.data.geometry}")
        init_ema = (load_init_from(self.t.init_from, model, self.device) if self.t.init_from
                    else None)
        self.ema = EMA(model, self.t.ema_decay)
        if init_ema is not None:
            self.ema.load_state_dict(init_ema, 0)
        self.engine = build_engine(cfg, model, env.world_size, self.device)
        self.pre = Preprocessor.from_store(store).to(self.device)
        torch.manual_seed(seed_for(seed, env.rank, _TORCH))
        self.noise = torch.Generator(device=self.device)
        self.noise.manual_seed(seed_for(seed, env.rank, _NOISE))
        d = cfg.data
        self.view = "showers" if "voxels" in self.networks else "layers"  # layers alone: layer sums
        self.stream = ShowerStream(
            store, self.per_rank, split="train", rank=env.rank, world_size=env.world_size,
            seed=seed, shuffle_chunks=d.shuffle_chunks, num_workers=d.num_workers,
            prefetch_chunks=d.prefetch_chunks, resident=d.resident or self.view == "layers",
            device=self.device, view=self.view)
        self.ckpt = Checkpointer(self.run_dir, env.rank, env.world_size,
                                 keep=self.t.keep_checkpoints)
        self.step = self.samples = 0
        self.last: dict[str, float] = {}  # latest reduced losses by name
        self.interval = LogInterval()
        # (signal, checkpoint due, time limit)
        self.flags = torch.zeros(3, dtype=torch.float64, pin_memory=cuda)
        self.val_seconds = self.monitor_seconds = 0.0
        self.monitor: FidelityMonitor | None = None

    # ---------------------------------------------------------------- set-up
    def _resume(self) -> str | None:
        # rank 0 checks `latest` (checksums; older intact one if damaged); all ranks use its answer
        tag = decided_on_main(lambda: self.ckpt.resume_tag(
            lambda text: print(f"train: warning: {text}", file=sys.stderr, flush=True)))
        if tag is None:
            return None
        resumed = self.ckpt.load(self.engine, tag, self.ema, self.noise, self.t.zero_stage)
        self.stream.load_state_dict(resumed.stream)
        self.step, self.samples = int(resumed.state["step"]), int(resumed.state["samples"])
        self.last = dict(resumed.state.get("losses", {}))
        self.interval = LogInterval.from_state(resumed.state.get("log_interval"))
        if self.engine.global_steps != self.step:
            raise RuntimeError(f"{tag}: DeepSpeed restored {self.engine.global_steps} steps, "
                               f"train_state.json says {self.step}")
        return tag

    def _prepare_run_dir(self, log: TrainLogger, tag: str | None) -> None:
        if not self.env.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in (REQUEUE_FILE, DONE_FILE):
            (self.run_dir / name).unlink(missing_ok=True)
        save_resolved(self.cfg, self.run_dir)
        where = f"resumed from {tag}" if tag else "started"
        log.message(f"train: {where} at step {self.step}/{self.t.max_steps} on "
                    f"{self.env.world_size} rank(s) ({self.env.source}, {self.device.type}, "
                    f"{self.precision}, ZeRO-{self.t.zero_stage}); "
                    f"global batch {self.global_batch}, run dir {self.run_dir}")

    # ------------------------------------------------------------------ loop
    def run(self, signals: StopSignals) -> TrainResult:
        """Resume if a checkpoint exists, train to ``max_steps`` or until a stop, finish."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tag = self._resume()
        log = TrainLogger(self.run_dir, enabled=self.env.is_main, start_step=self.step,
                          max_steps=self.t.max_steps, resumed=tag is not None)
        self._prepare_run_dir(log, tag)
        if self.t.monitor.every_steps:
            self.monitor = FidelityMonitor(self.cfg, self.store, self.pre, self.env, self.device,
                                           self.precision, log)
        try:
            return self._loop(log, signals)
        finally:
            log.close()

    def _loop(self, log: TrainLogger, signals: StopSignals) -> TrainResult:
        t = self.t
        batches = iter(self.stream)
        last_ckpt, step_times = time.monotonic(), [0.0]
        if t.validation.every_steps and self.step == 0:
            self._validate(log)  # baseline of the initial weights
        if self.monitor is not None and self.step == 0:
            self._monitor()
        while self.step < t.max_steps:
            r = self.train_step(batches, signals, last_ckpt, step_times)
            if not r.finite:
                return self._nonfinite(log, r.losses)
            step_times = (step_times + [r.seconds])[-20:]
            self._after_step(log, r)
            if (r.stop or r.checkpoint_due or self.step == t.max_steps
                    or self._every(t.checkpoint_every_steps)):
                self._save()
                last_ckpt = time.monotonic()
            if r.stop and self.step < t.max_steps:
                return self._stopped(log, r.stop)
        self._save()  # a no-op when the last step was just saved (decided on rank 0)
        return self._finish(log)

    def train_step(self, batches: Iterator[dict[str, torch.Tensor]], signals: StopSignals,
                   last_ckpt: float, step_times: list[float]) -> StepResult:
        """One optimiser step on all ranks (module doc); ``last_ckpt``: monotonic last-save time."""
        t0 = time.perf_counter()
        local = self._accumulate(batches)
        due = (self.t.checkpoint_every_minutes > 0
               and time.monotonic() - last_ckpt >= 60 * self.t.checkpoint_every_minutes)
        # pinned: no synchronising pageable copy
        self.flags.copy_(torch.tensor([signals.received is not None, due,
                                       self._near_time_limit(step_times)], dtype=torch.float64))
        reduced = self._all_reduce(torch.cat([local,
                                              self.flags.to(self.device, non_blocking=True)]))
        losses = reduced[:3] / (self.env.world_size * self.t.grad_accum)
        signal, due, out_of_time = (reduced[3:] > 0).tolist()
        stop = (f"signal {signals.received or 'on another rank'}" if signal
                else "time limit" if out_of_time else None)
        if not torch.isfinite(losses).all():
            return StepResult(losses, False, stop, due, time.perf_counter() - t0)
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed's micro-step count is out of step with train.grad_accum")
        self.engine.step()
        self.ema.update(self.engine.module)
        self.step += 1
        self.samples += self.global_batch
        return StepResult(losses, True, stop, due, time.perf_counter() - t0)

    def _after_step(self, log: TrainLogger, r: StepResult) -> None:
        """Progress, log rows, validation and the fidelity monitor, as due after this step."""
        t, final = self.t, self.step == self.t.max_steps
        self.last.update(zip(("train_loss", "train_layer", "train_voxel"), r.losses.tolist()))
        self.interval.add(r.losses, r.seconds)
        lr = self.engine.get_lr()[0]
        log.progress(self.step, r.losses[0].item(), lr, self.global_batch / max(r.seconds, 1e-9))
        if self._every(t.log_every_steps) or final:
            self._log_interval(log, lr)
        if t.validation.every_steps and (self._every(t.validation.every_steps) or final):
            self._validate(log)
        if self.monitor is not None and (self._every(t.monitor.every_steps) or final):
            self._monitor()

    def _every(self, steps: int) -> bool:
        return steps > 0 and self.step % steps == 0

    def _all_reduce(self, x: torch.Tensor, op: Any = dist.ReduceOp.SUM) -> torch.Tensor:
        """All-reduce a small CPU tensor (through the GPU under NCCL)."""
        y = x.to(self.device)
        dist.all_reduce(y, op=op)
        return y.cpu()

    def _accumulate(self, batches: Iterator[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Forward and backward of one optimiser step's micro-batches; summed (loss, layer, voxel).

        DeepSpeed counts micro-batches in ``engine.step()``, called here after each backward but the
        last; the caller makes the last call (the accumulation boundary, which updates)."""
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # on device: no host sync
        for micro in range(self.t.grad_accum):
            if micro:
                self.engine.step()  # not a boundary: DeepSpeed only accumulates
            with torch.no_grad():
                p = self._preprocess(next(batches), self.noise)
            with autocast(self.precision, self.device):
                out = self.engine(p.layers, p.voxels, p.cond, generator=self.noise)
            self.engine.backward(out["loss"])
            sums += torch.stack([out["loss"], out["layer"], out["voxel"]]).detach().double()
        return sums

    def _preprocess(self, batch: dict[str, torch.Tensor],
                    generator: torch.Generator) -> Preprocessed:
        energies = batch["energies"].to(self.device)
        if self.view == "layers":
            return self.pre.from_layer_energies(batch["layer_energies"].to(self.device), energies)
        return self.pre(batch["showers"].to(self.device), energies,
                        generator if self.t.dequantize_empty else None)

    def _near_time_limit(self, step_times: list[float]) -> bool:
        if self.time_limit is None:
            return False
        save = 1.5 * self.ckpt.last_save_seconds if self.ckpt.last_save_seconds else 10.0
        margin = 2 * max(step_times) + save \
            + (self.val_seconds if self.t.validation.every_steps else 0.0) + self.monitor_seconds
        return time.monotonic() - self.started + margin >= self.time_limit

    # ----------------------------------------------------------- validation
    @torch.no_grad()
    def _validate(self, log: TrainLogger) -> None:
        """Validation loss of the trained weights and of the EMA, with the same noise for both."""
        t0 = time.perf_counter()
        d = self.cfg.data
        stream = ShowerStream(self.store, self.per_rank, split="validation", rank=self.env.rank,
                              world_size=self.env.world_size, seed=self.cfg.run.seed, shuffle=False,
                              num_workers=d.num_workers, prefetch_chunks=d.prefetch_chunks,
                              device=self.device, epochs=1, view=self.view)
        n = min(self.t.validation.per_rank_batches, len(stream))
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed_for(self.cfg.run.seed, self.env.rank, _VALIDATION))
        sums = self._all_reduce(validation_sums(self.engine.module, self.ema.module, iter(stream),
                                                n, self._preprocess, gen, self.precision,
                                                self.device))
        val = (sums / (n * self.env.world_size)).tolist()
        self.last.update(zip(("val_loss", "val_layer", "val_voxel", "val_ema_loss"), val))
        log.row(self.step, "val", {"epoch": self.stream.epoch, "loss": val[0], "layer_loss": val[1],
                                   "voxel_loss": val[2], "ema_loss": val[3]})
        self.val_seconds = time.perf_counter() - t0

    def _monitor(self) -> None:
        """Fidelity monitor on the EMA weights (a distillation student also against its teacher)."""
        teacher = (self.ema.module.teacher.model if isinstance(self.ema.module, DistillationLoss)
                   else None)
        self.monitor_seconds = self.monitor(self.step, self.ema.module, teacher)

    def _log_interval(self, log: TrainLogger, lr: float) -> None:
        interval = self.interval
        mean = (interval.sums / interval.n).tolist()
        norm = self.engine.get_global_grad_norm() if self.cfg.optim.grad_clip > 0 else None
        log.row(self.step, "train", {
            "epoch": self.stream.epoch, "loss": mean[0], "layer_loss": mean[1],
            "voxel_loss": mean[2], "lr": lr, "grad_norm": float(norm) if norm is not None else None,
            "samples_per_s": interval.n * self.global_batch / max(interval.seconds, 1e-9),
            "max_mem_mb": max_memory_mb(self.device)})
        self.interval = LogInterval()

    # ----------------------------------------------------------------- ends
    def _save(self) -> None:
        state = {
            "samples": self.samples, "epoch": self.stream.epoch, "zero_stage": self.t.zero_stage,
            "precision": self.precision, "global_batch": self.global_batch, "losses": self.last,
            "log_interval": self.interval.state(), "config": to_dict(self.cfg)}
        self.ckpt.save(self.engine, self.step, self.ema, self.noise, self.stream.state_dict(),
                       state)

    def _stopped(self, log: TrainLogger, reason: str) -> TrainResult:
        tag = tag_for(self.step)
        if self.env.is_main:
            atomic_write_json(self.run_dir / REQUEUE_FILE, {"reason": reason, "step": self.step,
                                                            "checkpoint": tag, "time": utc_now()})
            log.message(f"train: stopped by {reason} at step {self.step} with checkpoint {tag}; "
                        f"re-run the same command to continue")
        dist.barrier()  # exit only once the marker exists (srun --kill-on-bad-exit stops the rest)
        return TrainResult("stopped", self.step, self.run_dir, reason)

    def _nonfinite(self, log: TrainLogger, losses: torch.Tensor) -> TrainResult:
        good = self.ckpt.latest_tag()
        reason = (f"non-finite loss at step {self.step + 1} (loss {losses[0].item()}, "
                  f"layer {losses[1].item()}, voxel {losses[2].item()}); nothing saved, "
                  f"the last good checkpoint is {self.ckpt.dir / good if good else 'none'}. "
                  f"Lower train.lr or check the data, then re-run.")
        if self.env.is_main:
            log.message(f"train: error: {reason}")
        return TrainResult("nonfinite", self.step, self.run_dir, reason)

    def _finish(self, log: TrainLogger) -> TrainResult:
        digests = agreed_digests({"weights_sha256": self.engine.module,
                                  "ema_sha256": self.ema.module}, self.step)
        if self.env.is_main:
            rel = Path("ema") / f"ema_step_{self.step:08d}{tensor_suffix()}"
            (self.run_dir / "ema").mkdir(exist_ok=True)
            export_ema(self.ema, self.run_dir / rel, {
                "step": self.step, "config": to_dict(self.cfg), "geometry": self.cfg.data.geometry,
                "preset": self.cfg.model.preset, "store": str(Path(self.cfg.data.store).resolve()),
                "preprocessing_stats": self.store.stats})  # generation needs no training store
            t = self.teacher
            lineage = {} if t is None else {"stage": t.stage, "teacher": str(t.run_dir),
                                            "teacher_steps": t.steps,
                                            "teacher_ema_sha256": t.ema_sha256}
            RunRecord(step=self.step, samples=self.samples,
                      epoch=self.stream.epoch, ema=self.run_dir / rel,
                      checkpoint=self.run_dir / "checkpoints" / tag_for(self.step),
                      config=self.run_dir / RESOLVED_CONFIG, config_source=self.config_path,
                      store=str(Path(self.cfg.data.store).resolve()),
                      geometry=self.cfg.data.geometry, preset=self.cfg.model.preset,
                      max_steps=self.t.max_steps, world_size=self.env.world_size,
                      zero_stage=self.t.zero_stage, precision=self.precision,
                      launcher=self.env.source, networks=tuple(self.networks),
                      sample_steps=self.cfg.sampling.steps, final_losses=self.last,
                      ema_format=tensor_suffix()[1:], **digests, **lineage).write(self.run_dir)
            log.message(f"train: done, {self.step} steps; EMA weights in {self.run_dir / rel}")
        dist.barrier()
        return TrainResult("done", self.step, self.run_dir)
