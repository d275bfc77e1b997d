"""Shared layout of the face (where features sit, in face coordinates) and its colour palette."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceedit.synth.geometry import clamp, smoothstep
from faceedit.synth.identity import Identity

# Colour ramps, evenly spaced over the attribute's [0, 1] range.
SKIN_STOPS = np.array([(250, 226, 208), (236, 194, 162), (204, 150, 110), (150, 100, 66), (92, 60, 42)], float)
HAIR_STOPS = np.array([(22, 18, 17), (60, 40, 27), (112, 72, 42), (168, 126, 72), (228, 200, 138)], float)
BACKGROUND_STOPS = np.array([(34, 46, 92), (40, 104, 118), (112, 126, 78), (196, 178, 140), (242, 232, 214)], float)
GREY_HAIR = np.array((160, 160, 162), float)
WHITE_HAIR = np.array((238, 238, 234), float)
LIP_RED = np.array((196, 78, 86), float)

HEAD_CENTRE = (0.5, 0.47)  # canvas position of the head centre (eye level), like an aligned crop
EYE_HALF_WIDTH = 0.19  # face u
EYE_OPEN_UP = 0.085  # face v: upper lid height above the eye line when fully open
EYE_LOW = 0.05  # face v: lower lid depth
BROW_V = -0.17
NOSE_TIP_V = 0.37
MOUTH_V = 0.63
MOUTH_HALF_WIDTH = 0.4
SMILE_CURVE = 0.18  # face v the mouth corners rise at a full smile
SMILE_WIDEN = 0.25
SIDEBURN_V = 0.08  # where the hairline meets the ear at the side of the face

# Fixed sample positions along curves (built once: linspace per shape is measurable at 300 faces/s).
SPAN7, SPAN9, SPAN13, SPAN15 = (np.linspace(-1.0, 1.0, k) for k in (7, 9, 13, 15))
HALF6, HALF7, HALF11 = (np.linspace(0.0, 1.0, k) for k in (6, 7, 11))


@dataclass(frozen=True)
class Palette:
    """Colours of one face, derived from its attributes and identity."""

    skin: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    lip: np.ndarray


def ramp(stops: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation through evenly spaced colour stops."""
    pos = float(clamp(t, 0.0, 1.0)) * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    return stops[i] + (stops[i + 1] - stops[i]) * (pos - i)


def mix(a, b, t: float) -> np.ndarray:
    """Blend colours a and b by t."""
    return np.asarray(a, float) + (np.asarray(b, float) - np.asarray(a, float)) * t


def palette(attrs: dict[str, float], ident: Identity) -> Palette:
    """Skin, hair, brow and lip colours; age greys the hair (brows lag behind) and pales the lips."""
    age = attrs["age"]
    skin = clamp(ramp(SKIN_STOPS, attrs["skin_tone"]) + ident.skin_jitter, 0, 255)
    grey_target = mix(GREY_HAIR, WHITE_HAIR, float(smoothstep(0.7, 1.0, age)))
    hair = mix(ramp(HAIR_STOPS, attrs["hair_color"]), grey_target, 0.92 * float(smoothstep(0.45, 0.95, age)))
    brow = mix(ramp(HAIR_STOPS, attrs["hair_color"] * 0.8) * 0.8, grey_target, 0.6 * float(smoothstep(0.55, 1.0, age)))
    lip = mix(skin * 0.9, LIP_RED * (0.45 + 0.55 * skin / 255.0), 0.5 - 0.25 * age)
    return Palette(skin=skin, hair=hair, brow=brow, lip=lip)
