"""Adapted generators stored as deltas: only the trained tensors, tied to their base generator by a fingerprint."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from faceedit import artifacts
from faceedit.checkpoints import DELTA_KIND, Checkpoint, checkpoint_from_artifact, read_checkpoint, write_safetensors
from faceedit.errors import CheckpointError, CheckpointMismatchError, InvalidInputError
from faceedit.models.stylegan2 import Generator

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


def delta_config(base: Generator) -> dict[str, Any]:
    """What a delta records of its base: the generator config and the base weights' fingerprint."""
    return {"generator": base.config.to_dict(), "base_fingerprint": state_fingerprint(base)}


# How a delta's tensors are stored: fp32 as trained, or fp16 at half the size (read back into fp32 when
# applied; bench/inversion.py measures what it costs in reconstruction).
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _float_tensors(tensors: Mapping[str, Tensor], storage: str = "fp32") -> dict[str, Tensor]:
    if not tensors:
        raise InvalidInputError("tensors", "no tensors to save")
    if storage not in STORAGE_DTYPES:
        raise InvalidInputError("storage", f"must be one of {list(STORAGE_DTYPES)}, got {storage!r}")
    dtype = STORAGE_DTYPES[storage]
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}


def save_delta(target: Generator, base: Generator, path: str | Path,
               info: Mapping[str, Any] | None = None, storage: str = "fp32") -> str:
    """Write the trainable tensors of `target` as a generator-delta safetensors (+ sidecar JSON); returns its
    sha256. `storage="fp16"` halves the file (a PTI delta per photo, say)."""
    if target.config != base.config:
        raise CheckpointMismatchError(path, f"target config {target.config.to_dict()} differs from the "
                                            f"base's {base.config.to_dict()}")
    state = target.state_dict()
    tensors = _float_tensors({name: state[name] for name in trainable_names(target)}, storage)
    return write_safetensors(path, tensors, DELTA_KIND, delta_config(base), info)


def delta_to_bytes(tensors: Mapping[str, Tensor], base: Generator, extra: Mapping[str, str] | None = None,
                   storage: str = "fp32") -> bytes:
    """Trained tensors (rosinality names, a subset of the base's) → the bytes of a generator-delta file for
    `base`; `extra` adds metadata entries (strings) after the delta's own."""
    return artifacts.to_bytes(_float_tensors(tensors, storage),
                              artifacts.metadata(DELTA_KIND, delta_config(base), extra))


def _delta(ckpt: Checkpoint, source: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if ckpt.kind != DELTA_KIND or ckpt.generator is None:
        raise CheckpointError(source, f"is a {ckpt.kind} checkpoint, not a generator delta")
    if "base_fingerprint" not in ckpt.config or "generator" not in ckpt.config:
        raise CheckpointError(source, "delta metadata lacks 'base_fingerprint' or 'generator'")
    return ckpt.generator, ckpt.config


def delta_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and config of a delta file (its sidecar sha256 checked when present)."""
    return _delta(read_checkpoint(path), str(path))


def apply_delta(base_generator: Generator, delta_path: str | Path) -> Generator:
    """A new generator: `base_generator` with the delta file's tensors; refuses a delta trained on another base."""
    return _apply(base_generator, *delta_tensors(delta_path), str(delta_path))


def apply_delta_bytes(base_generator: Generator, data: bytes, source: str, sha256: str | None = None,
                      recorded_by: str = "its record") -> Generator:
    """`apply_delta` for a delta held as bytes (an artifact store object): with `sha256`, the bytes must hash to
    it first. `source` names the object in errors."""
    ckpt = checkpoint_from_artifact(artifacts.from_bytes(data, source, sha256, recorded_by))
    return _apply(base_generator, *_delta(ckpt, source), source)


def _apply(base_generator: Generator, tensors: Mapping[str, Tensor], config: Mapping[str, Any],
           source: str) -> Generator:
    if config["generator"] != base_generator.config.to_dict():
        raise CheckpointMismatchError(source, f"delta is for generator {json.dumps(config['generator'])}, "
                                              f"base is {json.dumps(base_generator.config.to_dict())}")
    fingerprint = state_fingerprint(base_generator)
    if fingerprint != config["base_fingerprint"]:
        raise CheckpointMismatchError(source, f"was trained on base {config['base_fingerprint'][:16]}…, "
                                              f"not on this generator ({fingerprint[:16]}…)")
    expected = {k: tuple(v.shape) for k, v in base_generator.state_dict().items()}
    bad = [k for k, v in tensors.items() if expected.get(k) != tuple(v.shape)]
    if bad:
        raise CheckpointMismatchError(source, f"unknown keys or wrong shapes for this base: {bad[:8]}")
    return with_tensors(base_generator, tensors)


def with_tensors(base: Generator, tensors: Mapping[str, Tensor]) -> Generator:
    """A frozen copy of `base` with some of its state replaced (the base itself is not touched)."""
    adapted = copy.deepcopy(base)
    with torch.no_grad():
        own = adapted.state_dict()
        for name, value in tensors.items():
            own[name].copy_(value.to(own[name]))
    return adapted.eval().requires_grad_(False)
