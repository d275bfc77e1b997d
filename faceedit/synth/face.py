"""Paints one synthetic face (its attributes and identity) onto a style canvas, back to front."""

from __future__ import annotations

import math

import numpy as np

from faceedit.synth.expression import (
    brow_offsets,
    eye_openness,
    gendered,
    mouth_offsets,
    paint_crease,
    paint_tears,
)
from faceedit.synth.geometry import Head, Surf, clamp, ring, smoothstep
from faceedit.synth.hair import paint_back_hair, paint_hair_cap, paint_side_locks
from faceedit.synth.identity import Identity
from faceedit.synth.layout import (
    BACKGROUND_STOPS,
    BROW_V,
    EYE_HALF_WIDTH,
    EYE_LOW,
    EYE_OPEN_UP,
    HALF7,
    HALF11,
    HEAD_CENTRE,
    LIP_RED,
    MOUTH_HALF_WIDTH,
    MOUTH_V,
    NOSE_TIP_V,
    SIDEBURN_V,
    SMILE_CURVE,
    SMILE_WIDEN,
    SPAN7,
    SPAN9,
    SPAN13,
    Palette,
    mix,
    palette,
    ramp,
)

EYE_WHITE = np.array((238, 234, 228), float)
PUPIL = np.array((14, 10, 10), float)
LASH = np.array((26, 18, 16), float)
MOUTH_INSIDE = np.array((70, 22, 28), float)
TEETH = np.array((238, 232, 216), float)
WRINKLE = np.array((90, 50, 40), float)
LENS_GLARE = np.array((220, 235, 255), float)
# Inner fold of the ear, as an arc in (height, outward) ear coordinates.
EAR_FOLD_SIN = np.sin(np.linspace(-0.6 * math.pi, 0.45 * math.pi, 8))
EAR_FOLD_COS = np.cos(np.linspace(-0.6 * math.pi, 0.45 * math.pi, 8))


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
    ident = gendered(ident, attrs["gender"])
    head = make_head(ident, attrs, cv.S)
    pal = palette(attrs, ident)
    paint_background(cv, ident, attrs)
    paint_back_hair(cv, head, ident, attrs, pal)
    paint_body(cv, head, ident, pal)
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
    paint_tears(cv, ident, attrs, pal, eye_openness(attrs))
    for side in (-1.0, 1.0):
        paint_brow(cv, ident, attrs, pal, side)
    paint_crease(cv, ident, attrs, pal)
    paint_hair_cap(cv, head, ident, attrs, pal)
    paint_near_ear(cv, head, ident, attrs, pal)
    paint_side_locks(cv, head, ident, attrs, pal)
    if attrs["glasses"] >= 0.5:
        paint_glasses(cv, ident)
    return head


def paint_background(cv, ident: Identity, attrs: dict[str, float]) -> None:
    """Backdrop colour from the attribute; plain, vertical gradient or radial glow from the identity."""
    base = ramp(BACKGROUND_STOPS, attrs["background"] + ident.background_jitter)
    if ident.background_kind == 0:
        cv.background(base, base, 0)
    elif ident.background_kind == 1:
        cv.background(np.minimum(base * 1.12 + 8, 255), base * 0.78, 1)
    else:
        cv.background(np.minimum(base * 1.15 + 10, 255), base * 0.8, 2)


def paint_body(cv, head: Head, ident: Identity, pal: Palette) -> None:
    """Neck (set behind the jaw, so it hardly follows a head turn), its shadow under the chin, and clothes."""
    S = cv.S
    neck_x = head.axis_x(-0.15)
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
    """Sloping shoulders across the bottom of the frame with a round or V neckline."""
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
    """One ear, slightly redder than the face; only fully opaque ears count as part of the silhouette."""
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
    """A faint blush, more on some people than others."""
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
    openness = eye_openness(attrs)
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
    """A tapering arched brow; it lifts a little as the eye opens wider, anger and crying move its inner end."""
    t = np.linspace(0.0, 1.0, 9)
    drop, inward = brow_offsets(attrs, t)
    u = side * (ident.eye_u - 0.2 - inward * (1.0 - t) + 0.48 * t)
    arch = (0.04 + 0.05 * ident.brow_arch) * np.sin(math.pi * clamp(t * 1.25, 0, 1))
    centre = BROW_V + ident.eye_v - ident.brow_raise - arch + 0.04 * t - 0.02 * (attrs["eyes_open"] - 0.8) + drop
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
        cv.fill(Surf(*ring(s * w * 0.45, tip_v + 0.035, w * 0.25, 0.018, n=8), lift * 0.45), pal.skin * 0.32,
                alpha=0.85)
    cv.fill(Surf(*ring(0.0, tip_v - 0.03, w * 0.28, 0.03, n=8), lift * 0.95), np.minimum(pal.skin * 1.12 + 12, 255),
            alpha=0.35)


