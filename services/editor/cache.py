"""W+ latents by id in Redis with a TTL, per tenant: what Generate and Invert return and Edit reads back."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np

from faceedit.errors import InvalidInputError, NotFoundError
from services.common import protocol
from services.editor.adapters import redis_errors
from services.editor.metrics import EditorMetrics
from services.editor.values import StoredLatent

if TYPE_CHECKING:
    import redis


class LatentCache:
    """W+ latents by id in Redis with a TTL; a tenant only reads its own entries."""

    def __init__(self, client: redis.Redis, ttl_s: int, namespace: str = "faceedit",
                 metrics: EditorMetrics | None = None):
        self.client = client
        self.ttl_s = int(ttl_s)
        self.ns = namespace
        self.metrics = metrics

    def _key(self, latent_id: str) -> str:
        return f"{self.ns}:latent:{latent_id}"

    def put(self, tenant: str, family: str, ws: np.ndarray) -> StoredLatent:
        ws = np.ascontiguousarray(ws, dtype="<f4")  # [1, L, D]
        latent_id = f"lat-{uuid.uuid4().hex}"
        header = json.dumps({"tenant": tenant, "family": family, "shape": list(ws.shape)}).encode()
        with redis_errors():
            self.client.set(self._key(latent_id), header + b"\n" + ws.tobytes(), ex=self.ttl_s)
        return StoredLatent(latent_id, ws, time.time() + self.ttl_s)

    def get(self, tenant: str, latent_id: str, field_name: str) -> tuple[str, np.ndarray]:
        """(family, ws [1, L, D]); NotFound when expired, unknown, or another tenant's."""
        if not latent_id or len(latent_id) > protocol.MAX_ID_LENGTH or not latent_id.replace("-", "").isalnum():
            raise InvalidInputError(field_name, "is not a latent id")
        with redis_errors():
            raw = self.client.get(self._key(latent_id))
        header = None
        if raw is not None:
            head, _, data = raw.partition(b"\n")
            header = json.loads(head)
        if header is None or header.get("tenant") != tenant:
            if self.metrics:
                self.metrics.cache.labels("miss").inc()
            raise NotFoundError("latent", latent_id, "expired or unknown; invert or generate again")
        if self.metrics:
            self.metrics.cache.labels("hit").inc()
        return header["family"], np.frombuffer(data, dtype="<f4").reshape(header["shape"]).copy()
