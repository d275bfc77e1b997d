"""The worker's configuration, read once from FACEEDIT_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from faceedit.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "model_store" / "demo"


@dataclass(frozen=True)
class WorkerConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"  # broker, result backend, jobs and the generator index
    artifact_store_url: str = f"file://{REPO / 'run' / 'artifacts'}"
    redis_namespace: str = "faceedit"
    # Base generators the worker can adapt, and the encoders that invert targets for them:
    # "id=path,id2=path2". A base without an encoder is tuned from its mean latent.
    base_generators: str = f"demo={ZOO / 'generator.pt'}"
    encoders: str = f"demo={ZOO / 'encoder.pt'}"
    queue: str = "gpu"
    # Must exceed the longest job: a message unacknowledged for longer is delivered again (the
    # lease then keeps the second delivery from running it twice, but it would wait for nothing).
    visibility_timeout: int = 7200
    # How often an idle worker looks for messages a dead worker left unacknowledged (FINDINGS:
    # kombu's defaults, 10 × 10 s, delay recovery by ~90 s).
    restore_interval: int = 1
    lease_ttl: float = 60.0  # a dead worker's job can be taken over this long after its last renewal
    iterations: int = 60
    checkpoint_every: int = 10
    torch_threads: int = 1
    max_target_pixels: int = 40_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "WorkerConfig":
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"FACEEDIT_{f.name.upper()}")
            if raw is None:
                continue
            kind = {"int": int, "float": float}.get(str(f.type), str)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise InvalidInputError(f.name, f"expected {kind.__name__}, got {raw!r}") from None
        return cls(**values)

    @staticmethod
    def parse_paths(spec: str, field: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise InvalidInputError(field, f"expected 'id=path[,id=path]', got {item!r}")
            out[name.strip()] = Path(path.strip())
        return out
