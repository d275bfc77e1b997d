"""The one model configuration every service reads: base generators, their families' encoders and boundary sets, CLIPs.

A YAML file (FACEEDIT_MODELS; default: the demo zoo's `models.yaml`) read by the editor, both
TorchServe handlers and the worker alike, so a generator id means the same weights everywhere by
construction. Relative paths are relative to the file. Schema:

    default_generator: ffhq            # optional when there is one generator
    generators:
      ffhq: {checkpoint: stylegan2-ffhq-config-f.pt, family: ffhq}   # family defaults to the id
    families:                          # a family is one latent space: its encoder and boundaries
      ffhq:
        encoder: e4e_ffhq_encode.pt
        perceptual: scorer.safetensors   # optional: the distance inversions optimise (faceedit scorer)
        sefa: 8                          # optional: the generator's top 8 SeFa directions, as sefa:0 .. sefa:7
        boundaries:                    # faceedit.editing.BoundarySetSpec entries
          - {path: interfacegan, include: ["*_w_boundary.npy"]}
          - {path: e4e/ganspace_ffhq_pca.pt, components: {lighting: 7}}   # or components: all → ganspace:K
    clips: ["ViT-B-32-quickgelu=clip/b32.pt"]   # DIFA's CLIP models ("[architecture=]weights")
    text_clip: ViT-B-32=clip/b32.pt     # optional: the CLIP text edits read (StyleCLIP's); default: clips[0];
                                        # a list is read as one ensemble (faceedit.adaptation.clip.ClipEnsemble)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from faceedit.errors import InvalidInputError

if TYPE_CHECKING:
    from faceedit.editing.boundary_set import BoundarySetSpec

ENV = "FACEEDIT_MODELS"
DEFAULT_FILE = "models.yaml"  # inside the demo zoo folder
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOP_KEYS = {"default_generator", "generators", "families", "clips", "text_clip"}
_GENERATOR_KEYS = {"checkpoint", "family"}
_FAMILY_KEYS = {"encoder", "boundaries", "perceptual", "sefa", "relevance"}


@dataclass(frozen=True)
class GeneratorSpec:
    """A base generator: its id (the same in every service), checkpoint and family."""

    id: str
    checkpoint: Path
    family: str


@dataclass(frozen=True)
class FamilySpec:
    """One latent space: the encoder that inverts into it, its boundary sets, its perceptual distance."""

    name: str
    encoder: Path | None = None
    boundaries: tuple[Mapping[str, Any], ...] = ()  # raw entries; boundary_specs() parses them
    # The perceptual distance inversions optimise (Invert OPTIMIZE, pivotal tuning): a faceedit scorer
    # file (the demo zoo's). None: pixel L2 alone.
    perceptual: Path | None = None
    sefa: int = 0  # also list the generator's top-k SeFa directions as attributes sefa:0 .. sefa:{k-1}
    # Text edits' channel relevance computed beforehand (`faceedit eval text` writes one): the worker uses it
    # instead of computing it when it was made for the same generator, CLIP and settings.
    relevance: Path | None = None


@dataclass(frozen=True)
class ModelConfig:
    source: Path  # the file this was read from
    default_generator: str
    generators: Mapping[str, GeneratorSpec]
    families: Mapping[str, FamilySpec]
    clips: tuple[str, ...] = ()
    # The CLIP text edits read, when not DIFA's first: one that sees expressions and accessories can be a poor
    # judge of style, and the other way round (the demo zoo ships one of each).
    text_clip_override: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    def generator(self, generator_id: str, field_name: str = "generator") -> GeneratorSpec:
        spec = self.generators.get(generator_id)
        if spec is None:
            raise InvalidInputError(field_name, f"{generator_id[:100]!r} is not a base generator of {self.source} "
                                                f"(known: {sorted(self.generators)})")
        return spec

    def family_of(self, generator_id: str) -> FamilySpec:
        return self.families[self.generator(generator_id).family]

    @property
    def encoder_family(self) -> str:
        """The family the served encoder inverts into: the default generator's."""
        return self.generators[self.default_generator].family

    def encoder(self) -> Path | None:
        return self.families[self.encoder_family].encoder

    def boundary_specs(self, family: str) -> list[BoundarySetSpec]:
        from faceedit.editing.boundary_set import BoundarySetSpec

        specs = []
        for i, entry in enumerate(self.families[family].boundaries):
            try:
                specs.append(BoundarySetSpec.from_dict(entry, self.base_dir))
            except InvalidInputError as exc:
                raise InvalidInputError(f"families.{family}.boundaries[{i}].{exc.field}",
                                        f"{exc.problem} ({self.source})") from None
        return specs

    @property
    def text_clip(self) -> str | None:
        """The "[architecture=]weights[,…]" spec of the CLIP(s) text edits read: `text_clip`, else `clips[0]`."""
        return self.text_clip_override or (self.clips[0] if self.clips else None)

    def clip_specs(self) -> str:
        """`clips` as the comma-separated "[architecture=]weights" spec faceedit.adaptation.clip parses."""
        return ",".join(self.clips)


def _resolve(base: Path, value: object, where: str, source: Path, must_exist: bool = True) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(where, f"expected a file path in {source}, got {value!r}")
    path = Path(os.path.expanduser(value.strip()))
    path = path if path.is_absolute() else base / path
    if must_exist and not path.exists():
        raise InvalidInputError(where, f"{path} does not exist (named in {source})")
    return path


