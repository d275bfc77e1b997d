"""Paints one synthetic face (its attributes and identity) onto a style canvas, back to front."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from faceedit.synth.geometry import Head, Surf, clamp, ring, smoothstep
from faceedit.synth.identity import Identity

# Colour ramps, evenly spaced over the attribute's [0, 1] range.
SKIN_STOPS = np.array([(250, 226, 208), (236, 194, 162), (204, 150, 110), (150, 100, 66), (92, 60, 42)], float)
HAIR_STOPS = np.array([(22, 18, 17), (60, 40, 27), (112, 72, 42), (168, 126, 72), (228, 200, 138)], float)
BACKGROUND_STOPS = np.array([(34, 46, 92), (40, 104, 118), (112, 126, 78), (196, 178, 140), (242, 232, 214)], float)
GREY_HAIR = np.array((160, 160, 162), float)
WHITE_HAIR = np.array((238, 238, 234), float)
LIP_RED = np.array((196, 78, 86), float)
EYE_WHITE = np.array((238, 234, 228), float)
PUPIL = np.array((14, 10, 10), float)
LASH = np.array((26, 18, 16), float)
MOUTH_INSIDE = np.array((70, 22, 28), float)
TEETH = np.array((238, 232, 216), float)
WRINKLE = np.array((90, 50, 40), float)
LENS_GLARE = np.array((220, 235, 255), float)

HEAD_CENTRE = (0.5, 0.47)  # canvas position of the head centre (eye level), like an aligned crop
EYE_HALF_WIDTH = 0.19  # face u
EYE_OPEN_UP = 0.085  # face v: upper lid height above the eye line when fully open
EYE_LOW = 0.05  # face v: lower lid depth
BROW_V = -0.17
NOSE_TIP_V = 0.37
MOUTH_V = 0.63
MOUTH_HALF_WIDTH = 0.36
SIDEBURN_V = 0.08  # where the hairline meets the ear at the side of the face

# Fixed sample positions along curves (built once: linspace per shape is measurable at 300 faces/s).
SPAN7, SPAN9, SPAN13, SPAN15 = (np.linspace(-1.0, 1.0, k) for k in (7, 9, 13, 15))
EAR_FOLD_SIN = np.sin(np.linspace(-0.6 * math.pi, 0.45 * math.pi, 8))
EAR_FOLD_COS = np.cos(np.linspace(-0.6 * math.pi, 0.45 * math.pi, 8))
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


def make_head(ident: Identity, attrs: dict[str, float], canvas_px: int) -> Head:
    """The posed head in supersampled pixels."""
    s = canvas_px * ident.scale
    rx = ident.face_width * s
    return Head(
        cx=(HEAD_CENTRE[0] + ident.offset[0]) * canvas_px,
        cy=(HEAD_CENTRE[1] + ident.offset[1]) * canvas_px,
        rx=rx, ry=ident.face_height * s, rz=rx * ident.depth,
        jaw_power=ident.jaw_power, jaw_taper=ident.jaw_taper,
        yaw=attrs["yaw"], pitch=attrs["pitch"], jaw_drop=attrs["mouth_open"],
    )


def paint_face(cv, ident: Identity, attrs: dict[str, float]) -> Head:
    """Paint everything back to front; returns the head so the canvas can shade it."""
    head = make_head(ident, attrs, cv.S)
    pal = palette(attrs, ident)
    paint_background(cv, ident, attrs)
    paint_back_hair(cv, head, ident, attrs, pal)
    paint_body(cv, head, ident, attrs, pal)
    for side in (-1.0, 1.0):
        paint_ear(cv, head, ident, pal, side)
    cv.fill(head.outline(n=36), pal.skin, outline=1.0, silhouette=True)
    paint_cheeks(cv, ident, pal)
    for side in (-1.0, 1.0):
        paint_eye(cv, ident, attrs, pal, side)
    paint_nose(cv, ident, attrs, pal)
    paint_beard(cv, ident, attrs, pal)
    paint_mouth(cv, ident, attrs, pal)
    paint_wrinkles(cv, ident, attrs, pal)
    for side in (-1.0, 1.0):
        paint_brow(cv, ident, attrs, pal, side)
    paint_hair_cap(cv, head, ident, attrs, pal)
    paint_near_ear(cv, head, ident, attrs, pal)
    paint_side_locks(cv, head, ident, attrs, pal)
    if attrs["glasses"] >= 0.5:
        paint_glasses(cv, ident)
    return head


def paint_background(cv, ident: Identity, attrs: dict[str, float]) -> None:
    base = ramp(BACKGROUND_STOPS, attrs["background"] + ident.background_jitter)
    if ident.background_kind == 0:
        cv.background(base, base, 0)
    elif ident.background_kind == 1:
        cv.background(np.minimum(base * 1.12 + 8, 255), base * 0.78, 1)
    else:
        cv.background(np.minimum(base * 1.15 + 10, 255), base * 0.8, 2)


def hair_end_v(hair_length: float) -> float:
    """Face v where the hair ends: 0.15 (cropped) .. 2.1 (well below the shoulders, off the canvas)."""
    return 0.15 + 1.95 * hair_length


def hair_grow(head: Head, ident: Identity, hair_length: float, v: np.ndarray) -> np.ndarray:
    """Hair thickness over the skull in pixels at heights v; curly hair gets a wavy outline."""
    base = head.rx * (0.07 + 0.13 * ident.hair_volume * (0.35 + 0.65 * hair_length))
    grow = base * (1.0 + 0.35 * clamp(-v, 0.0, 1.0))
    if ident.curl > 0.0:
        grow = grow * (1.0 + 0.3 * ident.curl * np.sin(ident.curl_freq * v * math.pi))
    return grow


def hair_outline(head: Head, ident: Identity, hair_length: float, v_end: float, n: int = 30):
    """Left x, right x and y of the outer hair outline from the crown down to v_end.

    Below the widest point the hair hangs straight (it cannot follow the jaw inward), and long
    hair spreads a little where it would meet the shoulders.
    """
    v = np.linspace(-1.0, v_end, n)
    left, right, y = head.silhouette(v, hair_grow(head, ident, hair_length, v))
    widest = np.argmin(np.abs(v))
    right[widest:] = np.maximum.accumulate(right[widest:])
    left[widest:] = np.minimum.accumulate(left[widest:])
    spread = head.rx * 0.25 * clamp(v - 1.2, 0.0, 1.0)
    return left - spread, right + spread, y


def paint_back_hair(cv, head: Head, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    length = attrs["hair_length"]
    left, right, y = hair_outline(head, ident, length, hair_end_v(length))
    tips = np.linspace(right[-1], left[-1], 7)
    tip_y = y[-1] + head.ry * 0.06 * (1 + np.cos(np.linspace(0, 6 * math.pi, 7))) * (0.3 + length)
    pts = np.concatenate([np.stack([right, y], -1), np.stack([tips, tip_y], -1), np.stack([left, y], -1)[::-1]])
    cv.fill(pts, pal.hair * 0.7, outline=1.0, silhouette=True)


def paint_body(cv, head: Head, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Neck and shoulders; the body turns only a third as far as the head."""
    S = cv.S
    neck_x = head.cx + (head.point(0.0, 0.9)[0] - head.cx) * 0.35
    half_neck = head.rx * 0.45
    top = head.point(np.array([-0.7, 0.7]), 0.45)
    neck = np.array([top[0], top[1], (neck_x + half_neck, S * 1.02), (neck_x - half_neck, S * 1.02)])
    cv.fill(neck, pal.skin * 0.9, outline=1.0, silhouette=True)
    jaw = head.outline(0.55, 1.0, n=12)
    jaw = jaw[np.abs(jaw[:, 0] - neck_x) < half_neck]  # only where it falls on the neck
    shadow = np.concatenate([jaw, (jaw + (0, head.ry * 0.22))[::-1]])
    cv.fill(shadow, pal.skin * 0.55, alpha=0.45)
    paint_clothes(cv, head, ident, neck_x, half_neck)