def lip_curves(ident: Identity, attrs: dict[str, float]):
    """u along the mouth and v of: upper lip top, lip parting, lower lip top, lower lip bottom."""
    smile, opening, age = attrs["smile"], attrs["mouth_open"], attrs["age"]
    corner_drop, thinning, narrowing = mouth_offsets(attrs)
    width = MOUTH_HALF_WIDTH * ident.mouth_width * (1.0 + SMILE_WIDEN * smile) * narrowing
    t = SPAN13
    u = t * width
    corner_lift = -SMILE_CURVE * smile + 0.025 * (1.0 - smile) + corner_drop
    parting = MOUTH_V + corner_lift * t * t + 0.02 * smile
    thin = ident.lip_fullness * (1.0 - 0.45 * age) * thinning
    bow = 1.0 - 0.35 * np.exp(-(t / 0.12) ** 2)
    upper_top = parting - 0.06 * thin * np.sqrt(1.0 - t * t) * bow - 0.008
    gap = 0.17 * opening * (1.0 - t * t) ** 0.8
    lower_top = parting + gap
    lower_bottom = lower_top + (0.085 * thin * (1.0 - t * t) ** 0.6 + 0.006) * (1.0 - 0.2 * smile)
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
            cv.stroke(Surf(t * (0.42 - 0.05 * k), v + 0.025 * t * t + ident.eye_v), line, 0.008,
                      alpha=0.75 * lines, ink=0.0)
        for side in (-1.0, 1.0):
            corner = side * (ident.eye_u + EYE_HALF_WIDTH * ident.eye_size + 0.04)
            for dv in (-0.04, 0.0, 0.04):
                crow = Surf(np.array([corner, corner + side * 0.1]), ident.eye_v + np.array([dv * 0.5, dv * 1.6]))
                cv.stroke(crow, line, 0.006, alpha=0.7 * lines, ink=0.0)
            bag = Surf(side * (ident.eye_u + 0.13 * SPAN7), ident.eye_v + 0.1 + 0.03 * np.sin(math.pi * HALF7))
            cv.stroke(bag, line, 0.007, alpha=0.6 * lines, ink=0.0)
    fold = 0.15 + 0.55 * float(smoothstep(0.2, 1.0, age)) + 0.35 * smile
    mouth_corner = MOUTH_HALF_WIDTH * ident.mouth_width * (1.0 + SMILE_WIDEN * smile)
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


def paint_glasses(cv, ident: Identity) -> None:
    """Two lenses standing off the face, a bridge and temple arms; some pairs are tinted."""
    lift = 0.32
    ru, rv = 0.25 * ident.lens_size, 0.13 * ident.lens_size
    frame_w = 0.016 * ident.frame_width
    for side in (-1.0, 1.0):
        lens = Surf(*ring(side * ident.eye_u, ident.eye_v + 0.02, ru, rv, n=20, power=ident.frame_power), lift)
        if ident.tinted:
            cv.fill(lens, (28, 30, 36), alpha=0.72)
        else:
            cv.fill(lens, LENS_GLARE, alpha=0.12)
            glare = Surf(side * ident.eye_u + np.array([-0.1, 0.02]) * ru / 0.25,
                         ident.eye_v + np.array([-0.03, -0.1]), lift)
            cv.stroke(glare, LENS_GLARE, 0.008, alpha=0.45, ink=0.0)
        cv.stroke(lens, ident.frame_colour, frame_w, ink=1.0, closed=True)
        arm = Surf(np.array([side * (ident.eye_u + ru), side * 1.0]), np.array([ident.eye_v, 0.05]),
                   np.array([lift, -0.05]))
        cv.stroke(arm, ident.frame_colour, frame_w * 0.8, ink=1.0)
    bu = np.linspace(-(ident.eye_u - ru), ident.eye_u - ru, 5)
    bridge = Surf(bu, ident.eye_v - 0.03 - 0.03 * np.cos(bu / (ident.eye_u - ru) * math.pi / 2), lift)
    cv.stroke(bridge, ident.frame_colour, frame_w * 0.9, ink=1.0)
