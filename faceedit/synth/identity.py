"""Per-face identity (face shape, features, hair style, clothes) drawn from the seed, never from attributes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

IDENTITY_STREAM = 1  # per-face RNG stream for identity, separate from the attribute stream

IRIS_COLOURS = np.array([
    (92, 58, 34), (58, 36, 24), (118, 92, 48), (78, 108, 70), (74, 116, 164), (112, 124, 136),
], dtype=np.float64)
IRIS_WEIGHTS = np.array([0.3, 0.25, 0.12, 0.1, 0.15, 0.08])
FRAME_COLOURS = np.array([(18, 16, 16), (62, 36, 22), (52, 54, 60), (150, 120, 60)], dtype=np.float64)
FRAME_WEIGHTS = np.array([0.5, 0.25, 0.15, 0.1])
STRANDS = 10  # hair texture strands per face
BEARD_STROKES = 14  # texture strokes inside the beard
IDENTITY_SCALARS = 64  # uniform numbers for the scalar fields; at least as many as _DRAWS takes
IDENTITY_UNIFORMS = IDENTITY_SCALARS + 2 * STRANDS + 3 * BEARD_STROKES  # all numbers one identity needs


@dataclass(frozen=True)
class Identity:
    """Everything about a face that stays fixed when its attributes are edited."""

    offset: tuple[float, float]  # small shift of the head, like alignment jitter (canvas units)
    scale: float
    face_width: float  # half-width of the face in canvas units
    face_height: float  # half-height (skull top to chin) in canvas units
    depth: float  # front depth as a fraction of the half-width
    jaw_power: float  # 2 oval .. 3.5 square jaw
    jaw_taper: float
    eye_u: float  # eye centre distance from the midline (face coordinates)
    eye_v: float
    eye_size: float
    eye_tilt: float  # outer corners raised (> 0) or lowered
    iris: np.ndarray
    lash: float
    brow_thick: float
    brow_arch: float
    brow_raise: float
    nose_length: float
    nose_width: float
    nose_lift: float
    mouth_width: float
    lip_fullness: float
    ear_size: float
    ear_out: float
    hair_volume: float
    hair_part: float  # parting position across the forehead (face u)
    fringe: float  # 0 = forehead free .. 1 = bangs to the brows
    curl: float  # amplitude of the wavy hair outline
    curl_freq: float
    hairline: float
    strands: np.ndarray  # (STRANDS, 2): start u and sideways sweep of hair texture strands
    beard_strokes: np.ndarray  # (BEARD_STROKES, 3): u, v, angle of beard texture strokes
    clothes: np.ndarray
    neckline: float  # 0 round .. 1 V-neck
    background_kind: int  # 0 plain, 1 vertical gradient, 2 radial glow
    background_jitter: float
    frame_colour: np.ndarray
    frame_power: float  # 2 round lenses .. 5 rectangular
    frame_width: float
    lens_size: float
    tinted: bool
    skin_jitter: np.ndarray
    blush: float


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random identity: each (seed, face) stream gives the same person."""
    return identity_from_uniform(rng.random(IDENTITY_UNIFORMS))


class _Pool:
    """Draws from the identity's scalar numbers, one at a time, in the order they are asked for."""

    def __init__(self, numbers: list[float]):
        self._numbers = iter(numbers)

    def uni(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(self._numbers)

    def chance(self, p: float) -> bool:
        return next(self._numbers) < p

    def maybe(self, p: float, lo: float, hi: float) -> float:
        """uni(lo, hi) with probability p, else 0 (one number decides which, then one more for the value)."""
        return self.uni(lo, hi) if self.chance(p) else 0.0

    def pick(self, table: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return table[min(int(np.searchsorted(np.cumsum(weights), next(self._numbers))), len(table) - 1)]

    def vector(self, n: int, lo: float, hi: float) -> np.ndarray:
        return np.array([self.uni(lo, hi) for _ in range(n)])


# How each scalar field is drawn: (lo, hi) uniformly, or by the function given. The fields take
# numbers from the pool in this order, and the order decides which number is which: a field
# inserted or moved changes every seed's face (append new fields at the end).
_DRAWS: dict[str, tuple[float, float] | Callable[[_Pool], object]] = {
    "offset": lambda d: (d.uni(-0.012, 0.012), d.uni(-0.012, 0.012)),
    "scale": (0.95, 1.05),
    "face_width": (0.265, 0.305),
    "face_height": (0.345, 0.38),
    "depth": (0.85, 1.0),
    "jaw_power": (2.0, 3.4),
    "jaw_taper": (0.12, 0.32),
    "eye_u": (0.40, 0.47),
    "eye_v": (-0.03, 0.03),
    "eye_size": (0.9, 1.12),
    "eye_tilt": (-0.015, 0.03),
    "iris": lambda d: d.pick(IRIS_COLOURS, IRIS_WEIGHTS),
    "lash": (0.7, 1.4),
    "brow_thick": (0.75, 1.35),
    "brow_arch": (0.0, 1.0),
    "brow_raise": (-0.02, 0.03),
    "nose_length": (0.88, 1.12),
    "nose_width": (0.85, 1.25),
    "nose_lift": (0.32, 0.48),
    "mouth_width": (0.88, 1.12),
    "lip_fullness": (0.75, 1.3),
    "ear_size": (0.88, 1.12),
    "ear_out": (0.9, 1.5),
    "hair_volume": (0.7, 1.4),
    "hair_part": (-0.5, 0.5),
    "fringe": lambda d: d.maybe(0.35, 0.4, 1.0),
    "curl": lambda d: d.maybe(0.35, 0.3, 1.0),
    "curl_freq": (9.0, 16.0),
    "hairline": (-0.04, 0.05),
    "clothes": lambda d: d.vector(3, 20, 220),
    "neckline": lambda d: float(d.chance(0.4)),
    "background_kind": lambda d: min(int(d.uni(0.0, 3.0)), 2),
    "background_jitter": (-0.06, 0.06),
    "frame_colour": lambda d: d.pick(FRAME_COLOURS, FRAME_WEIGHTS),
    "frame_power": (2.0, 5.0),
    "frame_width": (0.8, 1.4),
    "lens_size": (0.9, 1.12),
    "tinted": lambda d: d.chance(0.25),
    "skin_jitter": lambda d: d.vector(3, -8.0, 8.0),
    "blush": (0.0, 0.35),
}


def identity_from_uniform(u: np.ndarray) -> Identity:
    """The identity decided by IDENTITY_UNIFORMS numbers in [0, 1] (_DRAWS's order fixes which is which)."""
    assert u.shape == (IDENTITY_UNIFORMS,), u.shape
    pool = _Pool(u[:IDENTITY_SCALARS].tolist())
    textures = u[IDENTITY_SCALARS:]
    strands = textures[:2 * STRANDS].reshape(STRANDS, 2) * (1.8, 0.5) - (0.9, 0.25)  # start u, sideways sweep
    beard = textures[2 * STRANDS:].reshape(BEARD_STROKES, 3) * (1.8, 0.8, 1.2) - (0.9, -0.15, 0.6)  # u, v, angle
    scalars = {name: pool.uni(*draw) if isinstance(draw, tuple) else draw(pool) for name, draw in _DRAWS.items()}
    return Identity(**scalars, strands=strands, beard_strokes=beard)
