"""Safe reading, format detection and safetensors export of checkpoint files (the only place weights are opened)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from faceedit import artifacts
from faceedit.artifacts import sha256_file, sidecar_path, verify_sidecar  # noqa: F401 - also imported from here
from faceedit.errors import CheckpointError, CheckpointFormatError, UnsafeCheckpointError

# Formats a checkpoint file can be in.
ROSINALITY = "rosinality"  # stylegan2-pytorch: {'g_ema', 'latent_avg'?, 'g'?, 'd'?, ...}
PSP = "psp"  # pixel2style2pixel: {'state_dict': encoder.*/decoder.*, 'opts', 'latent_avg'}
E4E = "e4e"  # encoder4editing: same layout, opts['encoder_type'] == 'Encoder4Editing'
FACEEDIT = "faceedit"  # our safetensors export, kind in the metadata

GENERATOR_KIND = "generator"
ENCODER_KIND = "encoder"
DELTA_KIND = "generator-delta"  # an adaptation's trained tensors on a base generator (faceedit.models.delta)
FACEEDIT_KINDS = (GENERATOR_KIND, ENCODER_KIND, DELTA_KIND)

_CONVERT_HINT = (
    "If you trust the file, convert it once with `faceedit convert --trust-pickle {path} OUT_DIR`, "
    "which writes safetensors that load safely from then on."
)


@dataclass
class Checkpoint:
    """What a checkpoint file holds, independent of the model classes."""

    path: Path
    format: str
    kind: str  # "generator", "encoder+generator" (pSp/e4e), "encoder", "generator-delta"
    generator: dict[str, Tensor] | None = None  # rosinality key names
    encoder: dict[str, Tensor] | None = None  # pSp key names, prefix stripped
    latent_avg: Tensor | None = None  # [512] or [n_latent, 512]
    config: dict[str, Any] = field(default_factory=dict)  # our export's config, or pSp/e4e opts
    sha256: str = ""


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Open any supported checkpoint safely and say what it is.

    `trust_pickle=True` allows arbitrary unpickling and is meant only for `faceedit convert`
    on a file the user trusts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file does not exist")
    if path.suffix == ".pkl":
        raise UnsafeCheckpointError(
            path, "NVIDIA .pkl files need NVIDIA's own code to unpickle, which we never run. Convert "
                  "it with rosinality's stylegan2-pytorch convert_weight.py, then use the .pt it writes.")
    recorded_sha = verify_sidecar(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors" or artifacts.looks_like_safetensors(head):
        ckpt = checkpoint_from_artifact(artifacts.read(path, verify=False))
    else:
        ckpt = _classify(path, _torch_load(path, head, trust_pickle))
    ckpt.sha256 = recorded_sha or ckpt.sha256
    return ckpt


def _torch_load(path: Path, head: bytes, trust_pickle: bool) -> Any:
    if not head:
        raise CheckpointFormatError(path, "file is empty")
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointFormatError(path, "not a PyTorch checkpoint or safetensors file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        needs = _unsafe_global(str(exc))
        raise UnsafeCheckpointError(
            path, f"needs arbitrary unpickling{needs}, which is refused. "
                  + _CONVERT_HINT.format(path=path)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointFormatError(path, f"truncated or corrupt ({_first_line(exc)})") from None


def _unsafe_global(message: str) -> str:
    """Pull the offending global out of torch's 'Weights only load failed' message."""
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported global" in line:
            return f" ({line.strip().rstrip('.')})"
    return ""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _tensor_dict(obj: Any, path: Path, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointFormatError(path, f"{what} is not a mapping of tensors")
    return dict(obj)


def _classify(path: Path, obj: Any) -> Checkpoint:
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(path, f"expected a dict checkpoint, found {type(obj).__name__}")
    if "g_ema" in obj:
        return Checkpoint(path, ROSINALITY, "generator",
                          generator=_tensor_dict(obj["g_ema"], path, "'g_ema'"),
                          latent_avg=obj.get("latent_avg"))
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state = _tensor_dict(obj["state_dict"], path, "'state_dict'")
        opts = obj.get("opts") if isinstance(obj.get("opts"), Mapping) else {}
        encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        decoder = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        if not encoder and not decoder:
            raise CheckpointFormatError(path, "'state_dict' has no 'encoder.' or 'decoder.' keys")
        is_e4e = opts.get("encoder_type") == "Encoder4Editing" or "stylegan_size" in opts
        return Checkpoint(path, E4E if is_e4e else PSP, "encoder+generator",
                          generator=decoder or None, encoder=encoder or None,
                          latent_avg=obj.get("latent_avg"), config=dict(opts))
    if "style.1.weight" in obj and "input.input" in obj:
        # A bare generator state dict, as some repositories save g_ema alone.
        return Checkpoint(path, ROSINALITY, "generator", generator=_tensor_dict(obj, path, "file"))
    keys = ", ".join(sorted(map(str, obj))[:12])
    raise CheckpointFormatError(
        path, f"not a known checkpoint layout (top-level keys: {keys}); expected rosinality "
              "{'g_ema', 'latent_avg'}, pSp/e4e {'state_dict', 'opts', 'latent_avg'} or faceedit safetensors")


def checkpoint_from_artifact(artifact: artifacts.Artifact) -> Checkpoint:
    """Our safetensors export (a file or bytes) as a Checkpoint: its kind and config from the metadata."""
    kind = artifact.kind
    if kind not in FACEEDIT_KINDS:
        raise CheckpointFormatError(artifact.source, f"safetensors file without faceedit metadata "
                                                     f"(faceedit.kind={kind!r}); write it with `faceedit convert`")
    tensors = dict(artifact.tensors)
    latent_avg = tensors.pop("latent_avg", None)
    ckpt = Checkpoint(Path(artifact.source), FACEEDIT, kind, latent_avg=latent_avg, config=artifact.config(),
                      sha256=artifact.sha256)
    if kind == ENCODER_KIND:
        ckpt.encoder = tensors
    else:
        ckpt.generator = tensors
    return ckpt


def write_safetensors(path: str | Path, tensors: Mapping[str, Tensor], kind: str,
                      config: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> str:
    """Write `tensors` as safetensors with our metadata, plus the sidecar JSON; returns the sha256."""
    if kind not in FACEEDIT_KINDS:
        raise ValueError(f"kind must be one of {FACEEDIT_KINDS}")
    record = {"format": FACEEDIT, "kind": kind, "config": dict(config), **dict(info or {})}
    return artifacts.write(path, tensors, artifacts.metadata(kind, config), record)
