"""The whole stack as `make demo` starts it (launcher: real Redis, TorchServe, editor process, Celery worker),
tiny models, every RPC through faceedit_client, then `down` leaves no process behind."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from faceedit.editing import save_boundary
from faceedit.models import load_generator
from faceedit_client import FaceEditClient, FaceEditClientError, Step
from services import launcher

from editor_fakes import png_bytes, write_models_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OTHER_KEY = "other-tenant-key-0123456789"
REPO = Path(__file__).resolve().parents[2]
HAS_WORKER = importlib.util.find_spec("services.worker.app") is not None


def _alive(pgid: int) -> bool:
    """Any live (non-zombie) process in the group, found in /proc: a child of this test process that
    exited stays a zombie until reaped and would fool a kill(0) probe."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def ship_relevance(models: Path, tiny_models) -> None:
    """The model configuration's `relevance:` for the tiny generator and CLIP, with the worker's settings."""
    import yaml

    from faceedit.adaptation.clip import load_clip, parse_clip_spec
    from faceedit.editing.text import KEY_FIELD, RelevanceConfig, channel_relevance, relevance_key
    from services.worker.config import WorkerConfig

    generator = load_generator(tiny_models["generator"]).eval()
    clip = load_clip(parse_clip_spec(str(tiny_models["clip"]))[0])
    config = RelevanceConfig(samples=WorkerConfig().relevance_samples)
    path = models.parent / "relevance.safetensors"
    path.write_bytes(channel_relevance(generator, clip, config).to_bytes(
        {KEY_FIELD: relevance_key(generator, clip, config)}))
    data = yaml.safe_load(models.read_text())
    for family in data["families"].values():
        family["relevance"] = str(path)
    models.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_models):
    from services.inference.archive import build_archive

    root = tmp_path_factory.mktemp("stack")
    store = root / "model_store"
    build_archive("generator", store)
    build_archive("encoder", store)
    generator = load_generator(tiny_models["generator"])
    boundaries = root / "boundaries"
    rng = torch.Generator().manual_seed(0)
    for name in ("age", "smile"):
        save_boundary(boundaries / f"{name}.safetensors", torch.randn(generator.style_dim, generator=rng),
                      {"attribute": name, "accuracy": 0.9, "recommended_strength": [-3.0, 3.0]})
    # One model configuration for every process, as `make demo MODELS=...` hands it to the launcher.
    models = write_models_file(root / "models.yaml", tiny_models, "demo", boundaries)
    ship_relevance(models, tiny_models)  # as the demo zoo ships its own: text edits are ready at start
    run_root = root / "run"
    try:
        started = launcher.up(run_root, store, worker=HAS_WORKER, timeout=400, extra_keys={OTHER_KEY: "other-tenant"},
                              models=models)
        pids = {p.stem: int(p.read_text()) for p in started.run_dir.glob("*.pid") if p.read_text().strip()}
        yield started, pids
    finally:
        launcher.down(run_root)


@pytest.fixture
def client(stack):
    started, _ = stack
    with FaceEditClient(started.editor_target, started.api_key, timeout_s=120) as c:
        yield c


