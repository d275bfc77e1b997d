"""Safe reading, format detection and safetensors export of checkpoint files (the only place weights are opened)."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from faceedit.errors import (
    CheckpointError,
    CheckpointFormatError,
    ChecksumMismatchError,
    UnsafeCheckpointError,
)

# Formats a checkpoint file can be in.
ROSINALITY = "rosinality"  # stylegan2-pytorch: {'g_ema', 'latent_avg'?, 'g'?, 'd'?, ...}
PSP = "psp"  # pixel2style2pixel: {'state_dict': encoder.*/decoder.*, 'opts', 'latent_avg'}
E4E = "e4e"  # encoder4editing: same layout, opts['encoder_type'] == 'Encoder4Editing'
FACEEDIT = "faceedit"  # our safetensors export, kind in the metadata

FACEEDIT_KINDS = ("generator", "encoder", "generator-delta")
TRAINING_STATE_KEYS = ("g", "d", "g_optim", "d_optim", "optimizer", "discriminator_state_dict",
                       "discriminator_optimizer_state_dict", "args", "ada_aug_p", "global_step",
                       "best_val_loss")

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


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """`model.safetensors` → `model.json`: the config and sha256 written next to an export."""
    return Path(path).with_suffix(".json")


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
    recorded_sha = verify_recorded_sha256(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        ckpt = _read_faceedit(path)
    else:
        ckpt = _classify(path, _torch_load(path, head, trust_pickle))
    ckpt.sha256 = recorded_sha or ckpt.sha256
    return ckpt


def verify_recorded_sha256(path: Path) -> str:
    """Check `path` against the sha256 its sidecar JSON records (the zoo and our exports have
    one); returns the verified digest, or "" when nothing is recorded."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return ""
    recorded = _read_json(sidecar).get("sha256")
    if not recorded:
        return ""
    actual = sha256_file(path)
    if actual != recorded:
        raise ChecksumMismatchError(path, f"sha256 is {actual}, but {sidecar.name} records {recorded}; "
                                          "the file was modified or is incomplete")
    return actual


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 8:
        return False
    header_len = int.from_bytes(head, "little")
    return 2 <= header_len < 100_000_000 and not head.startswith(b"PK")


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


def _read_faceedit(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointFormatError(path, f"truncated or corrupt safetensors ({_first_line(exc)})") from None
    kind = meta.get("faceedit.kind")
    if kind not in FACEEDIT_KINDS:
        raise CheckpointFormatError(path, f"safetensors file without faceedit metadata "
                                          f"(faceedit.kind={kind!r}); write it with `faceedit convert`")
    try:
        config = json.loads(meta.get("faceedit.config", "{}"))
    except json.JSONDecodeError:
        raise CheckpointFormatError(path, "faceedit.config metadata is not valid JSON") from None
    latent_avg = tensors.pop("latent_avg", None)
    ckpt = Checkpoint(path, FACEEDIT, kind, latent_avg=latent_avg, config=config)
    if kind == "encoder":
        ckpt.encoder = tensors
    else:
        ckpt.generator = tensors
    return ckpt


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(path, f"unreadable JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(path, "expected a JSON object")
    return data


def write_safetensors(path: str | Path, tensors: Mapping[str, Tensor], kind: str,
                      config: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> str:
    """Write `tensors` as safetensors with our metadata, plus the sidecar JSON; returns the sha256."""
    if kind not in FACEEDIT_KINDS:
        raise ValueError(f"kind must be one of {FACEEDIT_KINDS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"faceedit.kind": kind, "faceedit.config": json.dumps(dict(config), sort_keys=True)}
    save_file(contiguous, str(path), metadata=meta)
    sha = sha256_file(path)
    record = {"format": FACEEDIT, "kind": kind, "file": path.name, "sha256": sha,
              "size_bytes": path.stat().st_size, "config": dict(config), **dict(info or {})}
    sidecar_path(path).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return sha
