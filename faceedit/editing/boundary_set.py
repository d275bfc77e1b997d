"""Boundary sets: every direction file a user mounts (ours, InterfaceGAN, e4e, GANSpace) as named, checked entries."""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from faceedit.editing.directions import (_GANSPACE_KEYS, _torch_load, PCABasis, check_direction,
                                         check_generator_match, load_boundary_file, load_direction, load_ganspace,
                                         unit_rows)
from faceedit.editing.layers import resolve_layers
from faceedit.errors import CheckpointFormatError, FaceEditError, InvalidInputError, NotFoundError

SPACES = ("w", "z")
FORMATS = ("faceedit", "interfacegan", "e4e", "ganspace")
DEFAULT_STRENGTH = (-3.0, 3.0)  # e4e's LEC metric and InterfaceGAN's linear_interpolate both use ±3
DIRECTION_SUFFIXES = (".safetensors", ".npy", ".pt", ".pth")
_SPEC_KEYS = ("path", "include", "names", "components", "space", "recommended_strength")
# Upstream file names start with the model they were trained on: stylegan_ffhq_, stylegan2_ffhq_, pggan_celebahq_.
_MODEL_PREFIX = re.compile(r"^(?:stylegan\d*|pggan|progan)_[a-z0-9]+_", re.IGNORECASE)
_SPACE_MARKERS = (("_wp", "w"), ("_w", "w"), ("_z", "z"))
_DOC_STEMS = {"README", "LICENSE", "LICENCE", "NOTICE", "COPYING", "AUTHORS", "CHANGELOG"}
# Sidecar "space" values: train_boundaries writes "W" or "W+"; both are rows of W.
_RECORDED_SPACES = {"w": "w", "w+": "w", "wp": "w", "z": "z"}


def _space(value: Any, field_name: str) -> str:
    """'' / 'w' / 'W+' / 'z' (any case) → '' / 'w' / 'z', or an error naming the field."""
    if not isinstance(value, str):
        raise InvalidInputError(field_name, f"expected 'w' or 'z', got {value!r}")
    if value == "":
        return ""
    space = _RECORDED_SPACES.get(value.strip().lower())
    if space is None:
        raise InvalidInputError(field_name, f"expected 'w' or 'z', got {value!r}")
    return space


def _strength_range(value: Any, field_name: str) -> tuple[float, float]:
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
    components (attribute → index); a PCA file is refused without it. `space` forces "w" or "z" for
    files whose metadata does not record one. `recommended_strength` is used where a file records none.
    """

    path: str
    include: tuple[str, ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)
    components: Mapping[str, int] = field(default_factory=dict)
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
        if not isinstance(self.components, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in self.components.items()):
            raise InvalidInputError("components",
                                    f"expected {{attribute name: component index >= 0}}, got {self.components!r}")
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))
        object.__setattr__(self, "space", _space(self.space, "space"))
        object.__setattr__(self, "recommended_strength",
                           _strength_range(self.recommended_strength, "recommended_strength"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | Path = ".") -> "BoundarySetSpec":
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


def _conditions_key(conditions: Iterable[str]) -> tuple[str, ...]:
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
                                                   f"{_label(*key)}")
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
        conditions = _conditions_key(conditioned_on)
        spaces = SPACES if not space else (_space(space, "space"),)
        for s in spaces:
            entry = self._entries.get((name, s, conditions))
            if entry is not None:
                return entry
        if name not in self:
            raise NotFoundError("attribute", name, f"known: {self.names()}")
        known = [_label(*k) for k in sorted(self._entries) if k[0] == name]
        raise NotFoundError("attribute", _label(name, space or "", conditions), f"this set has {known}")

    def variant(self, name: str, conditions: Iterable[str], space: str | None = None) -> DirectionEntry | None:
        """The precomputed variant of `name` conditioned on exactly these names, or None (project at run time)."""
        conditions = _conditions_key(conditions)
        if not conditions:
            return None
        try:
            return self.get(name, space, conditions)
        except NotFoundError:
            return None

    def variants(self, name: str, space: str | None = None) -> list[DirectionEntry]:
        """The precomputed conditional variants of `name` (all spaces when space is None)."""
        wanted = _space(space, "space") if space else None
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


def _label(name: str, space: str, conditions: tuple[str, ...]) -> str:
    label = f"{name!r}" + (f" ({space.upper()})" if space else "")
    return label + (f" conditioned on {list(conditions)}" if conditions else "")


def attribute_name(file_name: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(attribute, space or None if the name does not say, sorted condition names) from a file name.

    "stylegan_ffhq_age_w_boundary.npy" → ("age", "w", ()); "stylegan_ffhq_age_boundary.npy" →
    ("age", "z", ()) (InterfaceGAN's unmarked boundaries are Z); "stylegan_ffhq_age_c_eyeglasses_boundary.npy"
    → ("age", "z", ("eyeglasses",)); "age.pt" → ("age", None, ()). Conditions after `_c_` split on
    "_" as upstream names them (pggan's `gender_c_age_eyeglasses` is conditioned on age and eyeglasses).
    """
    base = Path(file_name).name
    suffix = Path(base).suffix.lower()
    stem = base[: len(base) - len(suffix)] if suffix else base
    interfacegan = stem.lower().endswith("_boundary")
    if interfacegan:
        stem = stem[: -len("_boundary")]
    prefix = _MODEL_PREFIX.match(stem)
    if prefix and prefix.end() < len(stem):
        stem = stem[prefix.end():]
    primary, marker, rest = stem.partition("_c_")
    conditions = _conditions_key(c for c in rest.split("_") if c) if marker else ()
    space = None
    for tail, marked in _SPACE_MARKERS:
        if primary.lower().endswith(tail) and len(primary) > len(tail):
            primary, space = primary[: -len(tail)], marked
            break
    if space is None and interfacegan and suffix == ".npy":
        space = "z"
    return primary, space, conditions


