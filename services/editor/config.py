"""EditorConfig: every setting of the editor service, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from faceedit.errors import InvalidInputError
from services.common.settings import read_settings
from services.common.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS


@dataclass(frozen=True)
class EditorConfig:
    # Network. Loopback unless an operator binds elsewhere on purpose.
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (reported through port_file)
    port_file: str = ""  # written with the bound port once the server listens (tests, launcher)
    max_workers: int = 8
    max_message_bytes: int = 32 * 1024 * 1024  # gRPC send/receive limit
    # Upload limits (RESOURCE_EXHAUSTED above them): the handlers and the worker check the same
    # services.common.uploads defaults, so these may be lowered, not raised past them.
    max_image_bytes: int = MAX_UPLOAD_BYTES
    max_image_pixels: int = MAX_UPLOAD_PIXELS  # decompression-bomb guard
    metrics_port: int = 0  # Prometheus /metrics on host:port; 0 disables it
    # Dependencies.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: str = "faceedit"  # Redis key prefix shared with the worker and handlers
    torchserve_target: str = "127.0.0.1:7070"  # TorchServe gRPC inference address
    torchserve_key_file: str = ""  # TorchServe's key_file.json (token auth); empty: no token
    torchserve_token: str = ""  # or the inference key itself (env only, never in code)
    generator_model: str = "generator"  # TorchServe model names
    encoder_model: str = "encoder"
    # A TorchServe call's deadline is the caller's remaining time; this one applies only to calls
    # made for no caller (the health check's warm-up) and to callers that set no deadline.
    inference_timeout_s: float = 120.0
    # Synthesis is sent in chunks of about this many seconds (from the measured cost per image), so
    # a stream shows progress, a cancelled or expired call stops within one chunk, and no single
    # reply approaches the channel's size limit.
    chunk_seconds: float = 4.0
    health_interval_s: float = 2.0
    # How often RUNNING jobs are checked for an expired worker lease (the worker's lease_ttl, 60 s):
    # a worker that died mid-job is noticed within lease_ttl + this, and its job re-queued.
    job_check_interval_s: float = 15.0
    broker_url: str = ""  # Celery broker; empty: redis_url
    queue: str = "gpu"
    task_name: str = "faceedit.adapt"
    artifact_store_url: str = "run/artifacts"
    # Models: the one model configuration file (services/common/models.py); "" = $FACEEDIT_MODELS,
    # else the demo zoo's models.yaml. Editing limits below.
    models: str = ""
    latent_ttl_s: int = 3600
    default_truncation: float = 0.7
    max_seeds: int = 64
    max_frames: int = 120
    frame_batch: int = 8  # at most this many latents per TorchServe call (see chunk_seconds)
    # Tenants: API key → tenant, from a file (JSON object or 'key tenant' lines) and/or the env.
    api_keys_file: str = ""
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # never printed

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> EditorConfig:
        config = read_settings(cls, env, **overrides)
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise InvalidInputError("port", f"must be in [0, 65535], got {self.port}")
        if not 0 < self.default_truncation <= 1:
            raise InvalidInputError("default_truncation", f"must be in (0, 1], got {self.default_truncation}")
        if self.latent_ttl_s < 1:
            raise InvalidInputError("latent_ttl_s", "must be at least 1 second")
        if not self.inference_timeout_s > 0 or not self.chunk_seconds > 0 or self.frame_batch < 1:
            raise InvalidInputError("inference_timeout_s/chunk_seconds/frame_batch", "must be positive")
        if self.max_image_bytes >= self.max_message_bytes:
            raise InvalidInputError("max_image_bytes", "must stay below max_message_bytes")
        if not (0 < self.max_image_bytes <= MAX_UPLOAD_BYTES and 0 < self.max_image_pixels <= MAX_UPLOAD_PIXELS):
            raise InvalidInputError("max_image_bytes/max_image_pixels", f"must be in (0, {MAX_UPLOAD_BYTES}] bytes and "
                                    f"(0, {MAX_UPLOAD_PIXELS}] pixels: the handlers and the worker refuse more")
        for path in (self.api_keys_file, self.torchserve_key_file):
            if path and not Path(path).is_file():
                raise InvalidInputError("api_keys_file" if path == self.api_keys_file else "torchserve_key_file",
                                        f"{path} does not exist")

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url
