"""DIFA's mean source CLIP embedding: computed with progress and cancel, cached by weights and settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from faceedit import artifacts
from faceedit.adaptation.clip import ClipModel
from faceedit.errors import CheckpointFormatError, FaceEditError, InvalidInputError
from faceedit.models.delta import state_fingerprint
from faceedit.models.stylegan2 import Generator

if TYPE_CHECKING:  # only types here
    from faceedit.adaptation.blob_cache import BlobCache
    from faceedit.adaptation.difa_config import DifaConfig

MeanProgress = Callable[[int, int], None]  # (samples done, samples in all)


class SourceMeanCancelled(FaceEditError):
    """`should_cancel` asked to stop between two batches of source samples; nothing was cached."""

    def __init__(self, done: int, total: int):
        self.done, self.total = done, total
        super().__init__(f"source CLIP mean cancelled after {done}/{total} samples")


@dataclass(frozen=True)
class SourceMean:
    """One CLIP model's mean source embedding [E], where it is cached, and whether this call computed it."""

    mean: Tensor
    key: str | None  # None when no cache was given
    computed: bool


def _z_batches(total: int, batch: int, dim: int, seed: int) -> list[Tensor]:
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(total, dim, generator=rng)
    return list(z.split(batch))


@torch.no_grad()
def source_clip_means(generator: Generator, clips: Sequence[ClipModel], samples: int = 512, batch: int = 16,
                      truncation: float = 1.0, seed: int = 0, progress: MeanProgress | None = None,
                      should_cancel: Callable[[], bool] | None = None) -> list[Tensor]:
    """Mean of the unit CLIP embeddings of `samples` source-generator images (random noise), per CLIP: [E] each.

    Every CLIP model sees the same images, so several cost one synthesis pass (the expensive part at
    1024 px) and each mean equals what a pass of its own would give. `progress(done, samples)` is
    called once with 0 before the first batch (so a caller learns that computing starts) and after
    each batch; `should_cancel()` is polled before each batch and raises SourceMeanCancelled.
    """
    if not clips:
        raise InvalidInputError("clips", "need at least one CLIP model")
    for name, value in (("samples", samples), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(name, f"must be a positive integer, got {value!r}")
    totals: list[Tensor | None] = [None] * len(clips)
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    done = 0
    if progress is not None:
        progress(done, samples)
    for z in _z_batches(samples, batch, generator.style_dim, seed):
        if should_cancel is not None and should_cancel():
            raise SourceMeanCancelled(done, samples)
        ws = generator.broadcast(generator.truncate(generator.mapping(z.to(device)), truncation))
        noise = generator.make_noise(z.shape[0], generator=rng)
        images = generator.synthesis(ws, noise=noise)  # [b, 3, S, S]
        for i, clip in enumerate(clips):
            emb = clip.encode_image(images).sum(0)  # [E]
            total = totals[i]
            totals[i] = emb if total is None else total + emb
        done += z.shape[0]
        if progress is not None:
            progress(done, samples)
    return [total / samples for total in totals if total is not None]  # none is None: samples ≥ 1


def source_clip_mean(generator: Generator, clip: ClipModel, samples: int = 512, batch: int = 16,
                     truncation: float = 1.0, seed: int = 0, progress: MeanProgress | None = None,
                     should_cancel: Callable[[], bool] | None = None) -> Tensor:
    """`source_clip_means` for one CLIP model: [E]."""
    return source_clip_means(generator, [clip], samples, batch, truncation, seed, progress, should_cancel)[0]


def source_mean_key(generator: Generator, clip: ClipModel, config: DifaConfig,
                    generator_fingerprint: str | None = None, clip_fingerprint: str | None = None) -> str:
    """The cache key of a mean: generator weights, CLIP weights and input size, sample count and truncation.

    Hashing the weights is the only cost (seconds for ViT-B and a 1024 px generator); pass the
    fingerprints when they are known. The batch size is not part of it: it changes only which
    noise each sample draws, not what the mean estimates.
    """
    gen_fp = generator_fingerprint or state_fingerprint(generator)
    clip_fp = clip_fingerprint or state_fingerprint(clip.model)
    settings = f"n{config.clip_mean_samples}-t{config.truncation:g}"
    return f"clip-mean/{gen_fp[:24]}-{clip_fp[:24]}-{clip.image_size}-{settings}.safetensors"


def _read(cache: BlobCache, key: str) -> Tensor | None:
    blob = cache.get(key)
    if blob is None:
        return None
    try:
        return artifacts.from_bytes(blob, key).tensors["mean"]
    except (CheckpointFormatError, KeyError):
        return None  # a damaged cache entry is recomputed and overwritten, not fatal


def source_means(generator: Generator, clips: Sequence[ClipModel], config: DifaConfig, cache: BlobCache | None,
                 progress: MeanProgress | None = None, should_cancel: Callable[[], bool] | None = None,
                 generator_fingerprint: str | None = None,
                 clip_fingerprints: Sequence[str] | None = None) -> list[SourceMean]:
    """The mean source embedding for each of `clips`: read from `cache`, the missing ones computed in one
    pass and stored. `progress` is called only while something is computed."""
    if clip_fingerprints is not None and len(clip_fingerprints) != len(clips):
        raise InvalidInputError("clip_fingerprints",
                                f"{len(clip_fingerprints)} fingerprints for {len(clips)} CLIP models")
    sampling = (config.clip_mean_samples, config.clip_mean_batch, config.truncation)
    if cache is None:
        means = source_clip_means(generator, clips, *sampling, progress=progress, should_cancel=should_cancel)
        return [SourceMean(mean, None, True) for mean in means]
    gen_fp = generator_fingerprint or state_fingerprint(generator)
    fingerprints = clip_fingerprints or [state_fingerprint(clip.model) for clip in clips]
    keys = [source_mean_key(generator, clip, config, gen_fp, fp) for clip, fp in zip(clips, fingerprints)]
    means: dict[str, Tensor] = {}
    for key in keys:
        if key not in means and (cached := _read(cache, key)) is not None:
            means[key] = cached
    missing = list(dict.fromkeys(key for key in keys if key not in means))  # a CLIP listed twice is computed once
    if missing:
        todo = [clips[keys.index(key)] for key in missing]
        for key, mean in zip(missing, source_clip_means(generator, todo, *sampling, progress=progress,
                                                        should_cancel=should_cancel)):
            cache.put(key, artifacts.to_bytes({"mean": mean}))
            means[key] = mean
    return [SourceMean(means[key], key, key in missing) for key in keys]

def cached_source_clip_mean(generator: Generator, clip: ClipModel, config: DifaConfig, cache: BlobCache | None,
                            generator_fingerprint: str | None = None, clip_fingerprint: str | None = None,
                            progress: MeanProgress | None = None,
                            should_cancel: Callable[[], bool] | None = None) -> Tensor:
    """`source_clip_mean`, computed once per (generator weights, CLIP weights, sampling settings)."""
    fingerprints = [clip_fingerprint] if clip_fingerprint is not None else None
    return source_means(generator, [clip], config, cache, progress, should_cancel, generator_fingerprint,
                        fingerprints)[0].mean


def prepare_source_mean(generator: Generator, clips: Sequence[ClipModel], config: DifaConfig, cache: BlobCache,
                        progress: MeanProgress | None = None,
                        should_cancel: Callable[[], bool] | None = None) -> dict[str, bool]:
    """Make sure `cache` holds the mean for every CLIP model, computing only the missing ones (in one pass).

    Returns each CLIP's cache key (in order) → whether this call computed it; all False: nothing to do.
    """
    return {m.key: m.computed for m in source_means(generator, clips, config, cache, progress, should_cancel)
            if m.key is not None}


def has_source_mean(generator: Generator, clips: Sequence[ClipModel], config: DifaConfig, cache: BlobCache,
                    generator_fingerprint: str | None = None) -> bool:
    """Whether `cache` already holds a readable mean for every CLIP model (so an adaptation starts at once)."""
    gen_fp = generator_fingerprint or state_fingerprint(generator)
    return all(_read(cache, source_mean_key(generator, clip, config, gen_fp)) is not None for clip in clips)


__all__ = [
    "MeanProgress",
    "SourceMean",
    "SourceMeanCancelled",
    "cached_source_clip_mean",
    "has_source_mean",
    "prepare_source_mean",
    "source_clip_mean",
    "source_clip_means",
    "source_mean_key",
    "source_means",
]
