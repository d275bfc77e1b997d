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
    # Base generators the worker can adapt, and the e4e encoders DIFA's consistency loss uses for
    # them: "id=path,id2=path2".
    base_generators: str = f"demo={ZOO / 'generator.pt'}"
    encoders: str = f"demo={ZOO / 'encoder.pt'}"
    # "difa" (the method) or "finetune": the earlier pixel fit to the target, kept only as a
    # fallback a deployment selects when it has no CLIP weights to mount.
    adaptation: str = "difa"
    # DIFA's CLIP models, comma-separated "[open_clip architecture=]weights": without an architecture
    # the model config is read from the card JSON next to the weights (the zoo's demo CLIP has one),
    # e.g. "ViT-B-32-quickgelu=/clip/b32.safetensors,ViT-B-16-quickgelu=/clip/b16.safetensors".
    # Empty: the zoo's clip.safetensors.
    clips: str = ""
    # JSON object of DifaConfig settings the operator fixes for every job (e.g. clip_mean_samples,
    # psp_alpha, consistency_weight); a job's own parameters are applied on top.
    difa_settings: str = ""
    queue: str = "gpu"
    # Must exceed the longest job: a message unacknowledged for longer is delivered again (the
    # lease then keeps the second delivery from running it twice, but it would wait for nothing).
    visibility_timeout: int = 7200
    # How often an idle worker looks for messages a dead worker left unacknowledged (FINDINGS:
    # kombu's defaults, 10 × 10 s, delay recovery by ~90 s).
    restore_interval: int = 1
    lease_ttl: float = 60.0  # a dead worker's job can be taken over this long after its last renewal
    iterations: int = 301  # DIFA's upstream schedule; a job's "iterations" overrides it
    checkpoint_every: int = 25
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

    def __post_init__(self) -> None:
        if self.adaptation not in ("difa", "finetune"):
            raise InvalidInputError("adaptation", f"must be 'difa' or 'finetune', got {self.adaptation!r}")

    @staticmethod
    def parse_paths(spec: str, field: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise InvalidInputError(field, f"expected 'id=path[,id=path]', got {item!r}")
            out[name.strip()] = Path(path.strip())
        return out
