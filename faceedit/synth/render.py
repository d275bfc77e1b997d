"""Public API: render synthetic faces with known attributes, in a photo or an artistic style."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from faceedit.errors import InvalidInputError
from faceedit.synth.attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_UNIFORMS,
    attributes_from_uniform,
    draw_attributes,
    face_rng,
    validate_attributes,
)
from faceedit.synth.face import paint_face
from faceedit.synth.identity import IDENTITY_STREAM, IDENTITY_UNIFORMS, identity_from_uniform, sample_identity
from faceedit.synth.styles import STYLE_CANVASES

STYLES: tuple[str, ...] = ("photo", "sketch", "comic", "watercolor")
STYLE_STREAM = 2  # per-face RNG stream for style texture (paper grain, pigment blotches)
MIN_SIZE, MAX_SIZE = 16, 1024
SUPERSAMPLE_SMALL = 4  # supersampling for sizes up to SUPERSAMPLE_SMALL_UPTO, for clean edges
SUPERSAMPLE_SMALL_UPTO = 128
SUPERSAMPLE_LARGE = 2  # big images already have fine pixels; 4x would cost 16x memory
RENDER_UNIFORMS = ATTRIBUTE_UNIFORMS + IDENTITY_UNIFORMS  # numbers that decide one face


def _check_int(field: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(field, f"must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise InvalidInputError(field, f"must be >= {minimum}, got {value}")
    return int(value)


def _check_size(size) -> int:
    size = _check_int("size", size, MIN_SIZE)
    if size > MAX_SIZE or size & (size - 1):
        raise InvalidInputError("size", f"must be a power of two in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    return size


def _check_style(style) -> int:
    if not isinstance(style, str) or style not in STYLES:
        raise InvalidInputError("style", f"unknown style {style!r}; valid styles: {', '.join(STYLES)}")
    return STYLES.index(style)


def _supersample(size: int) -> int:
    return SUPERSAMPLE_SMALL if size <= SUPERSAMPLE_SMALL_UPTO else SUPERSAMPLE_LARGE


def _check_identities(identities, n: int) -> list[int]:
    if identities is None:
        return list(range(n))
    try:
        ids = np.asarray(identities).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInputError("identities", "must be a sequence of face indices") from None
    if len(ids) != n:
        raise InvalidInputError("identities", f"has {len(ids)} entries for {n} faces")
    if ids.dtype.kind not in "iu" or np.any(ids < 0):
        raise InvalidInputError("identities", "face indices must be integers >= 0")
    return [int(i) for i in ids]


def _paint(faces, size: int, style: str) -> torch.Tensor:
    """Paint (attributes, identity, style rng) triples into images [n, 3, size, size] in [-1, 1]."""
    canvas_cls = STYLE_CANVASES[style]
    ss = _supersample(size)
    out = np.empty((len(faces), size, size, 3), dtype=np.float32)
    for i, (attrs, ident, style_rng) in enumerate(faces):
        canvas = canvas_cls(size, ss, style_rng)
        head = paint_face(canvas, ident, attrs)
        out[i] = canvas.finish(head, attrs["lighting"])
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return images.mul_(2.0 / 255.0).sub_(1.0)


def _paint_batch(columns: dict[str, np.ndarray], size: int, style: str, seed: int,
                 identities: list[int]) -> torch.Tensor:
    """Paint every face of the (validated) attribute columns; face i is the person (seed, identities[i])."""
    faces = [({name: float(col[i]) for name, col in columns.items()},
              sample_identity(face_rng(seed, person, IDENTITY_STREAM)),
              face_rng(seed, person, STYLE_STREAM))
             for i, person in enumerate(identities)]
    return _paint(faces, size, style)


def render_from_uniform(u, size: int = 64, style: str = "photo") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Faces decided entirely by numbers in [0, 1]: u [n, RENDER_UNIFORMS] → (images, attributes).

    Columns 0..ATTRIBUTE_UNIFORMS-1 decide the attributes (one each, monotone), the rest the
    identity. The demo generator is trained to reproduce render_from_uniform(Φ(z)) from z.
    """
    size = _check_size(size)
    style_index = _check_style(style)
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != RENDER_UNIFORMS:
        raise InvalidInputError("u", f"expected shape [n, {RENDER_UNIFORMS}], got {list(u.shape)}")
    if not np.all((u >= 0.0) & (u <= 1.0)):
        raise InvalidInputError("u", "values must lie in [0, 1]")
    faces = [(attributes_from_uniform(row[:ATTRIBUTE_UNIFORMS]), identity_from_uniform(row[ATTRIBUTE_UNIFORMS:]),
              np.random.default_rng([STYLE_STREAM, i])) for i, row in enumerate(u)]
    images = _paint(faces, size, style)
    attrs = {name: torch.tensor([f[0][name] for f in faces], dtype=torch.float32) for name in ATTRIBUTE_NAMES}
    attrs["style"] = torch.full((len(faces),), float(style_index), dtype=torch.float32)
    return images, attrs


def sample_attributes(n: int, seed: int) -> dict[str, np.ndarray]:
    """Ground-truth attributes of faces 0..n-1 for `seed`, exactly those render_faces(n, seed) uses."""
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    return draw_attributes(n, seed)


def render_faces(n: int, seed: int, size: int = 64,
                 style: str = "photo") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """n random faces: images [n, 3, size, size] in [-1, 1] and float32 attributes [n] by name (plus "style").

    Face i depends only on (seed, i, size, style), so the first k faces of any batch are the same.
    """
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    size = _check_size(size)
    style_index = _check_style(style)
    columns = draw_attributes(n, seed)
    images = _paint_batch(columns, size, style, seed, list(range(n)))
    attrs = {name: torch.from_numpy(col.astype(np.float32)) for name, col in columns.items()}
    attrs["style"] = torch.full((n,), float(style_index), dtype=torch.float32)
    return images, attrs


def render_from_attributes(attrs: Mapping[str, object], size: int = 64, style: str = "photo", seed: int = 0,
                           identities: Sequence[int] | None = None) -> torch.Tensor:
    """Faces with the given attribute values (scalars broadcast to the longest column).

    Face i is the person (seed, identities[i]); by default identities are 0..n-1, so
    render_from_attributes(sample_attributes(n, s), seed=s) reproduces render_faces(n, s)'s images
    and changing one attribute re-renders the same people with only that attribute edited.
    Repeating one index in `identities` renders one person with several attribute settings.
    """
    size = _check_size(size)
    style_index = _check_style(style)
    seed = _check_int("seed", seed, 0)
    columns = validate_attributes(attrs, style_index)
    ids = _check_identities(identities, len(columns[ATTRIBUTE_NAMES[0]]))
    return _paint_batch(columns, size, style, seed, ids)
