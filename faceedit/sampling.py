"""Seeded latents and batched sampling from a generator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from faceedit.errors import InvalidInputError
from faceedit.models.stylegan2 import Generator, NoiseMode

MAX_SEEDS = 100_000


def parse_seeds(spec: str) -> list[int]:
    """'1-4,9' → [1, 2, 3, 4, 9]."""
    seeds: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                low, high = part.split("-", 1)
                first, last = int(low), int(high)
                if last < first:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise InvalidInputError("seeds", f"cannot read {part!r}; use e.g. '1-16' or '3,7,10-12'") from None
        if len(seeds) > MAX_SEEDS:
            raise InvalidInputError("seeds", f"more than {MAX_SEEDS} seeds")
    if not seeds:
        raise InvalidInputError("seeds", "no seeds given")
    if min(seeds) < 0 or max(seeds) >= 2**32:
        raise InvalidInputError("seeds", "seeds must be in [0, 2**32)")
    return seeds


def z_from_seeds(seeds: Iterable[int], dim: int) -> Tensor:
    """One z per seed, each from its own RNG so a seed names the same face in any batch."""
    rows = [torch.randn(1, dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    if not rows:
        raise InvalidInputError("seeds", "no seeds given")
    return torch.cat(rows)  # [B, dim]


def sample_images(generator: Generator, seeds: Sequence[int], truncation: float = 1.0,
                  noise_mode: NoiseMode = "const", batch_size: int = 8, progress: bool = False) -> Tensor:
    """Images [len(seeds), 3, H, W] for `seeds`, rendered in batches (with a progress bar if asked)."""
    if not 0.0 <= truncation <= 2.0:
        raise InvalidInputError("truncation", f"must be in [0, 2], got {truncation}")
    device = generator.w_avg.device
    chunks = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(seeds), batch_size), disable=not progress, desc="sampling",
                          unit="batch"):
            z = z_from_seeds(seeds[start:start + batch_size], generator.style_dim).to(device)
            w = generator.truncate(generator.mapping(z), truncation)
            chunks.append(generator.synthesis(generator.broadcast(w), noise_mode=noise_mode).cpu())
    return torch.cat(chunks)
