"""The one reader and writer of artifacts: tensors + metadata as safetensors (file or bytes), plus a sha256 sidecar."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceedit.errors import CheckpointError, CheckpointFormatError, ChecksumMismatchError

if TYPE_CHECKING:  # torch is imported only where tensors are (de)serialised: the header helpers stay torch-free
    from torch import Tensor

# Metadata keys of our artifacts: what the file is, and its JSON config (both optional for a plain state dict).
KIND_KEY = "faceedit.kind"
CONFIG_KEY = "faceedit.config"
# What every sidecar records about its weights file, last in the JSON and always recomputed when written.
SIDECAR_FIELDS = ("file", "sha256", "bytes")
_OLD_SIDECAR_FIELDS = ("size_bytes",)  # the size's name in exports written before `bytes`
MAX_HEADER_BYTES = 100_000_000


@dataclass
class Artifact:
    """What an artifact holds: its tensors, its safetensors metadata (strings), where it came from, its sha256
    (of the bytes, or the one its sidecar verified; "" when a file without a sidecar was read)."""

    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    source: str
    sha256: str = ""

    @property
    def kind(self) -> str | None:
        return self.metadata.get(KIND_KEY)

    def config(self, required: bool = False) -> dict[str, Any]:
        """The JSON object under `faceedit.config` ({} when absent and not `required`)."""
        text = self.metadata.get(CONFIG_KEY)
        if text is None:
            if required:
                raise CheckpointFormatError(self.source, f"no {CONFIG_KEY} metadata")
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise CheckpointFormatError(self.source, f"{CONFIG_KEY} metadata is not valid JSON") from None
        if not isinstance(value, dict):
            raise CheckpointFormatError(self.source, f"{CONFIG_KEY} metadata is not a JSON object")
        return value


def metadata(kind: str | None = None, config: Mapping[str, Any] | None = None,
             extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Safetensors metadata in our layout: the kind, the config as sorted JSON, and `extra` entries (strings)."""
    meta: dict[str, str] = {}
    if kind is not None:
        meta[KIND_KEY] = kind
    if config is not None:
        meta[CONFIG_KEY] = json.dumps(dict(config), sort_keys=True)
    meta.update(extra or {})
    return meta


# -- hashes and sidecars -----------------------------------------------------------------------------

def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """`model.safetensors` → `model.json`: the record (card) written next to a weights file."""
    return Path(path).with_suffix(".json")


