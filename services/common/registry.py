"""Index of adapted generators in Redis over the artifact store (the source of truth), and the weights
helpers that store their self-describing safetensors deltas (the library's format, as bytes)."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from faceedit.artifacts import header_metadata
from faceedit.errors import CheckpointFormatError, InvalidInputError, NotFoundError
from services.common.artifacts import ArtifactStore

if TYPE_CHECKING:  # types only: importing the index loads neither redis nor torch
    import redis
    from torch import Tensor

    from faceedit.models import Generator

READY = "READY"
GENERATOR_PREFIX = "generators"
RECORD_METADATA = "faceedit.record"  # the artifact's own copy of its index record (without what hashing gives)
_RECORD_FIELDS = ("id", "tenant", "base_generator", "created", "job_id", "display_name")
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
    display_name: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> GeneratorRecord:
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

    def __init__(self, client: redis.Redis, store: ArtifactStore, namespace: str = "faceedit"):
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
        """Remove the weights first, then the record: a crash in between leaves a record without weights
        (answered NotFound, reported by `rebuild`), never weights without a record, which `rebuild` would
        take for a generator whose index entry was lost and bring back."""
        record = self.get(generator_id, tenant)
        self.store.delete(record.artifact_key)
        self._unindex(record)

    def _unindex(self, record: GeneratorRecord) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._key(record.id))
        pipe.zrem(self._tenant_key(record.tenant), record.id)
        pipe.execute()

    def ensure_built(self) -> RebuildReport | None:
        """Rebuild when Redis no longer holds the index (its marker is gone with everything else: a new,
        wiped or restored-from-nothing Redis); a no-op, one EXISTS, otherwise."""
        if self.client.exists(self._marker):
            return None
        report = self.rebuild()
        self.client.set(self._marker, repr(time.time()))
        return report

    @property
    def _marker(self) -> str:
        return f"{self.ns}:generator-index:built"

    def rebuild(self, collect: bool = False) -> RebuildReport:
        """Bring the index in line with the artifact store: every generator artifact whose id has no record
        gets its record back (from the artifact's own metadata, its sha256 recomputed). Artifacts that
        cannot be indexed (unreadable metadata, or an id indexed to another artifact: the leftover of a
        lost write race) are orphans; records whose artifact is gone are dangling. `collect` deletes
        orphans and drops dangling records; without it they are only reported."""
        report = RebuildReport()
        for key in sorted(self.store.keys(GENERATOR_PREFIX)):
            data = self.store.get(key)
            try:
                record = record_from_artifact(key, data)
            except InvalidInputError as exc:
                report.orphans.append(f"{key}: {exc}")
                if collect:
                    self.store.delete(key)
                continue
            stored = self.add(record)
            if stored.artifact_key == key:
                (report.restored if stored is record else report.indexed).append(record.id)
            else:
                report.orphans.append(f"{key}: {record.id} is indexed to {stored.artifact_key}")
                if collect:
                    self.store.delete(key)
        for raw_key in self.client.scan_iter(match=f"{self.ns}:generator:*", count=1000):
            raw = self.client.get(raw_key)
            if raw is None:
                continue
            record = GeneratorRecord.from_json(raw)
            if not self.store.exists(record.artifact_key):
                report.dangling.append(f"{record.id}: {record.artifact_key} is missing")
                if collect:
                    self._unindex(record)
        report.collected = collect
        return report


@dataclass
class RebuildReport:
    restored: list[str] = field(default_factory=list)  # ids whose record was missing and is back
    indexed: list[str] = field(default_factory=list)  # ids already indexed to their artifact
    orphans: list[str] = field(default_factory=list)  # "key: why", artifacts no record can point at
    dangling: list[str] = field(default_factory=list)  # "id: why", records without their artifact
    collected: bool = False

    def summary(self) -> str:
        verb = "removed" if self.collected else "found (collect with --collect)"
        return (f"{len(self.indexed)} indexed, {len(self.restored)} restored, {len(self.orphans)} orphan artifacts "
                f"and {len(self.dangling)} dangling records {verb}")


def record_from_artifact(key: str, data: bytes) -> GeneratorRecord:
    """The index record a generator artifact describes in its own safetensors metadata."""
    meta = safetensors_metadata(data)
    try:
        fields = json.loads(meta[RECORD_METADATA])
        values = {name: fields[name] for name in _RECORD_FIELDS}
        sha = hashlib.sha256(data).hexdigest()
        record = GeneratorRecord(state=READY, artifact_key=key, sha256=sha, size_bytes=len(data),
                                 **{**values, "created": float(values["created"])})
        check_id(record.id)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError("artifact", f"no usable {RECORD_METADATA} metadata ({type(exc).__name__})") from None
    if key != artifact_key_for(record.tenant, record.id, sha):
        raise InvalidInputError("artifact", "its key does not match its tenant, id and content hash")
    return record


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's `__metadata__`, read without torch (the editor and the index tools read it)."""
    try:
        return header_metadata(data, "artifact")
    except CheckpointFormatError as exc:
        raise InvalidInputError("artifact", exc.problem) from None


def artifact_key_for(tenant: str, generator_id: str, sha256: str) -> str:
    # The tenant is hashed into the key: tenant names need not be valid key segments. The content
    # hash makes two racing writers of one id write different objects, so the object the index
    # records is never overwritten by the loser of the race.
    return f"{GENERATOR_PREFIX}/{tenant_segment(tenant)}/{generator_id}-{sha256[:16]}.safetensors"


def tenant_segment(tenant: str) -> str:
    """A tenant name as a safe artifact-key segment."""
    return "t" + hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:24]


