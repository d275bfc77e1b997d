"""Boundary sets read from files of every format users have (ours, InterfaceGAN .npy, e4e .pt, GANSpace),
named from the config or the file name; a file it cannot use stops the load, naming the file and why."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from faceedit.editing.boundary_set import (
    ALL_COMPONENTS,
    DIRECTION_SUFFIXES,
    BoundarySet,
    BoundarySetSpec,
    DirectionEntry,
    conditions_key,
    entry_label,
    parse_space,
    strength_range,
)
from faceedit.editing.directions import (
    _GANSPACE_KEYS,
    PCABasis,
    _torch_load,
    check_direction,
    check_generator_match,
    load_boundary_file,
    load_direction,
    load_ganspace,
    unit_rows,
)
from faceedit.editing.layers import resolve_layers
from faceedit.errors import (
    CheckpointFormatError,
    FaceEditError,
    InvalidInputError,
)

_MODEL_PREFIX = re.compile(r"^(?:stylegan\d*|pggan|progan)_[a-z0-9]+_", re.IGNORECASE)
_SPACE_MARKERS = (("_wp", "w"), ("_w", "w"), ("_z", "z"))
_DOC_STEMS = {"README", "LICENSE", "LICENCE", "NOTICE", "COPYING", "AUTHORS", "CHANGELOG"}


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
    conditions = conditions_key(c for c in rest.split("_") if c) if marker else ()
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
            refused.append((entry.source,
                            f"listed twice in the set (gives {entry_label(*key)})" if first == entry.source
                            else f"gives {entry_label(*key)} as {first} does; rename one with names: {{file: name}}"))
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
    recorded_space = parse_space(recorded, "space") if recorded else None
    space = _resolve_space(recorded_space, spec.space, named_space)
    accuracy = metadata.get("accuracy", metadata.get("validation_accuracy"))
    if accuracy is not None:
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
            raise _Refused(f"accuracy must be a number in [0, 1], got {accuracy!r}")
        accuracy = float(accuracy)
    strength = metadata.get("recommended_strength")
    recommended = (strength_range(strength, "recommended_strength") if strength is not None
                   else spec.recommended_strength)
    layers = metadata.get("layers")
    rows = tuple(resolve_layers(layers, n_latent, field="layers")) if layers is not None else _nonzero_rows(direction)
    recorded_conditions = metadata.get("conditioned_on")
    if recorded_conditions:
        if not isinstance(recorded_conditions, list) or not all(isinstance(c, str) for c in recorded_conditions):
            raise _Refused(f"conditioned_on must be a list of attribute names, got {recorded_conditions!r}")
        conditions = conditions_key(recorded_conditions)
    return _entry(name, direction, space, str(path), "faceedit", accuracy, recommended, rows, conditions,
                  str(metadata.get("description") or ""), MappingProxyType(dict(metadata)), n_latent, style_dim)


def _ganspace(path: Path, spec: BoundarySetSpec, n_latent: int, style_dim: int) -> list[DirectionEntry]:
    basis = load_ganspace(path)
    if not spec.components:
        raise _Refused(f"a GANSpace PCA file with {len(basis.components)} components: name the ones to use "
                       "(components: {name: index})")
    if spec.space == "z":
        raise _Refused("GANSpace components are directions in W; the set forces space Z")
    components = (spec.components if spec.components != ALL_COMPONENTS
                  else {f"ganspace:{k}": k for k in range(len(basis.components))})
    entries = []
    for name, index in sorted(components.items(), key=lambda item: item[1]):
        try:
            direction = unit_rows(basis.direction(index), f"{path}#component={index}")  # [D]
        except InvalidInputError as exc:
            raise _Refused(f"components[{name!r}]: {exc.problem}") from None
        # Named one by one, a component takes the set's strength range; listed all at once, ±2 of its std.
        recommended = (spec.recommended_strength if spec.components != ALL_COMPONENTS
                       else (-2 * float(basis.std[index]), 2 * float(basis.std[index])))
        entries.append(_entry(name, direction, "w", f"{path}#component={index}", "ganspace", None,
                              recommended, None, (), "",
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