def _ignored(path: Path, folder_files: set[str]) -> bool:
    """Files in a folder that are not direction files and are skipped without a word."""
    name = path.name
    if name.startswith("."):
        return True  # hidden: .DS_Store, editor swap files, .gitattributes
    suffix = path.suffix.lower()
    if suffix == ".md" or path.stem.upper() in _DOC_STEMS:
        return True
    if suffix == ".json":
        # A sidecar of a safetensors boundary, or a report such as the zoo's edit_quality.json.
        # Only an orphaned boundary sidecar is kept, to be refused: its weights are missing.
        return path.stem + ".safetensors" in folder_files or not _is_boundary_sidecar(path)
    return False


def _is_boundary_sidecar(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and record.get("kind") == "boundary"


class _Refused(Exception):
    """A file this set cannot use; collected so one error lists every refused file."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BoundarySetError(CheckpointFormatError):
    """Some files of a boundary set cannot be used; `refused` lists (file, reason) for each."""

    def __init__(self, path: str, refused: Sequence[tuple[str, str]]):
        self.refused = tuple(refused)
        lines = "\n".join(f"  {file}: {reason}" for file, reason in self.refused)
        count = len(self.refused)
        super().__init__(path, f"{count} problem{'s' if count > 1 else ''} in the boundary set:\n{lines}")


def load_boundary_set(specs: BoundarySetSpec | Sequence[BoundarySetSpec], n_latent: int, style_dim: int,
                      generator_sha256: str = "") -> BoundarySet:
    """Every direction of the specs' files, checked against an [n_latent, style_dim] W+ space.

    Every file a folder spec selects must be used: otherwise nothing loads and one BoundarySetError
    names each refused file and why (unknown format, unreadable, NaN, a shape that does not fit,
    trained for another generator, a GANSpace file without `components`, two files giving the same
    attribute). Quietly skipped, since they are not direction files: hidden files, `.md` files and
    README/LICENSE-like files, JSON sidecars of safetensors boundaries and other JSON reports
    (edit_quality.json), and sub-folders. A JSON boundary sidecar whose safetensors file is missing
    is refused. Entries whose metadata records no space are W, unless the name says Z (InterfaceGAN)
    or the spec forces one.
    """
    specs = [specs] if isinstance(specs, BoundarySetSpec) else list(specs)
    refused: list[tuple[str, str]] = []
    entries: list[DirectionEntry] = []
    for spec in specs:
        if not isinstance(spec, BoundarySetSpec):
            raise InvalidInputError("specs", f"expected BoundarySetSpec, got {type(spec).__name__}")
        spec_entries, spec_refused = _load_spec(spec, n_latent, style_dim, generator_sha256)
        entries += spec_entries
        refused += spec_refused
    seen: dict[tuple[str, str, tuple[str, ...]], DirectionEntry] = {}
    for entry in entries:
        key = (entry.name, entry.space, entry.conditioned_on)
        if key in seen:
            first = seen[key].source
            refused.append((entry.source, f"listed twice in the set (gives {_label(*key)})" if first == entry.source
                            else f"gives {_label(*key)} as {first} does; rename one with names: {{file: name}}"))
        else:
            seen[key] = entry
    if refused:
        raise BoundarySetError(", ".join(s.path for s in specs), refused)
    return BoundarySet(seen.values())


def _load_spec(spec: BoundarySetSpec, n_latent: int, style_dim: int, generator_sha256: str
               ) -> tuple[list[DirectionEntry], list[tuple[str, str]]]:
    root = Path(spec.path)
    if root.is_dir():
        children = sorted(p for p in root.iterdir() if p.is_file())
        names = {p.name for p in children}
        files = [p for p in children if not _ignored(p, names)]
    elif root.is_file():
        files = [root]  # named explicitly: no file is ignored
    else:
        return [], [(spec.path, "does not exist")]
    refused: list[tuple[str, str]] = []
    if spec.include:
        for pattern in spec.include:
            if not any(fnmatch.fnmatchcase(p.name, pattern) for p in files):
                refused.append((spec.path, f"include pattern {pattern!r} matches no direction file"))
        files = [p for p in files if any(fnmatch.fnmatchcase(p.name, pattern) for pattern in spec.include)]
    elif not files:
        refused.append((spec.path, "holds no direction file"))
    used_names = {key for key in spec.names for p in files if key in (p.name, p.stem)}
    refused += [(spec.path, f"names: {key!r} matches no file of the set") for key in spec.names
                if key not in used_names]
    entries: list[DirectionEntry] = []
    pca_files: list[Path] = []  # filled by _load_file, also for PCA files it then refuses
    for path in files:
        try:
            entries += _load_file(path, spec, n_latent, style_dim, generator_sha256, pca_files)
        except _Refused as exc:
            refused.append((str(path), exc.reason))
            continue
        except FaceEditError as exc:
            refused.append((str(path), _reason(exc, path)))
            continue
        except Exception as exc:  # noqa: BLE001 - numpy/torch raise many types on odd files; report, never a traceback
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            refused.append((str(path), f"cannot read ({type(exc).__name__}{': ' + first_line if first_line else ''})"))
    if spec.components and not pca_files:
        refused.append((spec.path, "components: given, but the set has no GANSpace PCA file"))
    return entries, refused


def _reason(exc: FaceEditError, path: Path) -> str:
    """The problem of a typed error without the path it repeats (the refusal line names the file)."""
    problem = getattr(exc, "problem", str(exc))
    for prefix in (f"{path}: ", f"{path} "):
        if problem.startswith(prefix):
            return problem[len(prefix):]
    field_name = getattr(exc, "field", "")
    # A metadata field (layers, recommended_strength, space) is part of the reason; the path or "direction" is not.
    return problem if field_name in ("", str(path), "direction") else f"{field_name}: {problem}"


def _load_file(path: Path, spec: BoundarySetSpec, n_latent: int, style_dim: int, generator_sha256: str,
               pca_files: list[Path]) -> list[DirectionEntry]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        raise _Refused(f"a boundary sidecar without its weights ({path.stem}.safetensors is missing)")
    if suffix not in DIRECTION_SUFFIXES:
        shown = repr(suffix) if suffix else "(no extension)"
        raise _Refused(f"unknown direction format {shown}; expected one of {', '.join(DIRECTION_SUFFIXES)}")
    derived, named_space, conditions = attribute_name(path.name)
    name = spec.names.get(path.name, spec.names.get(path.stem, ""))
    if suffix == ".safetensors":
        direction, metadata = load_boundary_file(path)
        check_generator_match(metadata, generator_sha256, field=str(path))
        if metadata.get("attribute"):
            # The sidecar names the attribute: the file name is not parsed for conditions.
            derived, conditions = str(metadata["attribute"]), ()
        return [_ours(path, direction, metadata, name or derived, named_space, conditions, spec, n_latent,
                      style_dim)]
    if suffix in (".pt", ".pth"):
        # Peek to tell a GANSpace dict from a tensor; a tensor file is then read again by load_direction
        # (upstream's are a few KB, and load_direction keeps the one definition of that format).
        obj = _torch_load(path)
        if isinstance(obj, Mapping) and _GANSPACE_KEYS <= set(obj):
            pca_files.append(path)
            if name:
                raise _Refused("a GANSpace PCA file takes its names from components, not names")
            return _ganspace(path, spec, n_latent, style_dim)
    direction = load_direction(path)  # [D] or [L, D], unit rows
    space = _resolve_space(None, spec.space, named_space)
    return [_entry(name or derived, direction, space, str(path), "interfacegan" if suffix == ".npy" else "e4e",
                   None, spec.recommended_strength, _nonzero_rows(direction), conditions, "", {}, n_latent,
                   style_dim)]


def _resolve_space(recorded: str | None, forced: str, named: str | None) -> str:
    # Recorded metadata is the file's own word; the spec's forced space wins over a guess from the name.
    if recorded and forced and recorded != forced:
        raise _Refused(f"records space {recorded.upper()}, but the set forces space {forced.upper()}")
    return recorded or forced or named or "w"


def _ours(path: Path, direction: Tensor, metadata: Mapping[str, Any], name: str, named_space: str | None,
          conditions: tuple[str, ...], spec: BoundarySetSpec, n_latent: int, style_dim: int) -> DirectionEntry:
    recorded = metadata.get("space")
    recorded_space = _space(recorded, "space") if recorded else None
    space = _resolve_space(recorded_space, spec.space, named_space)
    accuracy = metadata.get("accuracy", metadata.get("validation_accuracy"))
    if accuracy is not None:
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
            raise _Refused(f"accuracy must be a number in [0, 1], got {accuracy!r}")
        accuracy = float(accuracy)
    strength = metadata.get("recommended_strength")
    recommended = (_strength_range(strength, "recommended_strength") if strength is not None
                   else spec.recommended_strength)
    layers = metadata.get("layers")
    rows = tuple(resolve_layers(layers, n_latent, field="layers")) if layers is not None else _nonzero_rows(direction)
    recorded_conditions = metadata.get("conditioned_on")
    if recorded_conditions:
        if not isinstance(recorded_conditions, list) or not all(isinstance(c, str) for c in recorded_conditions):
            raise _Refused(f"conditioned_on must be a list of attribute names, got {recorded_conditions!r}")
        conditions = _conditions_key(recorded_conditions)
    return _entry(name, direction, space, str(path), "faceedit", accuracy, recommended, rows, conditions,
                  str(metadata.get("description") or ""), MappingProxyType(dict(metadata)), n_latent, style_dim)


def _ganspace(path: Path, spec: BoundarySetSpec, n_latent: int, style_dim: int) -> list[DirectionEntry]:
    basis = load_ganspace(path)
    if not spec.components:
        raise _Refused(f"a GANSpace PCA file with {len(basis.components)} components: name the ones to use "
                       "(components: {name: index})")
    if spec.space == "z":
        raise _Refused("GANSpace components are directions in W; the set forces space Z")
    entries = []
    for name, index in sorted(spec.components.items(), key=lambda item: item[1]):
        try:
            direction = unit_rows(basis.direction(index), f"{path}#component={index}")  # [D]
        except InvalidInputError as exc:
            raise _Refused(f"components[{name!r}]: {exc.problem}") from None
        entries.append(_entry(name, direction, "w", f"{path}#component={index}", "ganspace", None,
                              spec.recommended_strength, None, (), "",
                              MappingProxyType({"component": index, "std": float(basis.std[index])}),
                              n_latent, style_dim, basis))
    return entries


def _nonzero_rows(direction: Tensor) -> tuple[int, ...] | None:
    """W+ rows a per-layer direction moves (a zero row means 'layer untouched'); None when it moves all."""
    if direction.ndim != 2:
        return None
    rows = torch.nonzero(direction.norm(dim=-1) > 0).flatten().tolist()
    return None if len(rows) == direction.shape[0] else tuple(rows)


def _entry(name: str, direction: Tensor, space: str, source: str, fmt: str, accuracy: float | None,
           recommended: tuple[float, float], layers: tuple[int, ...] | None, conditions: tuple[str, ...],
           description: str, metadata: Mapping[str, Any], n_latent: int, style_dim: int,
           basis: PCABasis | None = None) -> DirectionEntry:
    if not name:
        raise _Refused("no attribute name can be derived from the file name; give one with names: {file: name}")
    if space == "z" and direction.ndim != 1:
        # Z is the mapping's input: one vector per image, there are no per-layer rows to edit.
        raise _Refused(f"a Z-space direction must be [{style_dim}], got {list(direction.shape)}")
    try:
        check_direction(direction, n_latent, style_dim)
    except InvalidInputError as exc:
        raise _Refused(f"{exc.problem} (n_latent {n_latent}, style_dim {style_dim})") from None
    return DirectionEntry(name=name, direction=direction.contiguous(), space=space, source=source, format=fmt,
                          accuracy=accuracy, recommended=recommended, layers=layers, conditioned_on=conditions,
                          description=description, metadata=metadata, basis=basis)
