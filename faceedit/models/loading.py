"""Build generators and encoders from checkpoint files, inferring their configs from the weights."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from faceedit.artifacts import sha256_file
from faceedit.checkpoints import (
    DELTA_KIND,
    ENCODER_KIND,
    FACEEDIT,
    GENERATOR_KIND,
    Checkpoint,
    read_checkpoint,
    write_safetensors,
)
from faceedit.errors import CheckpointError, CheckpointMismatchError, FaceEditError
from faceedit.models.delta import apply_delta
from faceedit.models.encoders import Encoder, EncoderConfig, infer_encoder_config
from faceedit.models.stylegan2 import Generator, GeneratorConfig, standard_channels

_STYLE_KEY = re.compile(r"^style\.(\d+)\.weight$")
_TO_RGB_KEY = re.compile(r"^to_rgbs\.(\d+)\.conv\.weight$")
_SUPPORTED_ENCODERS = (None, "GradualStyleEncoder", "Encoder4Editing")


def infer_generator_config(shapes: Mapping[str, Sequence[int]], source: str = "<state_dict>",
                           lr_mlp: float = 0.01) -> GeneratorConfig:
    """Read size, style_dim, n_mlp and widths off the tensor shapes of a rosinality state dict."""
    shapes = {k: tuple(v) for k, v in shapes.items()}

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointMismatchError(source, f"cannot infer the generator config: key {key!r} is missing")
        return shapes[key]

    n_mlp = sum(1 for k in shapes if _STYLE_KEY.match(k))
    n_rgb = sum(1 for k in shapes if _TO_RGB_KEY.match(k))
    if n_mlp == 0:
        raise CheckpointMismatchError(source, "cannot infer the generator config: no 'style.N.weight' keys")
    style_dim = need("style.1.weight")[0]
    size = 2 ** (n_rgb + 2)
    channels = {4: need("conv1.conv.weight")[1]}
    for k in range(n_rgb):
        channels[2 ** (k + 3)] = need(f"convs.{2 * k}.conv.weight")[1]
    for multiplier in (2, 1, 4):
        if standard_channels(size, multiplier) == channels:
            return GeneratorConfig(size, style_dim, n_mlp, multiplier, lr_mlp=lr_mlp)
    return GeneratorConfig(size, style_dim, n_mlp, channels=channels, lr_mlp=lr_mlp)


def _check_keys(model: nn.Module, state: Mapping[str, Tensor], source: str, config: dict) -> None:
    """Strict key and shape match, with an error that lists what differs and the config inferred."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [f"{k}: file {given[k]} vs model {expected[k]}"
             for k in sorted(set(expected) & set(given)) if expected[k] != given[k]]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", wrong)):
            if items:
                more = f" … and {len(items) - 8} more" if len(items) > 8 else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:8])}{more}")
        raise CheckpointMismatchError(source, f"weights do not match the inferred config {config}: "
                                              + "; ".join(parts))


