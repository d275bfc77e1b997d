"""Unsupervised directions as named boundary-set entries: GANSpace (PCA of sampled W) and SeFa (closed form)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import torch

from faceedit.editing.boundary_set import DirectionEntry
from faceedit.editing.directions import PCABasis, load_ganspace
from faceedit.editing.sefa import sefa_directions
from faceedit.errors import InvalidInputError
from faceedit.models.stylegan2 import Generator

MAX_COMPONENTS = 64


def compute_ganspace(generator: Generator, n: int = 20_000, components: int = 10, seed: int = 0,
                     batch: int = 4096) -> PCABasis:
    """GANSpace: the principal components of n sampled w = mapping(z) (unit rows, largest variance first)."""
    if not 1 <= components <= min(MAX_COMPONENTS, generator.style_dim):
        raise InvalidInputError("components", f"must be in [1, {min(MAX_COMPONENTS, generator.style_dim)}], "
                                              f"got {components}")
    if not components < n <= 1_000_000:
        raise InvalidInputError("n", f"must be in ({components}, 1000000], got {n}")
    rng = torch.Generator().manual_seed(seed)
    device = next(generator.parameters()).device
    with torch.no_grad():
        w = torch.cat([generator.mapping(torch.randn(min(batch, n - i), generator.style_dim, generator=rng)
                                         .to(device)).cpu() for i in range(0, n, batch)])  # [n, D]
    mean = w.mean(0)
    _, singular, v = torch.linalg.svd((w - mean).double(), full_matrices=False)  # rows of v: components
    std = (singular[:components] / (n - 1) ** 0.5).float()  # [K]
    return PCABasis(mean=mean, components=v[:components].float(), std=std)


def save_ganspace(path: str | Path, basis: PCABasis) -> Path:
    """GANSpace's own file layout ({'mean' [1, D], 'comp' [K, 1, D], 'std' [K]}), which `load_ganspace` and a
    boundary set (`components: all`) read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mean": basis.mean[None], "comp": basis.components[:, None], "std": basis.std}, path)
    load_ganspace(path)  # what was written reads back
    return path


def sefa_entries(generator: Generator, k: int, source: str = "sefa", samples: int = 4096) -> list[DirectionEntry]:
    """The top-k SeFa directions of the generator's convolution styles as entries `sefa:0` .. `sefa:{k-1}`,
    each recommended within ±2 standard deviations of sampled w along it (SeFa's directions are unit vectors;
    how far W spreads along them is the generator's own scale)."""
    if not 1 <= k <= min(MAX_COMPONENTS, generator.style_dim):
        raise InvalidInputError("sefa", f"must be in [1, {min(MAX_COMPONENTS, generator.style_dim)}], got {k}")
    directions, eigenvalues = sefa_directions(generator, k=k)  # [k, D], [k]
    # An eigenvector's sign is arbitrary (it can differ between BLAS builds): fix it, largest entry positive,
    # so sefa:K means the same direction on every host.
    largest = directions.gather(1, directions.abs().argmax(1, keepdim=True))  # [k, 1]
    directions = (directions * largest.sign()).cpu()
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = generator.mapping(torch.randn(samples, generator.style_dim, generator=rng)
                              .to(next(generator.parameters()).device)).cpu()  # [S, D]
    spread = (w @ directions.t()).std(0)  # [k]
    return [DirectionEntry(name=f"sefa:{i}", direction=directions[i].contiguous(), space="w",
                           source=f"{source}#direction={i}", format="sefa", accuracy=None,
                           recommended=(-2 * float(spread[i]), 2 * float(spread[i])), layers=None,
                           description=f"SeFa direction {i} (eigenvalue {float(eigenvalues[i]):.3g}), unsupervised",
                           metadata=MappingProxyType({"component": i, "eigenvalue": float(eigenvalues[i])}))
            for i in range(k)]
