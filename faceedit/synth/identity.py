"""Per-face identity (face shape, features, hair style, clothes) drawn from the seed, never from attributes."""

from __future__ import annotations

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
IDENTITY_SCALARS = 64  # uniform numbers for the scalar fields; at least as many as uni() calls below
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


def identity_from_uniform(u: np.ndarray) -> Identity:
    """The identity decided by IDENTITY_UNIFORMS numbers in [0, 1] (the order of the calls fixes which is which)."""
    assert u.shape == (IDENTITY_UNIFORMS,), u.shape
    pool = iter(u[:IDENTITY_SCALARS].tolist())
    textures = u[IDENTITY_SCALARS:]
    strands = textures[:2 * STRANDS].reshape(STRANDS, 2) * (1.8, 0.5) - (0.9, 0.25)  # start u, sideways sweep
    beard = textures[2 * STRANDS:].reshape(BEARD_STROKES, 3) * (1.8, 0.8, 1.2) - (0.9, -0.15, 0.6)  # u, v, angle

    def uni(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(pool)

    def chance(p: float) -> bool:
        return next(pool) < p

    def pick(table: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return table[min(int(np.searchsorted(np.cumsum(weights), next(pool))), len(table) - 1)]

    return Identity(
        offset=(uni(-0.012, 0.012), uni(-0.012, 0.012)),
        scale=uni(0.95, 1.05),
        face_width=uni(0.265, 0.305),
        face_height=uni(0.345, 0.38),
        depth=uni(0.85, 1.0),
        jaw_power=uni(2.0, 3.4),
        jaw_taper=uni(0.12, 0.32),
        eye_u=uni(0.40, 0.47),
        eye_v=uni(-0.03, 0.03),
        eye_size=uni(0.9, 1.12),
        eye_tilt=uni(-0.015, 0.03),
        iris=pick(IRIS_COLOURS, IRIS_WEIGHTS),
        lash=uni(0.7, 1.4),
        brow_thick=uni(0.75, 1.35),
        brow_arch=uni(0.0, 1.0),
        brow_raise=uni(-0.02, 0.03),
        nose_length=uni(0.88, 1.12),
        nose_width=uni(0.85, 1.25),
        nose_lift=uni(0.32, 0.48),
        mouth_width=uni(0.88, 1.12),
        lip_fullness=uni(0.75, 1.3),
        ear_size=uni(0.88, 1.12),
        ear_out=uni(0.9, 1.5),
        hair_volume=uni(0.7, 1.4),
        hair_part=uni(-0.5, 0.5),
        fringe=uni(0.4, 1.0) if chance(0.35) else 0.0,
        curl=uni(0.3, 1.0) if chance(0.35) else 0.0,
        curl_freq=uni(9.0, 16.0),
        hairline=uni(-0.04, 0.05),
        strands=strands,
        beard_strokes=beard,
        clothes=np.array([uni(20, 220), uni(20, 220), uni(20, 220)]),
        neckline=float(chance(0.4)),
        background_kind=min(int(uni(0.0, 3.0)), 2),
        background_jitter=uni(-0.06, 0.06),
        frame_colour=pick(FRAME_COLOURS, FRAME_WEIGHTS),
        frame_power=uni(2.0, 5.0),
        frame_width=uni(0.8, 1.4),
        lens_size=uni(0.9, 1.12),
        tinted=chance(0.25),
        skin_jitter=np.array([uni(-8.0, 8.0), uni(-8.0, 8.0), uni(-8.0, 8.0)]),
        blush=uni(0.0, 0.35),
    )
