"""Diagnostic plots of a CaloChallenge ds2/ds3 file (simulated or Geant4).

    python -m data_tools.plot_showers FILE.hdf5 --geometry ds3 --out DIR [--max-showers N]

Writes to DIR: ``layers.png`` (average energy per voxel, x-y view of a few layers),
``longitudinal.png`` (mean layer energy / E_inc per energy decade), ``radial.png`` (energy
density vs radius), ``response.png`` (E_tot/E_inc histogram and vs E_inc), ``resolution.png``
(relative spread of E_tot vs E_inc), ``voxels.png``
(voxel energy spectrum, occupancy vs E_inc) and ``overview.png`` (all in one figure). The file is
read in blocks, never whole.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from pipeline.data.calochallenge_hdf5 import InputError, inspect_file, read_energies, read_showers  # noqa: E402
from pipeline.physics.geometry import Geometry, GeometryError, load_geometry  # noqa: E402

DECADES = ((1e3, 1e4, "1-10 GeV"), (1e4, 1e5, "10-100 GeV"), (1e5, 1e6 + 1, "0.1-1 TeV"))
SPECTRUM_EDGES = np.linspace(-3, 4, 71)  # log10(voxel energy / MeV)


@dataclass
class Summary:
    """Per-file statistics accumulated block by block."""

    geometry: Geometry
    e_inc: np.ndarray  # (N,)
    layers: np.ndarray  # (N, L) layer energies
    nnz: np.ndarray  # (N,) non-zero voxels per shower
    mean_voxel: np.ndarray  # (L, A, R) mean of shower / E_inc
    radial: np.ndarray  # (3, R) mean energy / E_inc per radial bin, per energy decade
    spectrum: np.ndarray  # counts in SPECTRUM_EDGES
    threshold: float


def summarize(path: Path, geometry: Geometry, max_showers: int | None = None, block: int = 256) -> Summary:
    """Read ``path`` in blocks of ``block`` showers and accumulate the plotted statistics."""
    info = inspect_file(path, geometry)
    n = info.n if max_showers is None else min(info.n, max_showers)
    e_inc = read_energies(path)[:n]
    n_layers, n_alpha, n_radial = geometry.shape
    layers, nnz = np.zeros((n, n_layers)), np.zeros(n, dtype=np.int64)
    mean_voxel = np.zeros(geometry.n_voxels)
    radial, counts = np.zeros((len(DECADES), n_radial)), np.zeros(len(DECADES))
    spectrum = np.zeros(SPECTRUM_EDGES.size - 1)
    decade = np.digitize(e_inc, [d[1] for d in DECADES[:-1]])
    for a in range(0, n, block):
        b = min(a + block, n)
        s = read_showers(path, a, b).astype(np.float64)
        e = e_inc[a:b, None]
        s4 = s.reshape(b - a, n_layers, n_alpha, n_radial)
        layers[a:b] = s4.sum((2, 3))
        nnz[a:b] = (s > 0).sum(1)
        mean_voxel += (s / e).sum(0)
        rad = s4.sum((1, 2)) / e
        for d in range(len(DECADES)):
            radial[d] += rad[decade[a:b] == d].sum(0)
            counts[d] += (decade[a:b] == d).sum()
        spectrum += np.histogram(np.log10(s[s > 0]), SPECTRUM_EDGES)[0]
    radial /= np.maximum(counts, 1)[:, None]
    return Summary(geometry, e_inc, layers, nnz, (mean_voxel / n).reshape(geometry.shape), radial, spectrum,
                   geometry.threshold_mev)


def plot_layers(fig: plt.Figure, cells: Sequence, s: Summary, layers: Sequence[int]) -> None:
    """Mean E_vox / E_inc in the x-y plane, each layer on its own log scale (4 decades below its maximum)."""
    for cell, layer in zip(cells, layers):
        ax = fig.add_subplot(cell, projection="polar")
        r_edges = np.asarray(s.geometry.layers[layer].r_edges)
        values = s.mean_voxel[layer].T  # (R, A)
        vmax = max(values.max(), 1e-30)
        img = ax.pcolormesh(s.geometry.layers[layer].alpha_edges, r_edges, np.maximum(values, vmax * 1e-4),
                            norm=LogNorm(vmin=vmax * 1e-4, vmax=vmax), cmap="viridis", shading="flat")
        frac = s.mean_voxel[layer].sum() / max(s.mean_voxel.sum(), 1e-30)
        ax.set_title(f"layer {layer} ({100 * frac:.2g} % of the energy)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([r_edges[-1] / 2, r_edges[-1]])
        ax.tick_params(labelsize=7)
        ax.grid(False)
        fig.colorbar(img, ax=ax, shrink=0.6, pad=0.08).ax.tick_params(labelsize=7)


def plot_longitudinal(ax: plt.Axes, s: Summary) -> None:
    for lo, hi, label in DECADES:
        sel = (s.e_inc >= lo) & (s.e_inc < hi)
        if sel.any():
            prof = (s.layers[sel] / s.e_inc[sel, None]).mean(0)
            ax.step(np.arange(prof.size), prof, where="mid", label=f"{label} (max: layer {prof.argmax()})")
    ax.set(xlabel="layer", ylabel="mean E_layer / E_inc", yscale="log", title="longitudinal profile")
    ax.legend(fontsize=7)


def plot_radial(ax: plt.Axes, s: Summary) -> None:
    r_edges = np.asarray(s.geometry.layers[0].r_edges)
    area = np.pi * np.diff(r_edges**2)
    for (_, _, label), prof in zip(DECADES, s.radial):
        if prof.any():
            ax.step(0.5 * (r_edges[1:] + r_edges[:-1]), prof / area, where="mid", label=label)
    ax.set(xlabel="r (mm)", ylabel="mean E / E_inc per mm²", yscale="log", title="radial profile (all layers)")
    ax.legend(fontsize=7)


def plot_response(ax_hist: plt.Axes, ax_vs: plt.Axes, s: Summary) -> None:
    ratio = s.layers.sum(1) / s.e_inc
    ax_hist.hist(ratio, bins=np.linspace(0.3, 1.2, 91), histtype="step")
    ax_hist.set(xlabel="E_tot / E_inc", ylabel="showers",
                title=f"response: mean {ratio.mean():.3f}, std {ratio.std():.3f}")
    edges = np.logspace(3, 6, 13)
    idx = np.digitize(s.e_inc, edges) - 1
    ax_vs.scatter(s.e_inc, ratio, s=1, alpha=0.2, color="0.6", rasterized=True)
    mids, means, stds = [], [], []
    for k in range(edges.size - 1):
        sel = idx == k
        if sel.sum() > 1:
            mids.append(np.sqrt(edges[k] * edges[k + 1]))
            means.append(ratio[sel].mean())
            stds.append(ratio[sel].std())
    ax_vs.errorbar(mids, means, yerr=stds, fmt="o-", color="C3", ms=3, label="mean ± std")
    ax_vs.set(xscale="log", xlabel="E_inc (MeV)", ylabel="E_tot / E_inc", ylim=(0.4, 1.1), title="response vs E_inc")
    ax_vs.legend(fontsize=7)


def plot_resolution(ax: plt.Axes, s: Summary) -> None:
    ratio = s.layers.sum(1) / s.e_inc
    edges = np.logspace(3, 6, 13)
    idx = np.digitize(s.e_inc, edges) - 1
    mids = np.sqrt(edges[1:] * edges[:-1])
    res = np.array([ratio[idx == k].std() / ratio[idx == k].mean() if (idx == k).sum() > 2 else np.nan
                    for k in range(mids.size)])
    ax.plot(mids, res, "o-", ms=3, label="simulated")
    ax.plot(mids, 0.15 / np.sqrt(mids / 1e3), "--", color="0.5", label="15 % / sqrt(E/GeV)")
    ax.set(xscale="log", yscale="log", xlabel="E_inc (MeV)", ylabel="std / mean of E_tot", title="energy resolution")
    ax.legend(fontsize=7)


def plot_voxels(ax_spec: plt.Axes, ax_nnz: plt.Axes, s: Summary) -> None:
    ax_spec.stairs(s.spectrum, 10**SPECTRUM_EDGES)
    ax_spec.axvline(s.threshold, color="C3", ls="--", lw=1, label=f"threshold {1e3 * s.threshold:.2f} keV")
    ax_spec.set(xscale="log", yscale="log", xlabel="voxel energy (MeV)", ylabel="voxels", title="voxel energy spectrum")
    ax_spec.legend(fontsize=7)
    n_vox = s.geometry.n_voxels
    ax_nnz.scatter(s.e_inc, s.nnz, s=1, alpha=0.3, rasterized=True)
    ax_nnz.set(xscale="log", yscale="log", xlabel="E_inc (MeV)", ylabel="non-zero voxels",
               title=f"occupancy: {s.nnz.mean() / n_vox:.1%} non-zero on average")


def pick_layers(s: Summary) -> list[int]:
    """Four layers: first, near the shower maximum, twice as deep, last."""
    peak = int(s.layers.mean(0).argmax())
    return [0, peak, min(2 * peak + 2, s.geometry.n_layers - 2), s.geometry.n_layers - 1]


def write_plots(s: Summary, out: Path, title: str, dpi: int = 90) -> list[Path]:
    """Write the separate PNGs and the overview into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths, layers = [], pick_layers(s)

    def save(fig: plt.Figure, name: str) -> None:
        fig.suptitle(title, fontsize=10)
        path = out / name
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)

    fig = plt.figure(figsize=(12, 3.4), layout="constrained")
    plot_layers(fig, [141, 142, 143, 144], s, layers)
    save(fig, "layers.png")
    for name, fn in (("longitudinal.png", plot_longitudinal), ("radial.png", plot_radial),
                     ("resolution.png", plot_resolution)):
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        fn(ax, s)
        save(fig, name)
    for name, fn in (("response.png", plot_response), ("voxels.png", plot_voxels)):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
        fn(*axes, s)
        save(fig, name)
    fig = plt.figure(figsize=(16, 11), layout="constrained")
    grid = fig.add_gridspec(3, 4)
    plot_layers(fig, [grid[0, k] for k in range(4)], s, layers)
    plot_longitudinal(fig.add_subplot(grid[1, 0]), s)
    plot_radial(fig.add_subplot(grid[1, 1]), s)
    plot_response(fig.add_subplot(grid[1, 2]), fig.add_subplot(grid[1, 3]), s)
    plot_voxels(fig.add_subplot(grid[2, 0]), fig.add_subplot(grid[2, 1]), s)
    plot_resolution(fig.add_subplot(grid[2, 2]), s)
    ax = fig.add_subplot(grid[2, 3])
    pcc = np.corrcoef(s.layers.T)
    img = ax.imshow(pcc, vmin=0, vmax=1, cmap="magma", origin="lower")
    ax.set(xlabel="layer", ylabel="layer", title="layer-energy correlation")
    fig.colorbar(img, ax=ax, shrink=0.8)
    save(fig, "overview.png")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.plot_showers", description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path, help="CaloChallenge HDF5 file")
    p.add_argument("--geometry", required=True, choices=("ds2", "ds3"))
    p.add_argument("--out", required=True, type=Path, help="output directory for the PNGs")
    p.add_argument("--max-showers", type=int, default=None, help="only the first N showers")
    p.add_argument("--dpi", type=int, default=90)
    args = p.parse_args(argv)
    if args.max_showers is not None and args.max_showers <= 0:
        p.error("argument --max-showers: must be positive")
    try:
        geometry = load_geometry(args.geometry)
        s = summarize(args.file, geometry, args.max_showers)
    except (InputError, GeometryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    title = f"{args.file.name}: {s.e_inc.size} {args.geometry} showers"
    for path in write_plots(s, args.out, title, args.dpi):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
