"""Frechet and kernel physics distances (FPD, KPD; Kansal et al., arXiv:2211.10295).

Both compare the high-level-feature vectors of the two samples (the challenge uses its
high-level classifier input), after a common normalisation fixed by the reference:
``standardise`` (reference mean and std, the default) or ``maxabs`` (divide by the reference's
largest |value|, the JetNet code's choice).

FPD: the Frechet distance ``|mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))`` of Gaussian
fits, measured on ``batches`` random draws of N distinct showers from each sample for ``points``
sizes N spaced evenly in 1/N between ``min_n`` and ``max_n``; FPD_inf is the intercept of a
linear fit of the mean FPD against 1/N (constrained >= 0), its error the fit's standard error.

KPD: the unbiased estimate of MMD^2 with the polynomial kernel ``k(x, y) = (x.y / d + 1)^degree``
(degree 3 by default, as KID; JetNet's code uses 4) on ``batches`` random draws of
``batch_size`` distinct showers from each sample; value = median over draws, error = half the spread
between the 16.275% and 83.725% quantiles (JetNet's convention).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from scipy.optimize import curve_fit

KERNEL_BLOCK = 2048


def normalise(reference: np.ndarray, generated: np.ndarray, how: str = "standardise") -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets scaled by statistics of the reference."""
    ref, gen = np.asarray(reference, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    if how == "standardise":
        mean, std = ref.mean(axis=0), ref.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return (ref - mean) / std, (gen - mean) / std
    if how == "maxabs":
        scale = np.abs(ref).max(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        return ref / scale, gen / scale
    raise ValueError(f"unknown normalisation {how!r}; expected standardise or maxabs")


# The linear algebra runs in torch (float64), the eigen-decompositions of the small (d x d)
# matrices on one thread: with more threads they were 10-20x slower on a busy 2-core machine.

@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _t(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance of two Gaussians; Tr((S1 S2)^(1/2)) from the eigenvalues of S1^(1/2) S2 S1^(1/2)."""
    c1, c2 = _t(cov1), _t(cov2)
    with _one_thread():
        w, v = torch.linalg.eigh(0.5 * (c1 + c1.T))
        root = (v * w.clamp(min=0).sqrt()) @ v.T
        m = root @ c2 @ root
        ev = torch.linalg.eigvalsh(0.5 * (m + m.T))
    diff = _t(mu1) - _t(mu2)
    return float(diff @ diff + c1.trace() + c2.trace() - 2.0 * ev.clamp(min=0).sqrt().sum())


def _draw(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct rows (without replacement: a duplicated row would bias the unbiased MMD and
    shrink the effective N of the FPD extrapolation; JetNet draws with replacement)."""
    return x[np.sort(rng.choice(len(x), size=n, replace=False))]


def _gaussian(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = _t(x)
    mean = t.mean(dim=0)
    centred = t - mean
    return mean, centred.T @ centred / (len(t) - 1)


def fpd(reference: np.ndarray, generated: np.ndarray, *, min_n: int = 20_000, max_n: int = 50_000,
        batches: int = 20, points: int = 10, seed: int = 42, how: str = "standardise") -> dict[str, float | list]:
    """FPD extrapolated to infinite N, with its error and the measured points (sizes capped by the samples)."""
    x, y = normalise(reference, generated, how)
    max_n = int(min(max_n, len(x), len(y)))
    min_n = int(min(min_n, max(2, round(0.4 * max_n))))
    sizes = np.unique((1.0 / np.linspace(1.0 / min_n, 1.0 / max_n, points)).astype(np.int64))
    rng = np.random.default_rng(seed)
    means = []
    for n in sizes:
        vals = [frechet_distance(*_gaussian(_draw(x, n, rng)), *_gaussian(_draw(y, n, rng))) for _ in range(batches)]
        means.append(float(np.mean(vals)))
    inv = 1.0 / sizes
    if len(sizes) >= 3:
        params, cov = curve_fit(lambda t, b, m: b + m * t, inv, means, p0=[max(means[-1], 0.0), 0.0],
                                bounds=([0.0, -np.inf], [np.inf, np.inf]))
        value, error = float(params[0]), float(np.sqrt(cov[0, 0]))
    else:  # too few showers for an extrapolation: the value at the largest size
        value, error = means[-1], float("nan")
    return {"value": value, "error": error, "sizes": sizes.tolist(), "means": means}


def fpd_full_size(reference: np.ndarray, generated: np.ndarray, how: str = "standardise") -> float:
    """The Frechet distance of the Gaussian fits to all rows of both samples (no extrapolation: it carries the
    finite-size bias, which a null comparison of the same sizes measures)."""
    x, y = normalise(reference, generated, how)
    return frechet_distance(*_gaussian(x), *_gaussian(y))


def _poly_kernel_sum(a: np.ndarray, b: np.ndarray, degree: int, exclude_diagonal: bool = False) -> float:
    """Sum of (a.b / d + 1)^degree over all pairs, in row blocks (optionally without i == j)."""
    ta, tb = _t(a), _t(b)
    d = ta.shape[1]
    total = 0.0
    for i in range(0, len(ta), KERNEL_BLOCK):
        k = (ta[i: i + KERNEL_BLOCK] @ tb.T / d + 1.0) ** degree
        total += float(k.sum())
        if exclude_diagonal:
            total -= float(k.diagonal(offset=i).sum())
    return total


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD^2 estimate with the polynomial kernel."""
    m, n = len(x), len(y)
    return (_poly_kernel_sum(x, x, degree, True) / (m * (m - 1)) + _poly_kernel_sum(y, y, degree, True) / (n * (n - 1))
            - 2.0 * _poly_kernel_sum(x, y, degree) / (m * n))


def kpd(reference: np.ndarray, generated: np.ndarray, *, batch_size: int = 5_000, batches: int = 10,
        degree: int = 3, seed: int = 42, how: str = "standardise") -> dict[str, float | list]:
    """KPD: median unbiased MMD^2 over random batches, with the half 16-84% spread as error."""
    x, y = normalise(reference, generated, how)
    n = int(max(2, min(batch_size, len(x) // 2, len(y) // 2)))  # at most half a sample: batches must differ
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(_draw(x, n, rng), _draw(y, n, rng), degree) for _ in range(batches)]
    lo, hi = np.percentile(vals, [16.275, 83.725])
    return {"value": float(np.median(vals)), "error": float(0.5 * (hi - lo)), "batch_size": n, "values": [float(v) for v in vals]}
