"""The tiny seeded models the tests build on: 32 px generators, a small e4e encoder, a tiny CLIP, and their files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from faceedit.adaptation.clip import ClipModel, build_clip_module, wrap_clip
from faceedit.models import Encoder, EncoderConfig, Generator, GeneratorConfig
from faceedit.training.encoder import export_e4e
from faceedit.training.generator import export_rosinality

TINY_CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16}
SLIM_CHANNELS = {4: 32, 8: 32, 16: 16, 32: 8}  # the checkpoint and precision tests' generator (style_dim 32)
# A 4-block ViT, so DIFA's default token block (3) exists; the text tower is never used by DIFA.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 4, "head_width": 16},
    # open_clip's tokenizer's full vocabulary, so text prompts work (the embedding is 49408 x 16).
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def tiny_generator_config(style_dim: int = 64, channels: dict[int, int] = TINY_CHANNELS) -> GeneratorConfig:
    return GeneratorConfig(size=32, style_dim=style_dim, n_mlp=2, channels=dict(channels))


def tiny_generator(seed: int = 0, style_dim: int = 64, channels: dict[int, int] = TINY_CHANNELS,
                   noise_strength: float = 0.0) -> Generator:
    """A seeded 32 px generator. Noise strengths start at 0; `noise_strength` sets them as a trained one's are."""
    torch.manual_seed(seed)
    generator = Generator(tiny_generator_config(style_dim, channels)).eval()
    if noise_strength:
        with torch.no_grad():
            for name, param in generator.named_parameters():
                if name.endswith("noise.weight"):
                    param.fill_(noise_strength)
    return generator


def tiny_encoder_config(n_styles: int = 8, style_dim: int = 64, input_size: int = 32) -> EncoderConfig:
    return EncoderConfig(kind="e4e", n_styles=n_styles, style_dim=style_dim, input_size=input_size,
                         stage_units=(1, 1, 1, 1), stage_channels=(8, 16, 24, 32), se_reduction=4)


def tiny_encoder(seed: int = 1, n_styles: int = 8, style_dim: int = 64) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(tiny_encoder_config(n_styles, style_dim)).eval()


def tiny_clip(seed: int = 2) -> ClipModel:
    torch.manual_seed(seed)
    return wrap_clip(build_clip_module(TINY_CLIP)).eval().requires_grad_(False)


def tiny_text_clip(seed: int = 2) -> ClipModel:
    """The tiny CLIP with open_clip's tokenizer, for text prompts."""
    torch.manual_seed(seed)
    return wrap_clip(build_clip_module(TINY_CLIP), TINY_CLIP).eval().requires_grad_(False)


def write_tiny_models(root: Path, n_w_avg: int = 2000, noise_strength: float = 0.0) -> dict[str, Path]:
    """The tiny generator (rosinality .pt), a matching e4e encoder and the tiny CLIP (safetensors + card) as files."""
    root.mkdir(parents=True, exist_ok=True)
    generator = tiny_generator(noise_strength=noise_strength)
    export_rosinality(generator, root / "generator.pt", n_w_avg=n_w_avg)
    encoder = tiny_encoder(n_styles=generator.n_latent)
    encoder.set_latent_avg(generator.w_avg.clone())
    export_e4e(encoder, generator, root / "encoder.pt")
    torch.manual_seed(2)
    clip = build_clip_module(TINY_CLIP)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(root / "clip.safetensors"))
    (root / "clip.json").write_text(json.dumps({"model": "tiny test CLIP", "model_cfg": TINY_CLIP}))
    return {"generator": root / "generator.pt", "encoder": root / "encoder.pt", "clip": root / "clip.safetensors"}


def face_landmarks(left: float, top: float, side: float) -> np.ndarray:
    """68 points in iBUG order for a face filling the square (left, top, side): a jaw line (the lower half of an
    ellipse, chin at index 8) and brows above it; the other points at the face's centre. What a fake aligner
    returns, so the face mask (the jaw and brow hull) is that ellipse."""
    angles = np.concatenate([np.linspace(np.pi, 0, 17), np.linspace(-0.8 * np.pi, -0.2 * np.pi, 10), np.zeros(41)])
    radius = np.concatenate([np.ones(17), np.full(10, 0.6), np.zeros(41)])
    return np.stack([left + side * (0.5 + 0.3 * radius * np.cos(angles)),
                     top + side * (0.55 + 0.35 * radius * np.sin(angles))], 1)  # [68, 2]
