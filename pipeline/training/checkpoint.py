"""Crash-safe checkpoints of a DeepSpeed training run and exact resume.

Layout under ``<run.dir>/checkpoints``::

    latest                     name of the newest complete checkpoint; replaced atomically, last
    step_00001000/             one checkpoint ("tag"), written by every rank
        mp_rank_00_model_states.pt                   DeepSpeed: weights, LR scheduler, step counters
        zero_pp_rank_<r>_mp_rank_00_optim_states.pt  DeepSpeed: rank r's fp32 partition
                                                     + AdamW moments
        ema.safetensors        EMA weights (fp32; ``.pt`` tensor file without safetensors)
        rank_<r>.safetensors   rank r's RNG states (torch CPU/CUDA, training-noise generator)
                               as uint8
        rank_<r>.json          rank r's data-stream position, Python and NumPy RNG states
        train_state.json       step, samples, world size, ZeRO stage, EMA updates, losses and the
                               sha256 of every other file of the checkpoint (written last)

Write order: every rank calls ``engine.save_checkpoint(save_latest=False)``, writes and fsyncs its
own files into the tag directory; after a barrier rank 0 writes ``train_state.json`` and only then
replaces ``latest`` (temporary file, fsync, rename). A kill at any moment leaves ``latest`` naming
the previous complete checkpoint; half-written tag directories are never read and are pruned later.
Resuming (:meth:`Checkpointer.resume_tag`, rank 0) checks every file against its checksum and falls
back, with a warning, to the newest older checkpoint that is intact when ``latest`` names a
truncated or corrupted one. Loading checks the tag's ``train_state.json`` (world size, ZeRO stage)
and loads everything weights-only: DeepSpeed's files through
:func:`pipeline.training.engine.make_loading_safe`, ours as tensor files and JSON.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.runtime.distributed import barrier, decided_on_main, gathered
from pipeline.runtime.files import atomic_write_bytes, atomic_write_json, fsync_path, sha256_file
from pipeline.runtime.tensor_files import find_tensor_file, load_tensors, save_tensors, state_digest
from pipeline.training.ema import EMA

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "train_state.json"
_TAG = re.compile(r"step_(\d{8,})")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed by this run (wrong world size, missing files)."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    m = _TAG.fullmatch(tag)
    if m is None:
        raise CheckpointError(f"{tag!r} is not a checkpoint tag (step_NNNNNNNN)")
    return int(m.group(1))


# ------------------------------------------------------------------------- RNG
def capture_rng(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This rank's RNG states: tensors (torch CPU, CUDA, noise generator) and JSON (Python,
    NumPy)."""
    tensors = {"torch_cpu": torch.get_rng_state(), "noise": generator.get_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    js = {"python": [version, list(state), gauss],
          "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, js


def restore_rng(generator: torch.Generator, tensors: dict[str, torch.Tensor],
                js: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    generator.set_state(tensors["noise"])
    if torch.cuda.is_available() and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    version, state, gauss = js["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------- checkpoints
@dataclass
class Resumed:
    """What :meth:`Checkpointer.load` restored besides the engine, EMA and RNG."""

    tag: str
    state: dict[str, Any]
    stream: dict[str, Any]


class Checkpointer:
    """Save and load checkpoints of one run directory (every rank makes the same calls)."""

    def __init__(self, run_dir: str | Path, rank: int, world_size: int, keep: int = 2) -> None:
        self.dir = Path(run_dir) / CHECKPOINTS
        self.rank, self.world_size, self.keep = rank, world_size, keep
        self.last_save_seconds: float | None = None

    def latest_tag(self) -> str | None:
        """The newest complete checkpoint, or None."""
        path = self.dir / LATEST
        if not path.is_file():
            return None
        tag = path.read_text().strip()
        step_of(tag)
        if not (self.dir / tag / STATE_FILE).is_file():
            raise CheckpointError(f"{path} names {tag} but "
                                  f"{self.dir / tag / STATE_FILE} is missing")
        return tag

    def read_state(self, tag: str) -> dict[str, Any]:
        return json.loads((self.dir / tag / STATE_FILE).read_text())

    def tags(self) -> list[str]:
        """Every tag directory, newest first (complete or not)."""
        if not self.dir.is_dir():
            return []
        return sorted((p.name for p in self.dir.iterdir()
                       if p.is_dir() and _TAG.fullmatch(p.name)), key=step_of, reverse=True)

    def damaged(self, tag: str) -> list[str]:
        """What is wrong with checkpoint ``tag`` (empty when intact): a missing or unreadable state
        file, missing files, files that do not match the checksums recorded when it was saved."""
        try:
            state = self.read_state(tag)
        except FileNotFoundError:
            return [f"{STATE_FILE} is missing"]
        except ValueError:
            return [f"{STATE_FILE} is not valid JSON"]
        problems = []
        for name, digest in sorted(state.get("files", {}).items()):
            path = self.dir / tag / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif sha256_file(path) != digest:
                problems.append(f"{name} does not match its checksum (truncated or corrupted)")
        return problems

    def candidates(self) -> list[str]:
        """``latest`` and the older tag directories, newest first (empty for a fresh run)."""
        path = self.dir / LATEST
        if not path.is_file():
            return []
        latest = path.read_text().strip()
        return [latest, *(t for t in self.tags() if step_of(t) < step_of(latest))]

    def resume_tag(self, warn: Callable[[str], None] = print) -> str | None:
        """The checkpoint to resume: ``latest`` if intact, else the newest intact older one (with a
        warning)."""
        candidates = self.candidates()
        if not candidates:
            return None
        latest = candidates[0]
        for tag in candidates:
            problems = self.damaged(tag)
            if not problems:
                if tag != latest:
                    warn(f"resuming from {tag}, the newest intact checkpoint before {latest}")
                return tag
            warn(f"checkpoint {self.dir / tag} is damaged: {'; '.join(problems[:3])}")
        raise CheckpointError(f"{self.dir}: no intact checkpoint to resume ({latest} and every "
                              f"older one are damaged); remove the checkpoints directory to start "
                              f"again, or start a new run directory from other weights with "
                              f"train.init_from")

    def save(self, engine: Any, step: int, ema: EMA, generator: torch.Generator,
             stream_state: dict[str, Any], state: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` on every rank, then move ``latest`` to it (see module doc)."""
        t0 = time.perf_counter()
        tag = tag_for(step)
        tag_dir = self.dir / tag
        if decided_on_main(lambda: self.latest_tag() == tag and not self.damaged(tag)):
            return tag_dir  # saved (stopped right after a resume, say)
        # left by an interrupted save; `latest` never named it
        if self.rank == 0 and tag_dir.exists():
            shutil.rmtree(tag_dir)
        barrier()
        try:
            engine.save_checkpoint(str(self.dir), tag=tag, client_state={}, save_latest=False)
            rng_tensors, rng_json = capture_rng(generator)
            mine = [save_tensors(tag_dir / f"rank_{self.rank}", rng_tensors)]
            atomic_write_json(tag_dir / f"rank_{self.rank}.json",
                              {"rank": self.rank, "stream": stream_state, "rng": rng_json})
            mine.append(tag_dir / f"zero_pp_rank_{self.rank}_mp_rank_00_optim_states.pt")
            if self.rank == 0:
                mine += [save_tensors(tag_dir / "ema", ema.state_dict()),
                         tag_dir / "mp_rank_00_model_states.pt"]
            mine.append(tag_dir / f"rank_{self.rank}.json")
            for path in mine:
                if path.is_file():
                    fsync_path(path)
        except (OSError, RuntimeError) as err:
            raise write_error(tag_dir, err) from err
        files = {name: digest
                 for part in gathered({p.name: sha256_file(p) for p in mine if p.is_file()})
                 for name, digest in part.items()}  # every rank's files, checked when resuming
        if self.rank == 0:
            atomic_write_json(tag_dir / STATE_FILE, {
                **state, "step": step, "world_size": self.world_size, "ema_updates": ema.updates,
                "saved_at": time.time(), "files": files})
            atomic_write_bytes(self.dir / LATEST, tag.encode())
            self._prune(keep_tag=tag)
        barrier()
        self.last_save_seconds = time.perf_counter() - t0
        return tag_dir

    def _prune(self, keep_tag: str) -> None:
        """Delete all but the newest ``keep`` checkpoints up to ``keep_tag`` (and any other tag
        directory)."""
        tags = sorted((p.name for p in self.dir.iterdir() if p.is_dir() and _TAG.fullmatch(p.name)),
                      key=step_of)
        kept = [t for t in tags if step_of(t) <= step_of(keep_tag)][-self.keep:]
        for t in tags:
            if t not in kept:
                shutil.rmtree(self.dir / t, ignore_errors=True)

    def load(self, engine: Any, tag: str, ema: EMA, generator: torch.Generator,
             zero_stage: int) -> Resumed:
        """Restore engine (weights, optimiser, scheduler, counters), EMA and RNG; return the
        rest."""
        state = self.read_state(tag)
        check_compatible(self.dir / tag, state, self.world_size, zero_stage)
        load_path, _ = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {self.dir / tag}")
        tag_dir = self.dir / tag
        ema_file = find_tensor_file(tag_dir / "ema")
        rng_file = find_tensor_file(tag_dir / f"rank_{self.rank}")
        if ema_file is None or rng_file is None:
            raise CheckpointError(f"{tag_dir}: EMA or rank {self.rank} RNG file missing")
        ema_state, _ = load_tensors(ema_file)
        ema.load_state_dict(ema_state, state["ema_updates"])
        rng_tensors, _ = load_tensors(rng_file)
        rank_json = json.loads((tag_dir / f"rank_{self.rank}.json").read_text())
        restore_rng(generator, rng_tensors, rank_json["rng"])
        return Resumed(tag, state, rank_json["stream"])


def write_error(tag_dir: Path, err: BaseException) -> BaseException:
    """An OSError naming the checkpoint for a failed write (torch's zip writer reports a full disk
    as a RuntimeError from inline_container.cc); other errors are returned as they are."""
    if (isinstance(err, RuntimeError) and "inline_container" not in str(err)
            and "StreamWriter" not in str(err)):
        return err
    try:
        free_bytes = shutil.disk_usage(tag_dir.parent).free
    except OSError:
        free_bytes = None
    free = ("free space unknown" if free_bytes is None
            else f"{free_bytes / 2**20:.0f} MiB free there")
    if isinstance(err, OSError) and err.strerror:
        code, reason = err.errno or errno.EIO, err.strerror
    else:  # torch's writer: a short write, i.e. a full disk if the filesystem has no room left
        full = free_bytes is not None and free_bytes < 2**20
        code = errno.ENOSPC if full else errno.EIO
        reason = f"{os.strerror(code)} (torch: {str(err).strip().splitlines()[-1]})"
    return OSError(code, f"{reason}; {free}", str(tag_dir))


def check_compatible(tag_dir: Path, state: dict[str, Any], world_size: int,
                     zero_stage: int) -> None:
    """Raise CheckpointError unless a run with ``world_size`` ranks and ``zero_stage`` can resume
    ``tag_dir``."""
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"{tag_dir} was written by {state['world_size']} ranks but this run has {world_size}: "
            f"ZeRO partitions the optimiser state and the data stream per rank, so an exact resume "
            f"needs {state['world_size']} ranks. Re-run with {state['world_size']} ranks, or "
            f"continue from its weights and EMA with a fresh optimiser and schedule in a new run "
            f"directory: --set run.dir=NEW_DIR --set train.init_from={tag_dir} "
            f"(DeepSpeed's universal-checkpoint conversion is not supported: its loader unpickles "
            f"arbitrary objects)"
        )
    if state.get("zero_stage") != zero_stage:
        raise CheckpointError(f"{tag_dir} was written with ZeRO stage {state.get('zero_stage')}; "
                              f"this run uses stage {zero_stage}: "
                              f"resume with --set train.zero_stage={state.get('zero_stage')}")


def check_resumable(run_dir: str | Path, world_size: int, zero_stage: int) -> str | None:
    """The tag a run in ``run_dir`` would resume from (None for a fresh run); raises if it
    cannot."""
    ck = Checkpointer(run_dir, rank=0, world_size=world_size)
    # the newest with a readable state (checksums are checked when resuming)
    for tag in ck.candidates():
        try:
            state = ck.read_state(tag)
        except (FileNotFoundError, ValueError):
            continue
        check_compatible(ck.dir / tag, state, world_size, zero_stage)
        return tag
    return None


def resolve_init_from(path: str | Path) -> Path:
    """A checkpoint tag directory from a tag directory, a checkpoints directory or a run
    directory."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINTS):
        if (candidate / LATEST).is_file():
            return candidate / (candidate / LATEST).read_text().strip()
    if (path / STATE_FILE).is_file():
        return path
    raise CheckpointError(f"train.init_from: {path} is not a checkpoint, checkpoints directory "
                          f"or run directory")


def agreed_digests(modules: dict[str, torch.nn.Module], step: int) -> dict[str, str]:
    """sha256 of each module's state, by name; raises unless every rank holds the same bytes."""
    out = {}
    for name, module in modules.items():
        digest = state_digest(module.state_dict())
        if any(other != digest for other in gathered(digest)):
            raise RuntimeError(f"ranks hold different {name.split('_')[0]} after step {step}")
        out[name] = digest
    return out
