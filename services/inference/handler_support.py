"""Pieces both TorchServe handlers share: their config, request bodies, image encoding, a bounded LRU, torch threads."""

from __future__ import annotations

import io
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from PIL import Image

from faceedit.errors import InvalidInputError
from faceedit.models.precision import resolve_device
from services.common.settings import read_settings

T = TypeVar("T")


@dataclass(frozen=True)
class InferenceConfig:
    """Read once per worker: the `faceedit:` section of model-config.yaml, then FACEEDIT_* env on top
    (so secrets such as a Redis password in the URL come from the environment, never the archive)."""

    # The model configuration (services/common/models.py); "" = $FACEEDIT_MODELS, else the demo zoo's.
    models: str = ""
    redis_url: str = ""  # "" → base generators only; adapted ids answer NOT_FOUND
    artifact_store_url: str = ""
    redis_namespace: str = "faceedit"
    lru_size: int = 4  # adapted generators kept in memory per worker
    torch_threads: int = 1  # FINDINGS: 2 threads under CPU contention are ~20x slower than 1
    # Peak activation memory of one synthesis call: a dynamic batch is split so that images x
    # size^2 x activation_bytes_per_pixel stays under it. Sized for an 8 GB CPU container or a
    # 16 GB GPU next to the weights (1024 px: ~0.55 GB per image, so 10 images per call).
    memory_budget_mb: int = 6144
    # Measured at 1024 px on the CPU: peak RSS minus the loaded model, 556 MB for 1 image and
    # 2.2 GB for 4 (551 B per pixel and image; README, "Real weights").
    activation_bytes_per_pixel: int = 560
    device: str = "auto"  # "auto": the GPU TorchServe assigns the worker, else the CPU
    # Synthesis precision: "bf16"/"fp16" autocast the convolutions (a GPU's tensor cores; max abs
    # difference to fp32 measured in tests/test_precision.py), "fp32" computes as upstream.
    precision: str = "fp32"
    # Encoder: the aligned crop returned with Invert(return_aligned) is FFHQ's 1024 px alignment
    # (smaller when the photo is), not the encoder's input size: it is what paste-back needs.
    aligned_size: int = 1024
    # Invert OPTIMIZE: at most this many W+ optimisation steps from the encoder's code (each a synthesis
    # forward and backward: ~30 ms at 64 px, seconds at 1024 on a CPU); fewer when the caller's deadline
    # comes first.
    optimize_steps: int = 200
    # ... and at most this long (a caller without a deadline too): well under the archive's responseTimeout.
    optimize_max_s: float = 60.0

    @classmethod
    def load(cls, model_yaml: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> InferenceConfig:
        config = read_settings(cls, env, section=dict((model_yaml or {}).get("faceedit") or {}))
        if config.lru_size < 1 or config.torch_threads < 1 or config.memory_budget_mb < 1:
            raise InvalidInputError("lru_size/torch_threads/memory_budget_mb", "must be positive")
        if config.redis_url and not config.artifact_store_url:
            raise InvalidInputError("artifact_store_url", "is required when redis_url is set")
        return config

    def images_per_call(self, size: int) -> int:
        """How many size x size images one synthesis call may make within the memory budget."""
        per_image = size * size * self.activation_bytes_per_pixel
        return max(1, (self.memory_budget_mb << 20) // per_image)


def set_torch_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process (it may only be set once, before any parallel work)


def quiet_per_request_logs() -> None:
    """TorchServe's Python worker logs two INFO lines per request to its stdout ("Backend received
    inference at", the PredictionTime metric), which the Java frontend reads, parses and drops (its
    MODEL_LOG is at WARN): ~1 ms of the frontend's CPU per request on 2 cores. The handlers' own
    logs are at WARNING and above, so they still arrive; our latency metrics come from the editor."""
    logging.getLogger().setLevel(logging.WARNING)


def worker_device(context: Any, setting: str = "auto") -> torch.device:
    """`setting` ("cpu", "cuda", "cuda:1"), or for "auto" the GPU TorchServe assigned to this worker
    (`gpu_id`), else the CPU."""
    if setting != "auto":
        return resolve_device(setting)
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
