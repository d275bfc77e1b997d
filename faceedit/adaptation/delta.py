"""Adapted generators stored as deltas: only the trained tensors, tied to their base generator by a fingerprint."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from faceedit.checkpoints import read_checkpoint, write_safetensors
from faceedit.errors import CheckpointError, CheckpointMismatchError
from faceedit.models.stylegan2 import Generator

DELTA_KIND = "generator-delta"
# DIFA's (and StyleGAN-NADA's) default freezing policy: the synthesis convolutions and the learned
# constant train; the mapping network (`style.*`) and every ToRGB stay as in the base.
TRAINABLE_PREFIXES = ("input.", "conv1.", "convs.")


def trainable_names(generator: Generator) -> list[str]:
    """Names of the parameters DIFA trains, in state-dict order."""
    return [name for name, _ in generator.named_parameters() if name.startswith(TRAINABLE_PREFIXES)]


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes): identifies weights held in memory,
    whatever file format they were read from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_delta(target: Generator, base: Generator, path: str | Path,
               info: Mapping[str, Any] | None = None) -> str:
    """Write the trainable tensors of `target` as a generator-delta safetensors (+ sidecar JSON); returns its sha256."""
    if target.config != base.config:
        raise CheckpointMismatchError(path, f"target config {target.config.to_dict()} differs from the "
                                            f"base's {base.config.to_dict()}")
    names = trainable_names(target)
    state = target.state_dict()
    tensors = {name: state[name] for name in names}
    config = {"generator": base.config.to_dict(), "base_fingerprint": state_fingerprint(base)}
    return write_safetensors(path, tensors, DELTA_KIND, config, info)


def delta_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and config of a delta file (its sidecar sha256 checked when present)."""
    ckpt = read_checkpoint(path)
    if ckpt.kind != DELTA_KIND or ckpt.generator is None:
        raise CheckpointError(path, f"is a {ckpt.kind} checkpoint, not a generator delta")
    if "base_fingerprint" not in ckpt.config or "generator" not in ckpt.config:
        raise CheckpointError(path, "delta metadata lacks 'base_fingerprint' or 'generator'")
    return ckpt.generator, ckpt.config


def apply_delta(base_generator: Generator, delta_path: str | Path) -> Generator:
    """A new generator: `base_generator` with the delta's tensors; refuses a delta trained on another base."""
    tensors, config = delta_tensors(delta_path)
    if config["generator"] != base_generator.config.to_dict():
        raise CheckpointMismatchError(delta_path, f"delta is for generator {json.dumps(config['generator'])}, "
                                                  f"base is {json.dumps(base_generator.config.to_dict())}")
    fingerprint = state_fingerprint(base_generator)
    if fingerprint != config["base_fingerprint"]:
        raise CheckpointMismatchError(delta_path, f"was trained on base {config['base_fingerprint'][:16]}…, "
                                                  f"not on this generator ({fingerprint[:16]}…)")
    expected = {k: tuple(v.shape) for k, v in base_generator.state_dict().items()}
    bad = [k for k, v in tensors.items() if expected.get(k) != tuple(v.shape)]
    if bad:
        raise CheckpointMismatchError(delta_path, f"unknown keys or wrong shapes for this base: {bad[:8]}")
    return with_tensors(base_generator, tensors)


def with_tensors(base: Generator, tensors: Mapping[str, Tensor]) -> Generator:
    """A frozen copy of `base` with some of its state replaced (the base itself is not touched)."""
    adapted = copy.deepcopy(base)
    with torch.no_grad():
        own = adapted.state_dict()
        for name, value in tensors.items():
            own[name].copy_(value.to(own[name]))
    return adapted.eval().requires_grad_(False)


def load_adapted_generator(delta_path: str | Path, base_path: str | Path,
                           device: str | torch.device = "cpu") -> Generator:
    """Load the base checkpoint, then apply the delta onto it."""
    from faceedit.models.loading import load_generator

    return apply_delta(load_generator(base_path), delta_path).to(device)
