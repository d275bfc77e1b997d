"""DIFA one-shot domain adaptation of a StyleGAN2 generator to one reference artwork
(CLIP global + local losses, e4e consistency)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from faceedit.adaptation.blob_cache import BlobCache, DirectoryCache
from faceedit.adaptation.clip import ClipModel
from faceedit.adaptation.clip_mean import (
    MeanProgress,
    SourceMeanCancelled,
    source_means,
)
from faceedit.adaptation.difa_config import DifaConfig
from faceedit.adaptation.difa_losses import (
    CodeWindow,
    consistency_loss,
    consistency_ramp,
    encode_first_layers,
    global_loss,
    local_loss,
    reference_direction,
)
from faceedit.errors import (
    CheckpointFormatError,
    CheckpointMismatchError,
    FaceEditError,
    InvalidInputError,
)
from faceedit.models.delta import (
    save_delta,
    state_fingerprint,
    trainable_names,
    with_tensors,
)
from faceedit.models.encoders import Encoder
from faceedit.models.stylegan2 import Generator

CHECKPOINT_FILE = "difa-checkpoint.pt"
ProgressCallback = Callable[[int, int, dict[str, float]], None]


class AdaptationCancelled(FaceEditError):
    """`should_cancel` asked to stop; the run's checkpoint (if any) lets it resume.

    `preparing`: it stopped while computing the mean source CLIP embedding, before any iteration.
    """

    def __init__(self, iteration: int, preparing: bool = False):
        self.iteration, self.preparing = iteration, preparing
        when = "while preparing the mean source CLIP embedding" if preparing else f"after {iteration} iterations"
        super().__init__(f"adaptation cancelled {when}")


@dataclass
class AdaptationResult:
    """The trained tensors (a delta over the base) and how the run went."""

    delta: dict[str, Tensor]
    iterations: int
    history: list[dict[str, float]]
    seconds: float
    base_fingerprint: str
    config: DifaConfig
    resumed_from: int = 0

    def apply(self, base: Generator) -> Generator:
        """A copy of `base` carrying the adapted tensors."""
        if state_fingerprint(base) != self.base_fingerprint:
            raise InvalidInputError("base", "this is not the generator the adaptation started from")
        return with_tensors(base, self.delta)

    def save(self, path: str | Path, base: Generator, info: dict[str, Any] | None = None) -> str:
        """Write the delta as safetensors (+ sidecar JSON); returns its sha256."""
        record = {"method": "difa", "iterations": self.iterations, "seconds": round(self.seconds, 2),
                  "difa_config": self.config.to_dict(), **(info or {})}
        return save_delta(self.apply(base), base, path, record)


# -- training --------------------------------------------------------------------------------------
def _check_reference(reference: Tensor) -> Tensor:
    if not isinstance(reference, Tensor):
        raise InvalidInputError("reference_image", f"must be a tensor, got {type(reference).__name__}")
    if reference.ndim == 3:
        reference = reference.unsqueeze(0)
    if reference.ndim != 4 or reference.shape[:2] != (1, 3) or min(reference.shape[-2:]) < 8:
        raise InvalidInputError("reference_image", f"expected [3, H, W] or [1, 3, H, W], got {list(reference.shape)}")
    if not reference.is_floating_point() or not bool(torch.isfinite(reference).all()):
        raise InvalidInputError("reference_image", "must be finite floating point in [-1, 1]")
    if reference.min() < -1.01 or reference.max() > 1.01:
        raise InvalidInputError("reference_image", "values must be in [-1, 1]")
    return reference


def make_target(base: Generator) -> Generator:
    """Trainable copy of `base` under the upstream freezing policy (mapping and ToRGB frozen)."""
    target = copy.deepcopy(base).train().requires_grad_(False)
    trainable = set(trainable_names(target))
    for name, param in target.named_parameters():
        param.requires_grad_(name in trainable)
    return target


@dataclass
class _Prepared:
    """What every iteration needs and does not change: reference features and CLIP directions."""

    weights: tuple[float, ...]
    directions: list[Tensor]  # [E] per CLIP
    reference_tokens: list[Tensor]  # [1, M, W] per CLIP
    run_key: str  # identifies the run a checkpoint belongs to
    base_fingerprint: str


def _prepare(base: Generator, encoder: Encoder, clips: Sequence[ClipModel], reference: Tensor,
             config: DifaConfig, cache: BlobCache | None, progress: MeanProgress | None = None,
             should_cancel: Callable[[], bool] | None = None) -> _Prepared:
    base_fp = state_fingerprint(base)
    weights = config.weights_for(len(clips))
    device = next(base.parameters()).device
    with torch.no_grad():
        features = [clip.features(reference.to(device), config.clip_layer) for clip in clips]  # [1, E], [1, M, W]
    clip_fps = [state_fingerprint(clip.model) for clip in clips]
    means = source_means(base, clips, config, cache, progress, should_cancel, base_fp, clip_fps)
    directions = [reference_direction(ref_emb, m.mean) for (ref_emb, _), m in zip(features, means)]
    ref_tokens = [tokens for _, tokens in features]
    # A checkpoint belongs to one run: same settings, base, CLIP models and reference image.
    reference_sha = hashlib.sha256(reference.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()
    # CLIP models are identified by their weights, not by where the config says they were mounted.
    settings = {k: v for k, v in config.to_dict().items() if k not in ("clips", "checkpoint_every")}
    run = {"config": settings, "base": base_fp, "clips": clip_fps, "reference": reference_sha,
           "encoder": state_fingerprint(encoder)}
    run_key = hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()
    return _Prepared(weights, directions, ref_tokens, run_key=run_key, base_fingerprint=base_fp)


def difa_losses(source: Generator, target: Generator, encoder: Encoder, clips: Sequence[ClipModel],
                prepared: _Prepared, windows: CodeWindow, z: Tensor, noise: tuple[list[Tensor], list[Tensor]],
                iteration: int, config: DifaConfig) -> tuple[Tensor, dict[str, float]]:
    """The total DIFA loss for one batch of z [B, style_dim] with (source, target) noise, and its parts as floats.

    As upstream, the two generators get independent noise: with shared noise the first iteration's
    images coincide, the CLIP direction e(G_t) − e(G_s) is zero and its normalisation has no
    usable gradient (Adam's second moment would then damp the whole run).
    """
    with torch.no_grad():
        ws = source.broadcast(source.truncate(source.mapping(z), config.truncation))  # [B, n_latent, D]
        source_images = source.synthesis(ws, noise=noise[0])  # [B, 3, S, S]
    target_images = target.synthesis(ws, noise=noise[1])  # [B, 3, S, S]

    total = target_images.new_zeros(())
    parts = {"global": 0.0, "local": 0.0}
    for clip, weight, direction, ref_tokens in zip(clips, prepared.weights, prepared.directions,
                                                   prepared.reference_tokens):
        with torch.no_grad():
            source_emb = clip.encode_image(source_images)  # [B, E]
        target_emb, target_tokens = clip.features(target_images, config.clip_layer)  # [B, E], [B, N, W]
        l_global = global_loss(target_emb, source_emb, direction)
        l_local = local_loss(target_tokens, ref_tokens)
        total = total + weight * (config.lambda_global * l_global + config.lambda_local * l_local)
        parts["global"] += float(l_global.detach())
        parts["local"] += float(l_local.detach())

    ramp = consistency_ramp(iteration, config.sliding_window, config.iterations)
    with torch.no_grad():
        source_codes = encode_first_layers(encoder, source_images, config.num_keep_first)  # [B, F]
    if ramp > 0:
        target_codes = encode_first_layers(encoder, target_images, config.num_keep_first)  # [B, F]
    else:
        with torch.no_grad():  # only the windows need the codes while the ramp is off
            target_codes = encode_first_layers(encoder, target_images, config.num_keep_first)
    windows.push(source_codes, target_codes)
    l_cons = consistency_loss(target_codes, source_codes, windows.mask(config.psp_alpha))
    total = total + ramp * config.consistency_weight * l_cons
    parts.update(consistency=float(l_cons.detach()), ramp=ramp, total=float(total.detach()))
    return total, parts


def _save_checkpoint(store: BlobCache, iteration: int, target: Generator, optimizer: torch.optim.Optimizer,
                     rng: torch.Generator, windows: CodeWindow, history: list[dict[str, float]],
                     run_key: str) -> None:
    trained = {name: p.detach().clone() for name, p in target.named_parameters() if p.requires_grad}
    state = {"run_key": run_key, "iteration": iteration, "target": trained, "optimizer": optimizer.state_dict(),
             "rng": rng.get_state(), "windows": windows.state() if windows.source else {},
             "history": history}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    store.put(CHECKPOINT_FILE, buffer.getvalue())  # put is all-or-nothing: a crash keeps the previous one


def _load_checkpoint(store: BlobCache, run_key: str) -> dict[str, Any] | None:
    blob = store.get(CHECKPOINT_FILE)
    if blob is None:
        return None
    where = _describe(store, CHECKPOINT_FILE)
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointFormatError(where, f"unreadable DIFA checkpoint ({str(exc).splitlines()[0][:200]}); "
                                           "delete it to start over") from None
    if not isinstance(state, dict) or state.get("run_key") != run_key:
        raise CheckpointMismatchError(where, "belongs to a different adaptation run (settings, base generator, "
                                             "CLIP models or reference differ); use another checkpoint_dir")
    return state


def _describe(store: BlobCache, key: str) -> str:
    """Where `key` lives in `store`, for error messages (a path, or the key itself)."""
    where = getattr(store, "where", None)
    return where(key) if callable(where) else key


def adapt(base_generator: Generator, encoder: Encoder, clip_models: Sequence[ClipModel], reference_image: Tensor,
          config: DifaConfig = DifaConfig(), progress: ProgressCallback | None = None,
          should_cancel: Callable[[], bool] | None = None, checkpoint_dir: str | Path | BlobCache | None = None,
          clip_mean_cache: BlobCache | None = None,
          prepare_progress: MeanProgress | None = None) -> AdaptationResult:
    """Adapt a copy of `base_generator` to the domain of `reference_image` ([1, 3, H, W] in [-1, 1]).

    `progress(done, total, losses)` is called after each iteration; `should_cancel()` is polled
    before each one and raises AdaptationCancelled (after a checkpoint). Before the first, the mean
    source CLIP embedding is read from `clip_mean_cache` or computed (minutes at 1024 px) and stored
    there; only while it is computed, `prepare_progress(samples_done, samples)` is called with 0 and
    after each batch of source samples, and `should_cancel()` is polled before each batch
    (AdaptationCancelled with `preparing` set). With `checkpoint_dir` (a
    directory, or any BlobCache such as a job's folder in the artifact store), state is saved as
    CHECKPOINT_FILE every `config.checkpoint_every` iterations and a later call resumes from it;
    the caller removes it once it has stored the result. The base generator is left untouched;
    the encoder and CLIP models are frozen (requires_grad off).
    """
    if not clip_models:
        raise InvalidInputError("clip_models", "need at least one CLIP model")
    if encoder.n_styles < min(config.num_keep_first, base_generator.n_latent):
        raise InvalidInputError("encoder", f"has {encoder.n_styles} styles, fewer than the layers compared")
    started = time.perf_counter()
    reference = _check_reference(reference_image)
    source = base_generator
    # The helpers are inference models here: no gradient may accumulate in them.
    encoder.eval().requires_grad_(False)
    for clip in clip_models:
        clip.eval().requires_grad_(False)
    try:
        prepared = _prepare(source, encoder, clip_models, reference, config, clip_mean_cache, prepare_progress,
                            should_cancel)
    except SourceMeanCancelled:
        raise AdaptationCancelled(0, preparing=True) from None

    target = make_target(source)
    params = [p for p in target.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    rng = torch.Generator().manual_seed(config.seed)
    windows = CodeWindow(config.sliding_window)
    history: list[dict[str, float]] = []
    start = 0
    ckpt_store: BlobCache | None
    if checkpoint_dir is None or isinstance(checkpoint_dir, (str, os.PathLike)):
        ckpt_store = DirectoryCache(checkpoint_dir) if checkpoint_dir is not None else None
    else:
        ckpt_store = checkpoint_dir
    if ckpt_store is not None and (state := _load_checkpoint(ckpt_store, prepared.run_key)) is not None:
        with torch.no_grad():
            for name, param in target.named_parameters():
                if name in state["target"]:
                    param.copy_(state["target"][name])
        optimizer.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        if state["windows"]:
            windows.load(state["windows"])
        history = list(state["history"])
        start = int(state["iteration"])

    def checkpoint(done: int) -> None:
        if ckpt_store is not None:
            _save_checkpoint(ckpt_store, done, target, optimizer, rng, windows, history, prepared.run_key)

    device = next(source.parameters()).device
    for iteration in range(start, config.iterations):
        if should_cancel is not None and should_cancel():
            checkpoint(iteration)
            raise AdaptationCancelled(iteration)
        z = torch.randn(config.batch_size, source.style_dim, generator=rng).to(device)  # [B, D]
        noise = (source.make_noise(config.batch_size, generator=rng),
                 source.make_noise(config.batch_size, generator=rng))
        loss, parts = difa_losses(source, target, encoder, clip_models, prepared, windows, z, noise, iteration,
                                  config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(parts)
        done = iteration + 1
        if done % config.checkpoint_every == 0 and done < config.iterations:
            checkpoint(done)
        if progress is not None:
            progress(done, config.iterations, parts)

    delta = {name: p.detach().clone() for name, p in target.named_parameters() if p.requires_grad}
    return AdaptationResult(delta, config.iterations, history, time.perf_counter() - started,
                            prepared.base_fingerprint, config, resumed_from=start)
