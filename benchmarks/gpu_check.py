"""One command for a GPU node: training and generation speed of every model (voxel backbone x
preset), through the project's real code.

    # a first run in a 10-minute slot on one GPU
    python benchmarks/gpu_check.py --out DIR --budget-s 240
    # the full check, about 8 minutes (--budget-s 420)
    python benchmarks/gpu_check.py --out DIR
    # the same code paths on tiny shapes, CPU, < 1 min
    python benchmarks/gpu_check.py --out DIR --cpu-smoke

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` after every item (atomically), so a run its
caller kills leaves everything it measured. The items, most valuable first:

- the device, torch, CUDA and cuDNN versions, and the dense bf16 peak the MFU is taken against;
- noise: ds3 showers/s of :class:`pipeline.diffusion.NoiseSource` on the device, and the largest
  difference between the device's noise and the CPU's for the same seeds (the integers are
  identical; only ``log``/``cos``/``sin`` rounding may differ);
- training, per model: showers/s through the real DeepSpeed engine (:func:`build_engine`, ZeRO-2,
  bf16 autocast with fp32 master weights, fused AdamW, the EMA update), model TFLOP/s (3 x forward
  FLOPs of both networks, :func:`pipeline.tools.info.model_info`) and MFU against the bf16 peak,
  hardware TFLOP/s and HFU (4 x forward with activation checkpointing), peak memory;
- generation, per model (U-Net and transformer, base and large) x {1, 8} steps, then
  channels_last_3d at 8 steps, then torch.compile: ms per ds3 shower end to end through
  :class:`pipeline.generation.sampler.Sampler` (noise, layer and voxel networks, inverse
  preprocessing) and :func:`pipeline.generation.shard_writer.to_host` (copy to pinned host memory),
  after warm-up, at the batch size ``pipeline.generate`` picks (:func:`auto_batch_size`: a divisor
  of the default shard rows); the share of that time which is not the networks (the same network
  calls timed alone); peak memory;
- layout: where the U-Nets lose the channels_last_3d layout on this device (the modules whose output
  is no longer channels-last), which decides whether ``channels_last`` pays.

Weights are random (speed does not depend on training); preprocessing statistics come from a small
stand-in store. Any exception is recorded with its item and the run goes on. An item starts only if
the budget has time left; a compiled item only if the budget still holds a compilation (estimated,
then measured on the first), and a model whose compilation failed or was skipped is not compiled
again.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generate_speed import stats_store  # noqa: E402 - benchmarks/ is the script's directory

from pipeline.config import Config, StoreLayout  # noqa: E402
from pipeline.data.shower_store import ShowerStore  # noqa: E402
from pipeline.diffusion import CosineSchedule, NetworkSampling, NoiseSource, shower_seed
from pipeline.generation.blocks import auto_batch_size  # noqa: E402
from pipeline.generation.sampler import Sampler  # noqa: E402
from pipeline.generation.shard_writer import to_host  # noqa: E402
from pipeline.models import build_models, use_channels_last  # noqa: E402
from pipeline.physics.preprocessing import Preprocessor  # noqa: E402
from pipeline.runtime.distributed import DistEnv, free_port, init_distributed, shutdown
from pipeline.runtime.files import atomic_write_bytes  # noqa: E402
from pipeline.runtime.precision import autocast  # noqa: E402
from pipeline.tools.info import model_info  # noqa: E402

#: dense bf16 peak TFLOP/s (vendor data sheets, without sparsity): the first row whose fragments all
#: occur in the device name wins, so the PCIe and NVL variants come before the SXM parts they share
#: a name with
BF16_PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIe"), 756.0), (("H100", "NVL"), 835.0), (("H200", "NVL"), 835.0),
    (("GH200",), 989.0), (("H200",), 989.0), (("H100",), 989.0), (("A100",), 312.0),
    (("L40S",), 362.0), (("A10",), 125.0)]


@dataclass
class Plan:
    geometry: str
    models: list[str]  # "backbone:preset"
    steps: list[int]
    compile: bool  # also measure torch.compile'd generation
    train_batch: dict[str, int]
    train_steps: int
    # generate.layout.shard_rows: the batch is a divisor of it, as pipeline.generate's is
    shard_rows: int
    repeats: int
    # budget a first torch.compile item needs; later ones use the measured cost
    compile_estimate_s: float


GPU_PLAN = Plan("ds3", ["unet:base", "transformer:base", "unet:large", "transformer:large"], [1, 8],
                True, {"unet:base": 32, "transformer:base": 32, "unet:large": 16,
                       "transformer:large": 16}, 10, StoreLayout().shard_rows, 3, 150.0)
CPU_SMOKE_PLAN = Plan("ds2", ["unet:tiny", "transformer:tiny"], [1, 2], False,
                      {"unet:tiny": 4, "transformer:tiny": 4}, 2, 4, 1, 0.0)


def model_config(model: str) -> Config:
    """A config for ``model`` = "backbone:preset"."""
    cfg = Config()
    cfg.model.backbone, cfg.model.preset = model.split(":")  # type: ignore[assignment]
    cfg.model.checkpointing = cfg.model.preset == "large"
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of :data:`BF16_PEAK_TFLOPS` for a ``torch.cuda.get_device_name``; None if
    unknown."""
    return next((v for parts, v in BF16_PEAK_TFLOPS if all(p in device_name for p in parts)), None)


