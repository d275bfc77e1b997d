"""Pictures of edits for documents: a strip per attribute and an animated sweep (GIF or WebP)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from faceedit.editing.boundary import DEFAULT_BATCH
from faceedit.editing.ops import Edit, apply_edits, edit_path
from faceedit.errors import InvalidInputError
from faceedit.images import grid, to_pil, upscale
from faceedit.models.stylegan2 import Generator


def _render(generator: Generator, frames: Tensor) -> list[Image.Image]:
    """frames [F, B, L, D] → F·B images in that order."""
    flat = frames.reshape(-1, *frames.shape[2:])  # [F·B, L, D]
    step = DEFAULT_BATCH
    with torch.inference_mode():
        images = torch.cat([generator.synthesis(flat[i:i + step]) for i in range(0, flat.shape[0], step)])
    return to_pil(images)


def strip_strengths(low: float, high: float, per_side: int = 3) -> list[float]:
    """`per_side` steps from low to 0 and from 0 to high: the unedited face sits in the middle column."""
    return [low * (per_side - i) / per_side for i in range(per_side)] + [0.0] + \
        [high * (i + 1) / per_side for i in range(per_side)]


def edit_strip(generator: Generator, ws: Tensor, edit: Edit, strengths: Sequence[float], scale: int = 2) -> Image.Image:
    """A grid with one row per latent in ws [B, L, D] and one column per strength."""
    if len(strengths) < 2:
        raise InvalidInputError("strengths", f"need at least two columns, got {len(strengths)}")
    columns = [apply_edits(ws, edit.with_strength(float(s))) for s in strengths]  # each [B, L, D]
    images = _render(generator, torch.stack(columns, dim=1))  # [B, C, L, D]: row-major, one row per latent
    return upscale(grid(images, columns=len(strengths)), scale)


def edit_animation(generator: Generator, ws: Tensor, sweeps: Sequence[tuple[Edit, float, float]], path: str | Path,
                   frames_per_sweep: int = 16, frame_ms: int = 80, scale: int = 2) -> Path:
    """Animate ws [B, L, D] (tiled side by side) through each (edit, low, high) sweep, there and back.

    The format follows the suffix: .gif or .webp.
    """
    path = Path(path)
    if path.suffix.lower() not in (".gif", ".webp"):
        raise InvalidInputError("path", f"animations are .gif or .webp, got {path.name}")
    if not sweeps:
        raise InvalidInputError("sweeps", "nothing to animate")
    pictures: list[Image.Image] = []
    for edit, low, high in sweeps:
        # 0 → high → low → 0, so consecutive sweeps join without a jump.
        legs = [(0.0, high), (high, low), (low, 0.0)]
        for start, end in legs:
            frames = edit_path(ws, edit.with_strength(1.0), n_frames=frames_per_sweep, start=start, end=end)
            images = _render(generator, frames)
            batch = ws.shape[0]
            pictures.extend(upscale(grid(images[i:i + batch], columns=batch), scale)
                            for i in range(0, len(images), batch))
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    return path
