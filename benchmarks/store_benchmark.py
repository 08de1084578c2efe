"""Store benchmark: codec/chunk choice, conversion speed and memory, size and streaming vs h5py+gzip.

    python benchmarks/store_benchmark.py [--n 4096] [--workdir /tmp/store-bench] [--out docs/store_benchmark.json]

On stand-in ds3 showers from data_tools.simulate (about 88% zeros), in one run:
1. layout sweep on an in-memory block: codec x chunk rows -> ratio, encode and decode MB/s;
2. the conversion command (data_tools.convert) on a CaloChallenge-format file: MB/s and peak RSS;
3. size of the store against the same showers as gzip HDF5 (float64 as the official files, and float32);
4. reading: showers/s of pipeline.data.ShowerStream (1 thread and with prefetching) against an
   h5py+gzip reader (sequential chunk-aligned blocks: its best case; and random batches).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import zarr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_tools.simulate import simulate_file
from pipeline.config import StoreLayout
from pipeline.data.calochallenge_hdf5 import shower_file_writer
from pipeline.data.shower_store import zarr_compressors
from pipeline.data.stream import ShowerStream

SWEEP = [("zstd", 1), ("zstd", 3), ("zstd", 9), ("blosc-zstd-shuffle", 3), ("blosc-zstd-bitshuffle", 3),
         ("blosc-lz4-bitshuffle", 5), ("gzip", 4)]


def du(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def layout_sweep(block: np.ndarray, workdir: Path, chunk_rows: list[int]) -> list[dict]:
    """Encode/decode speed and ratio of each codec and chunk size on one in-memory block."""
    rows = []
    for codec, level in SWEEP:
        for chunk in chunk_rows:
            layout = StoreLayout(chunk, max(512, chunk), codec, level)
            path = workdir / f"sweep_{codec}_{level}_{chunk}.zarr"
            arr = zarr.create_array(store=str(path), shape=block.shape, dtype="float32", chunks=(chunk, *block.shape[1:]),
                                    shards=(layout.shard_rows, *block.shape[1:]), compressors=zarr_compressors(layout),
                                    fill_value=0.0, overwrite=True)
            t0 = time.perf_counter()
            arr[:] = block
            enc = time.perf_counter() - t0
            t0 = time.perf_counter()
            for a in range(0, len(block), chunk):  # chunk by chunk, as the stream reads
                arr[a:a + chunk]
            dec = time.perf_counter() - t0
            rows.append({"codec": codec, "level": level, "chunk_rows": chunk, "ratio": block.nbytes / du(path),
                         "encode_MBps": block.nbytes / enc / 1e6, "decode_MBps": block.nbytes / dec / 1e6})
            print(f"  {codec:22s} L{level} chunk {chunk:3d}: ratio {rows[-1]['ratio']:.2f}  "
                  f"encode {rows[-1]['encode_MBps']:.0f} MB/s  decode {rows[-1]['decode_MBps']:.0f} MB/s", flush=True)
    return rows


def convert_with_rss(src: Path, out: Path, layout: StoreLayout) -> dict:
    """Run the conversion command in a subprocess; wall time and its peak resident memory."""
    cmd = [sys.executable, "-m", "data_tools.convert", str(src), "--geometry", "ds3", "--out", str(out), "--overwrite",
           "--quiet", "--chunk-rows", str(layout.chunk_rows), "--shard-rows", str(layout.shard_rows),
           "--codec", layout.codec, "--level", str(layout.level)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "peak_rss_MB": max(peak, before) / 1024}


def h5py_sequential(path: Path, batch: int, block: int) -> float:
    """showers/s reading chunk-aligned blocks of a gzip HDF5 file in order (h5py's best case)."""
    t0, n = time.perf_counter(), 0
    with h5py.File(path, "r") as f:
        ds = f["showers"]
        for a in range(0, ds.shape[0], block):
            x = ds[a:a + block].astype(np.float32)
            n += (len(x) // batch) * batch
    return n / (time.perf_counter() - t0)


def h5py_random(path: Path, batch: int, n_batches: int) -> float:
    """showers/s of random shuffled batches (what a map-style Dataset over the HDF5 file does)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "r") as f:
        ds = f["showers"]
        t0 = time.perf_counter()
        for _ in range(n_batches):
            idx = np.sort(rng.choice(ds.shape[0], batch, replace=False))
            ds[idx]
    return n_batches * batch / (time.perf_counter() - t0)


def stream_rate(store: Path, batch: int, workers: int, prefetch: int) -> float:
    s = ShowerStream(store, batch, split="all", seed=0, num_workers=workers, prefetch_chunks=prefetch, epochs=1)
    t0, n = time.perf_counter(), 0
    for b in s:
        n += len(b["index"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4096, help="stand-in ds3 showers")
    p.add_argument("--sweep-n", type=int, default=1024, help="showers in the layout sweep")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/store-bench"))
    p.add_argument("--out", type=Path, default=REPO / "docs" / "store_benchmark.json")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    src64 = args.workdir / f"standin_ds3_{args.n}.hdf5"
    if not src64.exists():
        print(f"simulating {args.n} ds3 showers -> {src64}", flush=True)
        simulate_file(src64, "ds3", args.n, seed=2026, workers=2)
    src32 = args.workdir / f"standin_ds3_{args.n}_f32.hdf5"
    if not src32.exists():
        with h5py.File(src64, "r") as f, shower_file_writer(src32, args.n, 40500, dtype="float32", overwrite=True) as g:
            g["incident_energies"][:] = f["incident_energies"][:]
            for a in range(0, args.n, 256):
                g["showers"][a:a + 256] = f["showers"][a:a + 256]
    with h5py.File(src64, "r") as f:
        block = f["showers"][: args.sweep_n].astype(np.float32).reshape(-1, 45, 50, 18)
    zero_fraction = float((block == 0).mean())
    print(f"zero fraction of the stand-in showers: {zero_fraction:.3f}")
    print("layout sweep:", flush=True)
    sweep = layout_sweep(block, args.workdir, [8, 16, 32])
    del block

    layout = StoreLayout()
    store = args.workdir / "store.zarr"
    shutil.rmtree(store, ignore_errors=True)  # a complete store from the same inputs would be a no-op
    conv = convert_with_rss(src64, store, layout)
    raw = args.n * 40500 * 4
    sizes = {"zarr_store": du(store), "hdf5_gzip_float64": du(src64), "hdf5_gzip_float32": du(src32), "raw_float32": raw}
    print(f"convert: {args.n} showers in {conv['seconds']:.1f} s = {raw / conv['seconds'] / 1e6:.0f} MB/s (float32), "
          f"peak RSS {conv['peak_rss_MB']:.0f} MB")
    print(f"sizes: {json.dumps({k: round(v / 2**20, 1) for k, v in sizes.items()})} MiB")

    reads = {
        "stream_1_thread": stream_rate(store, args.batch, 1, 1),
        "stream_prefetch_2_threads": stream_rate(store, args.batch, 2, 16),
        "h5py_gzip_f32_sequential": h5py_sequential(src32, args.batch, 100),
        "h5py_gzip_f64_sequential": h5py_sequential(src64, args.batch, 100),
        "h5py_gzip_f32_random_batches": h5py_random(src32, args.batch, 4),
    }
    for k, v in reads.items():
        print(f"read {k}: {v:.0f} showers/s")
    result = {
        "n": args.n, "zero_fraction": zero_fraction, "layout": layout.__dict__, "sweep": sweep,
        "convert": {**conv, "MBps_float32": raw / conv["seconds"] / 1e6, "showers_per_s": args.n / conv["seconds"]},
        "sizes_bytes": sizes,
        "size_ratio_vs_gzip_f64": sizes["zarr_store"] / sizes["hdf5_gzip_float64"],
        "size_ratio_vs_gzip_f32": sizes["zarr_store"] / sizes["hdf5_gzip_float32"],
        "read_showers_per_s": reads,
        "stream_speedup_vs_h5py_f32_sequential": reads["stream_prefetch_2_threads"] / reads["h5py_gzip_f32_sequential"],
        "stream_speedup_vs_h5py_f64_sequential": reads["stream_prefetch_2_threads"] / reads["h5py_gzip_f64_sequential"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"size vs gzip HDF5: {result['size_ratio_vs_gzip_f64']:.2f}x (float64 files), "
          f"{result['size_ratio_vs_gzip_f32']:.2f}x (float32); stream speed-up vs h5py+gzip sequential: "
          f"{result['stream_speedup_vs_h5py_f32_sequential']:.1f}x (float32), "
          f"{result['stream_speedup_vs_h5py_f64_sequential']:.1f}x (float64)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