def paint_clothes(cv, head: Head, ident: Identity, neck_x: float, half_neck: float) -> None:
    S = cv.S
    x = np.linspace(-0.05 * S, 1.05 * S, 25)
    shoulder_y = head.cy + head.ry * 1.12 + 0.32 * S * ((x - neck_x) / S) ** 2
    across = clamp(np.abs(x - neck_x) / (half_neck * 1.3), 0.0, 1.0)
    if ident.neckline > 0.5:
        dip = S * 0.12 * (1.0 - across)
    else:
        dip = S * 0.06 * np.sqrt(1.0 - across**2)
    top = np.stack([x, shoulder_y + dip], -1)
    pts = np.concatenate([top, [(1.05 * S, 1.05 * S), (-0.05 * S, 1.05 * S)]])
    cv.fill(pts, ident.clothes, outline=1.0, silhouette=True)
    collar = top[np.abs(x - neck_x) < half_neck * 1.4]
    cv.stroke(collar, ident.clothes * 0.6, 0.01, alpha=0.8, ink=0.5)


def ear_points(head: Head, ident: Identity, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Outer rim and inner fold of one ear."""
    size = ident.ear_size
    out, v = ring(0.06, 0.16, 0.1 * ident.ear_out * size, 0.2 * size, n=18)
    out = out * (1.0 - 0.35 * clamp((v - 0.16) / (0.2 * size), 0.0, 1.0))  # narrower lobe
    fold_v = 0.15 + 0.12 * size * EAR_FOLD_SIN
    fold_out = 0.04 + 0.05 * ident.ear_out * EAR_FOLD_COS
    pts = head.side_point(side, np.concatenate([v, fold_v]), np.concatenate([out, fold_out]), back=0.1)
    return pts[: len(v)], pts[len(v):]


def paint_ear(cv, head: Head, ident: Identity, pal: Palette, side: float, alpha: float = 1.0) -> None:
    rim, fold = ear_points(head, ident, side)
    cv.fill(rim, mix(pal.skin, LIP_RED, 0.08) * 0.95, alpha=alpha, outline=0.8, silhouette=alpha >= 1.0)
    cv.stroke(fold, pal.skin * 0.62, 0.008, alpha=0.7 * alpha, ink=0.5)


def paint_near_ear(cv, head: Head, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Once the head turns, the near ear moves onto the side of the head and is drawn over it."""
    turn = float(smoothstep(0.1, 0.5, abs(attrs["yaw"])))
    covered = float(smoothstep(0.2, 0.4, attrs["hair_length"]))
    alpha = turn * (1.0 - covered)
    if alpha > 0.02:
        paint_ear(cv, head, ident, pal, -math.copysign(1.0, attrs["yaw"]), alpha=alpha)


def paint_cheeks(cv, ident: Identity, pal: Palette) -> None:
    for side in (-1.0, 1.0):
        u, v = ring(side * 0.55, 0.3, 0.2, 0.12, n=12)
        cv.fill(Surf(u, v), mix(pal.skin, LIP_RED, 0.5), alpha=ident.blush * 0.5)


def eye_curves(ident: Identity, eyes_open: float, side: float):
    """(u, v) of the eye's lower lid, upper lid at this openness, and upper lid fully open."""
    cu, cv = side * ident.eye_u, ident.eye_v
    w = EYE_HALF_WIDTH * ident.eye_size
    t = HALF11
    u = cu + side * w * (2 * t - 1)  # inner corner to outer corner
    tilt = -ident.eye_tilt * (2 * t - 1)
    bump = np.sin(math.pi * t) ** 0.8
    lower = cv + tilt + EYE_LOW * ident.eye_size * np.sin(math.pi * t)
    open_up = cv + tilt - EYE_OPEN_UP * ident.eye_size * bump * (1.0 + 0.15 * (1 - t))
    closed = cv + tilt + 0.4 * EYE_LOW * ident.eye_size * np.sin(math.pi * t)
    upper = closed + (open_up - closed) * eyes_open
    return u, lower, upper, open_up


def paint_eye(cv, ident: Identity, attrs: dict[str, float], pal: Palette, side: float) -> None:
    """White, iris and pupil, then lids over them; the upper lid slides down as the eye closes."""
    openness = attrs["eyes_open"]
    u, lower, upper, open_up = eye_curves(ident, openness, side)
    lift = 0.02
    both = np.concatenate([u, u[::-1]])
    if openness > 0.04:
        cv.fill(Surf(both, np.concatenate([upper, lower[::-1]]), lift), EYE_WHITE * (0.9 + 0.1 * openness), outline=0.3)
        paint_iris(cv, ident, attrs, side)
        cv.fill(Surf(both, np.concatenate([upper, open_up[::-1] - 0.05]), lift), pal.skin * 0.93)
        cv.fill(Surf(both, np.concatenate([lower, lower[::-1] + 0.06]), lift), pal.skin)
        cv.stroke(Surf(u[2:10], open_up[2:10] - 0.035, lift), pal.skin * 0.6, 0.007, alpha=0.5 * openness, ink=0.3)
        cv.stroke(Surf(u[1:10], lower[1:10], lift), pal.skin * 0.55, 0.006, alpha=0.5, ink=0.3)
    lash = Surf(np.append(u, u[-1] + side * 0.04), np.append(upper, upper[-1] - 0.025), lift)
    cv.stroke(lash, LASH, 0.014 * ident.lash, ink=1.0)


def paint_iris(cv, ident: Identity, attrs: dict[str, float], side: float) -> None:
    """Iris, pupil and a catch-light on the side the key light comes from."""
    cu, cv_ = side * ident.eye_u, ident.eye_v + 0.005
    rv = EYE_OPEN_UP * ident.eye_size * 0.85
    ru = rv * ident.face_height / ident.face_width  # round in pixels although u and v units differ
    cv.fill(Surf(*ring(cu, cv_, ru, rv, n=16), 0.03), ident.iris, outline=0.3)
    cv.fill(Surf(*ring(cu, cv_, ru * 0.45, rv * 0.45, n=10), 0.04), PUPIL)
    glint = 0.35 * (attrs["lighting"] if abs(attrs["lighting"]) > 0.2 else -0.6)
    cv.fill(Surf(*ring(cu + glint * ru, cv_ - 0.4 * rv, ru * 0.22, rv * 0.22, n=6), 0.05), (255, 255, 255), alpha=0.9)


def paint_brow(cv, ident: Identity, attrs: dict[str, float], pal: Palette, side: float) -> None:
    t = np.linspace(0.0, 1.0, 9)
    u = side * (ident.eye_u - 0.2 + 0.48 * t)
    arch = (0.04 + 0.05 * ident.brow_arch) * np.sin(math.pi * clamp(t * 1.25, 0, 1))
    centre = BROW_V + ident.eye_v - ident.brow_raise - arch + 0.04 * t - 0.02 * (attrs["eyes_open"] - 0.8)
    thick = 0.035 * ident.brow_thick * (1.0 - 0.6 * t) + 0.008
    pts = Surf(np.concatenate([u, u[::-1]]), np.concatenate([centre - thick * 0.5, (centre + thick * 0.5)[::-1]]), 0.03)
    cv.fill(pts, pal.brow, alpha=0.92, outline=0.5)


def band(u: np.ndarray, top: np.ndarray, bottom: np.ndarray, lift=0.0) -> Surf:
    """Closed shape between two curves over the same u samples (top left-to-right, bottom back)."""
    lift = np.asarray(lift, dtype=np.float64)
    lifts = np.concatenate([lift, lift[::-1]]) if lift.ndim else lift
    return Surf(np.concatenate([u, u[::-1]]), np.concatenate([top, bottom[::-1]]), lifts)


def paint_nose(cv, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Side shadow on the shadowed or far side, nostrils and wings; the tip stands off the face so it turns."""
    tip_v = NOSE_TIP_V * ident.nose_length
    w = 0.13 * ident.nose_width
    lift = ident.nose_lift
    yaw, light = attrs["yaw"], attrs["lighting"]
    side = math.copysign(1.0, yaw) if abs(yaw) > 0.15 else -math.copysign(1.0, light if light != 0 else 1.0)
    ridge_u = np.array([0.05, 0.055, 0.05, 0.03]) * side
    ridge_v = np.array([0.04, 0.16, 0.28, tip_v - 0.02])
    ridge_lift = np.array([0.1, 0.2, 0.32, 1.0]) * lift
    shade = Surf(np.append(ridge_u, [side * w * 1.1, side * 0.12]), np.append(ridge_v, [tip_v + 0.02, 0.06]),
                 np.append(ridge_lift, [0.05, 0.05]))
    cv.fill(shade, pal.skin * 0.78, alpha=0.35 + 0.25 * abs(yaw))
    cv.stroke(Surf(ridge_u, ridge_v, ridge_lift), pal.skin * 0.6, 0.007, alpha=0.3 + 0.4 * abs(yaw), ink=0.4)
    t = SPAN9
    base = Surf(t * w, tip_v + 0.045 - 0.03 * t * t, lift * (0.6 - 0.5 * np.abs(t)))
    cv.stroke(base, pal.skin * 0.55, 0.008, alpha=0.55, ink=0.8)
    for s in (-1.0, 1.0):
        cv.fill(Surf(*ring(s * w * 0.45, tip_v + 0.035, w * 0.25, 0.018, n=8), lift * 0.45), pal.skin * 0.32, alpha=0.85)
    cv.fill(Surf(*ring(0.0, tip_v - 0.03, w * 0.28, 0.03, n=8), lift * 0.95), np.minimum(pal.skin * 1.12 + 12, 255),
            alpha=0.35)


def lip_curves(ident: Identity, attrs: dict[str, float]):
    """u along the mouth and v of: upper lip top, lip parting, lower lip top, lower lip bottom."""
    smile, opening, age = attrs["smile"], attrs["mouth_open"], attrs["age"]
    width = MOUTH_HALF_WIDTH * ident.mouth_width * (1.0 + 0.15 * smile)
    t = SPAN13
    u = t * width
    corner_lift = -0.085 * smile + 0.02 * (1.0 - smile)
    parting = MOUTH_V + corner_lift * t * t + 0.015 * smile
    thin = ident.lip_fullness * (1.0 - 0.45 * age)
    bow = 1.0 - 0.35 * np.exp(-(t / 0.12) ** 2)
    upper_top = parting - 0.055 * thin * np.sqrt(1.0 - t * t) * bow - 0.008
    gap = 0.17 * opening * (1.0 - t * t) ** 0.8
    lower_top = parting + gap
    lower_bottom = lower_top + (0.075 * thin * (1.0 - t * t) ** 0.6 + 0.006) * (1.0 - 0.2 * smile)
    return u, upper_top, parting, lower_top, lower_bottom


def paint_mouth(cv, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Dark mouth and teeth when open, then both lips and the line between them."""
    u, upper_top, parting, lower_top, lower_bottom = lip_curves(ident, attrs)
    lift = 0.1
    opening = attrs["mouth_open"]
    if opening > 0.02:
        cv.fill(band(u, parting, lower_top, lift), MOUTH_INSIDE, outline=0.6)
        mid = slice(2, 11)
        cv.fill(band(u[mid], parting[mid], np.minimum(parting[mid] + 0.05, lower_top[mid]), lift), TEETH)
        low = slice(3, 10)
        cv.fill(band(u[low], np.maximum(lower_top[low] - 0.03, parting[low]), lower_top[low], lift), TEETH * 0.85,
                alpha=0.8)
    cv.stroke(Surf(u[3:10], lower_bottom[3:10] + 0.03, lift * 0.5), pal.skin * 0.6, 0.012, alpha=0.25, ink=0.0)
    cv.fill(band(u, upper_top, parting, lift), pal.lip * 0.9, outline=0.6)
    cv.fill(band(u, lower_top, lower_bottom, lift), pal.lip, outline=0.6)
    cv.stroke(Surf(u, parting, lift), pal.lip * 0.45, 0.009, alpha=0.9 - 0.5 * opening, ink=1.0)
    gloss = ring(0.0, (lower_top[6] + lower_bottom[6]) / 2 - 0.008, 0.1, 0.012, n=8)
    cv.fill(Surf(*gloss, lift), np.minimum(pal.lip * 1.3 + 20, 255), alpha=0.3)


def paint_wrinkles(cv, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Age lines (forehead, crow's feet, under-eye bags) and nasolabial folds that smiling deepens."""
    age, smile = attrs["age"], attrs["smile"]
    line = pal.skin * 0.45 + WRINKLE * 0.2
    lines = float(smoothstep(0.3, 1.0, age))
    if lines > 0.0:
        t = SPAN9
        for k, v in enumerate((-0.36, -0.43, -0.5)):
            cv.stroke(Surf(t * (0.42 - 0.05 * k), v + 0.025 * t * t + ident.eye_v), line, 0.008, alpha=0.75 * lines, ink=0.0)
        for side in (-1.0, 1.0):
            corner = side * (ident.eye_u + EYE_HALF_WIDTH * ident.eye_size + 0.04)
            for dv in (-0.04, 0.0, 0.04):
                crow = Surf(np.array([corner, corner + side * 0.1]), ident.eye_v + np.array([dv * 0.5, dv * 1.6]))
                cv.stroke(crow, line, 0.006, alpha=0.7 * lines, ink=0.0)
            bag = Surf(side * (ident.eye_u + 0.13 * SPAN7), ident.eye_v + 0.1 + 0.03 * np.sin(math.pi * HALF7))
            cv.stroke(bag, line, 0.007, alpha=0.6 * lines, ink=0.0)
    fold = 0.15 + 0.55 * float(smoothstep(0.2, 1.0, age)) + 0.35 * smile
    mouth_corner = MOUTH_HALF_WIDTH * ident.mouth_width * (1.0 + 0.15 * smile)
    t = HALF7
    for side in (-1.0, 1.0):
        u = side * (0.2 + (mouth_corner + 0.08 - 0.2) * t + 0.05 * np.sin(math.pi * t))
        v = NOSE_TIP_V * ident.nose_length + (MOUTH_V + 0.08 - NOSE_TIP_V) * t - 0.05 * smile * t
        cv.stroke(Surf(u, v), line, 0.009, alpha=min(1.0, fold) * 0.6, ink=0.0)


def paint_beard(cv, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Beard region from the sideburns round the jaw, with a moustache; density sets its opacity."""
    density = attrs["beard"]
    if density <= 0.01:
        return
    v_side = np.linspace(SIDEBURN_V, 1.0, 9)
    outer_u = np.concatenate([np.full(9, 1.0), [0.0], np.full(9, -1.0)])
    outer_v = np.concatenate([v_side, [1.0 + 0.14 * density], v_side[::-1]])
    inner_u = np.array([-0.93, -0.75, -0.55, -0.45, -0.22, 0.0, 0.22, 0.45, 0.55, 0.75, 0.93])
    inner_v = np.array([SIDEBURN_V, 0.3, 0.45, 0.55, 0.5, 0.51, 0.5, 0.55, 0.45, 0.3, SIDEBURN_V])
    region = Surf(np.concatenate([outer_u, inner_u]), np.concatenate([outer_v, inner_v]),
                  np.concatenate([np.zeros(19), np.full(11, 0.05)]))
    colour = pal.hair * 0.85
    cv.fill(region, colour, alpha=0.92 * density**0.7, outline=0.5 * density)
    for u, v, angle in ident.beard_strokes:
        du, dv = 0.07 * math.sin(angle), 0.07 * math.cos(angle)
        hair = Surf(np.array([u, u + du]) * (1.0 - 0.3 * v), np.array([v, v + dv]) + 0.1)
        cv.stroke(hair, colour * 0.7, 0.006, alpha=0.5 * density, ink=0.0)


def hairline(ident: Identity, attrs: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of the hairline across the forehead, sideburn to sideburn; a fringe lowers its middle."""
    u = SPAN15
    recede = 0.1 * float(smoothstep(0.5, 1.0, attrs["age"]))
    top = -0.5 + ident.hairline - recede * (1.0 - 0.5 * np.abs(u))
    line = top + (SIDEBURN_V - top) * np.abs(u) ** 3.5
    line = line - 0.06 * np.exp(-((u - ident.hair_part) / 0.15) ** 2)  # parting notch
    if ident.fringe > 0.0:
        fringe = BROW_V - 0.07 + (1.0 - ident.fringe) * -0.18 + 0.03 * np.cos(u * 14.0)
        line = np.where(np.abs(u) < 0.85, np.maximum(line, fringe), line)
    return u, line


def paint_hair_cap(cv, head: Head, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Hair over the crown down to the hairline, plus texture strands sweeping from the parting."""
    length = attrs["hair_length"]
    u, v = hairline(ident, attrs)
    front = head.point(u, v, 0.02)
    left, right, y = hair_outline(head, ident, length, SIDEBURN_V, n=24)
    outer = np.concatenate([np.stack([right, y], -1)[::-1], np.stack([left, y], -1)])
    cv.fill(np.concatenate([front, outer]), pal.hair, outline=1.0, silhouette=True)
    t = HALF6
    for start, sweep in ident.strands:
        su = clamp(ident.hair_part + (start - ident.hair_part) * t + sweep * t * t, -1.0, 1.0)
        sv = -0.95 + (np.interp(su, u, v) - 0.02 + 0.95) * t
        tone = pal.hair * 1.35 + 18 if sweep > 0 else pal.hair * 0.6
        cv.stroke(Surf(su, sv, 0.15 - 0.1 * t), np.minimum(tone, 255), 0.008, alpha=0.35, ink=0.0)


def paint_side_locks(cv, head: Head, ident: Identity, attrs: dict[str, float], pal: Palette) -> None:
    """Hair falling beside the face; it reaches past the ears once hair_length passes about 0.25."""
    length = attrs["hair_length"]
    v_end = hair_end_v(length)
    if v_end < SIDEBURN_V + 0.2:
        return
    left, right, y = hair_outline(head, ident, length, v_end, n=30)
    v = np.linspace(-1.0, v_end, 30)
    keep = v >= -0.2
    for side, outer_x in ((1.0, right), (-1.0, left)):
        inner_v = clamp(v[keep], -0.2, 0.55)  # hug the cheek, then hang straight
        inner = head.point(np.full(inner_v.shape, side * 0.9), inner_v, 0.05)
        inner[:, 1] = y[keep]
        inner[:, 0] = inner[:, 0] + side * head.rx * 0.25 * clamp(v[keep] - 1.1, 0.0, 1.0)
        outer = np.stack([outer_x[keep], y[keep]], -1)
        tip = (inner[-1] + outer[-1]) / 2 + (0, head.ry * 0.08)
        cv.fill(np.concatenate([inner, [tip], outer[::-1]]), pal.hair * 0.95, outline=1.0, silhouette=True)


def paint_glasses(cv, ident: Identity) -> None:
    """Two lenses standing off the face, a bridge and temple arms; some pairs are tinted."""
    lift = 0.32
    ru, rv = 0.25 * ident.lens_size, 0.13 * ident.lens_size
    frame_w = 0.013 * ident.frame_width
    for side in (-1.0, 1.0):
        lens = Surf(*ring(side * ident.eye_u, ident.eye_v + 0.02, ru, rv, n=20, power=ident.frame_power), lift)
        if ident.tinted:
            cv.fill(lens, (28, 30, 36), alpha=0.72)
        else:
            cv.fill(lens, LENS_GLARE, alpha=0.12)
            glare = Surf(side * ident.eye_u + np.array([-0.1, 0.02]) * ru / 0.25, ident.eye_v + np.array([-0.03, -0.1]), lift)
            cv.stroke(glare, LENS_GLARE, 0.008, alpha=0.45, ink=0.0)
        cv.stroke(lens, ident.frame_colour, frame_w, ink=1.0, closed=True)
        arm = Surf(np.array([side * (ident.eye_u + ru), side * 1.0]), np.array([ident.eye_v, 0.05]), np.array([lift, -0.05]))
        cv.stroke(arm, ident.frame_colour, frame_w * 0.8, ink=1.0)
    bu = np.linspace(-(ident.eye_u - ru), ident.eye_u - ru, 5)
    bridge = Surf(bu, ident.eye_v - 0.03 - 0.03 * np.cos(bu / (ident.eye_u - ru) * math.pi / 2), lift)
    cv.stroke(bridge, ident.frame_colour, frame_w * 0.9, ink=1.0)
