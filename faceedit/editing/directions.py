"""Direction files: InterfaceGAN .npy, e4e .pt, GANSpace PCA, and our safetensors + JSON boundary format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from faceedit import artifacts
from faceedit.errors import CheckpointFormatError, InvalidInputError

BOUNDARY_KIND = "boundary"
NORMAL_KEY = "normal"
_GANSPACE_KEYS = {"mean", "comp", "std"}


@dataclass(frozen=True)
class PCABasis:
    """GANSpace components of W: mean [D], unit components [K, D], their std [K]."""

    mean: Tensor
    components: Tensor
    std: Tensor

    def direction(self, index: int) -> Tensor:
        if not 0 <= index < len(self.components):
            raise InvalidInputError("component", f"must be in [0, {len(self.components) - 1}], got {index}")
        return self.components[index]


def unit_rows(direction: Tensor, source: str) -> Tensor:
    """[D] → unit vector; [L, D] → each non-zero row unit (a zero row means 'layer untouched').

    Rows are normalised separately because e4e's per-layer files hold a unit vector per row and
    apply `w+ + factor·direction`: the strength stays a per-layer step as upstream meant it.
    """
    if direction.ndim not in (1, 2) or direction.shape[-1] == 0:
        raise InvalidInputError("direction",
                                f"{source}: expected shape [D] or [n_latent, D], got {list(direction.shape)}")
    direction = direction.to(torch.float32)
    if not bool(torch.isfinite(direction).all()):
        raise InvalidInputError("direction", f"{source}: contains NaN or infinite values")
    norms = direction.norm(dim=-1, keepdim=True)
    if not bool((norms > 0).any()):
        raise InvalidInputError("direction", f"{source}: is all zeros")
    return torch.where(norms > 0, direction / norms.clamp_min(1e-30), direction)


def _squeeze_leading_one(array: Tensor, source: str) -> Tensor:
    # Upstream stores [1, D] (InterfaceGAN, e4e) and [1, L, D] (e4e pose): drop that batch axis.
    if array.ndim >= 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (1, 2):
        raise InvalidInputError("direction",
                                f"{source}: expected [1, D], [D], [1, L, D] or [L, D], got {list(array.shape)}")
    return array


def load_direction(path: str | Path, component: int | None = None) -> Tensor:
    """Unit direction(s) from a file: [D] or [n_latent, D], float32.

    Reads InterfaceGAN `.npy` ([1, D]), e4e `.pt` tensors ([1, D] or [1, L, D]), GANSpace PCA
    `.pt` dicts (pick the row with `component`) and our `.safetensors` boundaries.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError("direction", f"{path}: file does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_boundary_file(path)[0]
    if suffix == ".npy":
        try:
            array = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        except (ValueError, OSError, EOFError) as exc:
            raise CheckpointFormatError(path, f"not a readable numpy array ({exc})") from None
        return unit_rows(_squeeze_leading_one(array, str(path)), str(path))
    if suffix in (".pt", ".pth"):
        obj = _torch_load(path)
        if isinstance(obj, Mapping) and _GANSPACE_KEYS <= set(obj):
            if component is None:
                raise InvalidInputError("component", f"{path} is a GANSpace PCA file with {len(obj['comp'])} "
                                                     "directions; choose one with component=INDEX")
            return unit_rows(load_ganspace(path).direction(component), str(path))
        if not isinstance(obj, Tensor):
            raise CheckpointFormatError(path,
                                        f"expected a direction tensor or a GANSpace dict, got {type(obj).__name__}")
        return unit_rows(_squeeze_leading_one(obj.detach().float(), str(path)), str(path))
    raise CheckpointFormatError(path, f"unknown direction format {suffix!r}; expected .npy, .pt or .safetensors")


def _torch_load(path: Path) -> Any:
    try:
        # e4e's pose.pt was saved from CUDA: map to CPU so it loads on machines without a GPU.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign or truncated files
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointFormatError(path, f"cannot load safely with weights_only=True ({first_line})") from None


def load_ganspace(path: str | Path) -> PCABasis:
    """A GANSpace PCA file ({'mean' [1,D], 'comp' [K,1,D], 'std' [K]}) as a PCABasis."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, Mapping) or not _GANSPACE_KEYS <= set(obj):
        raise CheckpointFormatError(path, f"not a GANSpace PCA file: expected keys {sorted(_GANSPACE_KEYS)}")
    mean = obj["mean"].float().reshape(-1)  # [D]
    comp = obj["comp"].float()
    comp = comp.reshape(comp.shape[0], -1)  # [K, D]
    std = obj["std"].float().reshape(-1)  # [K]
    if comp.shape[1] != mean.shape[0] or std.shape[0] != comp.shape[0]:
        raise CheckpointFormatError(path, f"inconsistent shapes: mean {list(mean.shape)}, comp {list(comp.shape)}, "
                                          f"std {list(std.shape)}")
    return PCABasis(mean=mean, components=comp, std=std)


def save_boundary(path: str | Path, normal: Tensor, metadata: Mapping[str, Any]) -> str:
    """Write a boundary as safetensors (the normal) plus a JSON sidecar (metadata, sha256); returns the sha256."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidInputError("path", f"boundary files end in .safetensors, got {path.name}")
    normal = unit_rows(normal.detach().cpu(), "normal").contiguous()
    record = {"kind": BOUNDARY_KIND, "shape": list(normal.shape), **dict(metadata)}
    return artifacts.write(path, {NORMAL_KEY: normal}, artifacts.metadata(BOUNDARY_KIND), record)


def load_boundary_file(path: str | Path) -> tuple[Tensor, dict[str, Any]]:
    """Our boundary format: (unit normal, metadata from the sidecar; {} if there is none)."""
    path = Path(path)
    artifact = artifacts.read(path)  # the sidecar's sha256 checked first
    if artifact.kind != BOUNDARY_KIND:
        raise CheckpointFormatError(path, "safetensors file is not a faceedit boundary (faceedit.kind)")
    if NORMAL_KEY not in artifact.tensors:
        raise CheckpointFormatError(path, f"no {NORMAL_KEY!r} tensor")
    return unit_rows(artifact.tensors[NORMAL_KEY], str(path)), artifacts.read_sidecar(path)


def check_direction(direction: Tensor, n_latent: int, style_dim: int, field: str = "direction") -> None:
    """The direction fits a generator's latent space: [style_dim] or [n_latent, style_dim]."""
    if direction.ndim == 1 and direction.shape[0] == style_dim:
        return
    if direction.ndim == 2 and tuple(direction.shape) == (n_latent, style_dim):
        return
    raise InvalidInputError(field, f"shape {list(direction.shape)} does not fit this latent space: expected "
                                   f"[{style_dim}] or [{n_latent}, {style_dim}]")


def check_generator_match(metadata: Mapping[str, Any], generator_sha256: str, field: str = "direction") -> None:
    """A boundary trained on one generator is meaningless on another: compare the recorded sha256."""
    recorded = metadata.get("generator_sha256")
    if recorded and generator_sha256 and recorded != generator_sha256:
        raise InvalidInputError(field, f"was trained for generator sha256 {recorded[:12]}…, but this generator is "
                                       f"{generator_sha256[:12]}…; train a boundary for it (faceedit train boundary)")


def update_boundary_metadata(path: str | Path, **fields: Any) -> None:
    """Merge fields (e.g. measured edit quality) into a boundary's JSON sidecar; the weights are untouched
    (and must still match the sha256 it records)."""
    record = artifacts.read_sidecar(path)
    if not record:
        raise CheckpointFormatError(path, f"no sidecar {artifacts.sidecar_path(path).name} to update")
    artifacts.verify_sidecar(path)
    artifacts.write_sidecar(path, {**record, **fields})
