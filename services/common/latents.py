"""W+ latents from outside a process (a request, a reply, the cache): one check of shape, type, size and values."""

from __future__ import annotations

import numpy as np

from faceedit.errors import InvalidInputError
from services.common.errors import TooLargeError

MAX_BATCH = 64
MAX_N_LATENT = 32  # 18 at 1024 px
MAX_STYLE_DIM = 1024


def check_latents(ws: np.ndarray, field: str, n_latent: int | None = None, style_dim: int | None = None,
                  max_batch: int = MAX_BATCH) -> np.ndarray:
    """ws [B, n_latent, style_dim] as little-endian float32, or a typed error naming `field`: three
    dimensions, none empty, within the limits, the generator's own sizes when given, finite values."""
    if not isinstance(ws, np.ndarray) or ws.ndim != 3:
        shape = list(ws.shape) if isinstance(ws, np.ndarray) else type(ws).__name__
        raise InvalidInputError(field, f"expected shape [B, n_latent, style_dim], got {shape}")
    batch, length, dim = ws.shape
    if batch < 1 or length < 1 or dim < 1:
        raise InvalidInputError(field, f"has an empty dimension: {list(ws.shape)}")
    if batch > max_batch:
        raise TooLargeError(field, f"batch {batch} exceeds the limit of {max_batch}")
    if length > MAX_N_LATENT or dim > MAX_STYLE_DIM:
        raise TooLargeError(field, f"shape {list(ws.shape)} exceeds [*, {MAX_N_LATENT}, {MAX_STYLE_DIM}]")
    expected = (n_latent or length, style_dim or dim)
    if (length, dim) != expected:
        raise InvalidInputError(field, f"expected shape [B, {expected[0]}, {expected[1]}] for this generator, "
                                       f"got {list(ws.shape)}")
    if ws.dtype.kind != "f":
        raise InvalidInputError(field, f"expected floating point, got {ws.dtype}")
    ws = ws.astype("<f4", copy=False)
    if not np.isfinite(ws).all():
        raise InvalidInputError(field, "contains NaN or infinite values")
    return ws
