"""Pieces both TorchServe handlers share: their config, request bodies, image encoding, a bounded LRU, torch threads."""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, Mapping, TypeVar

import torch
from PIL import Image

from faceedit.errors import InvalidInputError

ENV_PREFIX = "FACEEDIT_"
T = TypeVar("T")


@dataclass(frozen=True)
class InferenceConfig:
    """Read once per worker: the `faceedit:` section of model-config.yaml, then FACEEDIT_* env on top
    (so secrets such as a Redis password in the URL come from the environment, never the archive)."""

    base_generator_id: str = "demo"
    redis_url: str = ""  # "" → base generator only; adapted ids answer NOT_FOUND
    artifact_store_url: str = ""
    redis_namespace: str = "faceedit"
    lru_size: int = 4  # adapted generators kept in memory per worker
    torch_threads: int = 1  # FINDINGS: 2 threads under CPU contention are ~20x slower than 1
    max_chunk: int = 16  # images per synthesis call, bounds memory for a large merged batch

    @classmethod
    def load(cls, model_yaml: Mapping[str, Any] | None, env: Mapping[str, str] = os.environ) -> "InferenceConfig":
        section = dict((model_yaml or {}).get("faceedit") or {})
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            raw = env.get(ENV_PREFIX + name.upper(), section.get(name))
            if raw is None:
                continue
            kind = int if spec.type in ("int", int) else str
            try:
                values[name] = kind(raw)
            except ValueError:
                raise InvalidInputError(name, f"expected {kind.__name__}, got {raw!r}") from None
        config = cls(**values)
        if config.lru_size < 1 or config.torch_threads < 1 or config.max_chunk < 1:
            raise InvalidInputError("lru_size/torch_threads/max_chunk", "must be positive")
        if config.redis_url and not config.artifact_store_url:
            raise InvalidInputError("artifact_store_url", "is required when redis_url is set")
        return config


def set_torch_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process (it may only be set once, before any parallel work)


def worker_device(context: Any) -> torch.device:
    """The GPU TorchServe assigned to this worker (`gpu_id`), or the CPU when there is none."""
    gpu_id = (getattr(context, "system_properties", None) or {}).get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def request_body(row: Mapping[str, Any]) -> bytes:
    """TorchServe puts the payload in `data` (gRPC) or `body` (REST); a JSON REST body arrives
    already parsed into a dict, which we turn back into bytes for the one protocol decoder."""
    payload = row.get("data")
    if payload is None:
        payload = row.get("body")
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, (dict, list)):
        return json.dumps(payload).encode("utf-8")
    raise InvalidInputError("body", "request has no payload")


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=3)  # small files without slow compression
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format="WEBP", quality=92)
    return buffer.getvalue()


def center_square(image: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, then resize to size×size: a photo that was not aligned keeps its
    proportions instead of being squashed."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def serialized_file(context: Any) -> Path:
    """The weights file the archive was built with (`--serialized-file`), inside the model dir."""
    model_dir = Path(context.system_properties["model_dir"])
    name = context.manifest["model"]["serializedFile"]
    return model_dir / name


class LRU(Generic[T]):
    """At most `size` values, least recently used evicted first (models are large: keep few)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, T] = OrderedDict()

    def get_or_load(self, key: Hashable, load: Callable[[], T]) -> T:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def keys(self) -> list[Hashable]:
        return list(self._items)
