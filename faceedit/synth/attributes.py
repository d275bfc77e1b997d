"""Ground-truth attributes of the synthetic faces: their specs, random draws and validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from faceedit.errors import InvalidInputError

ATTRIBUTE_STREAM = 0  # per-face RNG stream for attributes; identity uses another so they vary independently


@dataclass(frozen=True)
class AttributeSpec:
    """One controllable attribute: its value range and what it looks like."""

    name: str
    kind: str  # "continuous" or "binary"
    low: float
    high: float
    description: str

    @property
    def range(self) -> tuple[float, float]:
        return self.low, self.high


def _spec(name: str, kind: str, low: float, high: float, description: str) -> tuple[str, AttributeSpec]:
    return name, AttributeSpec(name, kind, low, high, description)


ATTRIBUTES: Mapping[str, AttributeSpec] = MappingProxyType(dict([
    _spec("age", "continuous", 0.0, 1.0,
          "young..old: forehead and eye wrinkles, nasolabial lines, grey to white hair, thinner lips"),
    _spec("smile", "continuous", 0.0, 1.0, "mouth corners curve up and the mouth widens; smile lines deepen"),
    _spec("mouth_open", "continuous", 0.0, 1.0, "lips part showing teeth and a dark mouth; the chin drops a little"),
    _spec("eyes_open", "continuous", 0.0, 1.0, "closed..open: the upper eyelid covers the iris as it closes"),
    _spec("yaw", "continuous", -1.0, 1.0,
          "head turn, -1 facing the viewer's left .. 1 right (about 34 degrees); far side compressed"),
    _spec("pitch", "continuous", -1.0, 1.0, "head tilt, -1 down .. 1 up (about 20 degrees): features slide up or down"),
    _spec("glasses", "binary", 0.0, 1.0, "spectacles with visible frames; some pairs are tinted"),
    _spec("beard", "continuous", 0.0, 1.0, "beard and moustache density, from none through stubble to full"),
    _spec("hair_length", "continuous", 0.0, 1.0, "cropped .. past the shoulders; long hair covers the ears"),
    _spec("hair_color", "continuous", 0.0, 1.0, "black .. brown .. blond (grey from age mixes in on top)"),
    _spec("skin_tone", "continuous", 0.0, 1.0, "light .. dark skin"),
    _spec("background", "continuous", 0.0, 1.0, "backdrop colour, dark blue .. teal .. olive .. light warm beige"),
    _spec("lighting", "continuous", -1.0, 1.0, "key light from the viewer's left (-1) .. front (0) .. right (1)"),
    # Appended last: their uniforms come after the others', so every earlier attribute of a seed is unchanged.
    _spec("gender", "continuous", 0.0, 1.0,
          "feminine .. masculine: jaw and chin width, brow thickness and height, lip fullness, lashes "
          "(independent of hair length and beard)"),
    _spec("anger", "continuous", 0.0, 1.0,
          "brows lowered and drawn together, narrowed eyes, lips pressed thin, a crease between the brows"),
    _spec("crying", "continuous", 0.0, 1.0,
          "inner brows raised, mouth corners down, reddened eyelids, wet eyes and tears on the cheeks"),
]))
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)


ATTRIBUTE_UNIFORMS = len(ATTRIBUTES)  # one uniform number decides each attribute


def _two_part(u: float, p_low: float, split: float) -> float:
    """Inverse CDF of 'probability p_low uniform on [0, split), else uniform on [split, 1]'.

    Monotone and continuous in u, so a smooth latent code maps to a smooth attribute.
    """
    if u < p_low:
        return split * u / p_low
    return split + (1.0 - split) * (u - p_low) / (1.0 - p_low)


def _mostly_low(u: float, p_low: float, low_hi: float) -> float:
    """Inverse CDF of 'probability p_low uniform on [0, low_hi), else uniform on [0, 1]' (a spike near 0)."""
    knee = p_low + (1.0 - p_low) * low_hi  # CDF at low_hi
    if u < knee:
        return u * low_hi / knee
    return (u - p_low) / (1.0 - p_low)


def attributes_from_uniform(u) -> dict[str, float]:
    """One face's attributes from ATTRIBUTE_UNIFORMS numbers in [0, 1], one per attribute in order.

    Every attribute is a monotone function of its own number, which is what lets a generator
    trained on z → render(Φ(z)) carry each attribute along a near-linear direction.
    """
    (age, smile, mouth, eyes, yaw, pitch, glasses, beard, hair_len, hair_col, skin, bg, light,
     gender, anger, crying) = (float(x) for x in u)
    return {
        "age": age,
        "smile": smile,
        "mouth_open": _mostly_low(mouth, 0.5, 0.1),
        "eyes_open": _two_part(eyes, 0.2, 0.6),  # 20 % mostly closed, the rest open
        "yaw": 2.0 * yaw - 1.0,
        "pitch": 2.0 * pitch - 1.0,
        "glasses": float(glasses >= 0.7),  # 30 % wear glasses
        "beard": max(0.0, (beard - 0.6) / 0.4),  # 60 % clean-shaven
        "hair_length": hair_len,
        "hair_color": hair_col,
        "skin_tone": skin,
        "background": bg,
        "lighting": 2.0 * light - 1.0,
        "gender": gender,
        "anger": _mostly_low(anger, 0.5, 0.1),  # half the faces calm
        "crying": _mostly_low(crying, 0.6, 0.1),
    }


def face_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Independent generator per (seed, face, stream), so any prefix of a batch is reproducible."""
    return np.random.default_rng([seed, index, stream])