def test_editor_rpcs_through_real_torchserve(client):
    faces = client.generate([0, 1, 2], return_latents=True)
    assert len(faces) == 3 and Image.open(io.BytesIO(faces[0].image.data)).size == (32, 32)
    assert faces[0].image.data != faces[1].image.data
    edited = client.edit([Step("age", 2.5), Step("smile", -1.0, layers="fine", conditions=["age"])],
                         latent_id=faces[0].latent_id, return_latent=True)
    assert not np.allclose(edited.latent, faces[0].latent)
    inversion = client.invert(png_bytes(64), return_latent=True)
    assert inversion.latent.shape == (1, 8, 64) and inversion.reconstruction.data
    frames = list(client.animate([Step("age", 3.0)], latent_id=inversion.latent_id, frames=4, start=-1, end=1,
                                 animation="gif"))
    assert len(frames) == 5 and Image.open(io.BytesIO(frames[-1].data)).n_frames == 4
    assert [g.id for g in client.list_generators()] == ["demo"]
    assert {a.name for a in client.list_attributes()} == {"age", "smile"}


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory) -> Path:
    """A fresh venv holding only `pip install clients/python`, as a product backend installs it: its python.

    The package is built from a copy, so the in-tree build leaves nothing in the checkout; its stubs are the
    ones `make protos` generated (the build refuses to run without them)."""
    root = tmp_path_factory.mktemp("client-venv")
    source = root / "faceedit-client"
    shutil.copytree(REPO / "clients" / "python", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              "-c", str(REPO / "constraints.txt"), str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    return python


CLIENT_SCRIPT = """
import json, struct, sys
import faceedit_client
from faceedit_client import FaceEditClient
target, key = sys.argv[1:]
with FaceEditClient(target, key, timeout_s=120) as client:
    generators = client.list_generators()
    faces = client.generate([4, 5])
png = faces[0].image.data
print(json.dumps({
    "module": faceedit_client.__file__,
    "base": [g.id for g in generators if g.kind == "base"],
    "png": png[:8] == b"\\x89PNG\\r\\n\\x1a\\n",
    "size": struct.unpack(">II", png[16:24]),  # IHDR: width, height
    "declared": [faces[0].image.width, faces[0].image.height],
    "distinct": faces[0].image.data != faces[1].image.data,
}))
"""


def test_the_client_package_alone_in_a_venv_without_torch(stack, client_venv, tmp_path):
    """clients/python installs without torch or the faceedit library and talks to the real stack."""
    started, _ = stack
    for module in ("torch", "faceedit"):  # -I: nothing from the checkout or the environment leaks in
        probe = subprocess.run([str(client_venv), "-I", "-c", f"import {module}"], capture_output=True, text=True,
                               cwd=tmp_path, timeout=60)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"{module} is importable"
    run = subprocess.run([str(client_venv), "-I", "-c", CLIENT_SCRIPT, started.editor_target, started.api_key],
                         capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert Path(reply["module"]).is_relative_to(client_venv.parent.parent)  # the installed copy, not the checkout
    assert reply["base"] == ["demo"] and reply["png"] and reply["distinct"]
    assert reply["size"] == reply["declared"] == [32, 32]

def _png_of_size(width: int, height: int) -> bytes:
    """A valid PNG with many pixels but few bytes (one colour): a decompression bomb's shape."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("call, code, field", [
    (lambda c: c.invert(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10), grpc.StatusCode.INVALID_ARGUMENT, "image.data"),
    # Huge: over the byte limit (16 MiB by default), and a small file that decodes to 25 Mpx.
    (lambda c: c.invert(b"\x89PNG\r\n\x1a\n" + bytes(17 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED, "image.data"),
    (lambda c: c.invert(_png_of_size(5000, 5000)), grpc.StatusCode.RESOURCE_EXHAUSTED, "image.data"),
    (lambda c: c.create_adaptation(b"not an image", idempotency_key="bad-upload"), grpc.StatusCode.INVALID_ARGUMENT,
     "style_image.data"),
    (lambda c: c.edit([], latent=np.zeros((8, 63), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "latent.inline"),
    (lambda c: c.edit([], latent=np.full((8, 64), np.nan, np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
     "latent.inline"),
    (lambda c: c.edit([Step("wings", 1.0)], seed=1), grpc.StatusCode.NOT_FOUND, "wings"),
    (lambda c: c.generate([1], generator_id="gen-missing"), grpc.StatusCode.NOT_FOUND, "gen-missing"),
])
def test_bad_input_through_the_stack(client, call, code, field):
    jobs_before = [j.name for j in client.list_adaptations()[0]]
    with pytest.raises(FaceEditClientError) as info:
        call(client)
    assert info.value.code == code and field in info.value.message
    # Nothing crashed and no half-made job is left behind: the same stack keeps answering.
    assert [j.name for j in client.list_adaptations()[0]] == jobs_before
    assert client.generate([3])[0].image.data


def test_missing_or_unknown_key_is_unauthenticated(stack):
    from faceedit_client.v1 import editor_pb2, editor_pb2_grpc

    started, _ = stack
    with grpc.insecure_channel(started.editor_target) as channel:  # no authorization metadata at all
        with pytest.raises(grpc.RpcError) as raw:
            editor_pb2_grpc.EditorStub(channel).ListGenerators(editor_pb2.ListGeneratorsRequest(), timeout=30)
    assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED and "authorization" in raw.value.details()
    with FaceEditClient(started.editor_target, "not-a-key-0000000000") as c:
        with pytest.raises(FaceEditClientError) as info:
            c.list_generators()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.skipif(not HAS_WORKER, reason="services.worker.app (the Celery worker) is not there yet")
def test_adaptation_job_to_an_adapted_generator_and_back(stack, client):
    started, _ = stack
    job = client.create_adaptation(png_bytes(64, seed=5), idempotency_key="stack-1", steps=2,
                                   display_name="watercolour")
    assert client.create_adaptation(png_bytes(64, seed=5), idempotency_key="stack-1").name == job.name
    seen = []
    done = client.wait_for_adaptation(job.name, timeout_s=300, poll_s=0.5, on_progress=lambda j: seen.append(j.state))
    assert done.state == "SUCCEEDED" and done.generator_id and seen[-1] == "SUCCEEDED"
    assert done.display_name == "watercolour" and not done.generator_deleted
    names = {g.id: g.display_name for g in client.list_generators()}
    assert names[done.generator_id] == "watercolour"  # the name given, not the job id
    base = client.edit([Step("age", 1.0)], seed=7)
    adapted = client.edit([Step("age", 1.0)], seed=7, generator_id=done.generator_id)
    assert adapted.image.data != base.image.data
    with FaceEditClient(started.editor_target, OTHER_KEY) as stranger:
        assert done.generator_id not in [g.id for g in stranger.list_generators()]
        for call in (lambda: stranger.edit([], seed=7, generator_id=done.generator_id),
                     lambda: stranger.get_adaptation(job.name),
                     lambda: stranger.delete_generator(done.generator_id)):
            with pytest.raises(FaceEditClientError) as info:
                call()
            assert info.value.code == grpc.StatusCode.NOT_FOUND
    jobs, _ = client.list_adaptations()
    assert job.name in [j.name for j in jobs]
    client.delete_generator(done.generator_id)
    with pytest.raises(FaceEditClientError) as info:
        client.edit([], seed=7, generator_id=done.generator_id)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    after = client.get_adaptation(job.name)  # still SUCCEEDED (it did), and it says the result is gone
    assert after.state == "SUCCEEDED" and after.generator_deleted and "deleted" in after.message


@pytest.mark.skipif(not HAS_WORKER, reason="services.worker.app (the Celery worker) is not there yet")
def test_cancel_a_long_job(client):
    from faceedit_client import AdaptationFailed

    job = client.create_adaptation(png_bytes(64, seed=6), idempotency_key="stack-cancel", steps=10_000)
    cancelled = client.cancel_adaptation(job.name)
    assert cancelled.state in ("CANCELLED", "CANCELLING")
    with pytest.raises(AdaptationFailed) as info:  # a running job stops at its next iteration
        client.wait_for_adaptation(job.name, timeout_s=300, poll_s=0.5)
    assert info.value.code == grpc.StatusCode.CANCELLED
    assert client.get_adaptation(job.name).state == "CANCELLED"


@pytest.fixture(scope="module")
def portrait() -> bytes:
    """A zoo face (one dlib finds) on a wider plain background: a photo with room around the face."""
    from faceedit.images import to_pil
    from faceedit.synth import render_faces

    faces, _ = render_faces(2, seed=5, size=256)
    photo = Image.new("RGB", (460, 400), (40, 90, 140))
    photo.paste(to_pil(faces[1:2])[0].resize((320, 320)), (70, 40))
    out = io.BytesIO()
    photo.save(out, format="PNG")
    return out.getvalue()


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(FaceEditClientError) as info:
        call()
    return info.value.code, info.value.message


@pytest.mark.skipif(not HAS_WORKER, reason="services.worker.app (the Celery worker) is not there yet")
def test_a_text_edit_once_the_worker_prepared_it(client):
    """The worker takes each base's shipped channel relevance at start (faceedit.prepare); ListAttributes says
    when it is there, then a text step goes through TorchServe as a StyleSpace offset."""
    _wait(lambda: client.text_edits(), "text edits to be prepared", within_s=240)
    plain = client.edit([], seed=11)
    older = client.edit([Step("", 3.0, text="an old face", threshold=0.05)], seed=11)
    assert older.image.data != plain.image.data
    mixed = client.edit([Step("age", 1.0), Step("", 3.0, text="an old face", threshold=0.05)], seed=11)
    assert mixed.image.data not in (plain.image.data, older.image.data)
    frames = list(client.animate([Step("", 3.0, text="an old face", threshold=0.05)], seed=11, frames=2, start=0,
                                 end=1))

    def diff(a: bytes, b: bytes) -> np.ndarray:
        return np.abs(np.asarray(Image.open(io.BytesIO(a)), np.int16) - np.asarray(Image.open(io.BytesIO(b)), np.int16))

    # t = 0 is the unedited face and t = 1 the edit, up to a grey level (a batch of 2 rounds differently from 1).
    assert diff(frames[0].image.data, plain.image.data).max() <= 1
    assert diff(frames[-1].image.data, older.image.data).max() <= 1
    assert diff(older.image.data, plain.image.data).mean() > 1
    for step, field in ((Step("", 1.0, text=""), "edits[0].attribute"), (Step("", 1.0, text="x" * 400),
                                                                          "edits[0].text")):
        code, message = _code(lambda s=step: client.edit([s], seed=11))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) and field in message, message


@pytest.mark.skipif(not HAS_WORKER, reason="services.worker.app (the Celery worker) is not there yet")
def test_a_photo_tuned_edited_and_pasted_back_then_deleted(client, portrait):
    """Invert(align) keeps the photo; a pivotal-tuning job makes a generator for it; Edit with paste_back on the
    tuned generator returns the whole photo; deleting the latent and the generator deletes the photo."""
    inverted = client.invert(portrait, align=True)
    pasted = client.edit([Step("age", 2.0)], latent_id=inverted.latent_id, paste_back=True)
    assert (pasted.image.width, pasted.image.height) == (460, 400)
    assert Image.open(io.BytesIO(pasted.image.data)).size == (460, 400)
    before, after = (np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.int16)
                     for b in (portrait, pasted.image.data))
    changed = np.abs(after - before).sum(-1) > 0
    assert not changed[:, :60].any() and not changed[:30].any()  # the background is the photo's own
    assert changed[100:330, 120:340].mean() > 0.3  # the face is the edit

    job = client.create_tuning(inverted.latent_id, idempotency_key="tune-1", steps=200, display_name="me")
    seen = []
    done = client.wait_for_adaptation(job.name, timeout_s=300, poll_s=0.1, on_progress=seen.append)
    assert done.state == "SUCCEEDED" and done.generator_id and done.pivot_latent_id
    running = [j for j in seen if j.state == "RUNNING" and 0 < j.progress < 1]
    assert running and running[-1].message.startswith("iteration "), [(j.state, j.message) for j in seen]
    assert [j.progress for j in running] == sorted(j.progress for j in running)  # it only moves forward
    tuned = client.edit([Step("smile", 1.0)], latent_id=done.pivot_latent_id, generator_id=done.generator_id,
                        paste_back=True, format="jpeg")
    assert (tuned.image.width, tuned.image.height) == (460, 400) and tuned.image.format == "jpeg"
    frames = list(client.animate([Step("age", 2.0)], latent_id=done.pivot_latent_id, generator_id=done.generator_id,
                                 frames=3, paste_back=True))
    assert [Image.open(io.BytesIO(f.image.data)).size for f in frames] == [(460, 400)] * 3

    # A cancelled tuning job ends CANCELLED, without a generator.
    from faceedit_client import AdaptationFailed

    long_job = client.create_tuning(inverted.latent_id, idempotency_key="tune-cancel", steps=10_000)
    client.cancel_adaptation(long_job.name)
    with pytest.raises(AdaptationFailed) as info:
        client.wait_for_adaptation(long_job.name, timeout_s=300, poll_s=0.5)
    assert info.value.code == grpc.StatusCode.CANCELLED

    client.delete_latent(inverted.latent_id)
    assert _code(lambda: client.edit([], latent_id=inverted.latent_id))[0] == grpc.StatusCode.NOT_FOUND
    code, message = _code(lambda: client.edit([], latent_id=pasted.latent_id, paste_back=True))
    assert code == grpc.StatusCode.NOT_FOUND and "photo" in message  # its edits lost the photo with it
    assert _code(lambda: client.create_tuning(pasted.latent_id))[0] == grpc.StatusCode.NOT_FOUND  # nothing to tune
    # The tuned generator kept its own copy until it is deleted.
    assert client.edit([], latent_id=done.pivot_latent_id, paste_back=True).image.width == 460
    client.delete_generator(done.generator_id)
    code, message = _code(lambda: client.edit([], latent_id=done.pivot_latent_id, paste_back=True))
    assert code == grpc.StatusCode.NOT_FOUND and "photo" in message


def test_of_several_faces_the_largest_is_edited_and_pasted_back(client):
    from faceedit.images import to_pil
    from faceedit.synth import render_faces

    faces, _ = render_faces(2, seed=5, size=256)
    face = to_pil(faces[1:2])[0]
    photo = Image.new("RGB", (640, 400), (40, 90, 140))
    photo.paste(face.resize((320, 320)), (20, 40))  # the larger face, on the left
    photo.paste(face.resize((200, 200)), (420, 100))  # a smaller one on the right
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    inverted = client.invert(buffer.getvalue(), align=True)
    pasted = client.edit([Step("age", 2.5)], latent_id=inverted.latent_id, paste_back=True)
    before = np.asarray(photo, np.int16)
    after = np.asarray(Image.open(io.BytesIO(pasted.image.data)).convert("RGB"), np.int16)
    changed = np.abs(after - before).sum(-1) > 0
    assert changed[:, :360].mean() > 0.05 and not changed[:, 400:].any()  # the left face only


@pytest.mark.parametrize("call, code, field", [
    (lambda c, p: c.invert(png_bytes(96, seed=3), align=True), grpc.StatusCode.INVALID_ARGUMENT, "image"),  # no face
    (lambda c, p: c.edit([], seed=1, paste_back=True), grpc.StatusCode.INVALID_ARGUMENT, "paste_back"),
    (lambda c, p: c.edit([], latent_id=c.invert(p).latent_id, paste_back=True), grpc.StatusCode.INVALID_ARGUMENT,
     "paste_back"),  # inverted without alignment: no photo was kept
    (lambda c, p: c.create_tuning(c.invert(p).latent_id), grpc.StatusCode.INVALID_ARGUMENT, "latent_id"),
    (lambda c, p: c.create_tuning("lat-0123456789abcdef"), grpc.StatusCode.NOT_FOUND, "latent"),
    (lambda c, p: c.delete_latent("not a latent id"), grpc.StatusCode.INVALID_ARGUMENT, "latent_id"),
])
def test_bad_photo_requests_through_the_stack(client, portrait, call, code, field):
    got, message = _code(lambda: call(client, portrait))
    assert got == code and field in message, (got, message)


@pytest.mark.skipif(not HAS_WORKER, reason="services.worker.app (the Celery worker) is not there yet")
def test_a_worker_killed_mid_job_is_restarted_and_the_job_completes_exactly_once(stack, client):
    """`make demo`'s own settings (lease 60 s, visibility timeout 2 h, checkpoint every 25 iterations): the
    supervisor restarts the worker, the expired lease re-queues the job, and it resumes from its checkpoint."""
    import json
    import os
    import signal
    import time

    from services.worker.adapt import state_key
    from services.worker.config import WorkerConfig

    started, pids = stack
    job = client.create_adaptation(png_bytes(64, seed=8), idempotency_key="stack-kill", steps=300,
                                   display_name="survivor")
    checkpoint = started.run_dir / "artifacts" / state_key(job.name)
    _wait(lambda: checkpoint.is_file(), "the job's first checkpoint")
    victim = int((started.run_dir / "worker.pid").read_text())
    os.killpg(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    assert client.get_adaptation(job.name).state == "RUNNING"

    done = client.wait_for_adaptation(job.name, timeout_s=300, poll_s=1.0)
    recovered_s = time.monotonic() - killed_at
    restarts = [json.loads(line) for line in (started.run_dir / "supervisor.log").read_text().splitlines()
                if '"restart"' in line]
    assert any(r["process"] == "worker" and r["exit_code"] == -9 for r in restarts), restarts
    pids["worker"] = int((started.run_dir / "worker.pid").read_text())  # the restarted one, for the down test
    assert pids["worker"] != victim
    mine = [g for g in client.list_generators() if g.display_name == "survivor"]
    assert done.state == "SUCCEEDED" and [g.id for g in mine] == [done.generator_id]  # exactly once
    log = (started.run_dir / "worker.log").read_text()
    assert f"job {job.name} resumed from iteration" in log
    # The bound (5 minutes with make demo's settings): lease + watch interval + the rest of the job.
    print(f"\nworker SIGKILLed: job done {recovered_s:.0f} s later (lease {WorkerConfig().lease_ttl:.0f} s)")
    assert recovered_s < 300


@pytest.mark.skipif(not HAS_WORKER, reason="services.worker.app (the Celery worker) is not there yet")
def test_a_worker_killed_while_tuning_resumes_from_the_pivot(stack, client, portrait):
    """As above for pivotal tuning: killed after its pivot was checkpointed, the job is re-queued and only tunes."""
    import os
    import signal

    from services.worker.tuning import pivot_key

    started, pids = stack
    inverted = client.invert(portrait, align=True)
    job = client.create_tuning(inverted.latent_id, idempotency_key="tune-kill", steps=3000, display_name="kept")
    _wait(lambda: (started.run_dir / "artifacts" / pivot_key(job.name)).is_file(), "the tuning job's pivot")
    victim = int((started.run_dir / "worker.pid").read_text())
    os.killpg(victim, signal.SIGKILL)
    done = client.wait_for_adaptation(job.name, timeout_s=300, poll_s=1.0)
    pids["worker"] = int((started.run_dir / "worker.pid").read_text())
    assert pids["worker"] != victim
    assert done.state == "SUCCEEDED" and done.pivot_latent_id
    assert [g.id for g in client.list_generators() if g.display_name == "kept"] == [done.generator_id]
    assert f"job {job.name}: resuming from its optimised pivot" in (started.run_dir / "worker.log").read_text()
    assert not (started.run_dir / "artifacts" / pivot_key(job.name)).exists()


def _wait(condition, what: str, within_s: float = 300) -> None:
    import time

    deadline = time.monotonic() + within_s  # a watchdog, not a speed assertion
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_down_leaves_no_process_behind(tmp_path_factory, stack):
    """Runs last in this module: stops the module's stack itself and checks every process group is gone."""
    started, pids = stack
    assert set(pids) >= {"redis", "torchserve", "editor"}
    assert all(_alive(pid) for pid in pids.values())
    launcher.down(started.run_dir.parent)
    assert not any(_alive(pid) for pid in pids.values())
    assert not list(started.run_dir.glob("*.pid"))
