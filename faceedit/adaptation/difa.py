"""DIFA one-shot domain adaptation of a StyleGAN2 generator to one reference artwork (CLIP global + local losses, e4e consistency)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import time
import zipfile
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from faceedit.adaptation.clip import ClipConfig, ClipModel
# cached_source_clip_mean and source_clip_mean are re-exported: callers import them from here.
from faceedit.adaptation.clip_mean import (
    MeanProgress,
    SourceMeanCancelled,
    cached_source_clip_mean,
    source_clip_mean,
    source_means,
)
from faceedit.adaptation.delta import save_delta, state_fingerprint, trainable_names, with_tensors
from faceedit.errors import CheckpointFormatError, CheckpointMismatchError, FaceEditError, InvalidInputError
from faceedit.models.encoders import Encoder
from faceedit.models.stylegan2 import Generator

CHECKPOINT_FILE = "difa-checkpoint.pt"
_MIN_STEP = 1e-6  # CLIP-space moves shorter than this have no usable direction
ProgressCallback = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class DifaConfig:
    """Every DIFA setting; defaults are upstream's (DiFa README, built on StyleGAN-NADA)."""

    iterations: int = 301
    batch_size: int = 2
    # Upstream passes lr 0.002 and Adam applies StyleGAN2's g_reg_ratio 4/5 to lr and beta2.
    lr: float = 0.002 * 4 / 5
    betas: tuple[float, float] = (0.0, 0.99 ** (4 / 5))
    # Upstream's pair: OpenAI ViT-B/32 and ViT-B/16, each weighted 1 (weights are mounted locally).
    clips: tuple[ClipConfig, ...] = (ClipConfig("ViT-B-32-quickgelu"), ClipConfig("ViT-B-16-quickgelu"))
    clip_weights: tuple[float, ...] | None = None  # one per CLIP model; None weighs each 1.0
    lambda_global: float = 1.0
    lambda_local: float = 1.0  # README; scripts/train.sh uses 1.5
    clip_layer: int = 3  # block whose tokens the local loss compares (the 4th)
    consistency_weight: float = 6.0  # psp_model_weight (6 or 7 in upstream's examples)
    num_keep_first: int = 7  # W+ layers the consistency loss looks at
    psp_alpha: float = 0.6  # fraction of code dims kept (most stable); train.sh: 0.8
    sliding_window: int = 50  # iterations of batch-mean codes; train.sh: 30
    clip_mean_samples: int = 512  # source samples behind the mean source CLIP embedding
    clip_mean_batch: int = 16
    truncation: float = 1.0  # upstream trains untruncated
    seed: int = 2
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "clip_mean_samples", "clip_mean_batch", "checkpoint_every",
                     "sliding_window", "num_keep_first"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(name, f"must be a positive integer, got {value!r}")
        if not 0.0 < self.psp_alpha <= 1.0:
            raise InvalidInputError("psp_alpha", f"must be in (0, 1], got {self.psp_alpha}")
        if self.lr <= 0:
            raise InvalidInputError("lr", f"must be positive, got {self.lr}")
        if self.clip_weights is not None and len(self.clip_weights) != len(self.clips):
            raise InvalidInputError("clip_weights", f"{len(self.clip_weights)} weights for {len(self.clips)} CLIP models")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["clips"] = [c.to_dict() for c in self.clips]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DifaConfig":
        """The inverse of `to_dict` (e.g. job parameters); unknown keys are refused by name."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInputError(sorted(unknown)[0], "unknown DIFA setting")
        values = dict(data)
        if "clips" in values:
            values["clips"] = tuple(ClipConfig.from_dict(c) for c in values["clips"])
        for name in ("betas", "clip_weights"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def weights_for(self, n_clips: int) -> tuple[float, ...]:
        if self.clip_weights is None:
            return (1.0,) * n_clips
        if len(self.clip_weights) != n_clips:
            raise InvalidInputError("clip_weights", f"{len(self.clip_weights)} weights for {n_clips} CLIP models")
        return tuple(self.clip_weights)


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


# -- losses ----------------------------------------------------------------------------------------
def reference_direction(reference_embedding: Tensor, source_mean: Tensor) -> Tensor:
    """Unit CLIP direction from the source domain's mean embedding to the reference: [E]."""
    direction = reference_embedding.reshape(-1) - source_mean.reshape(-1)
    return F.normalize(direction, dim=0)


def global_loss(target_embedding: Tensor, source_embedding: Tensor, direction: Tensor) -> Tensor:
    """1 − cos(normalize(e(G_t) − e(G_s)), direction), averaged over the batch; embeddings [B, E].

    A pair whose images still coincide (the first step of a generator without noise) has no
    direction yet: it scores 1, like an orthogonal one, with zero gradient instead of a 1/eps one.
    """
    assert target_embedding.shape == source_embedding.shape and target_embedding.ndim == 2
    diff = target_embedding - source_embedding  # [B, E]
    norm = diff.norm(dim=-1, keepdim=True)  # [B, 1]
    cosine = (diff / norm.clamp_min(_MIN_STEP)) @ direction.reshape(-1)  # [B]
    cosine = torch.where(norm.squeeze(-1) > _MIN_STEP, cosine, torch.zeros_like(cosine))
    return (1.0 - cosine).mean()


