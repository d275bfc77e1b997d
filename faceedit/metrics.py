"""Distribution metrics on feature or score samples: KID, per-attribute Wasserstein distance."""

from __future__ import annotations

import torch
from torch import Tensor


def kernel_inception_distance(a: Tensor, b: Tensor, subsets: int = 50, subset_size: int = 500,
                              seed: int = 0) -> tuple[float, float]:
    """KID (unbiased MMD² with the cubic polynomial kernel) between feature sets a [N, D] and b [M, D].

    Returns (mean, std) over random subsets, the usual estimator; the features here are the
    attribute scorer's embedding rather than Inception's (no Inception weights are available).
    """
    assert a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1], (a.shape, b.shape)
    a, b = a.double(), b.double()
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:m]]
        y = b[torch.randperm(len(b), generator=gen)[:m]]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        off_diag = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        values.append(float(off_diag - 2 * k_xy.mean()))
    v = torch.tensor(values)
    return float(v.mean()), float(v.std())


def wasserstein_1d(a: Tensor, b: Tensor, points: int = 1000) -> float:
    """Earth mover's distance between two 1-d samples (mean |quantile difference|)."""
    q = torch.linspace(0, 1, points, dtype=torch.float64)
    return float((torch.quantile(a.double(), q) - torch.quantile(b.double(), q)).abs().mean())
