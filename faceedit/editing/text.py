"""Text-driven edits (StyleCLIP global directions): channel relevance in StyleSpace, a prompt → a style direction.

Each style channel is pushed ±kσ on N samples; the mean change of the CLIP image embedding is that channel's
relevance (computed once per generator and CLIP: `channel_relevance`). A prompt pair (target, neutral) gives a
direction in CLIP's text space; the channels whose relevance agrees with it by at least the threshold β move,
in proportion, by `strength` α standard deviations (`text_direction`, `apply_text_direction`, `text_edit`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from faceedit import artifacts
from faceedit.adaptation.blob_cache import BlobCache
from faceedit.errors import CheckpointFormatError, InvalidInputError
from faceedit.models.stylegan2 import Generator

RELEVANCE_KIND = "faceedit.channel_relevance"
KEY_FIELD = "faceedit.relevance_key"  # a finished one names its (generator, CLIP, settings) key
MAX_PROMPT_CHARS = 300
# Several phrasings of each prompt, averaged in CLIP's text space (StyleCLIP's prompt engineering).
TEMPLATES = ("{}", "a photo of {}", "a picture of {}", "a close-up photo of {}", "a rendering of {}")


class ImageTextModel(Protocol):
    """What text edits need of a CLIP (faceedit.adaptation.clip.ClipModel has both)."""

    def encode_image(self, images: Tensor) -> Tensor: ...  # [B, 3, H, W] in [-1, 1] → unit [B, E]

    def encode_text(self, captions: Sequence[str]) -> Tensor: ...  # → unit [len, E]


def _groups(clip: ImageTextModel, width: int) -> list[slice]:
    """The parts of an embedding each CLIP of `clip` owns: one for a single CLIP, one per member of a
    faceedit.adaptation.clip.ClipEnsemble (its `embedding_groups`)."""
    sizes = getattr(clip, "embedding_groups", ()) or (width,)
    assert sum(sizes) == width, (sizes, width)
    bounds = [0, *itertools.accumulate(sizes)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class RelevanceConfig:
    """How the channel relevance is measured: StyleCLIP pushes each channel ±5σ on 100 samples; fewer here
    by default (a CPU), which the README's table measures against."""

    samples: int = 16
    push: float = 5.0  # k: each channel moves ±k of its standard deviation over the samples
    channels_per_batch: int = 8  # channels pushed per step (2 x channels x samples images)
    images_per_call: int = 256  # synthesised at once (memory: ~0.55 GB per image at 1024 px; 8 on a 16 GB GPU)
    include_rgb: bool = False  # StyleCLIP leaves the toRGB styles out (they shift colour everywhere)
    seed: int = 0

    def measurement(self) -> dict:
        """What decides the result (the key of a cached one; what a resume must match): not the batching."""
        return {"samples": self.samples, "push": self.push, "include_rgb": self.include_rgb, "seed": self.seed}

    def __post_init__(self) -> None:
        if not (isinstance(self.samples, int) and 2 <= self.samples <= 1000):
            raise InvalidInputError("samples", f"must be an integer in [2, 1000], got {self.samples!r}")
        if not (isinstance(self.images_per_call, int) and 1 <= self.images_per_call <= 65536):
            raise InvalidInputError("images_per_call", f"must be in [1, 65536], got {self.images_per_call!r}")
        if not (isinstance(self.channels_per_batch, int) and 1 <= self.channels_per_batch <= 4096):
            raise InvalidInputError("channels_per_batch", f"must be in [1, 4096], got {self.channels_per_batch!r}")
        if not (math.isfinite(self.push) and 0 < self.push <= 50):
            raise InvalidInputError("push", f"must be in (0, 50], got {self.push!r}")


@dataclass
class ChannelRelevance:
    """Per style channel: the mean CLIP image-embedding change for +kσ vs -kσ, and σ itself."""

    relevance: Tensor  # [C, E], one row per channel of the used layers, in style_layers() order
    std: Tensor  # [C]
    layers: list[int]  # the style_layers() indices covered, in order
    widths: list[int]  # their channel counts (sum = C)
    done: int  # channels measured so far (a partial result resumes from here)
    config: RelevanceConfig

    @property
    def complete(self) -> bool:
        return self.done == sum(self.widths)

    def to_bytes(self, extra: dict[str, str] | None = None) -> bytes:
        meta = artifacts.metadata(RELEVANCE_KIND, {**asdict(self.config), "layers": self.layers,
                                                   "widths": self.widths, "done": self.done}, extra)
        return artifacts.to_bytes({"relevance": self.relevance.contiguous(), "std": self.std.contiguous()}, meta)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> ChannelRelevance:
        artifact = artifacts.from_bytes(data, source)
        if artifact.kind != RELEVANCE_KIND:
            raise CheckpointFormatError(source, f"not a channel relevance (faceedit.kind={artifact.kind!r})")
        config = dict(artifact.config(required=True))
        layers, widths, done = config.pop("layers"), config.pop("widths"), config.pop("done")
        relevance, std = artifact.tensors["relevance"], artifact.tensors["std"]
        if relevance.shape[0] != done or std.shape != (sum(widths),) or not 0 <= done <= sum(widths):
            raise CheckpointFormatError(source, f"inconsistent relevance: {relevance.shape[0]} rows for {done} "
                                                f"channels done, std {list(std.shape)} for {sum(widths)}")
        return cls(relevance, std, list(layers), list(widths), int(done), RelevanceConfig(**config))