def _mapping(value: object, where: str, source: Path) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(where, f"expected a mapping in {source}, got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str, source: Path) -> None:
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise InvalidInputError(f"{where}{unknown[0]}", f"unknown key in {source}; expected one of {sorted(allowed)}")


def _clip_entry(entry: object, base: Path, source: Path, where: str) -> str:
    if not isinstance(entry, str) or not entry.strip():
        raise InvalidInputError(where, f"expected '[architecture=]weights' in {source}, got {entry!r}")
    architecture, sep, weights = entry.strip().rpartition("=")
    path = _resolve(base, weights, where, source)
    return f"{architecture}={path}" if sep else str(path)


def _text_clip_entry(entry: object, base: Path, source: Path) -> str | None:
    """`text_clip`: one "[architecture=]weights", or a list of them (read as one ensemble) → one spec."""
    if entry is None:
        return None
    if isinstance(entry, list):
        if not entry:
            raise InvalidInputError("text_clip", f"is an empty list in {source}: name a CLIP, or leave it out")
        return ",".join(_clip_entry(e, base, source, f"text_clip[{i}]") for i, e in enumerate(entry))
    return _clip_entry(entry, base, source, "text_clip")


def parse_model_config(data: Mapping[str, Any], source: Path) -> ModelConfig:
    """A parsed YAML document → ModelConfig, every id, key and file checked (errors name the key and file)."""
    data = _mapping(data, "models", source)
    _check_keys(data, _TOP_KEYS, "", source)
    base = source.parent
    generators: dict[str, GeneratorSpec] = {}
    for gid, entry in _mapping(data.get("generators"), "generators", source).items():
        gid = str(gid)
        if not ID_PATTERN.match(gid):
            raise InvalidInputError(f"generators.{gid[:64]}",
                                    f"ids are 1-64 letters, digits, '.', '_' or '-' ({source})")
        entry = {"checkpoint": entry} if isinstance(entry, str) else _mapping(entry, f"generators.{gid}", source)
        _check_keys(entry, _GENERATOR_KEYS, f"generators.{gid}.", source)
        checkpoint = _resolve(base, entry.get("checkpoint"), f"generators.{gid}.checkpoint", source)
        generators[gid] = GeneratorSpec(gid, checkpoint, str(entry.get("family") or gid))
    if not generators:
        raise InvalidInputError("generators", f"{source} names no generator")
    families: dict[str, FamilySpec] = {}
    for name, entry in _mapping(data.get("families"), "families", source).items():
        name = str(name)
        entry = _mapping(entry, f"families.{name}", source)
        _check_keys(entry, _FAMILY_KEYS, f"families.{name}.", source)
        encoder, perceptual, sefa = entry.get("encoder"), entry.get("perceptual"), entry.get("sefa", 0)
        relevance = entry.get("relevance")
        if not isinstance(sefa, int) or isinstance(sefa, bool) or not 0 <= sefa <= 64:
            raise InvalidInputError(f"families.{name}.sefa", f"expected a count of SeFa directions in 0..64 ({source})")
        sets = entry.get("boundaries") or []
        if not isinstance(sets, list) or not all(isinstance(s, (Mapping, str)) for s in sets):
            raise InvalidInputError(f"families.{name}.boundaries", f"expected a list of boundary sets in {source}")
        families[name] = FamilySpec(
            name, _resolve(base, encoder, f"families.{name}.encoder", source) if encoder else None,
            tuple({"path": s} if isinstance(s, str) else dict(s) for s in sets),
            _resolve(base, perceptual, f"families.{name}.perceptual", source) if perceptual else None, sefa,
            _resolve(base, relevance, f"families.{name}.relevance", source) if relevance else None)
    for spec in generators.values():
        families.setdefault(spec.family, FamilySpec(spec.family))  # a family with no encoder or boundaries
    unused = sorted(set(families) - {g.family for g in generators.values()})
    if unused:
        raise InvalidInputError(f"families.{unused[0]}", f"no generator of {source} is of this family")
    default = str(data.get("default_generator") or "")
    if not default:
        if len(generators) > 1:
            raise InvalidInputError("default_generator", f"{source} names several generators: say which is "
                                                         f"the default (one of {sorted(generators)})")
        default = next(iter(generators))
    if default not in generators:
        raise InvalidInputError("default_generator", f"{default[:100]!r} is not among {sorted(generators)} ({source})")
    clips = data.get("clips") or []
    if not isinstance(clips, list):
        raise InvalidInputError("clips", f"expected a list in {source}")
    return ModelConfig(source, default, generators, families,
                       tuple(_clip_entry(c, base, source, f"clips[{i}]") for i, c in enumerate(clips)),
                       _text_clip_entry(data.get("text_clip"), base, source), dict(data))


def default_models_file() -> Path:
    from faceedit.zoo import zoo_dir

    return zoo_dir() / DEFAULT_FILE


def load_model_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ModelConfig:
    """The model configuration: `path`, else $FACEEDIT_MODELS, else the demo zoo's models.yaml."""
    env = os.environ if env is None else env
    source = Path(path or env.get(ENV) or default_models_file()).expanduser().resolve()
    if not source.is_file():
        raise InvalidInputError(ENV, f"model configuration {source} does not exist")
    try:
        data = yaml.safe_load(source.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInputError(ENV, f"{source} is not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_model_config(data, source)
