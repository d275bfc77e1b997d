"""How gender, anger and crying reshape a face: identity adjustments, brow/lid/lip offsets, crease and tears.

Each is neutral at its default (gender 0.5, anger 0, crying 0): there every function below returns its
input unchanged, so faces drawn before these attributes existed are reproduced pixel for pixel.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from faceedit.synth.geometry import Surf, smoothstep
from faceedit.synth.identity import Identity
from faceedit.synth.layout import BROW_V, EYE_HALF_WIDTH, EYE_LOW, LIP_RED, Palette, mix

NEUTRAL_GENDER = 0.5
# Per unit of (gender - 0.5): larger than the identity's own spread of each feature, so the scorer can
# read gender from a 64 px face, yet every person keeps their own jaw, brows and lips relative to others.
GENDER_JAW_POWER = 1.8  # squarer jaw
MIN_JAW_POWER = 1.5  # below ~1 the jaw line turns concave
GENDER_JAW_TAPER = -0.3  # wider chin
GENDER_FACE_WIDTH = 0.14
GENDER_BROW_THICK = 1.3
GENDER_BROW_LOWER = 0.05  # face v: masculine brows sit lower and flatter
GENDER_LIP_FULLNESS = -0.8
GENDER_LASH = -1.5
ANGER_NARROW = 0.12  # share of the eye opening anger closes (more would read as closing eyes)
TEAR = np.array((206, 226, 240), float)
LID_SPAN = np.linspace(-1.0, 1.0, 9)  # across the eye, inner to outer corner
TRACK_DROP = np.linspace(0.02, 0.42, 7)  # face v of a tear track's points below the lower lid
TRACK_WAVE = 0.03 * np.sin(np.linspace(0.0, 2.5, 7))  # its sideways wander
DROP_ANGLES = np.linspace(0, 6.28, 8)  # the drop at its end (a closed ring: the last point meets the first)


def gendered(ident: Identity, gender: float) -> Identity:
    """The identity as drawn at this gender; the person at gender 0.5 is the identity itself."""
    g = gender - NEUTRAL_GENDER
    if g == 0.0:
        return ident
    return dataclasses.replace(
        ident,
        jaw_power=max(MIN_JAW_POWER, ident.jaw_power + GENDER_JAW_POWER * g),
        jaw_taper=max(0.0, ident.jaw_taper + GENDER_JAW_TAPER * g),
        face_width=ident.face_width * (1.0 + GENDER_FACE_WIDTH * g),
        brow_thick=ident.brow_thick * (1.0 + GENDER_BROW_THICK * g),
        brow_raise=ident.brow_raise - GENDER_BROW_LOWER * g,
        brow_arch=ident.brow_arch * (1.0 - g),
        lip_fullness=ident.lip_fullness * (1.0 + GENDER_LIP_FULLNESS * g),
        lash=ident.lash * (1.0 + GENDER_LASH * g),
        blush=ident.blush * (1.0 - g),
    )


def eye_openness(attrs: dict[str, float]) -> float:
    """The eyelid opening drawn: anger narrows the eyes it is given."""
    return attrs["eyes_open"] * (1.0 - ANGER_NARROW * attrs["anger"])


def brow_offsets(attrs: dict[str, float], t: np.ndarray) -> tuple[np.ndarray, float]:
    """(v offset per brow sample, inward shift of the inner end) along t (0 inner end .. 1 outer end).

    Anger pulls the inner ends down and together; crying lifts them (the 'grief' brow).
    """
    anger, crying = attrs["anger"], attrs["crying"]
    inner = (1.0 - t) ** 1.5
    return (0.13 * anger - 0.1 * crying) * inner, 0.07 * anger


def mouth_offsets(attrs: dict[str, float]) -> tuple[float, float, float]:
    """(extra corner drop in face v, lip thinning factor, mouth width factor).

    Anger presses the lips thin and narrow; crying turns the corners down a little (more, or anger doing
    it too, reads as the opposite of a smile, which has its own attribute).
    """
    anger, crying = attrs["anger"], attrs["crying"]
    return 0.05 * crying, 1.0 - 0.5 * anger, 1.0 - 0.12 * anger


def paint_crease(cv, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Two short vertical lines between the brows, deepening with anger."""
    depth = float(smoothstep(0.05, 0.7, attrs["anger"]))
    if depth <= 0.0:
        return
    top = BROW_V + ident.eye_v - ident.brow_raise - 0.03
    for side in (-1.0, 1.0):
        line = Surf(np.array([side * 0.07, side * 0.045]), np.array([top, top + 0.13]))
        cv.stroke(line, pal.skin * 0.45, 0.013, alpha=depth, ink=0.7 * depth)


def paint_tears(cv, ident: Identity, attrs: dict[str, float], pal: Palette, openness: float) -> None:
    """Reddened lids round each eye, a wet line on the lower lid and tear tracks down the cheeks."""
    crying = attrs["crying"]
    if crying <= 0.02:
        return
    red = mix(pal.skin, LIP_RED, 0.6)
    wet = float(smoothstep(0.05, 0.5, crying))
    tracks = float(smoothstep(0.15, 0.75, crying))
    for side in (-1.0, 1.0):
        cu, cv_ = side * ident.eye_u, ident.eye_v
        w = EYE_HALF_WIDTH * ident.eye_size
        t = LID_SPAN
        lid = Surf(cu + side * w * 1.15 * t, cv_ + EYE_LOW * ident.eye_size * 1.25 * np.sqrt(1.0 - 0.9 * t * t))
        cv.stroke(lid, red, 0.022, alpha=min(1.0, 0.75 * crying), ink=0.0)
        upper = Surf(cu + side * w * t, cv_ - 0.11 * ident.eye_size * np.sqrt(1.0 - 0.9 * t * t))
        cv.stroke(upper, red, 0.016, alpha=0.55 * crying, ink=0.0)
        if openness > 0.04:
            cv.stroke(Surf(cu + side * w * 0.8 * t, cv_ + EYE_LOW * ident.eye_size * 0.8), TEAR, 0.008,
                      alpha=0.8 * wet, ink=0.0)
        if tracks > 0.0:
            start = cu + side * w * 0.35
            v = cv_ + EYE_LOW + TRACK_DROP
            track = Surf(start + side * TRACK_WAVE, v, 0.02)
            cv.stroke(track, TEAR, 0.02, alpha=0.85 * tracks, ink=0.5 * tracks)
            cv.fill(Surf(start + side * TRACK_WAVE[-1] + 0.022 * np.cos(DROP_ANGLES),
                         v[-1] + 0.03 * np.sin(DROP_ANGLES), 0.02), TEAR, alpha=0.9 * tracks)