def local_loss(generated_tokens: Tensor, reference_tokens: Tensor) -> Tensor:
    """Relaxed earth mover's distance between unit token sets: generated [B, N, W], reference [1, M, W].

    Cost C = 1 − cosine; each token travels to its nearest token in the other set, and the larger of
    the two directed means is the bound on the EMD that is minimised.
    """
    assert generated_tokens.ndim == 3 and reference_tokens.ndim == 3
    cost = 1.0 - generated_tokens @ reference_tokens.transpose(1, 2)  # [B, N, M]
    generated_to_reference = cost.min(dim=2).values.mean(dim=1)  # [B]
    reference_to_generated = cost.min(dim=1).values.mean(dim=1)  # [B]
    return torch.maximum(generated_to_reference, reference_to_generated).mean()


def consistency_mask(source_window_mean: Tensor, target_window_mean: Tensor, alpha: float) -> Tensor:
    """1 on the `alpha` fraction of code dims whose mean moved least between domains (the shared attributes): [F]."""
    assert source_window_mean.shape == target_window_mean.shape and source_window_mean.ndim == 1
    shift = (target_window_mean - source_window_mean).abs()  # [F]
    keep = int(alpha * shift.numel())
    mask = torch.zeros_like(shift)
    mask[torch.topk(shift, keep, largest=False).indices] = 1.0
    return mask


def consistency_loss(target_codes: Tensor, source_codes: Tensor, mask: Tensor) -> Tensor:
    """L1 between masked flattened e4e codes [B, F], averaged over every dim (masked ones count as 0)."""
    assert target_codes.shape == source_codes.shape and target_codes.shape[1:] == mask.shape
    return (mask * (target_codes - source_codes)).abs().mean()


def consistency_ramp(iteration: int, window: int, iterations: int) -> float:
    """Upstream's ramp: off while the windows fill, then linear to 1 at the last iteration."""
    if iterations <= window:
        return 0.0
    return max(0.0, (iteration - window) / (iterations - window))


class CodeWindow:
    """Batch-mean e4e codes of the last `size` iterations, for source and target images."""

    def __init__(self, size: int):
        self.source: deque[Tensor] = deque(maxlen=size)
        self.target: deque[Tensor] = deque(maxlen=size)

    def push(self, source_codes: Tensor, target_codes: Tensor) -> None:
        self.source.append(source_codes.detach().mean(dim=0))  # [F]
        self.target.append(target_codes.detach().mean(dim=0))

    def mask(self, alpha: float) -> Tensor:
        return consistency_mask(torch.stack(list(self.source)).mean(0), torch.stack(list(self.target)).mean(0), alpha)

    def state(self) -> dict[str, Tensor]:
        return {"source": torch.stack(list(self.source)), "target": torch.stack(list(self.target))}

    def load(self, state: dict[str, Tensor]) -> None:
        self.source.clear()
        self.target.clear()
        self.source.extend(state["source"].unbind(0))
        self.target.extend(state["target"].unbind(0))


def encode_first_layers(encoder: Encoder, images: Tensor, keep: int) -> Tensor:
    """e4e codes of the first `keep` W+ layers, flattened: [B, keep·D]."""
    codes = encoder.encode(images)  # [B, n_latent, D]
    keep = min(keep, codes.shape[1])
    return codes[:, :keep].reshape(codes.shape[0], -1)  # [B, keep·D]


# -- where means and checkpoints are kept ----------------------------------------------------------
class BlobCache(Protocol):
    """Bytes by key, where mean source embeddings and checkpoints are kept between runs (the artifact
    store, or a directory); `put` must replace atomically, so a reader never sees half an object."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


class MemoryCache:
    """A BlobCache in memory: for one process's runs (an evaluation over several styles, tests)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.blobs.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.blobs[key] = data


class DirectoryCache:
    """A BlobCache on a local directory (the artifact store's default backend)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def where(self, key: str) -> str:
        return str(self.root / key)

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers never see half a file


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
        noise = (source.make_noise(config.batch_size, generator=rng), source.make_noise(config.batch_size, generator=rng))
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


def load_clips(config: DifaConfig, device: str | torch.device = "cpu") -> list[ClipModel]:
    """The CLIP models `config.clips` names, loaded from their local weights."""
    from faceedit.adaptation.clip import load_clip

    missing = [c.architecture for c in config.clips if c.weights is None]
    if missing:
        raise InvalidInputError("clips", f"no local weights given for {missing}; DIFA needs trained CLIP models")
    return [load_clip(c, device) for c in config.clips]


__all__ = [
    "AdaptationCancelled",
    "AdaptationResult",
    "BlobCache",
    "CodeWindow",
    "DifaConfig",
    "DirectoryCache",
    "MemoryCache",
    "adapt",
    "cached_source_clip_mean",
    "consistency_loss",
    "consistency_mask",
    "consistency_ramp",
    "difa_losses",
    "encode_first_layers",
    "global_loss",
    "load_clips",
    "local_loss",
    "make_target",
    "reference_direction",
    "source_clip_mean",
]