def environment(device: torch.device) -> dict[str, Any]:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.processor() or 'x86'})")
    peak = bf16_peak_tflops(name)
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "bf16_peak_tflops": peak, "python": platform.python_version()}


def check_noise(shape: tuple[int, ...], device: torch.device, n: int) -> dict[str, Any]:
    """Device noise throughput and its largest difference from the CPU's for the same seeds."""
    seeds = [shower_seed(0, i) for i in range(n)]
    NoiseSource(seeds, device)(shape, 0, "voxels")
    sync(device)
    t0 = time.perf_counter()
    z = NoiseSource(seeds, device)(shape, 0, "voxels")
    sync(device)
    seconds = time.perf_counter() - t0
    cpu = NoiseSource(seeds)(shape, 0, "voxels")
    return {"showers_per_s": n / seconds, "ms_per_shower": 1e3 * seconds / n,
            "max_abs_diff_vs_cpu": float((z.cpu() - cpu).abs().max())}


def build_sampler(store: ShowerStore, model: str, steps: int, device: torch.device, compiled: bool,
                  channels_last: bool = False) -> Sampler:
    torch.manual_seed(0)
    layer_net, unet = (m.to(device).eval()
                       for m in build_models(model_config(model).model, store.geometry))
    use_channels_last(unet, channels_last)
    if compiled:
        layer_net, unet = (torch.compile(layer_net, dynamic=False),
                           torch.compile(unet, dynamic=False))
    return Sampler(NetworkSampling(layer_net, steps), NetworkSampling(unet, steps),
                   Preprocessor(store.stats, store.geometry).to(device), CosineSchedule(), 0.0,
                   store.geometry, {})


