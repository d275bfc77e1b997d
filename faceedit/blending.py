"""Putting an edited face back into its photo: a soft face mask from the landmarks, colour matching, paste-back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from faceedit.align import AlignedFace, _check_image, _warp
from faceedit.errors import InvalidInputError

# A mask as a caller may give it: an "L" image or a [H, W] array in 0..1 over the crop, or a callable
# (a face parser, say) that makes one from the edited crop.
MaskSource = Image.Image | np.ndarray | Callable[[Image.Image], Image.Image | np.ndarray] | str | None

_JAW = slice(0, 17)  # iBUG 68: jaw line, then both brows (17-26)
_BROWS = slice(17, 27)


def square_mask(size: int, feather: float) -> Image.Image:
    """The whole crop, 255 inside, falling smoothly to 0 over `feather * size` pixels at each edge."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    dist = np.minimum(centres, size - centres)  # distance of each pixel centre to the nearest edge
    ramp = _smoothstep(dist / (feather * size)) if feather > 0 else np.ones(size)
    return Image.fromarray(np.round(np.outer(ramp, ramp) * 255).astype(np.uint8))  # 2-D uint8 -> mode "L"


def face_mask(aligned: AlignedFace, feather: float = 0.05, forehead: float = 0.35) -> Image.Image:
    """A soft mask over the face in the aligned crop ("L", the crop's size): the convex hull of the jaw
    line and the brows, the brows lifted by `forehead` x (brow-to-chin height) so the forehead is in, the
    edge falling to 0 inside the hull over `feather * size` pixels. Zero outside the hull: hair and
    background keep the photo's own pixels."""
    if not isinstance(feather, (int, float)) or isinstance(feather, bool) or not 0.0 <= feather <= 0.5:
        raise InvalidInputError("feather", f"must be a number in 0..0.5, got {feather!r}")
    if not isinstance(forehead, (int, float)) or isinstance(forehead, bool) or not 0.0 <= forehead <= 1.0:
        raise InvalidInputError("forehead", f"must be a number in 0..1, got {forehead!r}")
    size = aligned.size
    points = aligned.to_crop(aligned.landmarks)  # [68, 2] in crop pixels
    jaw, brows = points[_JAW], points[_BROWS]
    chin = jaw[8]
    up = brows.mean(axis=0) - chin  # chin → brows, the face's own "up" (the crop may be rotated a little)
    lifted = brows + forehead * up  # [10, 2]
    hull = _convex_hull(np.concatenate([jaw, brows, lifted]))  # [K, 2]
    inside = Image.new("L", (size, size), 0)
    ImageDraw.Draw(inside).polygon([tuple(p) for p in hull], fill=255)
    inside_px = np.asarray(inside) > 0  # [size, size]
    if feather <= 0:
        return Image.fromarray(inside_px.astype(np.uint8) * 255)
    distance = _distance_to_polygon(hull, size)  # [size, size] pixels to the hull's edge
    weight = np.where(inside_px, _smoothstep(distance / (feather * size)), 0.0)
    return Image.fromarray(np.round(weight * 255).astype(np.uint8))


def match_colours(edited: Image.Image, reference: Image.Image, mask: Image.Image) -> Image.Image:
    """`edited` with each channel's mean and spread inside `mask` moved to `reference`'s there: a crop from
    a generator keeps the photo's white balance and exposure (weighted by the mask, so the soft edge counts
    less than the middle of the face)."""
    weight = np.asarray(mask, dtype=np.float64)[..., None] / 255.0  # [H, W, 1]
    total = weight.sum()
    if total < 1.0:
        return edited.copy()
    a = np.asarray(edited, dtype=np.float64)
    b = np.asarray(reference.convert("RGB").resize(edited.size, Image.Resampling.LANCZOS), dtype=np.float64)

    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = (x * weight).sum(axis=(0, 1)) / total
        return mean, np.sqrt(((x - mean) ** 2 * weight).sum(axis=(0, 1)) / total)

    (mean_a, std_a), (mean_b, std_b) = stats(a), stats(b)
    matched = (a - mean_a) * (std_b / np.maximum(std_a, 1.0)) + mean_b
    return Image.fromarray(np.clip(np.round(matched), 0, 255).astype(np.uint8))


