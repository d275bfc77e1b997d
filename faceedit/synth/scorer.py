"""Attribute scorer: a small CNN that reads every renderer attribute and the style back from an image.

It is the classifier behind InterfaceGAN's attribute directions and the project's edit-quality
metric; its penultimate features double as a perceptual embedding (KID/FID-style statistics and
a feature distance). `score` answers on the renderer's own names and scales, so predictions
compare directly with `render_faces`' ground truth.

Weights ship as safetensors with `faceedit.kind = "scorer"` metadata plus a sidecar JSON
(config, sha256, metrics, training command); `load_scorer()` opens the demo zoo copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceedit import artifacts
from faceedit.errors import CheckpointError, CheckpointFormatError, CheckpointMismatchError, InvalidInputError
from faceedit.synth.attributes import ATTRIBUTE_NAMES, ATTRIBUTES
from faceedit.synth.render import STYLES

SCORER_KIND = "scorer"
SCORER_FILE = "scorer.safetensors"
MIN_INPUT_SIZE = 16


def _default_kinds() -> tuple[str, ...]:
    return tuple(ATTRIBUTES[n].kind for n in ATTRIBUTE_NAMES)


def _default_lows() -> tuple[float, ...]:
    return tuple(float(ATTRIBUTES[n].low) for n in ATTRIBUTE_NAMES)


def _default_highs() -> tuple[float, ...]:
    return tuple(float(ATTRIBUTES[n].high) for n in ATTRIBUTE_NAMES)


@dataclass(frozen=True)
class ScorerConfig:
    """Architecture and output vocabulary of a scorer (stored in the checkpoint's metadata)."""

    image_size: int = 64
    stem_width: int = 16  # a full-resolution conv first: smiles and eyelids are 1-2 px details
    widths: tuple[int, ...] = (32, 64, 128, 128)  # one stage per halving: 64→32→16→8→4
    feature_dim: int = 256
    attribute_names: tuple[str, ...] = ATTRIBUTE_NAMES
    attribute_kinds: tuple[str, ...] = field(default_factory=_default_kinds)
    attribute_lows: tuple[float, ...] = field(default_factory=_default_lows)
    attribute_highs: tuple[float, ...] = field(default_factory=_default_highs)
    style_names: tuple[str, ...] = STYLES

    def __post_init__(self) -> None:
        # Normalise lists (e.g. from JSON) to tuples so the config stays hashable and comparable.
        for name in ("widths", "attribute_names", "attribute_kinds", "attribute_lows", "attribute_highs",
                     "style_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.attribute_names)
        if not (len(self.attribute_kinds) == len(self.attribute_lows) == len(self.attribute_highs) == n):
            raise ValueError("attribute_names, _kinds, _lows and _highs must have the same length")
        if any(k not in ("continuous", "binary") for k in self.attribute_kinds):
            raise ValueError(f"attribute kinds must be 'continuous' or 'binary', got {self.attribute_kinds}")
        if any(hi <= lo for lo, hi in zip(self.attribute_lows, self.attribute_highs)):
            raise ValueError("every attribute needs high > low")
        if {"style", "style_probs"} & set(self.attribute_names):
            raise ValueError("'style' and 'style_probs' are reserved output names")
        if len(self.style_names) < 2:
            raise ValueError("need at least two styles")
        if self.image_size < MIN_INPUT_SIZE or self.image_size >> len(self.widths) < 1:
            raise ValueError(f"image_size {self.image_size} too small for {len(self.widths)} stages")
        if not self.widths or min(self.widths) < 1 or self.feature_dim < 1 or self.stem_width < 1:
            raise ValueError("widths and feature_dim must be positive")

    @property
    def n_attributes(self) -> int:
        return len(self.attribute_names)

    @property
    def n_styles(self) -> int:
        return len(self.style_names)

    @property
    def final_size(self) -> int:
        return self.image_size >> len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScorerConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ScorerConfig fields {unknown}")
        return cls(**dict(data))


class _Stage(nn.Module):
    """Stride-2 conv then a residual 3x3 conv: halves the resolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                                  nn.SiLU())
        self.conv = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return F.silu(x + self.conv(x))


class Scorer(nn.Module):
    """CNN: images [B, 3, H, W] in [-1, 1] → attribute predictions, style and a feature embedding."""

    def __init__(self, config: ScorerConfig | None = None):
        super().__init__()
        self.config = config = config or ScorerConfig()
        stem = config.stem_width
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.SiLU())
        chans = [stem, *config.widths]
        self.stages = nn.Sequential(*(_Stage(a, b) for a, b in zip(chans[:-1], chans[1:])))
        # Flatten (not pool) the last grid: pose and feature positions matter for yaw/pitch.
        self.embed = nn.Linear(config.widths[-1] * config.final_size ** 2, config.feature_dim)
        self.attr_head = nn.Linear(config.feature_dim, config.n_attributes)
        self.style_head = nn.Linear(config.feature_dim, config.n_styles)
        kinds = config.attribute_kinds
        self.register_buffer("_low", torch.tensor(config.attribute_lows, dtype=torch.float32), persistent=False)
        self.register_buffer("_high", torch.tensor(config.attribute_highs, dtype=torch.float32), persistent=False)
        self.register_buffer("_binary", torch.tensor([k == "binary" for k in kinds]), persistent=False)

    # -- inputs -------------------------------------------------------------------------------
    def prepare(self, images: Tensor) -> Tensor:
        """Validate and resize to the training size (antialiased), on the model's device and dtype."""
        if not isinstance(images, Tensor):
            raise InvalidInputError("images", f"expected a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise InvalidInputError("images", f"expected shape [B, 3, H, W], got {tuple(images.shape)}")
        b, c, h, w = images.shape
        if c != 3:
            raise InvalidInputError("images", f"expected 3 channels, got {c} (shape {tuple(images.shape)})")
        if b == 0:
            raise InvalidInputError("images", "empty batch")
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise InvalidInputError("images", f"images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {h}x{w}")
        if not (images.is_floating_point()):
            raise InvalidInputError("images", f"expected floating point values in [-1, 1], got {images.dtype}")
        if not torch.isfinite(images).all():
            raise InvalidInputError("images", "contains NaN or infinite values")
        param = self.embed.weight
        x = images.to(device=param.device, dtype=param.dtype)
        size = self.config.image_size
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x

    # -- network ------------------------------------------------------------------------------
    def _features(self, x: Tensor) -> Tensor:
        return self._embedding(self.stages(self.stem(x)))

    def _embedding(self, last_map: Tensor) -> Tensor:
        return F.silu(self.embed(last_map.flatten(1)))

    def activations(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Prepared images → (the stem's and each stage's feature maps, attribute logits [B, n_attr]).
        For perceptual losses, where the full-resolution maps see 1-2 px details (eyelids, smiles)."""
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps, self.attr_head(self._embedding(maps[-1]))

    def features(self, images: Tensor) -> Tensor:
        """Penultimate embedding [B, feature_dim], for KID/FID-style statistics and perceptual distances."""
        return self._features(self.prepare(images))

    def logits(self, images: Tensor, prepared: bool = False) -> dict[str, Tensor]:
        """Raw outputs for training: "attributes" [B, n_attr] (sigmoid → normalised value or
        probability), "style" [B, n_styles] (softmax → style probabilities), "features" [B, D].

        `prepared=True` skips validation and resizing (the training loop feeds clean 64x64 batches).
        """
        x = images if prepared else self.prepare(images)
        feats = self._features(x)
        return {"attributes": self.attr_head(feats), "style": self.style_head(feats), "features": feats}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.score(images)

    def to_scores(self, out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map `logits` outputs onto the renderer's scales."""
        unit = torch.sigmoid(out["attributes"])
        low, high = self._low.to(unit.dtype), self._high.to(unit.dtype)
        values = torch.where(self._binary, unit, low + (high - low) * unit)
        scores = {name: values[:, i] for i, name in enumerate(self.config.attribute_names)}
        probs = torch.softmax(out["style"], dim=1)
        scores["style"] = probs.argmax(dim=1).to(probs.dtype)
        scores["style_probs"] = probs
        return scores

    def score(self, images: Tensor) -> dict[str, Tensor]:
        """Predictions on the renderer's names and scales: continuous attributes in [low, high],
        binary ones as probabilities in [0, 1], "style" as the argmax index (float) and
        "style_probs" [B, n_styles]. Differentiable except for "style"."""
        return self.to_scores(self.logits(images))

    def perceptual_distance(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-pair distance [B] between unit-normalised features: 0 same, up to 2 opposite."""
        fa = F.normalize(self.features(a), dim=1)
        fb = F.normalize(self.features(b), dim=1)
        return (fa - fb).pow(2).sum(dim=1)


# -- files ------------------------------------------------------------------------------------

def default_scorer_path() -> Path:
    from faceedit.zoo import zoo_dir

    return zoo_dir() / SCORER_FILE


def save_scorer(scorer: Scorer, path: str | Path, info: Mapping[str, Any] | None = None) -> str:
    """Write safetensors (metadata faceedit.kind="scorer" + config) and the sidecar JSON; returns the sha256.

    `info` (metrics, training command, wall time, hardware...) is merged into the sidecar.
    """
    # Integer buffers (BatchNorm's num_batches_tracked) are training bookkeeping; not shipped.
    tensors = {k: v.detach().to("cpu", torch.float32) for k, v in scorer.state_dict().items() if v.is_floating_point()}
    config = scorer.config.to_dict()
    record = {"format": "faceedit", "kind": SCORER_KIND, "config": config, **dict(info or {})}
    return artifacts.write(path, tensors, artifacts.metadata(SCORER_KIND, config), record)


def load_scorer(path: str | Path | None = None, device: str | torch.device = "cpu") -> Scorer:
    """Open a scorer (default: the shipped demo one) in eval mode, checking the sidecar sha256 if present."""
    path = Path(path) if path is not None else default_scorer_path()
    if not path.is_file():
        hint = " (set FACEEDIT_ZOO_DIR or train one: faceedit train scorer)" if path.name == SCORER_FILE else ""
        raise CheckpointError(path, "file does not exist" + hint)
    artifact = artifacts.read(path)  # ChecksumMismatchError / CheckpointFormatError, naming the file
    if artifact.kind != SCORER_KIND:
        raise CheckpointFormatError(path, f"not a scorer checkpoint (faceedit.kind={artifact.kind!r})")
    try:
        config = ScorerConfig.from_dict(artifact.config(required=True))
    except (TypeError, ValueError) as exc:
        raise CheckpointFormatError(path, f"bad faceedit.config metadata ({exc})") from None
    tensors = artifact.tensors
    scorer = Scorer(config)
    expected = {k for k, v in scorer.state_dict().items() if v.is_floating_point()}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(path, f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    try:
        scorer.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise CheckpointMismatchError(
            path, f"shapes do not match the config ({str(exc).splitlines()[-1][:200]})") from None
    return scorer.to(device).eval()
