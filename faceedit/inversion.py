"""Photo → latents that reproduce it: the encoder's code, W+ optimisation from it, or pivotal tuning (PTI)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from faceedit.errors import FaceEditError, InvalidInputError
from faceedit.models.delta import trainable_names
from faceedit.models.encoders import Encoder
from faceedit.models.stylegan2 import Generator

MODES = ("encoder", "optimize", "pti")
# images [B, 3, H, W] in [-1, 1] (generated, target) → a distance per pair [B]: LPIPS for real users,
# the shipped scorer's `perceptual_distance` for the demo zoo; an identity net's 1 - cosine likewise.
Distance = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[str, int, int, dict[str, float]], None]  # (phase, step, steps, losses)


@dataclass(frozen=True)
class InversionConfig:
    """Every setting of an inversion. The defaults are PTI's (danielroich/PTI, configs/hyperparameters.py:
    first_inv_steps 450 at 5e-3, max_pti_steps 350 at 3e-4, pt_l2_lambda 1, pt_lpips_lambda 1, tuning
    stops once the perceptual loss is under LPIPS_value_threshold 0.06, locality regularisation off with
    regulizer_alpha 30 and weights 0.1). The first phase optimises W+ from the encoder's code (PTI's
    optimises one w from w_avg); the noise stays the generator's constant noise, which is what serving uses."""

    optimize_steps: int = 450
    optimize_lr: float = 5e-3
    tune_steps: int = 350
    tune_lr: float = 3e-4
    l2_weight: float = 1.0
    perceptual_weight: float = 1.0
    identity_weight: float = 0.0  # > 0 needs an identity net (ArcFace IR-SE50 for real photos)
    perceptual_stop: float = 0.06  # tuning ends once the perceptual distance is below this
    locality: bool = False  # PTI's locality regulariser: keep the generator's other faces where they were
    locality_alpha: float = 30.0
    locality_l2_weight: float = 0.1
    locality_perceptual_weight: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                               or not math.isfinite(value) or value < 0):
                raise InvalidInputError(f.name, f"must be a finite number >= 0, got {value!r}")
        for name in ("optimize_lr", "tune_lr"):
            if not 0 < getattr(self, name) <= 1:
                raise InvalidInputError(name, f"must be in (0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Inversion:
    """What `invert` found: W+ latents, the generator that renders them (the tuned copy for "pti"), and how."""

    ws: Tensor  # [1, n_latent, style_dim]
    generator: Generator
    mode: str
    losses: dict[str, float]  # the last step's terms (or, for "encoder", the reconstruction's)
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def tuned_tensors(self) -> dict[str, Tensor]:
        """For "pti": the generator's tuned tensors (a delta on its base: `faceedit.models.delta.save_delta`)."""
        if self.mode != "pti":
            raise InvalidInputError("mode", f"only a pti inversion tunes the generator, this one is {self.mode!r}")
        state = self.generator.state_dict()
        return {name: state[name].detach().clone() for name in trainable_names(self.generator)}


def scorer_distance(path: str | Path | None = None, device: str | torch.device = "cpu") -> Distance:
    """A faceedit scorer's feature distance as the perceptual term (the demo zoo's, without a path). Its
    scale is not LPIPS's: PTI's LPIPS stop threshold does not apply to it (use perceptual_stop=0)."""
    from faceedit.synth.scorer import load_scorer

    return load_scorer(path, device).eval().requires_grad_(False).perceptual_distance


class InversionCancelled(FaceEditError):
    def __init__(self, phase: str, step: int):
        self.phase, self.step = phase, step
        super().__init__(f"inversion cancelled in {phase} at step {step}")


def invert(image: Tensor, generator: Generator, encoder: Encoder | None = None, mode: str = "encoder",
           config: InversionConfig | None = None, perceptual: Distance | None = None,
           identity: Distance | None = None, progress: Progress | None = None,
           should_cancel: Callable[[], bool] | None = None, pivot: Tensor | None = None,
           time_limit_s: float | None = None, start: Tensor | None = None) -> Inversion:
    """Latents for `image` [1, 3, H, W] in [-1, 1] (resized to the generator's size).

    "encoder": the encoder's W+ code. "optimize": W+ optimised from that code (from w_avg without an
    encoder) against pixel L2 + `perceptual` (+ `identity`). "pti": that pivot, then the generator's
    synthesis weights tuned on a copy so the pivot renders the photo; the given generator is untouched.
    `pivot` [1, n_latent, style_dim] ("pti" only): an optimised pivot found earlier (a resumed job), so
    only the tuning runs. `start` [1, n_latent, style_dim]: the code to optimise from instead of the
    encoder's (one computed already, e.g. for a whole batch). `time_limit_s`: the optimisation stops early
    after that long and returns what it reached (a request answering within its caller's deadline), unlike
    `should_cancel`, which discards it.
    """
    if mode not in MODES:
        raise InvalidInputError("mode", f"must be one of {list(MODES)}, got {mode!r}")
    config = config or InversionConfig()
    if config.identity_weight > 0 and identity is None:
        raise InvalidInputError("identity", "identity_weight > 0 needs an identity net (e.g. ArcFace IR-SE50)")
    if mode == "encoder" and encoder is None:
        raise InvalidInputError("encoder", "mode 'encoder' needs an encoder")
    expected = (1, generator.n_latent, generator.style_dim)
    if pivot is not None and (mode != "pti" or tuple(pivot.shape) != expected):
        raise InvalidInputError("pivot", f"a pivot {list(expected)} is for mode 'pti', got {list(pivot.shape)} "
                                         f"for {mode!r}")
    if start is not None and (tuple(start.shape) != expected or pivot is not None):
        raise InvalidInputError("start", f"expected {list(expected)} (and no pivot), got {list(start.shape)}")
    started = time.perf_counter()
    stop_at = None if time_limit_s is None else started + time_limit_s
    target = _target(image, generator)  # [1, 3, size, size]
    generator.eval()
    with torch.no_grad():
        given = pivot if pivot is not None else start
        if given is not None:
            ws = given.to(target.device)
        elif encoder is not None:
            ws = encoder.encode(target)
        else:
            ws = generator.broadcast(generator.w_avg[None])
    ws = ws.detach().clone()  # [1, n_latent, style_dim]
    assert ws.shape == expected, ws.shape
    terms = _Terms(target, config, perceptual, identity)
    history: list[dict[str, float]] = []
    if mode == "encoder":
        with torch.no_grad():
            losses = terms(generator.synthesis(ws))[1]
        return Inversion(ws, generator, mode, losses, time.perf_counter() - started)
    if pivot is None:
        ws = _optimize(generator, ws, terms, config, history, progress, should_cancel, stop_at)
    tuned = generator
    if mode == "pti":
        tuned = _tune(generator, ws, terms, config, history, progress, should_cancel, stop_at)
    with torch.no_grad():
        losses = terms(tuned.synthesis(ws))[1]
    return Inversion(ws, tuned, mode, losses, time.perf_counter() - started, history)


class _Terms:
    """The reconstruction loss of generated images against the target, and its named terms."""

    def __init__(self, target: Tensor, config: InversionConfig, perceptual: Distance | None,
                 identity: Distance | None):
        self.target, self.config, self.perceptual, self.identity = target, config, perceptual, identity

    def __call__(self, images: Tensor, target: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        target = self.target if target is None else target
        c = self.config
        l2 = F.mse_loss(images, target)
        total, parts = c.l2_weight * l2, {"l2": float(l2.detach())}
        if self.perceptual is not None and c.perceptual_weight > 0:
            distance = self.perceptual(images, target).mean()
            total, parts["perceptual"] = total + c.perceptual_weight * distance, float(distance.detach())
        if self.identity is not None and c.identity_weight > 0:
            distance = self.identity(images, target).mean()
            total, parts["identity"] = total + c.identity_weight * distance, float(distance.detach())
        parts["total"] = float(total.detach())
        return total, parts


def _optimize(generator: Generator, start: Tensor, terms: _Terms, config: InversionConfig,
              history: list[dict[str, float]], progress: Progress | None,
              should_cancel: Callable[[], bool] | None, stop_at: float | None = None) -> Tensor:
    """W+ [1, L, D] from `start`, Adam on the reconstruction loss; the generator stays frozen."""
    frozen = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    ws = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([ws], lr=config.optimize_lr)
    try:
        _descend("optimize", config.optimize_steps, lambda: terms(generator.synthesis(ws)), optimizer, history,
                 progress, should_cancel, done=lambda _: _past(stop_at))
    finally:
        for p, grad in zip(generator.parameters(), frozen):
            p.requires_grad_(grad)
    return ws.detach()


def _tune(base: Generator, pivot: Tensor, terms: _Terms, config: InversionConfig,
          history: list[dict[str, float]], progress: Progress | None,
          should_cancel: Callable[[], bool] | None, stop_at: float | None = None) -> Generator:
    """A copy of `base` whose synthesis weights are tuned so that `pivot` renders the target."""
    tuned = copy.deepcopy(base).train(False)
    names = set(trainable_names(tuned))
    params = []
    for name, p in tuned.named_parameters():
        p.requires_grad_(name in names)
        if name in names:
            params.append(p)
    optimizer = torch.optim.Adam(params, lr=config.tune_lr)
    rng = torch.Generator().manual_seed(config.seed)

    def loss() -> tuple[Tensor, dict[str, float]]:
        total, parts = terms(tuned.synthesis(pivot))
        if config.locality:
            total = total + _locality(base, tuned, pivot, terms, config, rng, parts)
        return total, parts

    _descend("tune", config.tune_steps, loss, optimizer, history, progress, should_cancel,
             done=lambda parts: _past(stop_at) or parts.get("perceptual", math.inf) < config.perceptual_stop)
    return tuned.requires_grad_(False).eval()


def _past(stop_at: float | None) -> bool:
    return stop_at is not None and time.perf_counter() >= stop_at


def _descend(phase: str, steps: int, loss: Callable[[], tuple[Tensor, dict[str, float]]],
             optimizer: torch.optim.Optimizer, history: list[dict[str, float]], progress: Progress | None,
             should_cancel: Callable[[], bool] | None, done: Callable[[dict[str, float]], bool] | None = None) -> None:
    """Up to `steps` optimiser steps on `loss`, each recorded (phase 0: optimize, 1: tune) and reported."""
    for step in range(steps):
        if should_cancel is not None and should_cancel():
            raise InversionCancelled(phase, step)
        total, parts = loss()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        history.append({"phase": float(phase == "tune"), **parts})
        if progress is not None:
            progress(phase, step + 1, steps, parts)
        if done is not None and done(parts):
            return


def _locality(base: Generator, tuned: Generator, pivot: Tensor, terms: _Terms, config: InversionConfig,
              rng: torch.Generator, parts: dict[str, float]) -> Tensor:
    """PTI's regulariser: a latent `locality_alpha` away from the pivot, towards a random face, must render as
    the base generator renders it (pixel L2 + perceptual, each weighted 0.1 by default)."""
    with torch.no_grad():
        w = base.mapping(torch.randn(1, base.style_dim, generator=rng).to(pivot.device))  # [1, D]
        towards = base.broadcast(w) - pivot  # [1, L, D]
        nearby = pivot + config.locality_alpha * towards / towards.norm().clamp_min(1e-8)
        reference = base.synthesis(nearby)
    images = tuned.synthesis(nearby)
    l2 = F.mse_loss(images, reference)
    loss = config.locality_l2_weight * l2
    parts["locality_l2"] = float(l2.detach())
    if terms.perceptual is not None:
        distance = terms.perceptual(images, reference).mean()
        loss = loss + config.locality_perceptual_weight * distance
        parts["locality_perceptual"] = float(distance.detach())
    return loss


def _target(image: Tensor, generator: Generator) -> Tensor:
    if not isinstance(image, Tensor):
        raise InvalidInputError("image", f"must be a tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise InvalidInputError("image", f"must be [1, 3, H, W], got {list(image.shape)}")
    if not image.is_floating_point() or not bool(torch.isfinite(image).all()):
        raise InvalidInputError("image", "must be finite floating point, in [-1, 1]")
    if float(image.abs().max()) > 1.5:
        raise InvalidInputError("image", "values must be in [-1, 1] (faceedit.images.from_pil makes them)")
    size = generator.config.size
    if image.shape[-2:] != (size, size):
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return image.detach()
