"""The photo canvas and the lighting model; the face is described once as fills and strokes that canvases paint."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from faceedit.synth.geometry import Head, Surf

AMBIENT = 0.3  # share of light that reaches surfaces facing away from the key light
LIGHT_SWING_RAD = 1.05  # lighting=±1 puts the key light 60 degrees to the side
WRAP = 0.6  # light wraps past the terminator like soft studio light, so shadows fade in gradually
LIGHT_ELEVATION = 0.4  # key light slightly above the face (y grows downward)
SPECULAR = 12.0  # peak highlight added on the lit side (0..255 scale)
SHININESS = 12.0
HIGHLIGHT_SOFTNESS = 0.35  # how much of the lit side's extra brightness survives


@functools.lru_cache(maxsize=8)
def _grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of a res x res image, shared between calls."""
    c = np.arange(res, dtype=np.float32) + 0.5
    return c[:, None], c[None, :]


def _light(lighting: float) -> np.ndarray:
    angle = lighting * LIGHT_SWING_RAD
    v = np.array([math.sin(angle), -LIGHT_ELEVATION, math.cos(angle)])
    return v / np.linalg.norm(v)


def shading(head: Head, res: int, scale: float, lighting: float) -> tuple[np.ndarray, np.ndarray]:
    """Lambert gain and specular highlight over the canvas, treating head and body as rounded solids.

    Above the chin the normals are those of an ellipsoid around the head; below it a wide cylinder
    stands in for neck and shoulders, so the body is shaded left/right but not darkened as a whole.
    """
    ys, xs = _grid(res)
    hx, hy = head.cx * scale, head.cy * scale
    rx, ry = head.rx * scale * 0.95, head.ry * scale * 1.05
    body = (ys - (hy + 0.9 * ry)) / (0.5 * ry)
    widen = 1.0 + 1.6 * np.clip(body, 0.0, 1.0)
    nx = (xs - hx) / (rx * widen)
    ny = np.clip((ys - hy) / ry, -1.0, 0.6) * (1.0 - np.clip(body, 0.0, 1.0))
    r2 = nx * nx + ny * ny
    norm = np.maximum(1.0, np.sqrt(r2))
    nx, ny = nx / norm, ny / norm
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    lx, ly, lz = _light(lighting)
    diffuse = np.clip((nx * lx + ny * ly + nz * lz + WRAP) / (1.0 + WRAP), 0.0, 1.0)
    # Keep the middle of the face at its flat colour whatever the light direction, so lighting moves
    # brightness from one side to the other instead of dimming the whole face; soften highlights.
    centre = AMBIENT + (1.0 - AMBIENT) * (lz + WRAP) / (1.0 + WRAP)
    gain = (AMBIENT + (1.0 - AMBIENT) * diffuse) / centre
    gain = np.where(gain > 1.0, 1.0 + HIGHLIGHT_SOFTNESS * (gain - 1.0), gain)
    half = np.array([lx, ly, lz + 1.0]) / np.linalg.norm([lx, ly, lz + 1.0])
    spec = SPECULAR * np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0.0, 1.0) ** SHININESS
    return gain.astype(np.float32), spec.astype(np.float32)


def rgba(colour, alpha: float) -> tuple[int, int, int, int]:
    r, g, b = colour
    return int(r), int(g), int(b), int(round(alpha * 255))


def _background_array(res: int, top, bottom, kind: int) -> np.ndarray:
    """Plain, vertical-gradient or radial-glow backdrop at res x res (it is smooth, so low res is enough)."""
    top, bottom = np.asarray(top, np.float32), np.asarray(bottom, np.float32)
    if kind == 0:
        return np.broadcast_to(top, (res, res, 3))
    ys, xs = _grid(res)
    if kind == 1:
        t = np.broadcast_to(ys / res, (res, res))
    else:
        t = np.clip(np.hypot(xs / res - 0.5, ys / res - 0.4) / 0.75, 0.0, 1.0)
    return top + (bottom - top) * t[..., None]