def read_sidecar(weights: str | Path) -> dict[str, Any]:
    """The sidecar JSON of `weights`; {} when there is none."""
    path = sidecar_path(weights)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(path, f"unreadable JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(path, "expected a JSON object")
    return data


def write_sidecar(weights: str | Path, fields: Mapping[str, Any], *, sort_keys: bool = True,
                  sha256: str | None = None) -> Path:
    """Write `<stem>.json` next to `weights`: `fields`, then the file's name, sha256 and size in bytes
    (recomputed, whatever `fields` says; pass `sha256` when it is already known). Returns its path."""
    weights = Path(weights)
    record = {k: v for k, v in fields.items() if k not in SIDECAR_FIELDS + _OLD_SIDECAR_FIELDS}
    record.update(file=weights.name, sha256=sha256 or sha256_file(weights), bytes=weights.stat().st_size)
    path = sidecar_path(weights)
    path.write_text(json.dumps(record, indent=2, sort_keys=sort_keys) + "\n")
    return path


def verify_sidecar(weights: str | Path) -> str:
    """Check `weights` against the sha256 its sidecar records; returns the verified digest, or "" when
    nothing is recorded. Raises ChecksumMismatchError naming the file when they differ."""
    weights = Path(weights)
    recorded = read_sidecar(weights).get("sha256")
    if not recorded:
        return ""
    actual = sha256_file(weights)
    if actual != recorded:
        raise ChecksumMismatchError(weights, _mismatch(actual, sidecar_path(weights).name, recorded))
    return actual


def _mismatch(actual: str, recorder: str, recorded: str) -> str:
    return f"sha256 is {actual}, but {recorder} records {recorded}; the file was modified or is incomplete"


# -- safetensors ---------------------------------------------------------------------------------------

def looks_like_safetensors(head: bytes) -> bool:
    """Whether a file's first 8 bytes can start a safetensors file (a plausible header length, not a zip)."""
    if len(head) < 8:
        return False
    return 2 <= int.from_bytes(head[:8], "little") < MAX_HEADER_BYTES and not head.startswith(b"PK")


def header_metadata(data: bytes, source: str = "<bytes>") -> dict[str, str]:
    """The `__metadata__` of safetensors bytes, read from the JSON header (8-byte little-endian length, then
    JSON) without torch or the tensors."""
    if len(data) < 8:
        raise CheckpointFormatError(source, "is not a safetensors file (shorter than its header)")
    length = int.from_bytes(data[:8], "little")
    if length > min(len(data) - 8, MAX_HEADER_BYTES):
        raise CheckpointFormatError(source, "is not a safetensors file (header length out of range)")
    try:
        header = json.loads(data[8:8 + length])
    except ValueError:
        raise CheckpointFormatError(source, "is not a safetensors file (header is not JSON)") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return dict(meta) if isinstance(meta, dict) else {}


def to_bytes(tensors: Mapping[str, Tensor], meta: Mapping[str, str] | None = None) -> bytes:
    """Tensors (moved to the CPU, made contiguous) and string metadata → safetensors bytes; equal inputs give
    equal bytes (and so equal sha256s)."""
    from safetensors.torch import save

    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = save(contiguous, metadata=dict(meta) if meta else None)
    return _sorted_metadata(data) if meta and len(meta) > 1 else data


def _sorted_metadata(data: bytes) -> bytes:
    """safetensors writes `__metadata__` in a random order (a Rust HashMap: it changes from call to call);
    rewrite the header with the entries sorted by key. Same entries, same length: only their order changes."""
    length = int.from_bytes(data[:8], "little")
    raw = data[8:8 + length]
    header = json.loads(raw)
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    if json.dumps(header, **compact).encode() != raw.rstrip(b" "):  # not the JSON we can reproduce: leave it
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, **compact).encode()
    return data[:8] + text.ljust(length, b" ") + data[8 + length:]


def from_bytes(data: bytes, source: str = "<bytes>", sha256: str | None = None,
               recorded_by: str = "its record") -> Artifact:
    """Safetensors bytes → Artifact; with `sha256`, the bytes must hash to it (`recorded_by` names who
    recorded it in the error). `source` names the data in errors (a key or a path)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    actual = sha256_bytes(data)
    if sha256 is not None and actual != sha256:
        raise ChecksumMismatchError(source, _mismatch(actual, recorded_by, sha256))
    meta = header_metadata(data, source)
    try:
        tensors = load(bytes(data))
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointFormatError(source, f"truncated or corrupt safetensors ({_first_line(exc)})") from None
    return Artifact(tensors, meta, source, actual)


def write(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping[str, str] | None = None,
          sidecar: Mapping[str, Any] | None = None, *, sort_keys: bool = True) -> str:
    """Write `tensors` + `meta` as a safetensors file and, when `sidecar` is given, its sidecar JSON
    (`sidecar` fields + file, sha256, bytes); returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_bytes(tensors, meta)
    path.write_bytes(data)
    sha = sha256_bytes(data)
    if sidecar is not None:
        write_sidecar(path, sidecar, sort_keys=sort_keys, sha256=sha)
    return sha


def read(path: str | Path, verify: bool = True) -> Artifact:
    """A safetensors file → Artifact, after checking it against its sidecar's sha256 (when one is recorded
    and `verify`). Errors name the file: missing, tampered, truncated or corrupt."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file does not exist")
    sha = verify_sidecar(path) if verify else ""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointFormatError(path, f"truncated or corrupt safetensors ({_first_line(exc)})") from None
    return Artifact(tensors, meta, str(path), sha)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
