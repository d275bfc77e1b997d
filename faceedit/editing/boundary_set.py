"""Boundary sets: every direction file a user mounts (ours, InterfaceGAN, e4e, GANSpace) as named, checked entries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import Tensor

from faceedit.editing.directions import (
    PCABasis,
)
from faceedit.errors import (
    InvalidInputError,
    NotFoundError,
)

SPACES = ("w", "z")
FORMATS = ("faceedit", "interfacegan", "e4e", "ganspace", "sefa")
ALL_COMPONENTS = "all"  # components: all → every GANSpace component, named ganspace:K
DEFAULT_STRENGTH = (-3.0, 3.0)  # e4e's LEC metric and InterfaceGAN's linear_interpolate both use ±3
DIRECTION_SUFFIXES = (".safetensors", ".npy", ".pt", ".pth")
_SPEC_KEYS = ("path", "include", "names", "components", "space", "recommended_strength")
# Upstream file names start with the model they were trained on: stylegan_ffhq_, stylegan2_ffhq_, pggan_celebahq_.
# Sidecar "space" values: train_boundaries writes "W" or "W+"; both are rows of W.


_RECORDED_SPACES = {"w": "w", "w+": "w", "wp": "w", "z": "z"}


def parse_space(value: Any, field_name: str) -> str:
    """'' / 'w' / 'W+' / 'z' (any case) → '' / 'w' / 'z', or an error naming the field."""
    if not isinstance(value, str):
        raise InvalidInputError(field_name, f"expected 'w' or 'z', got {value!r}")
    if value == "":
        return ""
    space = _RECORDED_SPACES.get(value.strip().lower())
    if space is None:
        raise InvalidInputError(field_name, f"expected 'w' or 'z', got {value!r}")
    return space


def strength_range(value: Any, field_name: str) -> tuple[float, float]:
    """A recommended (low, high) strength pair: two finite numbers, low < high."""
    try:
        low, high = (float(x) for x in value)
    except (TypeError, ValueError):
        raise InvalidInputError(field_name, f"expected [low, high], got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InvalidInputError(field_name, f"needs finite low < high, got {value!r}")
    return low, high


@dataclass(frozen=True)
class BoundarySetSpec:
    """Where a set's direction files are and how to name them.

    `path` is a folder (its files, not sub-folders) or one file. `include` keeps only the folder's
    files whose names match one of the glob patterns. `names` maps a file name or stem to the
    attribute name it gives (else the sidecar's `attribute`, else `attribute_name`; the space and
    conditions read off the file name are kept). `components` names GANSpace PCA
    components (attribute → index), or is "all" (each component K as `ganspace:K`); a PCA file is refused
    without it. `space` forces "w" or "z" for
    files whose metadata does not record one. `recommended_strength` is used where a file records none.
    """

    path: str
    include: tuple[str, ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)
    components: Mapping[str, int] | str = field(default_factory=dict)
    space: str = ""
    recommended_strength: tuple[float, float] = DEFAULT_STRENGTH

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, Path)) or not str(self.path):
            raise InvalidInputError("path", f"expected a folder or file path, got {self.path!r}")
        object.__setattr__(self, "path", str(self.path))
        include = (self.include,) if isinstance(self.include, str) else self.include
        if not isinstance(include, Iterable) or not all(isinstance(p, str) and p for p in include):
            raise InvalidInputError("include", f"expected glob patterns (strings), got {self.include!r}")
        object.__setattr__(self, "include", tuple(include))
        if not isinstance(self.names, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in self.names.items()):
            raise InvalidInputError("names", f"expected {{file name or stem: attribute name}}, got {self.names!r}")
        object.__setattr__(self, "names", MappingProxyType(dict(self.names)))
        if self.components != ALL_COMPONENTS:
            if not isinstance(self.components, Mapping) or not all(
                    isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for k, v in self.components.items()):
                raise InvalidInputError("components", f"expected {{attribute name: component index >= 0}} or "
                                                      f"{ALL_COMPONENTS!r}, got {self.components!r}")
            object.__setattr__(self, "components", MappingProxyType(dict(self.components)))
        object.__setattr__(self, "space", parse_space(self.space, "space"))
        object.__setattr__(self, "recommended_strength",
                           strength_range(self.recommended_strength, "recommended_strength"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | Path = ".") -> BoundarySetSpec:
        """A spec from config data (JSON/YAML); a relative `path` resolves against `base_dir`."""
        if not isinstance(data, Mapping):
            raise InvalidInputError("boundary_set", f"expected a mapping with a 'path', got {type(data).__name__}")
        for key in data:
            if key not in _SPEC_KEYS:
                raise InvalidInputError(str(key), f"unknown boundary set key; expected one of {list(_SPEC_KEYS)}")
        if "path" not in data:
            raise InvalidInputError("path", "a boundary set needs a path (a folder or a file)")
        path = data["path"]
        if not isinstance(path, (str, Path)) or not str(path):
            raise InvalidInputError("path", f"expected a folder or file path, got {path!r}")
        path = Path(path).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        return cls(path=str(path), **{k: data[k] for k in _SPEC_KEYS[1:] if k in data})


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value; entries compare by identity
class DirectionEntry:
    """One named direction of a set, checked against the generator's latent space."""

    name: str
    direction: Tensor  # unit [D], or [n_latent, D] with unit (or zero = untouched) rows, float32
    space: str  # "w": rows of W / W+; "z": InterfaceGAN Z space, the edit moves z before the mapping
    source: str  # the file, plus "#component=K" for a GANSpace component
    format: str  # one of FORMATS
    accuracy: float | None  # validation accuracy when the file records it; None = unknown
    recommended: tuple[float, float]  # strength range (low, high)
    layers: tuple[int, ...] | None  # W+ rows the direction is meant for; None = all
    conditioned_on: tuple[str, ...] = ()  # sorted; a precomputed conditional variant (InterfaceGAN `_c_`)
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)  # the sidecar for ours; {} else
    basis: PCABasis | None = None  # GANSpace: the whole PCA basis, for ganspace_edit's set-the-coordinate edit

    @property
    def component(self) -> int | None:
        return self.metadata.get("component") if self.format == "ganspace" else None

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (no tensors): what a service lists for this entry."""
        return {"name": self.name, "space": self.space, "source": self.source, "format": self.format,
                "accuracy": self.accuracy, "recommended": list(self.recommended),
                "layers": None if self.layers is None else list(self.layers),
                "conditioned_on": list(self.conditioned_on), "shape": list(self.direction.shape),
                "description": self.description}


def conditions_key(conditions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(conditions, str):
        conditions = (conditions,)
    return tuple(sorted(set(conditions)))


class BoundarySet:
    """Direction entries keyed by (name, space, conditioned_on); the same name may exist in W and in Z."""

    def __init__(self, entries: Iterable[DirectionEntry] = ()):
        self._entries: dict[tuple[str, str, tuple[str, ...]], DirectionEntry] = {}
        for entry in entries:
            key = (entry.name, entry.space, entry.conditioned_on)
            if key in self._entries:
                raise InvalidInputError("entries", f"{entry.source} and {self._entries[key].source} both give "
                                                   f"{entry_label(*key)}")
            self._entries[key] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[DirectionEntry]:
        return iter(self.entries)

    def __contains__(self, name: object) -> bool:
        return any(key[0] == name for key in self._entries)

    @property
    def entries(self) -> tuple[DirectionEntry, ...]:
        """Every entry, sorted by name, then W before Z, then plain before conditional variants."""
        return tuple(self._entries[k] for k in sorted(self._entries, key=lambda k: (k[0], SPACES.index(k[1]), k[2])))

    def names(self) -> list[str]:
        return sorted({key[0] for key in self._entries})

    def spaces(self, name: str) -> tuple[str, ...]:
        """The spaces `name` has entries in, W first."""
        return tuple(s for s in SPACES if any(k[0] == name and k[1] == s for k in self._entries))

    def get(self, name: str, space: str | None = None, conditioned_on: Iterable[str] = ()) -> DirectionEntry:
        """The entry for `name`; space None prefers W and falls back to Z. NotFoundError lists what exists."""
        conditions = conditions_key(conditioned_on)
        spaces = SPACES if not space else (parse_space(space, "space"),)
        for s in spaces:
            entry = self._entries.get((name, s, conditions))
            if entry is not None:
                return entry
        if name not in self:
            raise NotFoundError("attribute", name, f"known: {self.names()}")
        known = [entry_label(*k) for k in sorted(self._entries) if k[0] == name]
        raise NotFoundError("attribute", entry_label(name, space or "", conditions), f"this set has {known}")

    def variant(self, name: str, conditions: Iterable[str], space: str | None = None) -> DirectionEntry | None:
        """The precomputed variant of `name` conditioned on exactly these names, or None (project at run time)."""
        conditions = conditions_key(conditions)
        if not conditions:
            return None
        try:
            return self.get(name, space, conditions)
        except NotFoundError:
            return None

    def variants(self, name: str, space: str | None = None) -> list[DirectionEntry]:
        """The precomputed conditional variants of `name` (all spaces when space is None)."""
        wanted = parse_space(space, "space") if space else None
        return [e for e in self.entries
                if e.name == name and e.conditioned_on and (wanted is None or e.space == wanted)]

    def describe(self) -> list[dict[str, Any]]:
        """One JSON-friendly row per entry (`DirectionEntry.summary`); plain rows also list their
        variants' conditions, so a service can show 'age (W, Z; Z also conditioned on eyeglasses)'."""
        rows = []
        for entry in self.entries:
            row = entry.summary()
            if not entry.conditioned_on:
                row["variants"] = [list(v.conditioned_on) for v in self.variants(entry.name, entry.space)]
            rows.append(row)
        return rows


def entry_label(name: str, space: str, conditions: tuple[str, ...]) -> str:
    label = f"{name!r}" + (f" ({space.upper()})" if space else "")
    return label + (f" conditioned on {list(conditions)}" if conditions else "")
