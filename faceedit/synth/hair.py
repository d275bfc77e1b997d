"""Hair: the mass behind the head, the cap over the crown down to the hairline, and locks beside the face."""

from __future__ import annotations

import math

import numpy as np

from faceedit.synth.geometry import Head, Surf, clamp, smoothstep
from faceedit.synth.identity import Identity
from faceedit.synth.layout import BROW_V, HALF6, SIDEBURN_V, SPAN15, Palette

STRAND_LIFT = 0.15 - 0.1 * np.linspace(0.0, 1.0, 6)  # hair strands stand off the skull, less at the tips


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
    """The hair mass behind head and neck, in shadow, ending in uneven tips at hair_length."""
    length = attrs["hair_length"]
    left, right, y = hair_outline(head, ident, length, hair_end_v(length))
    tips = np.linspace(right[-1], left[-1], 7)
    tip_y = y[-1] + head.ry * 0.06 * (1 + np.cos(np.linspace(0, 6 * math.pi, 7))) * (0.3 + length)
    pts = np.concatenate([np.stack([right, y], -1), np.stack([tips, tip_y], -1), np.stack([left, y], -1)[::-1]])
    cv.fill(pts, pal.hair * 0.7, outline=1.0, silhouette=True)


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
    # Behind the ears short hair reaches the nape; on the far side of a turned head that part is hidden.
    nape = float(clamp(hair_end_v(length), SIDEBURN_V, 0.45))
    hidden = float(smoothstep(0.0, 0.5, abs(attrs["yaw"])))
    far_end = nape + (SIDEBURN_V - nape) * hidden
    right_end, left_end = (far_end, nape) if attrs["yaw"] >= 0 else (nape, far_end)
    _, right, y_right = hair_outline(head, ident, length, right_end, n=24)
    left, _, y_left = hair_outline(head, ident, length, left_end, n=24)
    outer = np.concatenate([np.stack([right, y_right], -1)[::-1], np.stack([left, y_left], -1)])
    cv.fill(np.concatenate([front, outer]), pal.hair, outline=1.0, silhouette=True)
    t = HALF6[None, :]
    start, sweep = ident.strands[:, :1], ident.strands[:, 1:]
    su = clamp(ident.hair_part + (start - ident.hair_part) * t + sweep * t * t, -1.0, 1.0)
    sv = -0.95 + (np.interp(su, u, v) - 0.02 + 0.95) * t
    light, dark = np.minimum(pal.hair * 1.35 + 18, 255), pal.hair * 0.6
    for k in range(len(su)):
        cv.stroke(Surf(su[k], sv[k], STRAND_LIFT), light if sweep[k, 0] > 0 else dark, 0.008, alpha=0.35, ink=0.0)


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
