"""Index of adapted generators in Redis, and the weights helpers that write and verify their safetensors deltas."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from faceedit.errors import ChecksumMismatchError, InvalidInputError, NotFoundError
from services.common.artifacts import ArtifactStore

if TYPE_CHECKING:  # torch stays out of the editor's imports: only the weights helpers need it
    import redis
    from torch import Tensor

    from faceedit.models import Generator

READY = "READY"
DELTA_KIND = "generator-delta"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# SET NX and the tenant's index entry in one step, so a crash never leaves half a record.
_ADD = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class GeneratorRecord:
    id: str
    tenant: str
    base_generator: str
    sha256: str
    size_bytes: int
    created: float
    state: str
    artifact_key: str
    job_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "GeneratorRecord":
        return cls(**json.loads(text))


def check_id(value: str, field: str = "generator_id") -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidInputError(field, "must be 1-128 characters of [A-Za-z0-9._-], starting with a letter or digit")
    return value


def new_generator_id() -> str:
    return f"gen-{uuid.uuid4().hex[:20]}"


class GeneratorIndex:
    """Records of adapted generators per tenant. Lookups take the tenant: another tenant's id
    answers NotFound exactly like an unknown id, so existence never leaks across tenants."""

    def __init__(self, client: "redis.Redis", store: ArtifactStore, namespace: str = "faceedit"):
        self.client = client
        self.store = store
        self.ns = namespace
        self._add = client.register_script(_ADD)

    def _key(self, generator_id: str) -> str:
        return f"{self.ns}:generator:{generator_id}"

    def _tenant_key(self, tenant: str) -> str:
        return f"{self.ns}:generators:{tenant}"

    def add(self, record: GeneratorRecord) -> GeneratorRecord:
        """Insert once; adding an id that exists returns the stored record (a retried job's add is a no-op)."""
        check_id(record.id)
        if self._add(keys=[self._key(record.id), self._tenant_key(record.tenant)],
                     args=[record.to_json(), record.created, record.id]):
            return record
        return self._read(record.id)

    def _read(self, generator_id: str) -> GeneratorRecord:
        raw = self.client.get(self._key(generator_id))
        if raw is None:
            raise NotFoundError("generator", generator_id)
        return GeneratorRecord.from_json(raw)

    def get(self, generator_id: str, tenant: str) -> GeneratorRecord:
        check_id(generator_id)
        record = self._read(generator_id)
        if record.tenant != tenant:
            raise NotFoundError("generator", generator_id)
        return record

    def list(self, tenant: str) -> list[GeneratorRecord]:
        """The tenant's generators, oldest first."""
        ids = self.client.zrange(self._tenant_key(tenant), 0, -1)
        if not ids:
            return []
        raws = self.client.mget([self._key(i.decode()) for i in ids])
        return [GeneratorRecord.from_json(r) for r in raws if r is not None]

    def delete(self, generator_id: str, tenant: str) -> None:
        """Remove the record first (so nothing serves it from then on), then its weights."""
        record = self.get(generator_id, tenant)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._key(generator_id))
        pipe.zrem(self._tenant_key(tenant), generator_id)
        pipe.execute()
        self.store.delete(record.artifact_key)


def artifact_key_for(tenant: str, generator_id: str, sha256: str) -> str:
    # The tenant is hashed into the key: tenant names need not be valid key segments. The content
    # hash makes two racing writers of one id write different objects, so the object the index
    # records is never overwritten by the loser of the race.
    return f"generators/{tenant_segment(tenant)}/{generator_id}-{sha256[:16]}.safetensors"


def tenant_segment(tenant: str) -> str:
    """A tenant name as a safe artifact-key segment."""
    return "t" + hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:24]


def delta_bytes(tensors: Mapping[str, "Tensor"], base: "Generator") -> bytes:
    """Trained tensors (rosinality names, a subset of the base's) → safetensors bytes in the library's
    generator-delta layout (`faceedit.adaptation.delta`): base config and fingerprint in the metadata."""
    from safetensors.torch import save

    from faceedit.adaptation.delta import state_fingerprint

    if not tensors:
        raise InvalidInputError("tensors", "no tensors to save")
    config = {"generator": base.config.to_dict(), "base_fingerprint": state_fingerprint(base)}
    meta = {"faceedit.kind": DELTA_KIND, "faceedit.config": json.dumps(config, sort_keys=True)}
    return save({k: v.detach().to("cpu").float().contiguous() for k, v in tensors.items()}, metadata=meta)


def save_adapted_generator(store: ArtifactStore, index: GeneratorIndex, tenant: str, base_id: str,
                           tensors: Mapping[str, "Tensor"], base: "Generator",
                           generator_id: str | None = None, job_id: str = "") -> GeneratorRecord:
    """Write the delta to the store, then index it. Passing the same `generator_id` again (a
    redelivered job) returns the first record instead of creating a second generator."""
    generator_id = check_id(generator_id or new_generator_id())
    try:
        return index._read(generator_id)
    except NotFoundError:
        pass
    data = delta_bytes(tensors, base)
    sha = hashlib.sha256(data).hexdigest()
    key = artifact_key_for(tenant, generator_id, sha)
    store.put(key, data)
    record = GeneratorRecord(id=generator_id, tenant=tenant, base_generator=base_id, sha256=sha,
                             size_bytes=len(data), created=time.time(), state=READY, artifact_key=key,
                             job_id=job_id)
    stored = index.add(record)
    if stored.artifact_key != key:  # lost a race for this id: the winner's weights stand
        store.delete(key)
    return stored


def load_adapted_generator(store: ArtifactStore, record: GeneratorRecord, base: "Generator") -> "Generator":
    """Base generator with the record's delta applied, after checking the bytes against the recorded
    sha256; `apply_delta` then refuses a delta trained on another base."""
    from faceedit.adaptation.delta import apply_delta

    data = store.get(record.artifact_key)
    actual = hashlib.sha256(data).hexdigest()
    if actual != record.sha256:
        raise ChecksumMismatchError(store.path_hint(record.artifact_key),
                                    f"sha256 is {actual}, the index records {record.sha256}")
    # The library reads deltas from files; a private temporary copy keeps one reader for both stores.
    with tempfile.TemporaryDirectory(prefix="faceedit-delta-") as tmp:
        path = Path(tmp) / f"{record.id}.safetensors"
        path.write_bytes(data)
        return apply_delta(base, path)
