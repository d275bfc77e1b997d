"""CLIP models through open_clip (any architecture, weights from a local file) with the preprocessing DIFA needs."""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceedit.artifacts import sidecar_path, verify_sidecar
from faceedit.errors import (
    CheckpointFormatError,
    CheckpointMismatchError,
    InvalidInputError,
    NotFoundError,
)

# OpenAI's CLIP normalisation; open_clip's own models were trained with it too.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipConfig:
    """Which CLIP to build and where its weights are.

    `architecture` is an open_clip model name (e.g. "ViT-B-32"; OpenAI's original weights need the
    "-quickgelu" variants) unless `config_path` names a JSON model config: open_clip's layout
    (`embed_dim`, `vision_cfg`, `text_cfg`), an `open_clip_config.json`, or a faceedit model card,
    both of which nest it under "model_cfg". `weights` is a local state-dict file (.safetensors, or
    a .pt/.bin that loads with weights_only=True); None builds a randomly initialised model, which
    only training and tests want.
    """

    architecture: str = "ViT-B-32"
    config_path: str | None = None
    weights: str | None = None
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    # Upstream resizes generated images bicubically to the CLIP input size.
    resize_mode: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize_mode not in ("bicubic", "bilinear", "area", "nearest"):
            raise InvalidInputError("resize_mode",
                                    f"must be bicubic, bilinear, area or nearest, got {self.resize_mode!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise InvalidInputError(name, f"needs one value per RGB channel, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClipConfig:
        unknown = set(data) - {"architecture", "config_path", "weights", "mean", "std", "resize_mode"}
        if unknown:
            raise InvalidInputError("clip", f"unknown CLIP config keys {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "config_path": self.config_path, "weights": self.weights,
                "mean": list(self.mean), "std": list(self.std), "resize_mode": self.resize_mode}


@dataclass(frozen=True)
class TokenGrid:
    """Where the patch tokens sit in a block's output: after `prefix` class/register tokens."""

    prefix: int
    count: int


class ClipModel(nn.Module):
    """An open_clip model that takes generator images ([-1, 1], any square size) directly."""

    def __init__(self, model: nn.Module, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD,
                 resize_mode: str = "bicubic", tokenizer: Any = None, name: str = "clip"):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.resize_mode = resize_mode
        self.tokenizer = tokenizer
        self.name = name
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    # -- images ---------------------------------------------------------------------------------
    def preprocess(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [-1, 1] → CLIP input [B, 3, S, S]: centre square crop, resize, CLIP mean/std."""
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise InvalidInputError("images", f"expected [B, 3, H, W] in [-1, 1], got {shape}")
        height, width = images.shape[-2:]
        if height != width:
            # The reference may be any photo-shaped image; CLIP's own preprocess centre-crops too.
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            images = images[..., top:top + side, left:left + side]
        x = (images.float() + 1.0) / 2.0  # [B, 3, H, H] in [0, 1]
        if x.shape[-1] != self.image_size:
            shrinking = x.shape[-1] > self.image_size
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode=self.resize_mode,
                              align_corners=False, antialias=shrinking and self.resize_mode in ("bilinear", "bicubic"))
        assert x.shape[-2:] == (self.image_size, self.image_size)
        return (x - self.mean) / self.std  # [B, 3, S, S]

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings [B, embed_dim] for images in [-1, 1]."""
        return F.normalize(self.model.encode_image(self.preprocess(images)), dim=-1)

    def _blocks(self) -> nn.ModuleList:
        transformer = getattr(self.model.visual, "transformer", None)
        blocks = getattr(transformer, "resblocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise InvalidInputError("clip_layer", f"{self.name}: token features need an open_clip ViT image tower; "
                                                  f"{type(self.model.visual).__name__} has no transformer blocks")
        return blocks

    def token_grid(self) -> TokenGrid:
        grid = getattr(self.model.visual, "grid_size", None)
        if grid is None:
            raise InvalidInputError("clip_layer", f"{self.name}: the image tower has no patch grid")
        count = int(grid[0]) * int(grid[1])
        positions = self.model.visual.positional_embedding.shape[0]
        return TokenGrid(prefix=positions - count, count=count)

    @property
    def n_blocks(self) -> int:
        """Transformer blocks of the image tower (what `block` of `features` counts)."""
        return len(self._blocks())

    def features(self, images: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """One forward pass: (normalised embeddings [B, E], L2-normalised patch tokens [B, N, W] of `block`)."""
        blocks = self._blocks()
        if not -len(blocks) <= block < len(blocks):
            raise InvalidInputError("clip_layer", f"{self.name} has {len(blocks)} blocks, got block {block}")
        captured: list[Tensor] = []
        handle = blocks[block].register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            embedding = self.encode_image(images)
        finally:
            handle.remove()
        assert len(captured) == 1
        out = captured[0]
        if not getattr(self.model.visual.transformer, "batch_first", True):
            out = out.transpose(0, 1)
        grid = self.token_grid()
        assert out.shape[:2] == (images.shape[0], grid.prefix + grid.count), out.shape
        tokens = out[:, grid.prefix:]  # [B, N, W]: class and register tokens dropped
        return embedding, F.normalize(tokens, dim=-1)

    def tokens(self, images: Tensor, block: int) -> Tensor:
        """L2-normalised patch tokens [B, N, width] of transformer block `block` (0-based)."""
        return self.features(images, block)[1]

    # -- text -------------------------------------------------------------------------------------
    def encode_text(self, captions: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings [len(captions), embed_dim]."""
        if self.tokenizer is None:
            raise InvalidInputError("captions", f"{self.name} was built without a tokenizer")
        device = self.mean.device
        return F.normalize(self.model.encode_text(self.tokenizer(list(captions)).to(device)), dim=-1)


def parse_clip_spec(spec: str, field: str = "clips") -> tuple[ClipConfig, ...]:
    """CLIP models named as "[open_clip architecture=]weights[,…]" → configs.

    Without an architecture, the model config comes from the card JSON next to the weights (what
    `faceedit train clip` writes); with one, e.g. "ViT-B-32-quickgelu=/clip/b32.safetensors", open_clip's.
    """
    configs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        architecture, sep, weights = (part.strip() for part in item.partition("="))
        if not sep:
            architecture, weights = "", item
        elif not (architecture and weights):
            raise InvalidInputError(field, f"expected '[architecture=]weights', got {item!r}")
        if architecture:
            configs.append(ClipConfig(architecture=architecture, weights=weights))
        else:
            configs.append(ClipConfig(config_path=str(sidecar_path(Path(weights))), weights=weights))
    if not configs:
        raise InvalidInputError(field, f"names no CLIP model: {spec!r}")
    return tuple(configs)


def read_model_config(config: ClipConfig) -> dict[str, Any]:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg, …) that `config` names."""
    from faceedit.adaptation.torchvision_shim import import_open_clip

    open_clip = import_open_clip()
    if config.config_path is None:
        model_cfg = open_clip.get_model_config(config.architecture)
        if model_cfg is None:
            raise NotFoundError("open_clip architecture", config.architecture,
                                "pass config_path for a custom config; known: "
                                + ", ".join(open_clip.list_models()[:20]))
        return model_cfg
    path = Path(config.config_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(path, f"cannot read the CLIP model config ({exc})") from None
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise CheckpointFormatError(path, "not an open_clip model config: needs embed_dim, vision_cfg and "
                                          "text_cfg (at the top level or under 'model_cfg')")
    return model_cfg


class ConvStem(nn.Module):
    """Stride-2 3x3 convolutions in place of a ViT's patch embedding ("early convolutions", Xiao et al. 2021).

    A ViT trained from scratch on a few thousand images with a linear patch embedding learns colour and
    layout (style, age, hair) but not thin strokes: the demo CLIP's image embedding did not move when glasses
    or a smile were added (cos 0.997 between the two renders). Same output grid as the patch embedding.
    """

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        halvings = int(math.log2(patch_size))
        if 2 ** halvings != patch_size or halvings < 1:
            raise InvalidInputError("clip.vision_cfg.patch_size", f"a conv stem needs a power of two, got {patch_size}")
        first = max(16, width >> halvings)
        layers: list[nn.Module] = [nn.Conv2d(3, first, 3, padding=1, bias=False), nn.GroupNorm(1, first), nn.GELU()]
        channels = first
        for k in range(halvings):
            out = max(16, width >> (halvings - 1 - k))  # doubling up to the width
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.GroupNorm(1, out), nn.GELU(),
                       nn.Conv2d(out, out, 3, padding=1, bias=False), nn.GroupNorm(1, out), nn.GELU()]
            channels = out
        layers.append(nn.Conv2d(channels, width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # [B, 3, S, S] → [B, width, S / patch, S / patch]


def build_clip_module(model_cfg: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised open_clip CLIP from a model config dict (fp32, CPU); `vision_cfg.conv_stem: true`
    puts a ConvStem in place of the ViT's patch embedding."""
    from faceedit.adaptation.torchvision_shim import import_open_clip

    open_clip = import_open_clip()
    cfg = json.loads(json.dumps(dict(model_cfg)))  # deep copy; open_clip mutates what it is given
    if "multimodal_cfg" in cfg:
        raise InvalidInputError("clip.architecture", "CoCa models are not supported; use a contrastive CLIP")
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    conv_stem = bool(cfg.get("vision_cfg", {}).pop("conv_stem", False))
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        module = cls(**cfg)
    except (TypeError, ValueError, AssertionError) as exc:
        raise InvalidInputError("clip.config", f"open_clip cannot build this config: {exc}") from None
    if conv_stem:
        visual = module.visual
        if not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
            raise InvalidInputError("clip.vision_cfg.conv_stem", "needs an open_clip ViT image tower")
        visual.conv1 = ConvStem(visual.conv1.out_channels, visual.conv1.kernel_size[0])
    return module


def _tokenizer(model_cfg: Mapping[str, Any]) -> Any:
    from faceedit.adaptation.torchvision_shim import import_open_clip

    open_clip = import_open_clip()
    text_cfg = model_cfg.get("text_cfg", {})
    if "hf_tokenizer_name" in text_cfg:
        return None  # would need the Hugging Face hub; images still work
    return open_clip.tokenizer.SimpleTokenizer(context_length=int(text_cfg.get("context_length", 77)))


def check_weights_file(path: str | Path) -> Path:
    """Fail early (before building a large model) on a missing, tampered or TorchScript weights file."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("CLIP weights file", str(path))
    verify_sidecar(path)
    if _is_torchscript(path):
        raise CheckpointFormatError(
            path, "is a TorchScript archive (OpenAI's original CLIP download), which runs code to load. Convert "
                  "it once where you trust it: sd = torch.jit.load(path).state_dict(); drop 'input_resolution', "
                  "'context_length' and 'vocab_size'; save with safetensors; use a '-quickgelu' architecture")
    return path


def load_clip_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local CLIP state dict into `module` strictly, with errors that name the file."""
    from faceedit.adaptation.torchvision_shim import import_open_clip

    open_clip = import_open_clip()
    path = check_weights_file(path)
    try:
        open_clip.load_checkpoint(module, str(path), strict=True, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointFormatError(path, "needs arbitrary unpickling, which is refused; save the model's "
                                          "state_dict (or safetensors) instead") from None
    except RuntimeError as exc:
        text = str(exc)
        if "Error(s) in loading state_dict" in text or "size mismatch" in text:
            first = text.splitlines()[1].strip() if len(text.splitlines()) > 1 else text[:300]
            raise CheckpointMismatchError(path, f"weights do not fit the CLIP config ({first[:300]})") from None
        raise CheckpointFormatError(path, f"cannot read CLIP weights ({text.splitlines()[0][:200]})") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointFormatError(path, f"truncated or corrupt CLIP weights ({exc})") from None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def load_clip(config: ClipConfig, device: str | torch.device = "cpu") -> ClipModel:
    """Build the CLIP `config` names and load its weights; the result is frozen and in eval mode."""
    model_cfg = read_model_config(config)
    if config.weights is not None:
        check_weights_file(config.weights)
    module = build_clip_module(model_cfg)
    if config.weights is not None:
        load_clip_weights(module, config.weights)
    name = Path(config.config_path).stem if config.config_path else config.architecture
    module.eval().requires_grad_(False)
    return ClipModel(module, config.mean, config.std, config.resize_mode, _tokenizer(model_cfg), name).to(device)


class ClipEnsemble(nn.Module):
    """Several CLIPs read as one: each member's unit embedding, side by side, scaled by 1/√k (so unit again).

    The channel relevance is then every member's relevance at once (one artifact, one cache key), and
    `faceedit.editing.text.text_direction` lets each member vote with its own part (`embedding_groups`)
    before averaging the votes — as DIFA sums one loss per CLIP. Measured on the demo zoo (README): two
    text CLIPs that alone pass four and two of seven prompts pass five together; joining their embeddings
    into one cosine passes four.
    """

    def __init__(self, members: Sequence[ClipModel]):
        super().__init__()
        if len(members) < 2:
            raise InvalidInputError("clips", f"an ensemble needs at least two CLIP models, got {len(members)}")
        self.members = nn.ModuleList(members)
        self._scale = 1.0 / math.sqrt(len(members))
        with torch.no_grad():  # each member's embedding width, from one caption
            self.embedding_groups = tuple(int(m.encode_text(["a face"]).shape[-1]) for m in members)

    @property
    def model(self) -> nn.Module:
        """What identifies its weights (faceedit.editing.text.relevance_key reads `.model`): every member's."""
        return nn.ModuleList(m.model for m in self.members)

    def _joined(self, parts: list[Tensor]) -> Tensor:
        assert tuple(p.shape[-1] for p in parts) == self.embedding_groups
        return torch.cat([F.normalize(p.float(), dim=-1) for p in parts], dim=-1) * self._scale  # [B, ΣE]

    def encode_image(self, images: Tensor) -> Tensor:
        return self._joined([m.encode_image(images) for m in self.members])

    def encode_text(self, captions: Sequence[str]) -> Tensor:
        return self._joined([m.encode_text(captions) for m in self.members])


def load_text_clip(spec: str, device: str | torch.device = "cpu",
                   field: str = "text_clip") -> ClipModel | ClipEnsemble:
    """The CLIP text edits read, from a "[architecture=]weights[,…]" spec: one model, or several read as one
    (ClipEnsemble)."""
    models = [load_clip(config, device) for config in parse_clip_spec(spec, field)]
    return models[0] if len(models) == 1 else ClipEnsemble(models).to(device)


def wrap_clip(module: nn.Module, model_cfg: Mapping[str, Any] | None = None, **kwargs: Any) -> ClipModel:
    """Wrap an already built open_clip model (e.g. during training); pass its config to get a tokenizer."""
    tokenizer = _tokenizer(model_cfg) if model_cfg is not None else None
    return ClipModel(module, tokenizer=tokenizer, **kwargs)

