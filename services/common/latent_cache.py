"""W+ latents by id in Redis with a TTL, per tenant: what Generate, Invert and tuning jobs write and Edit reads back."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from faceedit.errors import InvalidInputError, NotFoundError
from services.common import protocol
from services.common.errors import redis_errors

if TYPE_CHECKING:
    import redis


@dataclass(frozen=True)
class StoredLatent:
    id: str
    ws: np.ndarray  # [1, n_latent, style_dim] float32
    expires_at: float  # unix time


@dataclass(frozen=True)
class CachedLatent:
    family: str
    ws: np.ndarray  # [1, n_latent, style_dim] float32
    photo_id: str  # the photo an edit of this latent can be pasted back into ("" when none)


def check_latent_id(latent_id: str, field_name: str) -> str:
    if not latent_id or len(latent_id) > protocol.MAX_ID_LENGTH or not latent_id.replace("-", "").isalnum():
        raise InvalidInputError(field_name, "is not a latent id")
    return latent_id


class LatentCache:
    """W+ latents by id in Redis with a TTL; a tenant only reads (and deletes) its own entries.

    The editor and the worker (a tuning job's pivot) share it: the key layout and entry format live here once."""

    def __init__(self, client: redis.Redis, ttl_s: int, namespace: str = "faceedit",
                 on_lookup: Callable[[bool], None] | None = None):
        self.client = client
        self.ttl_s = int(ttl_s)
        self.ns = namespace
        self.on_lookup = on_lookup  # called with hit/miss, for the editor's metrics

    def _key(self, latent_id: str) -> str:
        return f"{self.ns}:latent:{latent_id}"

    def put(self, tenant: str, family: str, ws: np.ndarray, photo_id: str = "",
            expires_by: float | None = None) -> StoredLatent:
        """A new cached latent, living the TTL, or until `expires_by` (unix s) when that comes first (the photo
        it shares: a latent never promises a paste-back its photo can no longer give)."""
        ws = np.ascontiguousarray(ws, dtype="<f4")  # [1, L, D]
        ttl = self.ttl_s if expires_by is None else max(1, min(self.ttl_s, int(expires_by - time.time())))
        latent_id = f"lat-{uuid.uuid4().hex}"
        header = {"tenant": tenant, "family": family, "shape": list(ws.shape)}
        if photo_id:
            header["photo"] = photo_id
        with redis_errors():
            self.client.set(self._key(latent_id), json.dumps(header).encode() + b"\n" + ws.tobytes(), ex=ttl)
        return StoredLatent(latent_id, ws, time.time() + ttl)

    def entry(self, tenant: str, latent_id: str, field_name: str) -> CachedLatent:
        """NotFound when expired, unknown, or another tenant's."""
        check_latent_id(latent_id, field_name)
        with redis_errors():
            raw = self.client.get(self._key(latent_id))
        header = None
        if raw is not None:
            head, _, data = raw.partition(b"\n")
            header = json.loads(head)
        if self.on_lookup is not None:
            self.on_lookup(header is not None and header.get("tenant") == tenant)
        if header is None or header.get("tenant") != tenant:
            raise NotFoundError("latent", latent_id, "expired or unknown; invert or generate again")
        ws = np.frombuffer(data, dtype="<f4").reshape(header["shape"]).copy()
        return CachedLatent(header["family"], ws, header.get("photo", ""))

    def get(self, tenant: str, latent_id: str, field_name: str) -> tuple[str, np.ndarray]:
        """(family, ws [1, L, D])."""
        entry = self.entry(tenant, latent_id, field_name)
        return entry.family, entry.ws

    def delete(self, tenant: str, latent_id: str, field_name: str = "latent_id") -> CachedLatent:
        """Removes the tenant's latent now (NotFound as for `entry`); returns what it held."""
        entry = self.entry(tenant, latent_id, field_name)
        with redis_errors():
            self.client.delete(self._key(latent_id))
        return entry
