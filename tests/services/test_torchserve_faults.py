"""Real TorchServe faults behind a real editor: two replicas balanced and one SIGKILLed; a SIGKILLed model worker."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from faceedit_client import FaceEditClient, FaceEditClientError, RetryPolicy
from services.editor import probe
from services.editor.config import EditorConfig
from services.editor.server import EditorServer
from services.inference.archive import build_archive
from services.inference.server import TorchServe, TorchServeConfig

pytestmark = pytest.mark.integration

API_KEY = "faults-tenant-key-0123456789"
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
THREADS = 8
WATCHDOG_S = 120.0  # a bound against hangs, never an assertion on speed


# -- processes, seen from /proc --------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state field on (state, ppid, pgrp, ...), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def generator_workers(server: TorchServe) -> list[int]:
    """The Python model workers of the generator model in `server`'s process group: TorchServe starts each
    worker in its model's directory, which tells the generator's worker from the encoder's."""
    model_dir = (Path(server.config.model_store) / "generator").resolve()
    found = []
    for pid in _group(server.pgid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if b"model_service_worker" in cmdline and cwd == model_dir:
            found.append(pid)
    return found


def api_worker_pids(server: TorchServe) -> list[int]:
    """The generator workers TorchServe itself reports (its management API, loopback, no token there)."""
    url = f"http://127.0.0.1:{server.config.management_port}/models/generator"
    with urllib.request.urlopen(url, timeout=10) as response:
        return [w["pid"] for w in json.loads(response.read())[0]["workers"] if w["status"] == "READY"]


def wakeups(pid: int) -> int:
    """Times the process's main thread blocked and was woken so far (voluntary context switches,
    /proc/<pid>/status). A TorchServe model worker's main thread waits in recv() on its socket to the
    frontend between batches and is woken once per batch it handles, and never while idle (the editor's
    health pings end at the frontend). The frontend's metrics endpoint is empty in TorchServe's default
    log mode and the shipped log4j config drops access logs below WARN, so this is the per-instance
    evidence that needs no test-only config."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in /proc/{pid}/status")


# -- the servers -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root():
    # Short: TorchServe's model workers bind unix sockets under its work dir (~107 bytes a path).
    path = Path(tempfile.mkdtemp(prefix="fe-tsf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def store(root, tiny_models):
    for kind in ("generator", "encoder"):
        build_archive(kind, root / "store", settings={"models": str(tiny_models["models"])})
    return root / "store"


@contextlib.contextmanager
def torchserve(root: Path, store: Path, name: str):
    # The launcher's environment for TorchServe: one torch thread per process on a small machine.
    server = TorchServe(TorchServeConfig(model_store=str(store), workdir=str(root / name)),
                        env={"OMP_NUM_THREADS": "1"})
    server.start()
    pgid = server.pgid
    try:
        yield server
    finally:
        server.stop()
        assert not _group(pgid), f"TorchServe {name} left processes behind"


@pytest.fixture(scope="module")
def replica_a(root, store):
    with torchserve(root, store, "a") as server:
        yield server


@pytest.fixture(scope="module")
def replica_b(root, store):
    with torchserve(root, store, "b") as server:
        yield server


@contextlib.contextmanager
def editor(target: str, tiny_models, redis_server, root: Path):
    """The editor in-process with its shipped defaults, pointed at `target`, SERVING before it is used."""
    namespace = f"tsf-{uuid.uuid4().hex[:8]}"
    config = EditorConfig.from_env({}, host="127.0.0.1", port=0, redis_url=redis_server.url,
                                   redis_namespace=namespace, queue=f"gpu-{namespace}",
                                   artifact_store_url=str(root / "artifacts"), models=str(tiny_models["models"]),
                                   torchserve_target=target, api_keys={API_KEY: "faults-tenant"})
    server = EditorServer(config)
    server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        deadline = time.monotonic() + WATCHDOG_S
        while not probe.check(address):  # SERVING only after one real inference went through
            assert time.monotonic() < deadline, "editor never turned SERVING"
            time.sleep(0.2)
        # No client-side retries: every call's own status code is what the test judges.
        with FaceEditClient(address, API_KEY, timeout_s=60, retry=RetryPolicy(attempts=1)) as client:
            yield client
    finally:
        server.stop(grace=0)


def call(client: FaceEditClient, i: int, seeds: int = 1) -> tuple[grpc.StatusCode, str]:
    """One Generate or Edit (alternating, both go through TorchServe's generator): (code, message)."""
    try:
        if i % 2:
            client.edit([], seed=i)
        else:
            client.generate(list(range(i, i + seeds)))
        return OK, ""
    except FaceEditClientError as exc:
        return exc.code, exc.message


def assert_typed_unavailable(code: grpc.StatusCode, message: str) -> None:
    assert code in (OK, UNAVAILABLE), f"{code.name}: {message}"
    if code == UNAVAILABLE:
        # The editor's typed error naming the dependency, not a stack trace or a raw gRPC dump.
        assert message.startswith("model server is unavailable"), message
        assert len(message.encode()) < 1024 and "Traceback" not in message, message


# -- the tests -------------------------------------------------------------------------------------

def test_a_sigkilled_model_worker_costs_unavailable_then_torchserve_replaces_it(replica_b, tiny_models,
                                                                                  redis_server, root):
    with editor(replica_b.grpc_target, tiny_models, redis_server, root) as client:
        assert call(client, 0) == (OK, "")
        workers = generator_workers(replica_b)
        assert len(workers) == 1, f"generator workers in the process group: {workers}"
        assert api_worker_pids(replica_b) == workers  # what /proc shows is TorchServe's own worker
        old = workers[0]

        results: list[tuple[grpc.StatusCode, str]] = []
        stop = threading.Event()

        def load(t: int) -> None:
            i = t
            while not stop.is_set():
                results.append(call(client, i, seeds=4))  # 4 images: each batch keeps the worker busy longer
                i += 4

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(load, t) for t in range(4)]
            try:
                # Killed while on the CPU, i.e. inside a batch: the calls of that batch are the ones that must
                # come back typed. A worker that never shows running is killed anyway after the watchdog.
                deadline = time.monotonic() + 10
                while (_stat(old) or ["R"])[0] != "R" and time.monotonic() < deadline:
                    time.sleep(0.001)  # not a spin: the worker needs this machine's cores to run
                os.kill(old, signal.SIGKILL)
                killed_at = len(results)
                # Bounded by calls, not time: the load runs on until 40 more calls have answered.
                deadline = time.monotonic() + WATCHDOG_S
                while len(results) < killed_at + 40 and not any(f.done() for f in futures):
                    assert time.monotonic() < deadline, f"{len(results) - killed_at} calls answered since the kill"
                    time.sleep(0.01)
            finally:
                stop.set()
            for f in futures:
                f.result()

        for code, message in results:
            assert_typed_unavailable(code, message)
        failed = [r for r in results if r[0] != OK]
        assert failed, "the kill landed in a running batch, yet no caller saw it"
        print(f"worker kill: {len(failed)} of {len(results)} calls UNAVAILABLE: {sorted({m for _, m in failed})}")

        # Recovery: calls until one answers OK, each failure still typed; the watchdog only ends a hang.
        deadline, tries = time.monotonic() + WATCHDOG_S, 0
        while True:
            tries += 1
            code, message = call(client, 1000 + tries)
            assert_typed_unavailable(code, message)
            if code == OK:
                break
            assert time.monotonic() < deadline, f"no OK within {WATCHDOG_S} s ({tries} tries) of the kill"
            time.sleep(0.5)
        assert [call(client, 2000 + i)[0] for i in range(6)] == [OK] * 6

        new = generator_workers(replica_b)
        assert len(new) == 1 and new[0] != old, f"generator workers after the kill: {new} (killed {old})"
        assert _stat(old) is None  # reaped by TorchServe, not a lingering zombie
        assert api_worker_pids(replica_b) == new


def test_two_replicas_share_the_load_and_a_killed_one_is_skipped(replica_a, replica_b, tiny_models,
                                                                 redis_server, root):
    # Runs after the worker-kill test (which may have replaced replica b's worker): pids are looked up here.
    target = f"ipv4:{replica_a.grpc_target},{replica_b.grpc_target}"
    with editor(target, tiny_models, redis_server, root) as client:
        workers = {}
        for name, server in (("a", replica_a), ("b", replica_b)):
            found = generator_workers(server)
            assert len(found) == 1, f"replica {name}: generator workers {found}"
            workers[name] = found[0]

        def woken() -> dict[str, int]:
            return {name: wakeups(pid) for name, pid in workers.items()}

        # The evidence is only evidence if a quiet worker is never woken: checked over longer than the
        # editor's health interval (its pings must not count as served requests).
        quiet = woken()
        time.sleep(EditorConfig().health_interval_s + 0.5)
        assert woken() == quiet, "an idle model worker was woken: its wake-ups cannot tell served requests"

        before = woken()
        with ThreadPoolExecutor(THREADS) as pool:
            codes = list(pool.map(lambda i: call(client, i), range(THREADS * 4)))
        assert codes == [(OK, "")] * len(codes)
        after = woken()
        assert all(after[n] > before[n] for n in workers), f"wake-ups before {before}, after {after}"
        print(f"worker wake-ups during the load: { {n: after[n] - before[n] for n in workers} }")

        # SIGKILL the whole of replica a (java, its workers) while 8 threads keep calling.
        results: dict[int, list[tuple[grpc.StatusCode, str]]] = {t: [] for t in range(THREADS)}
        lock, done, halfway = threading.Lock(), [0], threading.Event()

        def load(t: int) -> None:
            for k in range(6):
                results[t].append(call(client, t * 100 + k))
                with lock:
                    done[0] += 1
                    if done[0] == THREADS * 2:
                        halfway.set()

        with ThreadPoolExecutor(THREADS) as pool:
            futures = [pool.submit(load, t) for t in range(THREADS)]
            assert halfway.wait(WATCHDOG_S)
            os.killpg(replica_a.pgid, signal.SIGKILL)
            for f in futures:
                f.result()
        for per_thread in results.values():
            for code, message in per_thread:
                assert_typed_unavailable(code, message)
            # A thread has one call in flight at a time: only that one may have been on replica a.
            assert sum(code != OK for code, _ in per_thread) <= 1, per_thread

        print(f"replica kill: {sum(c != OK for r in results.values() for c, _ in r)} of {THREADS * 6} calls "
              f"UNAVAILABLE: {sorted({m for r in results.values() for c, m in r if c != OK})}")
        # Afterwards, bounded by tries: the first OK within 3 calls, then every call OK.
        first = [call(client, 5000 + i)[0] for i in range(3)]
        assert OK in first, first
        survivor = wakeups(workers["b"])
        assert [call(client, 6000 + i)[0] for i in range(16)] == [OK] * 16
        assert wakeups(workers["b"]) > survivor  # answered by the survivor, not by anything else
        assert not _group(replica_a.pgid)
