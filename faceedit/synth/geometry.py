"""Posed 3D head surface projected orthographically onto the canvas, plus small curve helpers."""

from __future__ import annotations

import functools
import math

import numpy as np

MAX_YAW_RAD = 0.6  # about 34 degrees: far side compressed but both eyes stay visible
MAX_PITCH_RAD = 0.35  # about 20 degrees up or down
BACK_DEPTH = 1.12  # the back of the skull reaches further than the face is deep
CHIN_FORWARD = 0.75  # the chin stands this far (fraction of depth) in front of the ear line
JAW_BACK = 0.1  # how far behind the section centre the jaw reaches at chin height
MOUTH_JAW_DROP = 0.07  # how far (in head half-heights) a fully open mouth drops the chin


def clamp(x, lo: float, hi: float):
    """np.clip without its dispatch overhead, which dominates on the tiny arrays used here."""
    return np.minimum(np.maximum(x, lo), hi)


def smoothstep(lo: float, hi: float, x):
    """0 below lo, 1 above hi, smooth in between (works on scalars and arrays)."""
    if isinstance(x, (float, int)):
        t = min(max((x - lo) / (hi - lo), 0.0), 1.0)
    else:
        t = clamp((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=64)
def _unit_ring(n: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / power
    return np.sign(c) * np.abs(c) ** e, np.sign(s) * np.abs(s) ** e


def ring(cu: float, cv: float, ru: float, rv: float, n: int = 16, power: float = 2.0):
    """(u, v) points of a superellipse around (cu, cv); power 2 is an ellipse, larger is boxier."""
    c, s = _unit_ring(n, round(power, 2))
    return cu + ru * c, cv + rv * s


class Surf:
    """Points given in face coordinates (u, v, lift), projected later in one batch per face.

    Projecting each small shape separately costs more in numpy call overhead than the drawing
    itself. `v` and `lift` may be scalars shared by all points of the shape.
    """

    __slots__ = ("u", "v", "lift")

    def __init__(self, u, v, lift=0.0):
        self.u = u if isinstance(u, np.ndarray) and u.ndim == 1 else np.asarray(u, dtype=np.float64).reshape(-1)
        self.v = v if isinstance(v, np.ndarray) and v.ndim == 1 else float(v)
        self.lift = lift if isinstance(lift, np.ndarray) and lift.ndim == 1 else float(lift)

    def __len__(self) -> int:
        return len(self.u)


def _gather(values: list, lengths: list[int], total: int) -> np.ndarray:
    """Concatenate per-shape columns, where each is an array of its shape's length or one scalar."""
    out = np.repeat([0.0 if isinstance(x, np.ndarray) else x for x in values], lengths) if total else np.empty(0)
    start = 0
    for x, n in zip(values, lengths):
        if isinstance(x, np.ndarray):
            out[start:start + n] = x
        start += n
    return out


class Head:
    """A head whose cross-section at height v (-1 skull top .. 1 chin) is an egg shape in the X-Z plane.

    Each section has a half-width, a centre depth and separate front and back depths: the skull
    is round, while below the eyes the sections move forward (the jaw and chin stand in front of
    the ears) and lose their back. Faces are drawn in face coordinates: u in [-1, 1] across the
    front of the section at height v, plus a `lift` (in units of the half-width) for parts that
    stand off the surface (nose, glasses). Yaw turns about the vertical axis and pitch about the
    horizontal one, so features slide and the far side foreshortens without special cases.
    """

    def __init__(self, cx, cy, rx, ry, rz, jaw_power, jaw_taper, yaw, pitch, jaw_drop=0.0):
        self.cx, self.cy, self.rx, self.ry, self.rz = cx, cy, rx, ry, rz
        self.jaw_power, self.jaw_taper, self.jaw_drop = jaw_power, jaw_taper, jaw_drop
        self.cos_yaw, self.sin_yaw = math.cos(yaw * MAX_YAW_RAD), math.sin(yaw * MAX_YAW_RAD)
        self.cos_pitch, self.sin_pitch = math.cos(pitch * MAX_PITCH_RAD), math.sin(pitch * MAX_PITCH_RAD)

    def profile(self, v):
        """Cross-section half-width as a fraction of rx: round skull above the eyes, tapered jaw below."""
        v = np.asarray(v, dtype=np.float64)
        skull = np.sqrt(clamp(1.0 - v * v, 0.0, 1.0))
        low = clamp(v, 0.0, 1.0)
        q = self.jaw_power
        jaw = clamp(1.0 - low**q, 0.0, 1.0) ** (1.0 / q) * (1.0 - self.jaw_taper * low * low)
        return np.where(v < 0.0, skull, jaw)

    def sections(self, v):
        """Half-width, centre depth, front depth and back depth (pixels) of the sections at heights v."""
        p = self.profile(v)
        low = clamp(v, 0.0, 1.0)
        centre = self.rz * CHIN_FORWARD * low**1.5
        front = self.rz * p * (1.0 - 0.25 * low)
        back = self.rz * (BACK_DEPTH * p * (1.0 - low) + JAW_BACK * low)
        return p * self.rx, centre, front, back

    def _height(self, v):
        """Vertical position before pitch; an open mouth drops everything below the lips."""
        return self.ry * (v + self.jaw_drop * MOUTH_JAW_DROP * smoothstep(0.55, 0.85, v))

    def _project(self, x, y, z):
        x2 = x * self.cos_yaw + z * self.sin_yaw
        z2 = z * self.cos_yaw - x * self.sin_yaw
        y2 = y * self.cos_pitch - z2 * self.sin_pitch
        return self.cx + x2, self.cy + y2

    def point(self, u, v, lift=0.0) -> np.ndarray:
        """Canvas (N, 2) points of face coordinates (u, v, lift) on the posed head."""
        u = np.asarray(u, dtype=np.float64)
        v = np.broadcast_to(np.asarray(v, dtype=np.float64), u.shape)
        half, centre, front, _ = self.sections(v)
        z = centre + front * np.sqrt(clamp(1.0 - u * u, 0.0, 1.0)) + np.asarray(lift, dtype=np.float64) * self.rx
        px, py = self._project(u * half, self._height(v), z)
        return np.stack([np.broadcast_to(px, u.shape), np.broadcast_to(py, u.shape)], axis=-1)

    def project_all(self, shapes: list[Surf]) -> list[np.ndarray]:
        """Project many Surf shapes with a single call; returns their (N, 2) canvas points in order."""
        if not shapes:
            return []
        lengths = [len(s) for s in shapes]
        total = sum(lengths)
        pts = self.point(np.concatenate([s.u for s in shapes]), _gather([s.v for s in shapes], lengths, total),
                         _gather([s.lift for s in shapes], lengths, total))
        out, start = [], 0
        for n in lengths:
            out.append(pts[start:start + n])
            start += n
        return out

    def side_point(self, side: float, v, out, back: float = 0.0) -> np.ndarray:
        """Canvas points sticking `out` sideways from the section edge at heights v (ears), `back` behind it."""
        v, out = np.broadcast_arrays(np.asarray(v, dtype=np.float64), np.asarray(out, dtype=np.float64))
        half, centre, _, _ = self.sections(v)
        px, py = self._project(side * (half + out * self.rx), self._height(v), centre - back * self.rx)
        return np.stack([px, py], axis=-1)

    def axis_x(self, depth: float) -> float:
        """Canvas x of the vertical axis point at `depth` (fraction of rz) in front of the head centre."""
        return self.cx + depth * self.rz * self.sin_yaw

    def silhouette(self, v, grow=0.0):
        """Left and right canvas x of the posed outline at heights v, and their canvas y.

        `grow` thickens the head (hair volume). A turned head shows its front on one side and
        the deeper back of the skull (or the jaw angle, lower down) on the other.
        """
        v = np.asarray(v, dtype=np.float64)
        half, centre, front, back = self.sections(v)
        a, front, back = half + grow, front + grow, back + grow
        c2, s2 = self.cos_yaw**2, self.sin_yaw**2
        reach_front = np.sqrt(a * a * c2 + front * front * s2)
        reach_back = np.sqrt(a * a * c2 + back * back * s2)
        mid = self.cx + centre * self.sin_yaw
        if self.sin_yaw >= 0.0:
            left, right = mid - reach_back, mid + reach_front
        else:
            left, right = mid - reach_front, mid + reach_back
        y = self._height(v) * self.cos_pitch - centre * self.cos_yaw * self.sin_pitch
        y = y - grow * clamp(-v, 0.0, 1.0)  # thicken over the crown too, not just at the sides
        return left, right, self.cy + y

    def outline(self, v0: float = -1.0, v1: float = 1.0, n: int = 28, grow=0.0) -> np.ndarray:
        """Closed (N, 2) polygon of the posed head outline between heights v0 and v1."""
        left, right, y = self.silhouette(np.linspace(v0, v1, n), grow)
        return np.concatenate([np.stack([right, y], -1), np.stack([left, y], -1)[::-1]])