def _used_layers(generator: Generator, include_rgb: bool) -> list[int]:
    rgb = {id(generator.to_rgb1.conv), *(id(t.conv) for t in generator.to_rgbs)}
    return [j for j, (conv, _) in enumerate(generator.style_layers()) if include_rgb or id(conv) not in rgb]


def channel_relevance(generator: Generator, clip: ImageTextModel, config: RelevanceConfig | None = None,
                      resume: ChannelRelevance | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      checkpoint: Callable[[ChannelRelevance], None] | None = None,
                      checkpoint_every: int = 256) -> ChannelRelevance:
    """The relevance of every style channel to CLIP's image embedding (StyleCLIP's global-direction
    precomputation): 2 x channels x samples images. `resume` continues a partial result of the same config;
    `checkpoint` is handed the partial result every `checkpoint_every` channels, `progress` (done, total)."""
    config = config or RelevanceConfig()
    generator.eval()
    device = next(generator.parameters()).device
    layers = _used_layers(generator, config.include_rgb)
    z = torch.randn(config.samples, generator.style_dim, generator=torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        ws = generator.broadcast(generator.mapping(z.to(device)))  # [N, L, D]
        styles = generator.styles(ws)  # per layer [N, C_l]
    widths = [styles[j].shape[1] for j in layers]
    total = sum(widths)
    if resume is not None:
        if resume.config.measurement() != config.measurement() or resume.layers != layers or resume.widths != widths:
            raise InvalidInputError("resume", "a partial relevance of another configuration or generator")
        result = dataclasses.replace(resume)  # the caller's partial result stays as it was
    else:
        std = torch.cat([styles[j].std(0) for j in layers]).cpu()  # [C]
        result = ChannelRelevance(torch.zeros(total, 0), std, layers, widths, 0, config)
    rows = [result.relevance] if result.done else []
    # Channel index → (layer, channel within it).
    where = [(j, c) for j, w in zip(layers, widths) for c in range(w)]
    n = config.samples
    last_checkpoint = result.done
    with torch.no_grad():
        while result.done < total:
            chunk = where[result.done:result.done + config.channels_per_batch]
            k = len(chunk)
            batch = [s.repeat(2 * k, 1) for s in styles]  # [2kN, C_l]: (channel, sign, sample)
            for i, (j, c) in enumerate(chunk):
                sigma = float(result.std[result.done + i]) * config.push
                batch[j][(2 * i) * n:(2 * i + 1) * n, c] += sigma
                batch[j][(2 * i + 1) * n:(2 * i + 2) * n, c] -= sigma
            step = config.images_per_call
            embeddings = torch.cat([clip.encode_image(generator.synthesis_from_styles([b[i:i + step] for b in batch]))
                                    .float() for i in range(0, 2 * k * n, step)])  # [2kN, E]
            embeddings = F.normalize(embeddings, dim=-1).reshape(k, 2, n, -1)
            rows.append((embeddings[:, 0] - embeddings[:, 1]).mean(1).cpu())  # [k, E]
            result.done += k
            if progress is not None:
                progress(result.done, total)
            if result.done == total or (checkpoint is not None and result.done - last_checkpoint >= checkpoint_every):
                result.relevance = torch.cat(rows)  # joined here, not per batch: C x E grows to MBs
                rows = [result.relevance]
                if checkpoint is not None:
                    checkpoint(result)
                last_checkpoint = result.done
    assert result.relevance.shape[0] == total
    return result


def relevance_key(generator: Generator, clip: ImageTextModel, config: RelevanceConfig) -> str:
    """One cache entry per (generator weights, CLIP weights, measurement settings)."""
    import hashlib
    import json

    from faceedit.models.delta import state_fingerprint

    clip_module = getattr(clip, "model", clip)
    settings = hashlib.sha256(json.dumps(config.measurement(), sort_keys=True).encode()).hexdigest()[:12]
    return f"relevance/{state_fingerprint(generator)[:24]}-{state_fingerprint(clip_module)[:24]}-{settings}.safetensors"


def cached_channel_relevance(generator: Generator, clip: ImageTextModel, cache: BlobCache,
                             config: RelevanceConfig | None = None,
                             progress: Callable[[int, int], None] | None = None) -> ChannelRelevance:
    """`channel_relevance` computed once per (generator, CLIP, settings) into `cache` (the artifact store's
    `cache/` in the services); a run cut short resumes from its last checkpoint (`<key>.partial`)."""
    config = config or RelevanceConfig()
    key = relevance_key(generator, clip, config)
    found = cache.get(key)
    if found is not None:
        return ChannelRelevance.from_bytes(found, key)
    partial = cache.get(key + ".partial")
    resume = ChannelRelevance.from_bytes(partial, key + ".partial") if partial is not None else None
    result = channel_relevance(generator, clip, config, resume=resume, progress=progress,
                               checkpoint=lambda r: cache.put(key + ".partial", r.to_bytes()))
    cache.put(key, result.to_bytes({KEY_FIELD: key}))
    return result


def recorded_key(data: bytes) -> str | None:
    """The cache key a finished relevance records (what it was computed for), or None."""
    return artifacts.header_metadata(data).get(KEY_FIELD)


def check_prompt(text: str, field: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(field, "is empty; give a prompt such as 'a smiling face'")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInputError(field, f"is {len(text)} characters, over the limit of {MAX_PROMPT_CHARS}")
    return text.strip()


def text_embedding(clip: ImageTextModel, text: str, templates: Sequence[str] = TEMPLATES) -> Tensor:
    """The prompt in every template, averaged and normalised (each ensemble member's part on its own): [E]."""
    mean = clip.encode_text([t.format(text) for t in templates]).float().mean(0)  # [E]
    return torch.cat([F.normalize(mean[g], dim=0) for g in _groups(clip, mean.shape[0])])


def text_direction(relevance: ChannelRelevance, clip: ImageTextModel, target: str, neutral: str = "a face",
                   threshold: float = 0.1, templates: Sequence[str] = TEMPLATES) -> Tensor:
    """The style-channel direction [C] for "neutral → target": each channel's (normalised) relevance
    · Δt, zero below `threshold` β, scaled so the largest is 1, in units of the channel's σ. With a
    ClipEnsemble each member does this with its own part of the embedding and the votes are averaged."""
    target, neutral = check_prompt(target, "target"), check_prompt(neutral, "neutral")
    if not relevance.complete:
        raise InvalidInputError("relevance", f"is partial ({relevance.done}/{sum(relevance.widths)} channels)")
    if not (math.isfinite(threshold) and 0 <= threshold < 1):
        raise InvalidInputError("threshold", f"must be in [0, 1), got {threshold}")
    t_target, t_neutral = text_embedding(clip, target, templates).cpu(), text_embedding(clip, neutral, templates).cpu()
    rows = relevance.relevance.float()  # [C, E]
    if rows.shape[1] != t_target.shape[0]:
        raise InvalidInputError("relevance", f"has {rows.shape[1]}-wide rows for a {t_target.shape[0]}-wide CLIP "
                                             "embedding: it was measured with another CLIP")
    votes = []  # each CLIP's channels, its largest at ±1
    for group in _groups(clip, rows.shape[1]):
        delta = F.normalize(t_target[group] - t_neutral[group], dim=0)
        cosine = F.normalize(rows[:, group], dim=1) @ delta  # [C]
        cosine = torch.where(cosine.abs() >= threshold, cosine, torch.zeros_like(cosine))
        peak = cosine.abs().max()
        if peak > 0:
            votes.append(cosine / peak)
    if not votes:
        raise InvalidInputError("threshold", f"no channel reaches {threshold} for {target!r}; lower the threshold")
    direction = torch.stack(votes).sum(0)  # [C]
    return direction / direction.abs().max() * relevance.std  # [C]


def apply_text_direction(styles: Sequence[Tensor], relevance: ChannelRelevance, direction: Tensor,
                         strength: float) -> list[Tensor]:
    """styles (Generator.styles) moved `strength` α along a text direction; the other layers unchanged."""
    if not math.isfinite(strength):
        raise InvalidInputError("strength", f"must be finite, got {strength}")
    moved = [s.clone() for s in styles]
    offset = 0
    for j, width in zip(relevance.layers, relevance.widths):
        moved[j] = moved[j] + strength * direction[offset:offset + width].to(moved[j])
        offset += width
    return moved


def text_edit(generator: Generator, clip: ImageTextModel, ws: Tensor, target: str, neutral: str = "a face",
              strength: float = 4.0, threshold: float = 0.1, relevance: ChannelRelevance | None = None,
              config: RelevanceConfig | None = None) -> Tensor:
    """W+ [B, n_latent, style_dim] edited towards `target` (from `neutral`) → images [B, 3, size, size].

    `relevance` is the precomputed `channel_relevance(generator, clip)`; without one it is computed here
    (minutes at 64 px; hours at 1024 on a CPU: precompute it once and pass it)."""
    relevance = relevance or channel_relevance(generator, clip, config)
    direction = text_direction(relevance, clip, target, neutral, threshold)
    with torch.no_grad():
        return generator.synthesis_from_styles(apply_text_direction(generator.styles(ws), relevance, direction,
                                                                    strength))
