"""Where DIFA keeps source CLIP means and checkpoints: a small key → bytes interface, in memory or in a folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


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