def implicit_syncs(fn: Callable[[], None], device: torch.device) -> int | None:
    """How often ``fn()`` makes the host wait for the device without asking to (torch's CUDA sync
    debug mode: ``.item()``, device-to-host copies into pageable memory, ...); None on a CPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def timed(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Best seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def check_generation(sampler: Sampler, batch: int, device: torch.device, precision: str,
                     repeats: int) -> dict:
    """ms per shower end to end (to host memory) and of the network calls alone, at batch size
    ``batch``."""
    energies = torch.from_numpy(np.geomspace(1e3, 1e6, batch))
    seeds = [shower_seed(1, i) for i in range(batch)]

    def end_to_end() -> None:
        with autocast(precision, device):
            host, ready = to_host(sampler(energies, seeds))
        if ready is not None:
            ready.synchronize()

    L = sampler.geometry.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(batch, *sampler.geometry.shape, device=device, generator=gen)
    layers, t = (torch.randn(batch, L, device=device, generator=gen),
                 torch.full((batch,), 0.5, device=device))
    cond = torch.zeros(batch, device=device)

    @torch.no_grad()
    def networks_only() -> None:
        with autocast(precision, device):
            for _ in range(sampler.steps):
                sampler.layer.model(layers, t, cond)
                sampler.voxel.model(z, t, cond, layers)

    reset_peak(device)
    total = timed(end_to_end, device, repeats)
    nets = timed(networks_only, device, repeats)
    return {"batch": batch, "ms_per_shower": 1e3 * total / batch,
            "network_ms_per_shower": 1e3 * nets / batch,
            "not_network_share": max(0.0, 1 - nets / total),
            "peak_memory_gb": peak_memory_gb(device),
            "implicit_syncs_per_batch": implicit_syncs(end_to_end, device)}


def channels_last_losses(store: ShowerStore, model: str, device: torch.device,
                         precision: str) -> dict[str, Any]:
    """Where a U-Net run with ``channels_last`` loses the channels_last_3d layout on this device:
    the modules whose 5-d input has it and whose output does not (each such place costs a layout
    conversion later)."""
    sampler = build_sampler(store, model, 1, device, False, channels_last=True)
    net = sampler.voxel.model
    if not hasattr(net, "down"):
        return {"applies": False}
    cl = torch.channels_last_3d
    lost, kept = [], 0

    def hook(name: str) -> Callable:
        def check(module: torch.nn.Module, args: tuple, out: Any) -> None:
            nonlocal kept
            x = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() == 5), None)
            if x is None or not isinstance(out, torch.Tensor) or out.dim() != 5 \
                    or not x.is_contiguous(memory_format=cl):
                return
            if out.is_contiguous(memory_format=cl):
                kept += 1
            elif not any(child for child in module.children()):  # a leaf: where it happens
                lost.append(f"{name} ({type(module).__name__})")
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if n]
    try:
        with torch.no_grad(), autocast(precision, device):
            sampler(torch.full((2,), 1e4, dtype=torch.float64), [0, 1])
    finally:
        for h in handles:
            h.remove()
    return {"applies": True, "modules_kept": kept, "leaves_that_lose_it": lost}


def check_training(store: ShowerStore, model_name: str, batch: int, steps: int,
                   device: torch.device, precision: str) -> dict[str, Any]:
    """Showers/s, TFLOP/s and memory of DeepSpeed training steps (ZeRO-2, one rank) with the EMA
    update; the engine is gone (destroyed, collected) before the next item measures its memory."""
    cfg = model_config(model_name)
    cfg.data.geometry, cfg.data.global_batch_size = (  # type: ignore[assignment]
        store.geometry.name, batch)
    showers_per_s, peak_gb, syncs = _training_rate(cfg, store, steps, device, precision)
    gc.collect()
    reset_peak(device)
    return {"batch": batch, "showers_per_s": showers_per_s, **training_flops(cfg, showers_per_s),
            "activation_checkpointing": cfg.model.checkpointing, "peak_memory_gb": peak_gb,
            "implicit_syncs_per_step": syncs}


def _training_rate(cfg: Config, store: ShowerStore, steps: int, device: torch.device,
                   precision: str) -> tuple[float, float | None, int | None]:
    from pipeline.training.ema import EMA
    from pipeline.training.engine import build_engine
    from pipeline.training.losses import DiffusionLoss

    batch = cfg.data.global_batch_size
    torch.manual_seed(0)
    layer_net, unet = build_models(cfg.model, store.geometry)
    model = DiffusionLoss(layer_net, unet, CosineSchedule()).to(device)
    ema = EMA(model, 0.999)
    engine = build_engine(cfg, model, 1, device)
    gen = torch.Generator(device=device).manual_seed(0)
    L = store.geometry.shape[0]
    layers, voxels = (torch.randn(batch, L, device=device),
                      torch.randn(batch, *store.geometry.shape, device=device))
    cond = torch.randn(batch, device=device)

    def step() -> None:
        with autocast(precision, device):
            out = engine(layers, voxels, cond, generator=gen)
        engine.backward(out["loss"])
        engine.step()
        ema.update(engine.module)

    reset_peak(device)
    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    rate = steps * batch / (time.perf_counter() - t0)
    peak_gb = peak_memory_gb(device)
    syncs = implicit_syncs(step, device)
    # DeepSpeed's hooks and buckets hold memory past the engine's last use
    if hasattr(engine, "destroy"):
        engine.destroy()
    return rate, peak_gb, syncs


def training_flops(cfg: Config, showers_per_s: float) -> dict[str, float]:
    """Model TFLOP/s (3 x forward FLOPs of both networks per shower: forward and backward) and
    hardware TFLOP/s (4 x with activation checkpointing, which runs every forward twice); MFU and
    HFU divide them by the peak."""
    forward = sum(n["flops"] for n in model_info(cfg).values()) * showers_per_s / 1e12
    return {"tflops": 3 * forward,
            "hardware_tflops": (4 if cfg.model.checkpointing else 3) * forward}


@dataclass
class Results:
    """The report, written to ``out`` (JSON and Markdown, atomically) after every item, so a run
    killed by its caller's time limit leaves everything measured before."""

    out: Path | None
    report: dict[str, Any]
    deadline: float

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / "gpu_check.json",
                           (json.dumps(self.report, indent=1) + "\n").encode())
        atomic_write_bytes(self.out / "gpu_check.md", markdown(self.report).encode())

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def attempt(self, section: str, item: dict[str, Any], fn: Callable[[], dict],
                needs_s: float = 0.0) -> bool:
        """Run one measurement into ``report[section]`` if ``needs_s`` seconds of the budget are
        left; any exception is recorded with the item, not raised. Saves the report; True if the
        item measured."""
        if self.left() < needs_s or self.left() <= 0:
            row = {**item, "skipped": f"time budget ({max(self.left(), 0):.0f} s left, "
                                      f"needs about {needs_s:.0f} s)"}
        else:
            t0 = time.monotonic()
            try:
                row = {**item, **fn()}
            # one failing item must not lose the others' numbers
            except Exception as err:  # noqa: BLE001
                row = {**item,
                       "error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"}
            row["seconds"] = time.monotonic() - t0
        self.report[section].append(row)
        self.save()
        print(json.dumps(row), file=sys.stderr, flush=True)
        return "error" not in row and "skipped" not in row


