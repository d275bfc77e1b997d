"""EditorConfig: every setting of the editor service, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from faceedit.errors import InvalidInputError

PREFIX = "FACEEDIT_"


def _pairs(text: str, name: str) -> dict[str, str]:
    """'a=1,b=2' → {'a': '1', 'b': '2'} (used for generator and boundary maps)."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InvalidInputError(name, f"expected 'name=value[,name=value]', got {item!r}")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class EditorConfig:
    # Network. Loopback unless an operator binds elsewhere on purpose.
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (reported through port_file)
    port_file: str = ""  # written with the bound port once the server listens (tests, launcher)
    max_workers: int = 8
    max_message_bytes: int = 32 * 1024 * 1024  # gRPC send/receive limit
    max_image_bytes: int = 16 * 1024 * 1024  # an upload larger than this is RESOURCE_EXHAUSTED
    max_image_pixels: int = 4096 * 4096  # decompression-bomb guard on uploads
    metrics_port: int = 0  # Prometheus /metrics on host:port; 0 disables it
    # Dependencies.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: str = "faceedit"  # Redis key prefix shared with the worker and handlers
    torchserve_target: str = "127.0.0.1:7070"  # TorchServe gRPC inference address
    torchserve_key_file: str = ""  # TorchServe's key_file.json (token auth); empty: no token
    torchserve_token: str = ""  # or the inference key itself (env only, never in code)
    generator_model: str = "generator"  # TorchServe model names
    encoder_model: str = "encoder"
    inference_timeout_s: float = 30.0  # deadline of one TorchServe call
    health_interval_s: float = 2.0
    broker_url: str = ""  # Celery broker; empty: redis_url
    queue: str = "gpu"
    task_name: str = "faceedit.adapt"
    artifact_store_url: str = "run/artifacts"
    # Models and editing.
    generators: Mapping[str, str] = field(default_factory=dict)  # base id → checkpoint path
    default_generator: str = "demo"
    boundary_dirs: Mapping[str, str] = field(default_factory=dict)  # family → folder of boundaries
    latent_ttl_s: int = 3600
    default_truncation: float = 0.7
    max_seeds: int = 64
    max_frames: int = 120
    frame_batch: int = 8  # latents per TorchServe call while animating
    # Tenants: API key → tenant, from a file (JSON object or 'key tenant' lines) and/or the env.
    api_keys_file: str = ""
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # never printed

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "EditorConfig":
        env = os.environ if env is None else env

        def get(name: str, default: object) -> object:
            raw = env.get(PREFIX + name.upper())
            if raw is None or raw == "":
                return default
            kind = type(default)
            try:
                return kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
            except ValueError:
                raise InvalidInputError(PREFIX + name.upper(), f"expected {kind.__name__}, got {raw!r}") from None

        base = cls()
        values: dict[str, object] = {}
        for name in ("host", "port", "port_file", "max_workers", "max_message_bytes", "max_image_bytes",
                     "max_image_pixels", "metrics_port", "redis_url", "redis_namespace", "torchserve_target",
                     "torchserve_key_file", "torchserve_token", "generator_model", "encoder_model",
                     "inference_timeout_s", "health_interval_s", "broker_url", "queue", "task_name",
                     "artifact_store_url", "default_generator", "latent_ttl_s", "default_truncation",
                     "max_seeds", "max_frames", "frame_batch", "api_keys_file"):
            values[name] = get(name, getattr(base, name))
        values["generators"] = _pairs(env.get(PREFIX + "GENERATORS", ""), PREFIX + "GENERATORS")
        values["boundary_dirs"] = _pairs(env.get(PREFIX + "BOUNDARY_DIRS", ""), PREFIX + "BOUNDARY_DIRS")
        values["api_keys"] = _pairs(env.get(PREFIX + "API_KEYS", ""), PREFIX + "API_KEYS")
        values.update(overrides)
        config = cls(**values)  # type: ignore[arg-type]
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise InvalidInputError("port", f"must be in [0, 65535], got {self.port}")
        if not 0 < self.default_truncation <= 1:
            raise InvalidInputError("default_truncation", f"must be in (0, 1], got {self.default_truncation}")
        if self.latent_ttl_s < 1:
            raise InvalidInputError("latent_ttl_s", "must be at least 1 second")
        if self.max_image_bytes >= self.max_message_bytes:
            raise InvalidInputError("max_image_bytes", "must stay below max_message_bytes")
        for path in (self.api_keys_file, self.torchserve_key_file):
            if path and not Path(path).is_file():
                raise InvalidInputError("api_keys_file" if path == self.api_keys_file else "torchserve_key_file",
                                        f"{path} does not exist")

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url