def _materialise(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load `state` into a model built on the meta device, without a random init first."""
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=True, assign=True)


def build_generator(state: Mapping[str, Tensor], config: GeneratorConfig | None = None,
                    latent_avg: Tensor | None = None, source: str = "<state_dict>") -> Generator:
    """A generator in eval mode with frozen parameters, from rosinality-named weights."""
    config = config or infer_generator_config({k: v.shape for k, v in state.items()}, source)
    with torch.device("meta"):
        generator = Generator(config)
    _check_keys(generator, state, source, config.to_dict())
    _materialise(generator, state)
    generator.w_avg_cache = torch.zeros(config.style_dim)
    if latent_avg is not None:
        generator.set_w_avg(latent_avg.float())
    return generator.eval().requires_grad_(False)


def build_encoder(state: Mapping[str, Tensor], config: EncoderConfig,
                  latent_avg: Tensor | None = None, source: str = "<state_dict>") -> Encoder:
    with torch.device("meta"):
        encoder = Encoder(config)
    _check_keys(encoder, state, source, config.to_dict())
    _materialise(encoder, state)
    encoder.latent_avg = torch.zeros(config.n_styles, config.style_dim)
    if latent_avg is not None:
        encoder.set_latent_avg(latent_avg.float())
    return encoder.eval().requires_grad_(False)


def _require(ckpt: Checkpoint, part: str, other_loader: str) -> None:
    if getattr(ckpt, part) is None:
        raise CheckpointError(ckpt.path, f"holds no {part} weights (it is a {ckpt.kind} checkpoint); "
                                         f"pass it to {other_loader} instead")


def generator_from_checkpoint(ckpt: Checkpoint) -> Generator:
    source = str(ckpt.path)
    _require(ckpt, "generator", "load_encoder")
    if ckpt.kind == DELTA_KIND:
        raise CheckpointError(ckpt.path, "is an adaptation delta: load it onto its base generator")
    config = GeneratorConfig.from_dict(ckpt.config) if ckpt.format == FACEEDIT else None
    return build_generator(ckpt.generator, config, ckpt.latent_avg, source)


def encoder_from_checkpoint(ckpt: Checkpoint) -> Encoder:
    source = str(ckpt.path)
    _require(ckpt, "encoder", "load_generator")
    if ckpt.format == FACEEDIT:
        config = EncoderConfig.from_dict(ckpt.config)
    else:
        encoder_type = ckpt.config.get("encoder_type")
        if encoder_type not in _SUPPORTED_ENCODERS:
            raise CheckpointError(ckpt.path, f"encoder_type {encoder_type!r} is not supported; "
                                             "supported: GradualStyleEncoder (pSp) and Encoder4Editing (e4e)")
        kind = "e4e" if ckpt.format == "e4e" else "psp"
        config = infer_encoder_config(ckpt.encoder, kind, source=source)
    latent_avg = ckpt.latent_avg
    if latent_avg is None and ckpt.config.get("start_from_latent_avg") and ckpt.generator is not None:
        # e4e computes it from its decoder when the file lacks it; do the same.
        latent_avg = generator_from_checkpoint(ckpt).w_avg
    return build_encoder(ckpt.encoder, config, latent_avg, source)


def load_generator(path: str | Path, device: str | torch.device = "cpu",
                   base: str | Path | Generator | None = None) -> Generator:
    """A generator from a rosinality, pSp/e4e (its decoder) or faceedit safetensors checkpoint.

    An adaptation delta (only DIFA's trained tensors) needs `base`: the generator it was trained
    from, as a path or a loaded Generator; a delta trained on other weights is refused.
    """
    ckpt = read_checkpoint(path)
    if ckpt.kind != DELTA_KIND:
        return generator_from_checkpoint(ckpt).to(device)
    if base is None:
        raise CheckpointError(ckpt.path, "is an adaptation delta: pass its base generator as `base=`")
    base_generator = base if isinstance(base, Generator) else load_generator(base)
    return apply_delta(base_generator, path).to(device)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """A pSp or e4e encoder (with its latent_avg) from an official or faceedit checkpoint."""
    return encoder_from_checkpoint(read_checkpoint(path)).to(device)


def convert_checkpoint(src: str | Path, out_dir: str | Path, trust_pickle: bool = False) -> list[Path]:
    """Write each model in `src` as `generator.safetensors` / `encoder.safetensors` with sidecar
    JSON (config, sha256, provenance); optimizer, discriminator and argument state are dropped."""
    src, out_dir = Path(src), Path(out_dir)
    ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
    provenance = {"source": src.name, "source_format": ckpt.format, "source_sha256": sha256_file(src)}
    written: list[Path] = []
    if ckpt.generator is not None and ckpt.kind != DELTA_KIND:
        generator = generator_from_checkpoint(ckpt)
        tensors = {**generator.state_dict(), "latent_avg": generator.w_avg}
        target = out_dir / "generator.safetensors"
        write_safetensors(target, tensors, GENERATOR_KIND, generator.config.to_dict(), provenance)
        written.append(target)
    if ckpt.encoder is not None:
        encoder = encoder_from_checkpoint(ckpt)
        tensors = {**encoder.state_dict(), "latent_avg": encoder.latent_avg}
        target = out_dir / "encoder.safetensors"
        write_safetensors(target, tensors, ENCODER_KIND, encoder.config.to_dict(), provenance)
        written.append(target)
    if not written:
        raise FaceEditError(f"{src}: nothing to convert")
    return written