def run_checks(plan: Plan, device: torch.device, budget_s: float, tmp: Path,
               out: Path | None = None) -> dict[str, Any]:
    """The items in order of value: training (the TFLOP/s docs/scaling.md needs), uncompiled
    generation of every model, channels_last, then torch.compile (one compilation per model, only
    while the budget allows it)."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    env = environment(device)
    res = Results(out, {"environment": env, "geometry": plan.geometry, "precision": precision,
                        "budget_s": budget_s, "training": [], "generation": [], "layout": []},
                  time.monotonic() + budget_s)
    store = stats_store(plan.geometry, tmp)
    res.report["noise"] = check_noise(store.geometry.shape, device,
                                      256 if device.type == "cuda" else 8)
    res.save()
    peak = env["bf16_peak_tflops"] if device.type == "cuda" else None
    for model in plan.models:
        def train(m: str = model) -> dict:
            row = check_training(store, m, plan.train_batch[m], plan.train_steps, device, precision)
            return {**row, "mfu": row["tflops"] / peak if peak else None,
                    "hfu": row["hardware_tflops"] / peak if peak else None}
        res.attempt("training", {"model": model}, train)
    batches = {}
    for model in plan.models:  # uncompiled: every model gets its numbers before any compilation
        sampler = build_sampler(store, model, 1, device, False)
        batches[model] = batch = auto_batch_size(sampler, device, precision, plan.shard_rows)
        for steps, channels_last in [(s, False) for s in plan.steps] + [(max(plan.steps), True)]:
            def measure(steps: int = steps, channels_last: bool = channels_last, batch: int = batch,
                        m: str = model) -> dict:
                return check_generation(
                    build_sampler(store, m, steps, device, False, channels_last), batch, device,
                    precision, plan.repeats)
            res.attempt("generation", {"model": model, "steps": steps, "compile": False,
                                       "channels_last": channels_last}, measure)
    for model in plan.models:
        if model.startswith("unet"):
            res.attempt("layout", {"model": model},
                        lambda m=model: channels_last_losses(store, m, device, precision))
    compile_s = plan.compile_estimate_s  # the first compilation's cost, until one is measured
    for model in plan.models if plan.compile else []:
        # compiled once per model, for its batch size
        sampler = build_sampler(store, model, 1, device, True)
        for i, steps in enumerate(plan.steps):
            def measure_compiled(steps: int = steps, sampler: Sampler = sampler,
                                 batch: int = batches[model]) -> dict:
                return check_generation(sampler.with_steps(steps), batch, device, precision,
                                        plan.repeats)
            item = {"model": model, "steps": steps, "compile": True, "channels_last": False}
            if not res.attempt("generation", item, measure_compiled, compile_s if i == 0 else 0.0):
                # a failed or skipped compilation is not paid for again
                for rest in plan.steps[i + 1:]:
                    res.report["generation"].append({**item, "steps": rest,
                                                     "skipped": "compilation above failed"})
                res.save()
                break
            if i == 0:
                compile_s = res.report["generation"][-1]["seconds"]
    return res.report


def markdown(report: dict[str, Any]) -> str:
    env, noise = report["environment"], report["noise"]
    fmt = lambda v, f=".2f": "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"# gpu_check: {env['device']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}; "
             f"{report['geometry']}, {report['precision']}; "
             f"bf16 peak {env['bf16_peak_tflops']} TFLOP/s", "",
             f"Noise: {noise['showers_per_s']:.0f} showers/s on the device; "
             f"largest difference from the CPU's noise {noise['max_abs_diff_vs_cpu']:.2e}", "",
             "| model | batch | showers/s | TFLOP/s | MFU | hardware TFLOP/s | HFU | peak GB "
             "| implicit syncs per step |",
             "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    for r in report["training"]:
        if "showers_per_s" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['showers_per_s']:.1f} | "
                         f"{r['tflops']:.2f} | {pct(r['mfu'])} | {r['hardware_tflops']:.2f} | "
                         f"{pct(r['hfu'])} | {fmt(r['peak_memory_gb'])} | "
                         f"{fmt(r['implicit_syncs_per_step'], 'd')} |")
        else:
            lines.append(f"| {r['model']} | {r.get('error') or r.get('skipped')} | | | | | | | |")
    lines += ["", "| model | steps | compile | channels_last | batch | ms per shower | network ms "
                  "| not network | peak GB | implicit syncs per batch |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["generation"]:
        head = (f"| {r['model']} | {r['steps']} | {'on' if r['compile'] else 'off'} | "
                f"{'on' if r['channels_last'] else 'off'} |")
        if "ms_per_shower" in r:
            lines.append(f"{head} {r['batch']} | {r['ms_per_shower']:.3f} | "
                         f"{r['network_ms_per_shower']:.3f} | "
                         f"{100 * r['not_network_share']:.1f} % | {fmt(r['peak_memory_gb'])} | "
                         f"{fmt(r['implicit_syncs_per_batch'], 'd')} |")
        else:
            lines.append(f"{head} {r.get('error') or r.get('skipped')} | | | | | |")
    for r in report.get("layout", []):
        lost = r.get("leaves_that_lose_it")
        lines += ["", f"channels_last_3d, {r['model']}: " + (
            (f"lost at {', '.join(lost)}" if lost else "kept through the network")
            if lost is not None else str(r.get("error") or r.get("skipped")))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path,
                   help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny shapes on the CPU (tests the command itself)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="skip what would start after this many seconds")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        device, plan = torch.device("cpu"), CPU_SMOKE_PLAN
    elif torch.cuda.is_available():
        device, plan = torch.device("cuda", 0), GPU_PLAN
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        print("gpu_check: error: no CUDA device (use --cpu-smoke to check the command on a CPU)",
              file=sys.stderr)
        return 2
    init_distributed(DistEnv(0, 0, 1, "127.0.0.1", free_port(), "single"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_checks(plan, device, args.budget_s, Path(tmp), args.out)
    finally:
        shutdown()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
