"""One command for a GPU node: generation and training speed of every model (voxel backbone x preset), through
the project's real code.

    python benchmarks/gpu_check.py --out DIR                 # one GPU, at most ~8 minutes (--budget-s)
    python benchmarks/gpu_check.py --out DIR --cpu-smoke     # the same code paths on tiny shapes, CPU, < 1 min

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``:

- the device, torch, CUDA and cuDNN versions, and the bf16 dense peak the MFU is taken against;
- noise: ds3 showers/s of :class:`pipeline.diffusion.NoiseSource` on the device, and the largest difference
  between the device's noise and the CPU's for the same seeds (the integers are identical; only
  ``log``/``cos``/``sin`` rounding may differ);
- generation, per model (U-Net and transformer, base and large) x {1, 8} steps x torch.compile off/on (and
  channels_last_3d at 8 steps): ms per ds3
  shower end to end through :class:`pipeline.generation.sampler.Sampler` (noise, layer and voxel networks, inverse preprocessing)
  and :func:`pipeline.generation.shard_writer.to_host` (copy to pinned host memory), after warm-up, at the
  batch size ``pipeline.generate`` picks (:func:`auto_batch_size`); the share of that time which is not
  the networks (the same network calls timed alone); peak memory;
- training, per model: showers/s through the real DeepSpeed engine (:func:`build_engine`, ZeRO-2, bf16
  autocast with fp32 master weights, fused AdamW, the EMA update), achieved TFLOP/s (3 x forward FLOPs
  of both networks, :func:`pipeline.tools.info.model_info`), MFU against the bf16 peak, peak memory.

Weights are random (speed does not depend on training); preprocessing statistics come from a small
stand-in store. An item that fails (e.g. out of memory) or does not fit the time budget is recorded as such;
the compiled runs come last (their compilation is the slowest part).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generate_speed import stats_store  # noqa: E402 - benchmarks/ is the script's directory

from pipeline.config import Config  # noqa: E402
from pipeline.data.shower_store import ShowerStore  # noqa: E402
from pipeline.diffusion import CosineSchedule, NoiseSource, shower_seed  # noqa: E402
from pipeline.generation.blocks import auto_batch_size  # noqa: E402
from pipeline.generation.sampler import Sampler  # noqa: E402
from pipeline.generation.shard_writer import to_host  # noqa: E402
from pipeline.models import build_models  # noqa: E402
from pipeline.physics.preprocessing import Preprocessor  # noqa: E402
from pipeline.runtime.distributed import DistEnv, free_port, init_distributed, shutdown  # noqa: E402
from pipeline.runtime.precision import autocast  # noqa: E402
from pipeline.tools.info import model_info  # noqa: E402

#: dense bf16 peak TFLOP/s by device name fragment (vendor data sheets; SXM parts)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


@dataclass
class Plan:
    geometry: str
    models: list[str]  # "backbone:preset"
    steps: list[int]
    compile: bool  # also measure torch.compile'd generation
    train_batch: dict[str, int]
    train_steps: int
    batch_cap: int
    repeats: int


GPU_PLAN = Plan("ds3", ["unet:base", "transformer:base", "unet:large", "transformer:large"], [1, 8], True,
                {"unet:base": 32, "transformer:base": 32, "unet:large": 16, "transformer:large": 16}, 10, 1024, 3)
CPU_SMOKE_PLAN = Plan("ds2", ["unet:tiny", "transformer:tiny"], [1, 2], False,
                      {"unet:tiny": 4, "transformer:tiny": 4}, 2, 4, 1)


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


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86'})"
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
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
    layer_net, unet = (m.to(device).eval() for m in build_models(model_config(model).model, store.geometry))
    unet.use_channels_last(channels_last)
    if compiled:
        layer_net, unet = torch.compile(layer_net, dynamic=False), torch.compile(unet, dynamic=False)
    return Sampler(layer_net, unet, Preprocessor(store.stats, store.geometry).to(device), CosineSchedule(), steps,
                   0.0, store.geometry, {})


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


def check_generation(sampler: Sampler, batch: int, device: torch.device, precision: str, repeats: int) -> dict:
    """ms per shower end to end (to host memory) and of the network calls alone, at batch size ``batch``."""
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
    layers, t = torch.randn(batch, L, device=device, generator=gen), torch.full((batch,), 0.5, device=device)
    cond = torch.zeros(batch, device=device)

    @torch.no_grad()
    def networks_only() -> None:
        with autocast(precision, device):
            for _ in range(sampler.steps):
                sampler.layer_net(layers, t, cond)
                sampler.voxel_unet(z, t, cond, layers)

    reset_peak(device)
    total = timed(end_to_end, device, repeats)
    nets = timed(networks_only, device, repeats)
    return {"batch": batch, "ms_per_shower": 1e3 * total / batch, "network_ms_per_shower": 1e3 * nets / batch,
            "not_network_share": max(0.0, 1 - nets / total), "peak_memory_gb": peak_memory_gb(device)}


def check_training(store: ShowerStore, model_name: str, batch: int, steps: int, device: torch.device,
                   precision: str) -> dict[str, Any]:
    """Showers/s, TFLOP/s and memory of DeepSpeed training steps (ZeRO-2, one rank) with the EMA update."""
    from pipeline.training.ema import EMA
    from pipeline.training.engine import build_engine
    from pipeline.training.pairs import DiffusionPair

    cfg = model_config(model_name)
    cfg.data.geometry, cfg.data.batch_size = store.geometry.name, batch  # type: ignore[assignment]
    torch.manual_seed(0)
    layer_net, unet = build_models(cfg.model, store.geometry)
    model = DiffusionPair(layer_net, unet, CosineSchedule()).to(device)
    ema = EMA(model, 0.999)
    engine = build_engine(cfg, model, 1, device)
    gen = torch.Generator(device=device).manual_seed(0)
    L = store.geometry.shape[0]
    layers, voxels = torch.randn(batch, L, device=device), torch.randn(batch, *store.geometry.shape, device=device)
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
    showers_per_s = steps * batch / (time.perf_counter() - t0)
    flops = sum(n["flops"] for n in model_info(cfg).values()) * (4 if cfg.model.checkpointing else 3)
    return {"batch": batch, "showers_per_s": showers_per_s, "tflops": flops * showers_per_s / 1e12,
            "activation_checkpointing": cfg.model.checkpointing, "peak_memory_gb": peak_memory_gb(device)}


def attempt(results: list[dict], item: dict[str, Any], deadline: float, fn: Callable[[], dict]) -> None:
    """Run one measurement into ``results``; failures and the time budget are recorded, not raised."""
    if time.monotonic() > deadline:
        results.append({**item, "skipped": "time budget"})
        return
    try:
        results.append({**item, **fn()})
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        results.append({**item, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)


def run_checks(plan: Plan, device: torch.device, budget_s: float, tmp: Path) -> dict[str, Any]:
    deadline = time.monotonic() + budget_s
    precision = "bf16" if device.type == "cuda" else "fp32"
    report: dict[str, Any] = {"environment": environment(device), "geometry": plan.geometry, "precision": precision,
                              "generation": [], "training": []}
    store = stats_store(plan.geometry, tmp)
    report["noise"] = check_noise(store.geometry.shape, device, 256 if device.type == "cuda" else 8)
    batches = {}
    for model in plan.models:  # uncompiled first: every model gets its numbers before any compilation
        sampler = build_sampler(store, model, 1, device, False)
        batches[model] = batch = auto_batch_size(sampler, device, precision, plan.batch_cap)
        for steps in plan.steps:
            def measure(steps: int = steps, sampler: Sampler = sampler, batch: int = batch) -> dict:
                sampler.steps = steps
                return check_generation(sampler, batch, device, precision, plan.repeats)
            attempt(report["generation"], {"model": model, "steps": steps, "compile": False, "channels_last": False},
                    deadline, measure)
        fast = build_sampler(store, model, max(plan.steps), device, False, channels_last=True)
        attempt(report["generation"], {"model": model, "steps": fast.steps, "compile": False, "channels_last": True},
                deadline, lambda s=fast, b=batch: check_generation(s, b, device, precision, plan.repeats))
    for model in plan.models:
        attempt(report["training"], {"model": model}, deadline,
                lambda m=model: check_training(store, m, plan.train_batch[m], plan.train_steps, device, precision))
    for model in plan.models if plan.compile else []:
        sampler = build_sampler(store, model, 1, device, True)  # compiled once per model, for its batch size
        for steps in plan.steps:
            def measure_compiled(steps: int = steps, sampler: Sampler = sampler, batch: int = batches[model]) -> dict:
                sampler.steps = steps
                return check_generation(sampler, batch, device, precision, plan.repeats)
            attempt(report["generation"], {"model": model, "steps": steps, "compile": True, "channels_last": False},
                    deadline, measure_compiled)
    peak = report["environment"]["bf16_peak_tflops"]
    for row in report["training"]:
        if "tflops" in row:
            row["mfu"] = row["tflops"] / peak if peak and device.type == "cuda" else None
    return report


def markdown(report: dict[str, Any]) -> str:
    env, noise = report["environment"], report["noise"]
    fmt = lambda v, f=".2f": "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"# gpu_check: {env['device']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}; {report['geometry']}, "
             f"{report['precision']}; bf16 peak {env['bf16_peak_tflops']} TFLOP/s", "",
             f"Noise: {noise['showers_per_s']:.0f} showers/s on the device; largest difference from the CPU's "
             f"noise {noise['max_abs_diff_vs_cpu']:.2e}", "",
             "| model | steps | compile | channels_last | batch | ms per shower | network ms | not network | peak GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["generation"]:
        head = f"| {r['model']} | {r['steps']} | {'on' if r['compile'] else 'off'} | {'on' if r['channels_last'] else 'off'} |"
        if "ms_per_shower" in r:
            lines.append(f"{head} {r['batch']} | {r['ms_per_shower']:.3f} | {r['network_ms_per_shower']:.3f} | "
                         f"{100 * r['not_network_share']:.1f} % | {fmt(r['peak_memory_gb'])} |")
        else:
            lines.append(f"{head} {r.get('error') or r.get('skipped')} | | | | |")
    lines += ["", "| model | batch | showers/s | TFLOP/s | MFU | peak GB |", "|---|---|---|---|---|---|"]
    for r in report["training"]:
        if "showers_per_s" in r:
            mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
            lines.append(f"| {r['model']} | {r['batch']} | {r['showers_per_s']:.1f} | {r['tflops']:.2f} | {mfu} | "
                         f"{fmt(r['peak_memory_gb'])} |")
        else:
            lines.append(f"| {r['model']} | {r.get('error') or r.get('skipped')} | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (tests the command itself)")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this many seconds")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        device, plan = torch.device("cpu"), CPU_SMOKE_PLAN
    elif torch.cuda.is_available():
        device, plan = torch.device("cuda", 0), GPU_PLAN
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        print("gpu_check: error: no CUDA device (use --cpu-smoke to check the command on a CPU)", file=sys.stderr)
        return 2
    init_distributed(DistEnv(0, 0, 1, "127.0.0.1", free_port(), "single"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_checks(plan, device, args.budget_s, Path(tmp))
    finally:
        shutdown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