def delta_bytes(tensors: Mapping[str, Tensor], base: Generator, record: Mapping[str, Any] | None = None) -> bytes:
    """Trained tensors (rosinality names, a subset of the base's) → the bytes of a library generator delta
    (`faceedit.models.delta`: base config and fingerprint in the metadata), plus `record` (the index fields the
    artifact cannot derive from its bytes) under `faceedit.record`, so the index can be rebuilt."""
    from faceedit.models.delta import delta_to_bytes

    extra = None
    if record is not None:
        extra = {RECORD_METADATA: json.dumps({name: record[name] for name in _RECORD_FIELDS}, sort_keys=True)}
    return delta_to_bytes(tensors, base, extra)


def generator_id_for(job_id: str) -> str:
    """One id per job, whatever the number of deliveries: a rerun finds its own earlier result."""
    return "gen-" + job_id.removeprefix("job-")


def save_adapted_generator(store: ArtifactStore, index: GeneratorIndex, tenant: str, base_id: str,
                           tensors: Mapping[str, Tensor], base: Generator,
                           generator_id: str | None = None, job_id: str = "",
                           display_name: str = "") -> GeneratorRecord:
    """Write the delta to the store, then index it. Passing the same `generator_id` again (a
    redelivered job) returns the first record instead of creating a second generator."""
    generator_id = check_id(generator_id or new_generator_id())
    try:
        return index._read(generator_id)
    except NotFoundError:
        pass
    described = {"id": generator_id, "tenant": tenant, "base_generator": base_id, "created": time.time(),
                 "job_id": job_id, "display_name": display_name}
    data = delta_bytes(tensors, base, described)
    sha = hashlib.sha256(data).hexdigest()
    key = artifact_key_for(tenant, generator_id, sha)
    store.put(key, data)
    record = GeneratorRecord(sha256=sha, size_bytes=len(data), state=READY, artifact_key=key, **described)
    stored = index.add(record)
    if stored.artifact_key != key:  # lost a race for this id: the winner's weights stand
        store.delete(key)
    return stored


def load_adapted_generator(store: ArtifactStore, record: GeneratorRecord, base: Generator) -> Generator:
    """Base generator with the record's delta applied, after checking the bytes against the recorded
    sha256; the delta then refuses a base it was not trained on."""
    from faceedit.models.delta import apply_delta_bytes

    return apply_delta_bytes(base, store.get(record.artifact_key), store.path_hint(record.artifact_key),
                             sha256=record.sha256, recorded_by="the index")
