"""PNG plots of an evaluation: average showers, profiles, observable histograms with ratio panels."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from pipeline.evaluation.observables import (  # noqa: E402
    ENERGY_BIN_LABELS,
    FAMILIES,
    SampleObservables,
    radial_profile,
)
from pipeline.evaluation.separation import Separation  # noqa: E402

GEN, REF = "tab:red", "tab:blue"
LABELS = {
    "etot_einc": r"$E_\mathrm{tot}/E_\mathrm{inc}$", "e_layer": "E layer {} [MeV]", "ec_x": "centre of energy x, layer {} [mm]",
    "ec_y": "centre of energy y, layer {} [mm]", "width_x": "width x, layer {} [mm]", "width_y": "width y, layer {} [mm]",
    "sparsity": "sparsity (zero fraction), layer {}", "voxel": "voxel energy [MeV]",
}


def label_of(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    family, layer = name.rsplit("_", 1)
    return LABELS.get(family, name).format(int(layer))


def pick_layers(layers: Sequence[int], k: int = 6) -> list[int]:
    """``k`` layers spread evenly over ``layers``."""
    idx = np.unique(np.linspace(0, len(layers) - 1, min(k, len(layers))).round().astype(int))
    return [layers[i] for i in idx]


def _margins(height_in: float) -> dict[str, float]:
    """Fixed gridspec margins (constrained layout costs seconds per figure)."""
    return {"left": 0.07, "right": 0.98, "bottom": 0.5 / height_in, "top": 1 - 0.6 / height_in, "wspace": 0.3,
            "hspace": 0.75 / height_in * 2}


def _save(fig: plt.Figure, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _ratio_axes(fig: plt.Figure, spec) -> tuple[plt.Axes, plt.Axes]:
    sub = spec.subgridspec(2, 1, height_ratios=(3, 1), hspace=0.05)
    top = fig.add_subplot(sub[0])
    return top, fig.add_subplot(sub[1], sharex=top)


def draw_histogram(top: plt.Axes, bottom: plt.Axes, sep: Separation, xlabel: str) -> None:
    """Density histograms of one observable (inner bins) with the generated/reference ratio below."""
    edges = sep.binning.edges
    extra = int(sep.binning.log)
    p = sep.generated[extra + 1: -1] / max(sep.generated.sum(), 1)
    q = sep.reference[extra + 1: -1] / max(sep.reference.sum(), 1)
    logx = bool(sep.binning.log or (edges[0] > 0 and edges[-1] / edges[0] > 100))
    widths = np.ones_like(edges[1:]) if logx else np.diff(edges)  # log x: fraction per bin, else density
    top.stairs(q / widths, edges, color=REF, fill=True, alpha=0.3, label="reference")
    top.stairs(p / widths, edges, color=GEN, lw=1.5, label="generated")
    n_g, n_r = max(sep.generated.sum(), 1), max(sep.reference.sum(), 1)
    notes = [f"S = {sep.value:.2g} (floor {sep.floor:.1g})"]
    if extra:
        notes.append(f"zero: gen {sep.generated[0] / n_g:.0%}, ref {sep.reference[0] / n_r:.0%}")
    outside = (sep.generated[extra] + sep.generated[-1]) / n_g
    if outside > 0.005:
        notes.append(f"{outside:.1%} gen. outside")
    top.set_title(", ".join(notes), fontsize=7)
    top.yaxis.set_minor_formatter(NullFormatter())
    top.tick_params(labelbottom=False, labelsize=7)
    ok = q > 0
    ratio = p[ok] / q[ok]
    err = np.sqrt(sep.generated[extra + 1: -1][ok]) / n_g / q[ok]
    centres = 0.5 * (edges[:-1] + edges[1:])
    bottom.errorbar(centres[ok], ratio, yerr=err, fmt=".", ms=2, color=GEN, elinewidth=0.6)
    bottom.axhline(1.0, color="k", lw=0.6)
    bottom.set_ylim(0.5, 1.5)
    bottom.set_xlabel(xlabel, fontsize=8)
    bottom.set_ylabel("gen/ref", fontsize=7)
    bottom.tick_params(labelsize=7)
    if logx:
        top.set_xscale("log")
    if np.all(q >= 0) and q.max() > 0:
        top.set_yscale("log")


def plot_histogram_grid(seps: dict[str, Separation], names: Sequence[str], path: Path, title: str, dpi: int = 80,
                        ncols: int = 3) -> Path:
    """One panel with ratio per observable in ``names``."""
    nrows = -(-len(names) // ncols)
    fig = plt.figure(figsize=(3.6 * ncols, 3.2 * nrows))
    grid = fig.add_gridspec(nrows, ncols, **_margins(3.2 * nrows))
    for k, name in enumerate(names):
        top, bottom = _ratio_axes(fig, grid[k // ncols, k % ncols])
        draw_histogram(top, bottom, seps[name], label_of(name))
        if k == 0:
            top.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def plot_average_showers(gen: SampleObservables, ref: SampleObservables, path: Path, dpi: int = 80, k: int = 6) -> Path:
    """Mean energy per voxel of selected layers (polar), reference above generated."""
    g = ref.geometry
    layers = pick_layers(g.relevant_layers, k)
    fig, axes = plt.subplots(2, len(layers), figsize=(2.0 * len(layers) + 0.8, 4.4), subplot_kw={"projection": "polar"},
                             squeeze=False, gridspec_kw={"left": 0.01, "right": 0.86, "bottom": 0.02, "top": 0.86})
    slices = g.layer_slices
    means = {"reference": ref.mean_shower, "generated": gen.mean_shower}
    positive = np.concatenate([m[m > 0] for m in means.values()])
    vmax = float(positive.max()) if positive.size else 1.0
    norm = LogNorm(vmin=max(vmax * 1e-5, 1e-6), vmax=vmax)
    mesh = None
    for row, (name, mean) in enumerate(means.items()):
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            spec = g.layers[layer]
            sub = max(1, 64 // spec.n_alpha)  # split wide angular bins so that one bin can span 2 pi
            img = np.repeat(mean[slices[layer]].reshape(spec.n_alpha, spec.n_radial), sub, axis=0)
            theta, rad = np.meshgrid(np.linspace(-np.pi, np.pi, spec.n_alpha * sub + 1), np.asarray(spec.r_edges))
            mesh = ax.pcolormesh(theta, rad, np.clip(img.T, norm.vmin, None), norm=norm, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_title(f"{name[:3]}. layer {layer}", fontsize=8)
    if mesh is not None:
        fig.colorbar(mesh, cax=fig.add_axes((0.89, 0.1, 0.015, 0.7)), label="mean energy per voxel [MeV]")
    fig.suptitle("Average shower: reference (top) vs generated (bottom)", fontsize=10)
    return _save(fig, path, dpi)


def _profile_panel(fig: plt.Figure, spec, x: np.ndarray, ref: np.ndarray, gen: np.ndarray, xlabel: str, ylabel: str) -> None:
    top, bottom = _ratio_axes(fig, spec)
    top.step(x, ref, where="mid", color=REF, label="reference")
    top.step(x, gen, where="mid", color=GEN, label="generated")
    top.set_yscale("log")
    top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel(ylabel, fontsize=8)
    top.legend(fontsize=7)
    top.tick_params(labelbottom=False, labelsize=7)
    with np.errstate(divide="ignore", invalid="ignore"):
        bottom.plot(x, gen / ref, ".", color=GEN)
    bottom.axhline(1.0, color="k", lw=0.6)
    bottom.set_ylim(0.5, 1.5)
    bottom.set_xlabel(xlabel, fontsize=8)
    bottom.set_ylabel("gen/ref", fontsize=7)
    bottom.tick_params(labelsize=7)


def profiles_figure(gen: SampleObservables, ref: SampleObservables, response: Separation | None = None) -> plt.Figure:
    """Longitudinal (mean energy per layer) and radial (mean energy per radial bin) profiles, and the
    E_tot/E_inc histogram when ``response`` is given (the training monitor's picture)."""
    panels = 2 if response is None else 3
    fig = plt.figure(figsize=(4.5 * panels, 3.8))
    grid = fig.add_gridspec(1, panels, **_margins(3.8))
    layers = np.asarray(ref.hlf.layers)
    _profile_panel(fig, grid[0], layers, ref.mean_layer_energy, gen.mean_layer_energy, "layer",
                   "mean energy [MeV]")
    r_ref, e_ref = radial_profile(ref)
    _, e_gen = radial_profile(gen)
    _profile_panel(fig, grid[1], r_ref, e_ref, e_gen, "radius (bin centre) [mm]", "mean energy [MeV]")
    if response is not None:
        draw_histogram(*_ratio_axes(fig, grid[2]), response, label_of("etot_einc"))
    fig.suptitle("Longitudinal and radial profiles" + ("" if response is None else ", response"), fontsize=10)
    return fig


def plot_profiles(gen: SampleObservables, ref: SampleObservables, path: Path, dpi: int = 80) -> Path:
    """Longitudinal (mean energy per layer) and radial (mean energy per radial bin) profiles."""
    return _save(profiles_figure(gen, ref), path, dpi)


def plot_separation_by_layer(seps: dict[str, Separation], path: Path, dpi: int = 80) -> Path:
    """Separation power per layer for each feature family, with the noise floor."""
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), sharex=True, gridspec_kw=_margins(5.5))
    for ax, family in zip(axes.flat, FAMILIES):
        items = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in seps.items() if k.rsplit("_", 1)[0] == family)
        if not items:
            ax.set_visible(False)
            continue
        layers = [i for i, _ in items]
        ax.plot(layers, [v.value for _, v in items], ".-", color=GEN, label="separation power")
        ax.plot(layers, [v.floor for _, v in items], "--", color="grey", label="noise floor")
        ax.set_yscale("log")
        ax.set_title(family, fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("layer", fontsize=8)
    fig.suptitle("Separation power per layer", fontsize=10)
    return _save(fig, path, dpi)


def plot_energy_bins(binned: list[dict[str, Separation] | None], path: Path, dpi: int = 80) -> Path:
    """E_tot/E_inc in each incident-energy bin."""
    fig = plt.figure(figsize=(10.5, 3.4))
    grid = fig.add_gridspec(1, len(binned), **_margins(3.4))
    for k, seps in enumerate(binned):
        if seps is None or "etot_einc" not in seps:
            continue
        top, bottom = _ratio_axes(fig, grid[k])
        draw_histogram(top, bottom, seps["etot_einc"], LABELS["etot_einc"] + f"  ({ENERGY_BIN_LABELS[k]})")
        if k == 0:
            top.legend(fontsize=7)
    fig.suptitle(r"$E_\mathrm{tot}/E_\mathrm{inc}$ per incident-energy bin", fontsize=10)
    return _save(fig, path, dpi)


def write_plots(gen: SampleObservables, ref: SampleObservables, seps: dict[str, Separation],
                binned: list[dict[str, Separation] | None], out: Path, dpi: int = 80) -> list[Path]:
    """Every plot of the report into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_average_showers(gen, ref, out / "average_shower.png", dpi),
        plot_profiles(gen, ref, out / "profiles.png", dpi),
        plot_histogram_grid(seps, ["etot_einc", "voxel"], out / "hist_etot_voxel.png",
                            "Total energy response and voxel-energy spectrum", dpi, ncols=2),
        plot_separation_by_layer(seps, out / "separation_by_layer.png", dpi),
        plot_energy_bins(binned, out / "energy_bins.png", dpi),
    ]
    for family in FAMILIES:
        names = [f"{family}_{layer:02d}" for layer in pick_layers(gen.hlf.family_layers(family))]
        names = [n for n in names if n in seps]
        if names:
            paths.append(plot_histogram_grid(seps, names, out / f"hist_{family}.png", f"{family} in selected layers", dpi))
    return paths