def draw_attributes(n: int, seed: int) -> dict[str, np.ndarray]:
    """Attributes of faces 0..n-1 of `seed` (arguments already validated).

    float32, like the tensors render_faces returns, so those tensors re-render the identical faces.
    """
    rows = [attributes_from_uniform(face_rng(seed, i, ATTRIBUTE_STREAM).random(ATTRIBUTE_UNIFORMS)) for i in range(n)]
    return {name: np.array([r[name] for r in rows], dtype=np.float32) for name in ATTRIBUTE_NAMES}


def _as_column(name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("attrs", f"{name} is not numeric: {exc}") from None
    if arr.ndim > 1:
        raise InvalidInputError("attrs", f"{name} must be a scalar or 1-d, got shape {arr.shape}")
    return arr.reshape(-1)


def _check_values(spec: AttributeSpec, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("attrs", f"{spec.name} has non-finite values")
    if np.any(arr < spec.low) or np.any(arr > spec.high):
        raise InvalidInputError("attrs", f"{spec.name} values must lie in [{spec.low:g}, {spec.high:g}]")
    if spec.kind == "binary" and not np.all((arr == 0.0) | (arr == 1.0)):
        raise InvalidInputError("attrs", f"{spec.name} is binary: values must be 0 or 1")


def validate_attributes(attrs, style_index: int) -> dict[str, np.ndarray]:
    """Checked float64 columns of equal length for every attribute; scalars broadcast.

    A "style" entry (as returned by render_faces) is accepted when it matches the requested style,
    so an attribute dict can be edited and passed straight back.
    """
    if not isinstance(attrs, Mapping):
        raise InvalidInputError("attrs", f"expected a mapping of attribute name to values, got {type(attrs).__name__}")
    unknown = sorted(set(attrs) - set(ATTRIBUTE_NAMES) - {"style"})
    missing = [name for name in ATTRIBUTE_NAMES if name not in attrs]
    if unknown or missing:
        raise InvalidInputError("attrs", f"unknown {unknown}, missing {missing}; expected {list(ATTRIBUTE_NAMES)}")
    columns = {name: _as_column(name, attrs[name]) for name in ATTRIBUTE_NAMES}
    n = max(len(c) for c in columns.values())
    if n == 0:
        raise InvalidInputError("attrs", "no faces: every attribute is empty")
    for name, col in columns.items():
        if len(col) not in (1, n):
            raise InvalidInputError("attrs", f"{name} has {len(col)} values, others have {n}")
        _check_values(ATTRIBUTES[name], col)
        columns[name] = np.broadcast_to(col, (n,)).copy()
    if "style" in attrs:
        style = _as_column("style", attrs["style"])
        if not np.all(style == style_index):
            raise InvalidInputError("attrs",
                                    f"style entry {style[:4].tolist()} does not match style index {style_index}")
    return columns
