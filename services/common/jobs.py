"""Job records in Redis shaped like google.longrunning.Operation, with idempotent create and a worker lease."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faceedit.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    import redis

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
MAX_IDEMPOTENCY_KEY = 256

# Every state change is conditional on the current state and happens inside Redis, so a late
# progress report can never overwrite SUCCEEDED and a cancel cannot race a finish.
# KEYS[1] job hash; ARGV[1] ",ALLOWED,STATES,"; ARGV[2..] field/value pairs to set.
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if not string.find(ARGV[1], ',' .. state .. ',', 1, true) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
# KEYS[1] lease; ARGV[1] worker id; ARGV[2] ttl ms. Take it if free or already ours.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    kind: str
    base_generator: str
    target_key: str  # artifact-store key of the target image
    params: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str = ""
    state: str = QUEUED
    progress: float = 0.0
    message: str = ""
    result_generator_id: str = ""
    result_latent_id: str = ""  # a tuning job's pivot, in the latent cache
    error_code: str = ""  # a status code name, e.g. INVALID_ARGUMENT, INTERNAL
    error_message: str = ""
    created: float = 0.0
    updated: float = 0.0
    cancel_requested: bool = False
    attempts: int = 0
    display_name: str = ""  # the caller's label, given to the generator the job makes

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> Job:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(id=h["id"], tenant=h["tenant"], kind=h["kind"], base_generator=h["base_generator"],
                   target_key=h["target_key"], params=json.loads(h.get("params", "{}")),
                   idempotency_key=h.get("idempotency_key", ""), state=h["state"],
                   progress=float(h.get("progress", 0)), message=h.get("message", ""),
                   result_generator_id=h.get("result_generator_id", ""),
                   result_latent_id=h.get("result_latent_id", ""),
                   error_code=h.get("error_code", ""), error_message=h.get("error_message", ""),
                   created=float(h["created"]), updated=float(h["updated"]),
                   cancel_requested=h.get("cancel_requested") == "1", attempts=int(h.get("attempts", 0)),
                   display_name=h.get("display_name", ""))


class JobStore:
    """Jobs by id, per-tenant listing, idempotency keys and leases, under `namespace:` keys."""

    def __init__(self, client: redis.Redis, namespace: str = "faceedit"):
        self.client = client
        self.ns = namespace
        self._transition = client.register_script(_TRANSITION)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    # -- keys -------------------------------------------------------------------------------
    def _key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def _tenant_key(self, tenant: str) -> str:
        return f"{self.ns}:jobs:{tenant}"

    def _idem_key(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{self.ns}:idem:{tenant}:{digest}"

    def _lease_key(self, job_id: str) -> str:
        return f"{self.ns}:lease:{job_id}"

    # -- create and read ----------------------------------------------------------------------
    def create(self, tenant: str, base_generator: str, target_key: str, params: dict[str, Any] | None = None,
               idempotency_key: str = "", kind: str = "adapt", display_name: str = "") -> tuple[Job, bool]:
        """A new QUEUED job, or (existing job, False) when the tenant reused `idempotency_key`."""
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidInputError("idempotency_key", f"longer than {MAX_IDEMPOTENCY_KEY} characters")
        now = time.time()
        job = Job(id=f"job-{uuid.uuid4().hex[:20]}", tenant=tenant, kind=kind, base_generator=base_generator,
                  target_key=target_key, params=dict(params or {}), idempotency_key=idempotency_key,
                  created=now, updated=now, display_name=display_name)
        fields = {"id": job.id, "tenant": tenant, "kind": kind, "base_generator": base_generator,
                  "target_key": target_key, "params": json.dumps(job.params, sort_keys=True),
                  "idempotency_key": idempotency_key, "state": QUEUED, "progress": "0", "message": "",
                  "result_generator_id": "", "error_code": "", "error_message": "", "created": repr(now),
                  "updated": repr(now), "cancel_requested": "0", "attempts": "0", "display_name": display_name}
        # Write the record before claiming the key, so a claimed key always points at a real job.
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._key(job.id), mapping=fields)
        pipe.zadd(self._tenant_key(tenant), {job.id: now})
        pipe.execute()
        if idempotency_key:
            claimed = self.client.set(self._idem_key(tenant, idempotency_key), job.id, nx=True)
            if not claimed:
                pipe = self.client.pipeline(transaction=True)
                pipe.delete(self._key(job.id))
                pipe.zrem(self._tenant_key(tenant), job.id)
                pipe.execute()
                existing = self.client.get(self._idem_key(tenant, idempotency_key))
                return self.get(existing.decode(), tenant), False
        return job, True

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job; with `tenant`, another tenant's job is NotFound (as if it did not exist)."""
        if not isinstance(job_id, str) or not job_id or len(job_id) > 128:
            raise InvalidInputError("job_id", "must be a non-empty string of at most 128 characters")
        raw = self.client.hgetall(self._key(job_id))
        if not raw:
            raise NotFoundError("job", job_id)
        job = Job.from_hash(raw)
        if tenant is not None and job.tenant != tenant:
            raise NotFoundError("job", job_id)
        return job

    def list(self, tenant: str, limit: int = 100) -> list[Job]:
        """The tenant's jobs, newest first."""
        ids = self.client.zrevrange(self._tenant_key(tenant), 0, max(limit, 1) - 1)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._key(job_id.decode()))
        return [Job.from_hash(raw) for raw in pipe.execute() if raw]

    # -- state changes ------------------------------------------------------------------------
    def _move(self, job_id: str, allowed: tuple[str, ...], **values: Any) -> bool:
        values["updated"] = repr(time.time())
        args = [f",{','.join(allowed)},"]
        for name, value in values.items():
            args += [name, str(value)]
        result = self._transition(keys=[self._key(job_id)], args=args)
        if result == -1:
            raise NotFoundError("job", job_id)
        return result == 1

    def request_cancel(self, job_id: str, tenant: str) -> Job:
        """Cancel a queued job at once; ask a running one to stop (the worker honours it between steps)."""
        self.get(job_id, tenant)
        if not self._move(job_id, (QUEUED,), state=CANCELLED, cancel_requested=1,
                          message="cancelled before it started"):
            self._move(job_id, (RUNNING,), cancel_requested=1)
        return self.get(job_id, tenant)

    def start(self, job_id: str) -> bool:
        """QUEUED (or RUNNING, when a redelivered job resumes) → RUNNING; False for a finished job."""
        moved = self._move(job_id, (QUEUED, RUNNING), state=RUNNING)
        if moved:
            self.client.hincrby(self._key(job_id), "attempts", 1)
            self.client.sadd(self._running_key, job_id)  # where orphans() looks; a hint, checked there
        return moved

    @property
    def _running_key(self) -> str:
        return f"{self.ns}:jobs-running"

    def orphans(self) -> list[Job]:
        """RUNNING jobs whose lease has expired: the worker running them died (or stalled past its
        lease). Finished jobs found in the running set are dropped from it on the way."""
        found = []
        for raw in self.client.smembers(self._running_key):
            job_id = raw.decode()
            try:
                job = self.get(job_id)
            except NotFoundError:
                job = None
            if job is None or job.state != RUNNING:
                self.client.srem(self._running_key, job_id)
            elif self.lease_holder(job_id) is None:
                found.append(job)
        return found

    def requeue(self, job_id: str, message: str) -> bool:
        """RUNNING → QUEUED for the next worker (which resumes from the job's checkpoint)."""
        moved = self._move(job_id, (RUNNING,), state=QUEUED, message=message)
        if moved:
            self.client.srem(self._running_key, job_id)
        return moved

    def set_progress(self, job_id: str, progress: float, message: str = "") -> bool:
        progress = min(max(float(progress), 0.0), 1.0)
        return self._move(job_id, (RUNNING,), progress=repr(progress), message=message)

    def succeed(self, job_id: str, generator_id: str, latent_id: str = "") -> bool:
        return self._move(job_id, (QUEUED, RUNNING), state=SUCCEEDED, progress="1.0",
                          result_generator_id=generator_id, result_latent_id=latent_id, message="done")

    def fail(self, job_id: str, code: str, message: str) -> bool:
        return self._move(job_id, (QUEUED, RUNNING), state=FAILED, error_code=code, error_message=message,
                          message="failed")

    def cancelled(self, job_id: str, message: str = "cancelled") -> bool:
        return self._move(job_id, (QUEUED, RUNNING), state=CANCELLED, message=message)

    def generator_deleted(self, job_id: str, generator_id: str) -> bool:
        """The job succeeded, and the generator it made has since been deleted: it stays SUCCEEDED (it did),
        and says so, so a caller polling it is not left with a result that no RPC accepts."""
        return self._move(job_id, (SUCCEEDED,), message=f"done; its generator {generator_id} has been deleted")

    # -- lease ----------------------------------------------------------------------------------
    def acquire_lease(self, job_id: str, worker_id: str, ttl: float) -> bool:
        """Exclusive right to run the job for `ttl` seconds (re-entrant for the same worker id)."""
        return bool(self._acquire(keys=[self._lease_key(job_id)], args=[worker_id, int(ttl * 1000)]))

    def renew_lease(self, job_id: str, worker_id: str, ttl: float) -> bool:
        """Extend our lease; False means it expired and someone else may own the job now."""
        return bool(self._renew(keys=[self._lease_key(job_id)], args=[worker_id, int(ttl * 1000)]))

    def release_lease(self, job_id: str, worker_id: str) -> bool:
        return bool(self._release(keys=[self._lease_key(job_id)], args=[worker_id]))

    def lease_holder(self, job_id: str) -> str | None:
        holder = self.client.get(self._lease_key(job_id))
        return holder.decode() if holder else None