def paste_back(photo: Image.Image, edited_crop: Image.Image, aligned: AlignedFace, mask: MaskSource = None,
               feather: float = 0.05, colour_match: bool = False) -> Image.Image:
    """The photo with the edited crop warped back into it through a soft mask (a new image).

    `mask`: None, the face mask from the landmarks (`face_mask`); "square", the whole crop with feathered
    edges; an "L" image or a [H, W] array in 0..1 over the crop; or a callable that makes one from the
    edited crop (a segmentation net). `colour_match` matches the edited face's colours to the photo's
    inside the mask first. Photo pixels where the mask is 0 are returned unchanged, and a crop that
    reaches past the photo's edge is pasted where it overlaps.
    """
    photo_rgb = _check_image(photo, "photo")
    crop = _check_image(edited_crop, "edited_crop")
    if not isinstance(aligned, AlignedFace):
        raise InvalidInputError("aligned", f"must be an AlignedFace, got {type(aligned).__name__}")
    if tuple(photo_rgb.size) != tuple(aligned.photo_size):
        raise InvalidInputError("photo", f"size {photo_rgb.size} differs from the aligned photo's "
                                         f"{tuple(aligned.photo_size)}")
    if not isinstance(feather, (int, float)) or isinstance(feather, bool) or not 0.0 <= feather <= 0.5:
        raise InvalidInputError("feather", f"must be a number in 0..0.5, got {feather!r}")
    size = aligned.size
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.Resampling.LANCZOS)
    weight = _mask_for(mask, crop, aligned, float(feather))
    if colour_match:
        crop = match_colours(crop, aligned.image, weight)
    return _warp_into(photo_rgb, crop, weight, aligned)


def _mask_for(mask: MaskSource, crop: Image.Image, aligned: AlignedFace, feather: float) -> Image.Image:
    size = aligned.size
    if mask is None:
        return face_mask(aligned, feather)
    if isinstance(mask, str):
        if mask != "square":
            raise InvalidInputError("mask", f"must be None, 'square', an image, an array or a callable; got {mask!r}")
        return square_mask(size, feather)
    if callable(mask) and not isinstance(mask, (Image.Image, np.ndarray)):
        mask = mask(crop)
    if isinstance(mask, np.ndarray):
        if mask.ndim != 2 or not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise InvalidInputError("mask", f"an array mask must be [H, W] in 0..1, got shape {list(mask.shape)}")
        mask = Image.fromarray(np.round(mask * 255).astype(np.uint8))
    if not isinstance(mask, Image.Image):
        raise InvalidInputError("mask", f"must be an image, an array or a callable, got {type(mask).__name__}")
    mask = mask.convert("L")
    return mask if mask.size == (size, size) else mask.resize((size, size), Image.Resampling.BILINEAR)


def _warp_into(photo: Image.Image, crop: Image.Image, mask: Image.Image, aligned: AlignedFace) -> Image.Image:
    size = aligned.size
    matrix, origin = aligned._affine()
    scale = float(np.hypot(*matrix[:, 0]))  # photo pixels per crop pixel
    # A crop larger than its footprint in the photo is shrunk first with Lanczos (bicubic
    # sampling alone would alias); the mask goes the same way so they stay registered.
    work_size = size
    if scale < 1.0:
        work_size = max(1, round(size * scale))
        crop = crop.resize((work_size, work_size), Image.Resampling.LANCZOS)
        mask = mask.resize((work_size, work_size), Image.Resampling.LANCZOS)
    # Only the part of the photo under the quad is touched (clipped to the photo: a crop may reach past it).
    w, h = photo.size
    x0, y0 = np.floor(aligned.quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(aligned.quad.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)
    out = photo.copy()
    if x1 <= x0 or y1 <= y0:
        return out  # quad entirely outside the photo: nothing to paste
    # Box pixel -> photo (+ box origin) -> crop (inverse affine) -> resized crop (work_size / size).
    inv = np.linalg.inv(matrix) * (work_size / size)
    offset = inv @ (np.array([x0, y0], dtype=np.float64) - origin)
    data = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    box = (x1 - x0, y1 - y0)
    warped = _warp(crop, box, data, Image.Resampling.BICUBIC)
    warped_mask = _warp(mask, box, data, Image.Resampling.BILINEAR)
    out.paste(warped, (x0, y0), warped_mask)
    return out


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)  # no visible kink where the ramp meets the flat part


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Monotone chain; [K, 2] counter-clockwise in image coordinates."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def cross(o: tuple, a: tuple, b: tuple) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(seq: list) -> list:
        out: list = []
        for p in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = chain(pts), chain(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _distance_to_polygon(polygon: np.ndarray, size: int) -> np.ndarray:
    """Each pixel centre's distance to the nearest edge of `polygon` [K, 2], as [size, size] float32."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    px, py = np.meshgrid(coords, coords)  # [size, size] each
    best = np.full((size, size), np.inf, dtype=np.float32)
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):
        ab = (b - a).astype(np.float32)
        length2 = float(ab @ ab) or 1.0
        t = np.clip(((px - a[0]) * ab[0] + (py - a[1]) * ab[1]) / length2, 0.0, 1.0)
        dx, dy = px - (a[0] + t * ab[0]), py - (a[1] + t * ab[1])
        np.minimum(best, np.sqrt(dx * dx + dy * dy), out=best)
    return best
