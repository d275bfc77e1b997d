"""Conversions between generator tensors ([-1, 1], NCHW) and PIL images, and image grids."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from faceedit.errors import InvalidInputError


def to_pil(images: Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in about [-1, 1] → RGB images (clamped, rounded)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError("images", f"expected [B, 3, H, W], got {list(images.shape)}")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


def from_pil(images: Sequence[Image.Image], size: int | None = None) -> Tensor:
    """RGB images → [B, 3, H, W] in [-1, 1], optionally resized (Lanczos) to size×size."""
    arrays = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise InvalidInputError(f"images[{i}]", f"expected a PIL image, got {type(image).__name__}")
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.LANCZOS)
        arrays.append(np.asarray(image, dtype=np.float32))
    if not arrays:
        raise InvalidInputError("images", "no images given")
    if len({a.shape for a in arrays}) != 1:
        raise InvalidInputError("images", "images differ in size; pass `size` to resize them")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [B, 3, H, W]
    return batch / 127.5 - 1


def grid(images: Sequence[Image.Image], columns: int | None = None, pad: int = 2,
         background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Tile equally sized images row by row; `columns` defaults to a near-square layout."""
    if not images:
        raise InvalidInputError("images", "no images to tile")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    sheet = Image.new("RGB", (columns * (width + pad) + pad, rows * (height + pad) + pad), background)
    for i, image in enumerate(images):
        row, col = divmod(i, columns)
        sheet.paste(image, (pad + col * (width + pad), pad + row * (height + pad)))
    return sheet


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour enlargement so small demo images stay crisp in documents."""
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
