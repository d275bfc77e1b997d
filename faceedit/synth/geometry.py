"""Posed 3D head surface projected orthographically onto the canvas, plus small curve helpers."""

from __future__ import annotations

import functools
import math

import numpy as np

MAX_YAW_RAD = 0.6  # about 34 degrees: far side compressed but both eyes stay visible
MAX_PITCH_RAD = 0.35  # about 20 degrees up or down
BACK_DEPTH = 1.12  # the back of the skull reaches further than the face is deep
JAW_FORWARD = 0.12  # lower-face cross-sections sit forward of the ear line (fraction of depth)
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

    Projecting each small shape separately costs more in numpy call overhead than the drawing itself.
    """

    __slots__ = ("u", "v", "lift")

    def __init__(self, u, v, lift=0.0):
        self.u = np.asarray(u, dtype=np.float64).reshape(-1)
        n = len(self.u)
        self.v = _column(v, n)
        self.lift = _column(lift, n)

    def __len__(self) -> int:
        return len(self.u)


def _column(x, n: int) -> np.ndarray:
    if isinstance(x, np.ndarray) and x.shape == (n,):
        return x.astype(np.float64, copy=False)
    return np.full(n, float(x))


class Head:
    """A head whose cross-section at height v (-1 skull top .. 1 chin) is an ellipse in the X-Z plane.

    Faces are drawn in face coordinates: u in [-1, 1] across the cross-section at height v, plus
    a `lift` (in units of the half-width) for parts that stand off the surface (nose, glasses).
    Yaw rotates about the vertical axis and pitch about the horizontal one, so features slide
    and the far side is foreshortened without any special casing.
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
        p = self.profile(v)
        x = u * p * self.rx
        z = self.rz * (JAW_FORWARD * clamp(v, 0.0, 1.0) + p * np.sqrt(clamp(1.0 - u * u, 0.0, 1.0)))
        z = z + np.asarray(lift, dtype=np.float64) * self.rx
        px, py = self._project(x, self._height(v), z)
        return np.stack([np.broadcast_to(px, u.shape), np.broadcast_to(py, u.shape)], axis=-1)

    def project_all(self, shapes: list[Surf]) -> list[np.ndarray]:
        """Project many Surf shapes with a single call; returns their (N, 2) canvas points in order."""
        if not shapes:
            return []
        pts = self.point(np.concatenate([s.u for s in shapes]), np.concatenate([s.v for s in shapes]),
                         np.concatenate([s.lift for s in shapes]))
        ends = np.cumsum([len(s) for s in shapes])[:-1]
        return np.split(pts, ends)

    def side_point(self, side: float, v, out, back: float = 0.0) -> np.ndarray:
        """Canvas points sticking `out` sideways from the head edge at heights v (ears), `back` behind it."""
        v, out = np.broadcast_arrays(np.asarray(v, dtype=np.float64), np.asarray(out, dtype=np.float64))
        p = self.profile(v)
        x = side * (p + out) * self.rx
        z = self.rz * JAW_FORWARD * clamp(v, 0.0, 1.0) - back * self.rx
        px, py = self._project(x, self._height(v), z)
        return np.stack([px, py], axis=-1)

    def depth_sign(self, u, lift=0.0) -> float:
        """Rotated depth of a point at eye height: > 0 faces the viewer."""
        z = self.rz * math.sqrt(max(0.0, 1.0 - u * u)) + lift * self.rx
        return z * self.cos_yaw - u * self.rx * self.sin_yaw

    def silhouette(self, v, grow=0.0):
        """Left and right canvas x of the posed outline at heights v, and their canvas y.

        `grow` thickens the head (hair volume); the back of the skull is deeper than the face,
        so the side turned away from the viewer shows more of the back of the head.
        """
        v = np.asarray(v, dtype=np.float64)
        p = self.profile(v)
        a = p * self.rx + grow
        front = p * self.rz + grow
        back = p * self.rz * BACK_DEPTH + grow
        z0 = self.rz * JAW_FORWARD * clamp(v, 0.0, 1.0)
        c2, s2 = self.cos_yaw**2, self.sin_yaw**2
        reach_front = np.sqrt(a * a * c2 + front * front * s2)
        reach_back = np.sqrt(a * a * c2 + back * back * s2)
        centre = z0 * self.sin_yaw
        if self.sin_yaw >= 0.0:
            left, right = centre - reach_back, centre + reach_front
        else:
            left, right = centre - reach_front, centre + reach_back
        y = self._height(v) * self.cos_pitch - z0 * self.cos_yaw * self.sin_pitch
        y = y - grow * clamp(-v, 0.0, 1.0)  # thicken over the crown too, not just at the sides
        return self.cx + left, self.cx + right, self.cy + y

    def outline(self, v0: float = -1.0, v1: float = 1.0, n: int = 28, grow=0.0) -> np.ndarray:
        """Closed (N, 2) polygon of the posed head outline between heights v0 and v1."""
        v = np.linspace(v0, v1, n)
        g = grow if np.isscalar(grow) else np.asarray(grow)
        left, right, y = self.silhouette(v, g)
        return np.concatenate([np.stack([right, y], -1), np.stack([left, y], -1)[::-1]])
