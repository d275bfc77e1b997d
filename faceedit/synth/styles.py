"""Artistic styles: the same fills and strokes as a photo, painted as a sketch, a comic or a watercolour."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageFilter

from faceedit.synth.canvas import PhotoCanvas, shading
from faceedit.synth.geometry import Head, smoothstep

INK = (28, 26, 30)
PAPER_SEED = 20240601  # one fixed sheet of paper for every face, so its grain carries no information
SKETCH_INK_WIDTH = 0.011  # canvas fraction for an ink weight of 1
SKETCH_HATCH_PERIOD = 3.0  # output pixels between hatch lines: visible as lines even at 64 px
SKETCH_TONE = 0.7  # fills are drawn lighter than their colour: a sketch leaves most of the paper white
SKETCH_LEVELS = (0.3, 0.55, 0.78)  # darkness where the 1st, 2nd and 3rd hatch layers begin
SKETCH_SOLID = 0.86  # darkness drawn as solid ink
SKETCH_PENCIL = 0.3  # share of the plain tone kept under the hatching, like smudged graphite
SKETCH_PAPER_GRAIN = 0.05
COMIC_INK_WIDTH = 0.02
COMIC_SATURATION = 1.4
COMIC_COLOURS = 14  # palette size after posterising
COMIC_SHADOW = 0.72  # flat brightness of the cel-shaded side
COMIC_TERMINATOR = 0.86  # shading gain below which a surface counts as in shadow
WATER_DESATURATE = 0.3
WATER_PAPER_MIX = 0.22  # washes are thinned toward the paper colour
WATER_OPACITY = 0.97  # washes let a trace of what is underneath through
WATER_EDGE_WIDTH = 0.01  # darker rim where a wash dries (canvas fraction)
WATER_BLEED = 0.6  # blur radius in output pixels: pigment bleeding across edges
WATER_BLOTCH = 0.25  # pigment density variation of the washes
WATER_BLOTCH_CELLS = 6  # blotches per side of the image
WATER_PAPER_GRAIN = 0.06
WATER_LIGHTING = 0.6  # watercolour modelling is gentler than a photo's
PAPER_WHITE = 250.0


def _luma(colour) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def _saturate(colour, amount: float) -> tuple[float, float, float]:
    grey = _luma(colour)
    return tuple(min(255.0, max(0.0, grey + (c - grey) * amount)) for c in colour)


@functools.lru_cache(maxsize=3)  # 3 x S x S floats: keep only a few sizes
def _hatching(S: int, period: float) -> np.ndarray:
    """(3, S, S) line patterns in 0..1 for three darkness levels.

    Darker tones first fill in between the diagonal strokes (same direction, so a small image
    still reads as hatching rather than a checkerboard) and only the darkest get cross-hatched.
    """
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float32)
    width = 0.36 * period
    return np.stack([
        ((xs + ys) % period < width),
        ((xs + ys + 0.5 * period) % period < width),
        ((xs - ys) % period < width),
    ]).astype(np.float32)


@functools.lru_cache(maxsize=6)
def _paper(S: int, strength: float) -> np.ndarray:
    """Paper grain (S, S) around 1.0, identical for every face."""
    rng = np.random.default_rng(PAPER_SEED)
    grain = Image.fromarray((rng.random((S, S)) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(S / 256))
    return 1.0 - strength * (1.0 - np.asarray(grain, dtype=np.float32) / 255.0)


def _downsample(image: Image.Image, factor: int) -> np.ndarray:
    return np.asarray(image.reduce(factor) if factor > 1 else image, dtype=np.float32)


class SketchCanvas(PhotoCanvas):
    """Sketch: ink outlines and hatching on white paper, greyscale.

    Fills are painted as grey tones (so later shapes still hide earlier lines), shaded by the
    lighting, and the tones are then replaced by hatch layers that get denser as they darken.
    """

    def background(self, top, bottom, kind: int) -> None:
        self.image.paste((255, 255, 255), (0, 0, self.S, self.S))

    def _fill(self, pts, colour, alpha, outline, silhouette) -> None:
        tone = 255.0 - SKETCH_TONE * (255.0 - _luma(colour))
        super()._fill(pts, (tone, tone, tone), alpha, 0.0, silhouette)
        if outline > 0.0:
            self._outline(pts, INK, min(1.0, alpha * 1.5), SKETCH_INK_WIDTH * outline)

    def _stroke(self, pts, colour, width, alpha, ink, closed) -> None:
        if ink > 0.0:
            super()._stroke(pts, INK, max(width * 0.8, SKETCH_INK_WIDTH * ink), alpha, ink, closed)
        else:  # texture (wrinkles, strands) as soft pencil
            tone = min(_luma(colour), 140.0)
            super()._stroke(pts, (tone, tone, tone), width, alpha * 0.8, ink, closed)

    def finish(self, head: Head, lighting: float) -> np.ndarray:
        self.flush(head)
        tone = self.shaded(head, lighting, self.image, self.mask, self.S).mean(axis=2) / 255.0
        dark = 1.0 - np.clip(tone, 0.0, 1.0)
        ink = np.zeros_like(dark)
        for level, pattern in zip(SKETCH_LEVELS, _hatching(self.S, SKETCH_HATCH_PERIOD * self.ss)):
            ink = np.maximum(ink, pattern * smoothstep(level, level + 0.08, dark))
        ink = np.maximum(ink * 0.85, smoothstep(SKETCH_SOLID - 0.06, SKETCH_SOLID, dark))
        grey = 255.0 * (1.0 - np.maximum(ink, SKETCH_PENCIL * dark)) * _paper(self.S, SKETCH_PAPER_GRAIN)
        small = _downsample(Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)), self.ss)
        return np.repeat(small[..., None], 3, axis=2)


class ComicCanvas(PhotoCanvas):
    """Comic: saturated flat colours, thick black outlines, two-tone cel shading, posterised palette."""

    def _fill(self, pts, colour, alpha, outline, silhouette) -> None:
        super()._fill(pts, _saturate(colour, COMIC_SATURATION), alpha, outline, silhouette)
        if outline > 0.0:
            self._outline(pts, INK, min(1.0, alpha * 1.5), COMIC_INK_WIDTH * outline)

    def _stroke(self, pts, colour, width, alpha, ink, closed) -> None:
        if ink > 0.0:
            super()._stroke(pts, INK, max(width, COMIC_INK_WIDTH * 0.7 * ink), alpha, ink, closed)
        else:
            super()._stroke(pts, INK, width, alpha * 0.7, ink, closed)

    def finish(self, head: Head, lighting: float) -> np.ndarray:
        self.flush(head)
        cover = _downsample(self.mask, self.ss) * (1.0 / 255.0)
        gain, _ = shading(head, self.size, 1.0 / self.ss, lighting)
        cel = np.where(gain < COMIC_TERMINATOR, COMIC_SHADOW, 1.0)  # hard terminator instead of a gradient
        rgb = _downsample(self.image, self.ss) * (1.0 + cover * (cel - 1.0))[..., None]
        flat = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        flat = flat.quantize(COMIC_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")
        return np.asarray(flat, dtype=np.float32)


class WatercolorCanvas(PhotoCanvas):
    """Watercolour: pale desaturated washes with darker wet edges, bled together on textured paper."""

    @staticmethod
    def _wash(colour) -> tuple[float, float, float]:
        soft = _saturate(colour, 1.0 - WATER_DESATURATE)
        return tuple(c + (PAPER_WHITE - c) * WATER_PAPER_MIX for c in soft)

    def background(self, top, bottom, kind: int) -> None:
        # Backdrops get a doubly thinned wash, so the figure stands out as in a painted portrait.
        super().background(self._wash(self._wash(top)), self._wash(self._wash(bottom)), kind)

    def _fill(self, pts, colour, alpha, outline, silhouette) -> None:
        wash = self._wash(colour)
        super()._fill(pts, wash, alpha * WATER_OPACITY, outline, silhouette)
        if outline > 0.0:
            self._outline(pts, tuple(c * 0.72 for c in wash), alpha * 0.7, WATER_EDGE_WIDTH)

    def _stroke(self, pts, colour, width, alpha, ink, closed) -> None:
        # Fine details (lashes, lip line, frames) are painted with a darker, drier brush.
        wash = self._wash(colour)
        super()._stroke(pts, tuple(c * (1.0 - 0.35 * min(ink, 1.0)) for c in wash), width, alpha * 0.85, ink, closed)

    def finish(self, head: Head, lighting: float) -> np.ndarray:
        self.flush(head)
        bled = self.image.filter(ImageFilter.GaussianBlur(WATER_BLEED * self.ss))
        rgb = self.shaded(head, WATER_LIGHTING * lighting, bled, self.mask, self.S)
        cells = (self.rng.random((WATER_BLOTCH_CELLS, WATER_BLOTCH_CELLS)) * 255).astype(np.uint8)
        blotch = np.asarray(Image.fromarray(cells).resize((self.S, self.S), Image.BICUBIC), dtype=np.float32)
        density = 1.0 - WATER_BLOTCH * (blotch / 255.0 - 0.5)
        rgb = 255.0 - (255.0 - rgb) * density[..., None]  # pigment density, not brightness, varies
        rgb = rgb * _paper(self.S, WATER_PAPER_GRAIN)[..., None]
        return _downsample(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), self.ss)


STYLE_CANVASES = {"photo": PhotoCanvas, "sketch": SketchCanvas, "comic": ComicCanvas, "watercolor": WatercolorCanvas}