class PhotoCanvas:
    """Photo style: flat fills blended with alpha at supersampled resolution, smooth shading after downsampling."""

    def __init__(self, size: int, supersample: int, rng: np.random.Generator):
        self.size, self.ss = size, supersample
        self.S = size * supersample
        self.rng = rng
        self.image = Image.new("RGB", (self.S, self.S))
        self.draw = ImageDraw.Draw(self.image, "RGBA")
        self.mask = Image.new("L", (self.S, self.S), 0)
        self.mask_draw = ImageDraw.Draw(self.mask)
        self.ops: list = []  # queued (painter, points, args); see flush

    def px(self, width: float) -> int:
        """Canvas-fraction width to whole supersampled pixels (at least one)."""
        return max(1, int(round(width * self.S)))

    def background(self, top, bottom, kind: int) -> None:
        if kind == 0:
            self.image.paste(tuple(int(c) for c in top), (0, 0, self.S, self.S))
            return
        small = _background_array(self.size, top, bottom, kind).astype(np.uint8)
        self.image.paste(Image.fromarray(np.ascontiguousarray(small)).resize((self.S, self.S), Image.NEAREST))

    def fill(self, pts, colour, alpha: float = 1.0, outline: float = 0.0, silhouette: bool = False) -> None:
        """Filled polygon; `outline` is the ink weight line-art styles give its edge, `silhouette` marks the person."""
        self.ops.append((self._fill, pts, (colour, alpha, outline, silhouette)))

    def stroke(self, pts, colour, width: float, alpha: float = 1.0, ink: float = 1.0, closed: bool = False) -> None:
        """Polyline of `width` (canvas fraction); `ink` is its weight in line-art styles (0 = texture only)."""
        self.ops.append((self._stroke, pts, (colour, width, alpha, ink, closed)))

    def flush(self, head: Head) -> None:
        """Project all face-coordinate shapes at once, then paint every queued shape in order."""
        lazy = [pts for _, pts, _ in self.ops if isinstance(pts, Surf)]
        projected = iter(head.project_all(lazy))
        for paint, pts, args in self.ops:
            paint(next(projected) if isinstance(pts, Surf) else pts, *args)
        self.ops.clear()

    def _fill(self, pts: np.ndarray, colour, alpha: float, outline: float, silhouette: bool) -> None:
        xy = pts.ravel().tolist()
        self.draw.polygon(xy, fill=rgba(colour, alpha))
        if silhouette:
            self.mask_draw.polygon(xy, fill=255)

    def _stroke(self, pts: np.ndarray, colour, width: float, alpha: float, ink: float, closed: bool) -> None:
        if closed:
            pts = np.concatenate([pts, pts[:1]])
        self.draw.line(pts.ravel().tolist(), fill=rgba(colour, alpha), width=self.px(width), joint="curve")

    def _outline(self, pts: np.ndarray, colour, alpha: float, width: float) -> None:
        """Closed line around a polygon (line-art styles ink the edges of fills)."""
        closed = np.concatenate([pts, pts[:1]]).ravel().tolist()
        self.draw.line(closed, fill=rgba(colour, alpha), width=self.px(width), joint="curve")

    def shaded(self, head: Head, lighting: float, image: Image.Image, mask: Image.Image, res: int) -> np.ndarray:
        """image (res x res) with the lighting applied where the mask marks the person."""
        rgb = np.asarray(image, dtype=np.float32)
        cover = np.asarray(mask, dtype=np.float32) * (1.0 / 255.0)
        gain, spec = shading(head, res, res / self.S, lighting)
        return rgb * (1.0 + cover * (gain - 1.0))[..., None] + (cover * spec)[..., None]

    def finish(self, head: Head, lighting: float) -> np.ndarray:
        """The painted face as a (size, size, 3) float32 array in 0..255."""
        self.flush(head)
        img = self.image.reduce(self.ss) if self.ss > 1 else self.image
        mask = self.mask.reduce(self.ss) if self.ss > 1 else self.mask
        return np.clip(self.shaded(head, lighting, img, mask, self.size), 0.0, 255.0)
