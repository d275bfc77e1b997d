"""One-shot, resumable fine-tuning of a generator's synthesis convolutions toward one image (pixel + multiscale L1)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from faceedit import artifacts
from faceedit.errors import CheckpointFormatError, InvalidInputError
from faceedit.models.stylegan2 import Generator

# The styled convolutions carry the appearance; mapping, constant input and ToRGB stay as in the
# base so the latent space (and with it the editing directions) keeps its meaning.
TRAINABLE_PREFIXES = ("conv1.", "convs.")
FINETUNE_STATE_KIND = "finetune-state"

ProgressFn = Callable[[int, int, float], None]  # (iterations done, total, loss)
CancelFn = Callable[[], bool]  # True → stop at the next step boundary
CheckpointFn = Callable[["FinetuneState"], None]


@dataclass(frozen=True)
class FinetuneConfig:
    iterations: int = 80
    lr: float = 2e-3
    checkpoint_every: int = 20  # iterations between resume states handed to the checkpoint callback
    scales: tuple[int, ...] = (1, 2, 4)  # L1 at full size and after 2x, 4x average pooling
    mse_weight: float = 1.0  # the pixel term

    def __post_init__(self) -> None:
        if isinstance(self.scales, list):
            object.__setattr__(self, "scales", tuple(self.scales))
        if not isinstance(self.iterations, int) or not 1 <= self.iterations <= 10_000:
            raise InvalidInputError("iterations", f"must be an int in [1, 10000], got {self.iterations!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise InvalidInputError("checkpoint_every", f"must be a positive int, got {self.checkpoint_every!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 1):
            raise InvalidInputError("lr", f"must be in (0, 1], got {self.lr!r}")
        if not self.scales or not all(isinstance(s, int) and s >= 1 for s in self.scales):
            raise InvalidInputError("scales", f"must be positive ints, got {self.scales!r}")
        if not (isinstance(self.mse_weight, (int, float)) and self.mse_weight >= 0):
            raise InvalidInputError("mse_weight", f"must be >= 0, got {self.mse_weight!r}")

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError("params", f"unknown fine-tuning parameters {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class FinetuneState:
    """Everything needed to continue exactly where training stopped: trained tensors and Adam's moments."""

    iteration: int
    params: dict[str, Tensor]
    optimizer: dict[str, Tensor]  # "<name>.exp_avg", "<name>.exp_avg_sq", "<name>.step"
    config: FinetuneConfig

    def to_bytes(self) -> bytes:
        tensors = {f"param.{k}": v for k, v in self.params.items()}
        tensors.update({f"adam.{k}": v for k, v in self.optimizer.items()})
        extra = {"iteration": str(self.iteration), "config": json.dumps(asdict(self.config), sort_keys=True)}
        meta = artifacts.metadata(FINETUNE_STATE_KIND, extra=extra)
        return artifacts.to_bytes(tensors, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> FinetuneState:
        source = "<finetune state>"
        try:
            artifact = artifacts.from_bytes(data, source)
            if artifact.kind != FINETUNE_STATE_KIND:
                raise ValueError("not a finetune-state file")
            config = FinetuneConfig.from_dict(json.loads(artifact.metadata["config"]))
            iteration = int(artifact.metadata["iteration"])
        except CheckpointFormatError as exc:
            raise CheckpointFormatError(source, f"unreadable resume state ({exc.problem})") from None
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            raise CheckpointFormatError(source, f"unreadable resume state ({exc})") from None
        tensors = artifact.tensors
        params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
        optimizer = {k[len("adam."):]: v for k, v in tensors.items() if k.startswith("adam.")}
        return cls(iteration, params, optimizer, config)


@dataclass
class FinetuneResult:
    tensors: dict[str, Tensor]  # the trained tensors, rosinality names: a generator delta
    iterations: int  # completed
    loss: float  # at the last completed iteration (nan if none ran in this call)
    cancelled: bool


def trainable_names(generator: Generator) -> list[str]:
    return [n for n, _ in generator.named_parameters() if n.startswith(TRAINABLE_PREFIXES)]


def reconstruction_loss(image: Tensor, target: Tensor, config: FinetuneConfig) -> Tensor:
    loss = config.mse_weight * F.mse_loss(image, target)
    for scale in config.scales:
        a = F.avg_pool2d(image, scale) if scale > 1 else image
        b = F.avg_pool2d(target, scale) if scale > 1 else target
        loss = loss + F.l1_loss(a, b)
    return loss


def finetune(base: Generator, target: Tensor, ws: Tensor, config: FinetuneConfig = FinetuneConfig(),
             progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
             resume: FinetuneState | None = None, checkpoint: CheckpointFn | None = None) -> FinetuneResult:
    """Train a copy of `base` so that synthesis(ws) reproduces `target` ([1, 3, H, W] in [-1, 1]).

    `base` is not modified. With `resume`, training continues from that state (same config
    required) and ends where an uninterrupted run would have. Cancellation is checked before
    every iteration; a cancelled run returns the tensors reached so far with `cancelled=True`.
    """
    size = base.config.size
    _check_inputs(base, target, ws)
    if target.shape[-1] != size:
        target = F.interpolate(target, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=target.shape[-1] > size)
    model = copy.deepcopy(base).train()
    model.requires_grad_(False)
    names = trainable_names(model)
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    optimizer = torch.optim.Adam([params[n] for n in names], lr=config.lr, betas=(0.9, 0.99))
    start = 0
    if resume is not None:
        start = _restore(resume, config, names, params, optimizer)

    ws = ws.detach().to(params[names[0]])
    target = target.detach().to(params[names[0]])
    loss_value = math.nan
    done = start
    for it in range(start, config.iterations):
        if should_cancel is not None and should_cancel():
            return FinetuneResult(_trained(params, names), done, loss_value, cancelled=True)
        optimizer.zero_grad(set_to_none=True)
        loss = reconstruction_loss(model.synthesis(ws, noise_mode="const"), target, config)
        loss.backward()
        optimizer.step()
        done, loss_value = it + 1, float(loss.detach())
        if progress is not None:
            progress(done, config.iterations, loss_value)
        if checkpoint is not None and done % config.checkpoint_every == 0 and done < config.iterations:
            checkpoint(_snapshot(done, params, names, optimizer, config))
    return FinetuneResult(_trained(params, names), done, loss_value, cancelled=False)


def _check_inputs(base: Generator, target: Tensor, ws: Tensor) -> None:
    if not isinstance(target, Tensor) or target.ndim != 4 or target.shape[:2] != (1, 3):
        raise InvalidInputError("target", f"expected [1, 3, H, W], got {getattr(target, 'shape', type(target))}")
    if target.shape[-1] != target.shape[-2] or not bool(torch.isfinite(target).all()):
        raise InvalidInputError("target", "must be square and finite")
    expected = (1, base.n_latent, base.style_dim)
    if not isinstance(ws, Tensor) or tuple(ws.shape) != expected or not bool(torch.isfinite(ws).all()):
        raise InvalidInputError("ws", f"expected finite {list(expected)}, got {getattr(ws, 'shape', type(ws))}")


def _trained(params: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    return {n: params[n].detach().clone() for n in names}


def _snapshot(iteration: int, params: dict[str, Tensor], names: list[str],
              optimizer: torch.optim.Optimizer, config: FinetuneConfig) -> FinetuneState:
    moments: dict[str, Tensor] = {}
    for name in names:
        state = optimizer.state[params[name]]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            moments[f"{name}.{key}"] = torch.as_tensor(state[key]).detach().clone()
    return FinetuneState(iteration, _trained(params, names), moments, config)


def _restore(resume: FinetuneState, config: FinetuneConfig, names: list[str], params: dict[str, Tensor],
             optimizer: torch.optim.Optimizer) -> int:
    if resume.config != config:
        raise InvalidInputError("resume", f"state was saved with {resume.config}, not {config}")
    if sorted(resume.params) != sorted(names) or not 0 <= resume.iteration <= config.iterations:
        raise InvalidInputError("resume", "state does not match this generator's trainable tensors")
    with torch.no_grad():
        for name in names:
            if resume.params[name].shape != params[name].shape:
                raise InvalidInputError("resume", f"{name}: shape {tuple(resume.params[name].shape)} "
                                                  f"vs {tuple(params[name].shape)}")
            params[name].copy_(resume.params[name])
    for name in names:
        device = params[name].device
        optimizer.state[params[name]] = {
            "exp_avg": resume.optimizer[f"{name}.exp_avg"].to(device, copy=True),
            "exp_avg_sq": resume.optimizer[f"{name}.exp_avg_sq"].to(device, copy=True),
            "step": resume.optimizer[f"{name}.step"].clone(),  # Adam keeps its step count on the CPU
        }
    return resume.iteration
