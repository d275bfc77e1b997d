"""The adaptation job in-process on a real Redis: DIFA success, exactly-once reruns, resume, cancel, leases,
bad input."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from faceedit.adaptation import clip_mean, difa_losses
from faceedit.adaptation.clip import ClipConfig, build_clip_module, load_clip
from faceedit.adaptation.difa_config import DifaConfig
from faceedit.images import to_pil
from faceedit.models import load_generator
from faceedit.models.delta import trainable_names
from services.common.artifacts import LocalArtifactStore
from services.common.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore
from services.common.models import load_model_config
from services.common.registry import (
    GeneratorIndex,
    generator_id_for,
    load_adapted_generator,
    save_adapted_generator,
)
from services.worker.adapt import (
    CLIP_MEAN_PREFIX,
    LeaseBusy,
    Runtime,
    WorkerSetupError,
    clip_configs,
    load_target,
    run_adaptation,
    state_key,
    target_latent,
)
from services.worker.config import WorkerConfig

from conftest import TINY_DIFA_SETTINGS
from factories import TINY_CLIP

pytestmark = pytest.mark.inference  # make test-services


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_runtime(redis_client, redis_server, namespace, tiny_models, tmp_path, models=None, **overrides) -> Runtime:
    """A worker runtime over the tiny models' model configuration (or `models`, a ModelConfig)."""
    settings = dict(redis_url=redis_server.url, artifact_store_url=f"file://{tmp_path}/artifacts",
                    redis_namespace=namespace, models=str(tiny_models["models"]),
                    difa_settings=json.dumps(TINY_DIFA_SETTINGS), iterations=12, checkpoint_every=4, lease_ttl=30)
    config = WorkerConfig(**{**settings, **overrides})
    store = LocalArtifactStore(tmp_path / "artifacts")
    return Runtime(config, JobStore(redis_client, namespace), GeneratorIndex(redis_client, store, namespace),
                   store, worker_id="test-worker", models=models or load_model_config(config.models),
                   device=torch.device("cpu"))


def tiny_model_config(tiny_models, **changes):
    """The tiny models' configuration with fields replaced (as if a file named other things)."""
    models = load_model_config(tiny_models["models"])
    family = changes.pop("family", None)
    if family is not None:
        models = replace(models, families={"tiny": replace(models.families["tiny"], **family)})
    return replace(models, **changes)


@pytest.fixture
def runtime(redis_client, redis_server, namespace, tiny_models, tmp_path) -> Runtime:
    return make_runtime(redis_client, redis_server, namespace, tiny_models, tmp_path)


@pytest.fixture
def target_png(tiny_models) -> bytes:
    # A face-sized image the base does not produce: a colour ramp.
    ramp = torch.linspace(-0.9, 0.9, 32)
    image = torch.stack([ramp.expand(32, 32), ramp.expand(32, 32).T, -ramp.expand(32, 32)]).unsqueeze(0)
    return png_bytes(to_pil(image)[0])


def new_job(rt: Runtime, target: bytes, params: dict | None = None, base: str = "tiny"):
    key = "targets/t/target.png"
    rt.store.put(key, target)
    job, _ = rt.jobs.create("acme", base, key, params)
    return job


class SimulatedCrash(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs (not even the job's failure record)."""


def run_cancelled_at(rt, job, progress_prefix: str) -> dict:
    """Run the job, asking to cancel it (as its tenant would) once its progress message starts with the prefix."""
    def cancel(fraction: float, message: str) -> None:
        if message.startswith(progress_prefix):
            rt.jobs.request_cancel(job.id, "acme")

    return run_adaptation(job.id, rt, cancel)


def adapted_of(rt: Runtime, generator_id: str, base_path) -> torch.nn.Module:
    return load_adapted_generator(rt.store, rt.index.get(generator_id, "acme"), load_generator(base_path))


# -- DIFA jobs ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_difa_job_stores_a_delta_that_moves_samples_towards_the_reference(runtime, target_png, tiny_models,
                                                                          tmp_path):
    job = new_job(runtime, target_png, {"iterations": 8})
    seen = []
    result = run_adaptation(job.id, runtime,
                            lambda fraction, message: message.startswith("iteration") and seen.append(fraction))
    done = runtime.jobs.get(job.id)
    assert result["method"] == "difa" and result["iterations"] == 8 and result["resumed_from"] == 0
    assert done.state == SUCCEEDED and done.progress == 1.0 and done.result_generator_id == result["generator_id"]
    assert seen[-1] == 1.0 and len(seen) == 8
    assert [r.id for r in runtime.index.list("acme")] == [done.result_generator_id]
    assert not runtime.store.exists(state_key(job.id)) and runtime.jobs.lease_holder(job.id) is None

    base = load_generator(tiny_models["generator"])
    record = runtime.index.get(done.result_generator_id, "acme")
    # The stored object is a library delta: only DIFA's trainable tensors, loadable by load_generator(base=…).
    delta_file = tmp_path / "delta.safetensors"
    delta_file.write_bytes(runtime.store.get(record.artifact_key))
    from safetensors import safe_open

    with safe_open(str(delta_file), "pt") as f:
        assert set(f.keys()) == set(trainable_names(base))
    served = adapted_of(runtime, done.result_generator_id, tiny_models["generator"])
    loaded = load_generator(delta_file, base=tiny_models["generator"])
    ws = base.broadcast(base.mapping(torch.randn(4, base.style_dim, generator=torch.Generator().manual_seed(5))))
    with torch.no_grad():
        assert torch.equal(served.synthesis(ws, noise_mode="const"), loaded.synthesis(ws, noise_mode="const"))
        base_images = base.synthesis(ws, noise_mode="const")
        adapted_images = served.synthesis(ws, noise_mode="const")
    assert not torch.allclose(adapted_images, base_images)

    # The adapted samples moved, in the worker's CLIP, along the direction from the source mean to the reference.
    clip = load_clip(ClipConfig(config_path=str(tiny_models["clip"].with_suffix(".json")),
                                weights=str(tiny_models["clip"])))
    reference = load_target(runtime, job, 32)
    with torch.no_grad():
        mean = clip_mean.source_clip_mean(base, clip, TINY_DIFA_SETTINGS["clip_mean_samples"],
                                     TINY_DIFA_SETTINGS["clip_mean_batch"])
        direction = difa_losses.reference_direction(clip.encode_image(reference), mean)
        moved = clip.encode_image(adapted_images) - clip.encode_image(base_images)  # [4, E]
    assert float((torch.nn.functional.normalize(moved, dim=-1) @ direction).mean()) > 0.3


def record_messages(rt: Runtime, monkeypatch) -> list[str]:
    """Every message the job record is given, in order."""
    messages: list[str] = []
    set_progress = rt.jobs.set_progress

    def recording(job_id: str, progress: float, message: str = "") -> bool:
        messages.append(message)
        return set_progress(job_id, progress, message)

    monkeypatch.setattr(rt.jobs, "set_progress", recording)
    return messages


@pytest.mark.slow
def test_the_mean_source_embedding_is_computed_once_per_generator_and_clip(runtime, target_png, monkeypatch):
    first = new_job(runtime, target_png, {"iterations": 2})
    assert run_adaptation(first.id, runtime)["status"] == SUCCEEDED
    cached = sorted((runtime.store.root / CLIP_MEAN_PREFIX).rglob("*.safetensors"))
    assert len(cached) == 1 and cached[0].parent.name == "clip-mean"

    def must_not_run(*args, **kwargs):
        raise AssertionError("the mean source CLIP embedding was recomputed")

    monkeypatch.setattr(clip_mean, "source_clip_means", must_not_run)
    messages = record_messages(runtime, monkeypatch)
    second = new_job(runtime, target_png, {"iterations": 2, "seed": 7})
    assert run_adaptation(second.id, runtime)["status"] == SUCCEEDED
    assert len(runtime.index.list("acme")) == 2
    assert messages and not any("preparing" in m for m in messages)  # a cached mean: straight to iterations


@pytest.mark.slow
def test_a_job_that_computes_the_mean_reports_its_samples_then_its_iterations(redis_client, redis_server, namespace,
                                                                              tiny_models, tmp_path, target_png,
                                                                              monkeypatch):
    settings = json.dumps({**TINY_DIFA_SETTINGS, "clip_mean_batch": 2})  # 4 samples: two batches
    rt = make_runtime(redis_client, redis_server, namespace, tiny_models, tmp_path, difa_settings=settings)
    messages = record_messages(rt, monkeypatch)
    job = new_job(rt, target_png, {"iterations": 2})
    assert run_adaptation(job.id, rt)["status"] == SUCCEEDED
    assert [m for m in messages if m.startswith("preparing")] == [
        "preparing: source CLIP mean 0/4 samples", "preparing: source CLIP mean 2/4 samples",
        "preparing: source CLIP mean 4/4 samples"]
    assert messages[:3] == [m for m in messages if m.startswith("preparing")]  # before any iteration
    assert [m.split(",")[0] for m in messages[3:]] == ["iteration 1/2", "iteration 2/2"]


def test_cancel_while_preparing_ends_the_job_cancelled(redis_client, redis_server, namespace, tiny_models, tmp_path,
                                                      target_png):
    settings = json.dumps({**TINY_DIFA_SETTINGS, "clip_mean_batch": 2})
    rt = make_runtime(redis_client, redis_server, namespace, tiny_models, tmp_path, difa_settings=settings)
    job = new_job(rt, target_png, {"iterations": 50})

    result = run_cancelled_at(rt, job, "preparing: source CLIP mean 2/")
    assert result == {"status": CANCELLED, "iterations": 0}
    cancelled = rt.jobs.get(job.id)
    assert cancelled.state == CANCELLED and "preparing" in cancelled.message and rt.index.list("acme") == []
    assert not (rt.store.root / CLIP_MEAN_PREFIX).exists()  # half a mean is never cached
    assert rt.jobs.lease_holder(job.id) is None


@pytest.mark.slow
def test_prepare_task_warms_the_cache_and_start_up_queues_only_missing_bases(runtime, target_png, monkeypatch):
    from services.worker import app as worker_app

    sent: list[tuple[str, list]] = []
    monkeypatch.setattr(worker_app, "runtime", lambda: runtime)
    monkeypatch.setattr(worker_app, "config", runtime.config)
    monkeypatch.setattr(worker_app.app, "send_task", lambda name, args, queue: sent.append((name, args, queue)))
    worker_app.queue_missing_means()
    assert sent == [(worker_app.TASK_PREPARE, ["tiny"], "gpu")]

    counts: list[int] = []
    first = worker_app.prepare_base(runtime, "tiny", lambda done, total: counts.append(done))
    # The mean source CLIP embedding (4 samples); text edits' relevance only when shipped or asked for.
    assert first["status"] == "PREPARED" and len(first["computed"]) == 1 and counts[-1] == 4
    assert runtime.store.exists(f"{CLIP_MEAN_PREFIX}/{first['computed'][0]}")
    from services.common.text_edits import RelevanceMarker

    assert RelevanceMarker.read(runtime.store, "tiny") is None
    assert worker_app.prepare_base(runtime, "tiny") == {"status": "CACHED", "base_generator": "tiny", "computed": []}
    sent.clear()
    worker_app.queue_missing_means()
    assert sent == []  # warm: nothing to queue

    messages = record_messages(runtime, monkeypatch)
    job = new_job(runtime, target_png, {"iterations": 2})
    assert run_adaptation(job.id, runtime)["status"] == SUCCEEDED
    assert not any("preparing" in m for m in messages)  # the warmed key is the one jobs read

    unknown = worker_app.prepare_base(runtime, "nope")
    assert unknown["status"] == "FAILED" and "base_generator" in unknown["error"]
    monkeypatch.setattr(worker_app, "config", replace(runtime.config, prepare_on_start=False))
    monkeypatch.setattr(worker_app, "bases_missing_a_mean", lambda rt: ["tiny"])
    worker_app.queue_missing_means()
    assert sent == []


@pytest.mark.slow
def test_a_rerun_of_a_finished_job_does_nothing(runtime, target_png):
    job = new_job(runtime, target_png, {"iterations": 2})
    first = run_adaptation(job.id, runtime)
    again = run_adaptation(job.id, runtime)
    assert again == {"status": SUCCEEDED, "generator_id": first["generator_id"]}
    assert len(runtime.index.list("acme")) == 1


def test_generator_stored_before_a_crash_finishes_the_job_without_training(runtime, target_png, tiny_models):
    job = new_job(runtime, target_png)
    base = load_generator(tiny_models["generator"])
    weight = base.state_dict()["conv1.conv.weight"]
    save_adapted_generator(runtime.store, runtime.index, "acme", "tiny", {"conv1.conv.weight": weight + 1},
                           base=base, generator_id=generator_id_for(job.id), job_id=job.id)
    result = run_adaptation(job.id, runtime)
    assert result["resumed_from"] == "result"
    assert runtime.jobs.get(job.id).result_generator_id == generator_id_for(job.id)
    assert len(runtime.index.list("acme")) == 1


@pytest.mark.slow
def test_a_job_redelivered_after_a_crash_resumes_and_ends_as_an_uninterrupted_one(runtime, target_png,
                                                                                   tiny_models):
    def crash_after_8(fraction: float, message: str) -> None:
        if message.startswith("iteration 8/"):
            raise SimulatedCrash()

    job = new_job(runtime, target_png)
    with pytest.raises(SimulatedCrash):
        run_adaptation(job.id, runtime, crash_after_8)
    crashed = runtime.jobs.get(job.id)
    assert crashed.state == RUNNING and runtime.store.exists(state_key(job.id))  # checkpoint of iteration 8

    result = run_adaptation(job.id, runtime)
    assert result["status"] == SUCCEEDED and result["resumed_from"] == 8 and result["iterations"] == 12
    job_after = runtime.jobs.get(job.id)
    assert job_after.attempts == 2 and job_after.state == SUCCEEDED
    assert not runtime.store.exists(state_key(job.id))

    # Same settings and reference, never interrupted: the same weights (DIFA is deterministic on CPU).
    other = new_job(runtime, target_png)
    straight = run_adaptation(other.id, runtime)
    resumed_g = adapted_of(runtime, result["generator_id"], tiny_models["generator"])
    straight_g = adapted_of(runtime, straight["generator_id"], tiny_models["generator"])
    for (name, a), (_, b) in zip(resumed_g.state_dict().items(), straight_g.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_resumed_is_discarded_and_the_job_starts_over(runtime, target_png):
    job = new_job(runtime, target_png, {"iterations": 3})
    runtime.store.put(state_key(job.id), b"PK\x03\x04 cut short")
    result = run_adaptation(job.id, runtime)
    assert result["status"] == SUCCEEDED and result["resumed_from"] == 0 and result["iterations"] == 3


@pytest.mark.slow
def test_cooperative_cancel_stops_the_job_without_a_generator(runtime, target_png):
    job = new_job(runtime, target_png, {"iterations": 50})

    result = run_cancelled_at(runtime, job, "iteration 3/")
    assert result == {"status": CANCELLED, "iterations": 3}
    assert runtime.jobs.get(job.id).state == CANCELLED and runtime.index.list("acme") == []
    assert not runtime.store.exists(state_key(job.id))


def test_a_job_leased_by_another_worker_is_retried_later(runtime, target_png):
    job = new_job(runtime, target_png)
    assert runtime.jobs.acquire_lease(job.id, "other-worker", 30)
    with pytest.raises(LeaseBusy) as info:
        run_adaptation(job.id, runtime)
    assert info.value.countdown > 0
    assert runtime.jobs.get(job.id).state == QUEUED


@pytest.mark.parametrize("target, params, base, field", [
    (b"\x89PNG\r\n\x1a\nbroken", None, "tiny", "style_image"),  # the request field it came in
    (None, None, "unknown-base", "base_generator"),
    (None, {"iterations": -1}, "tiny", "iterations"),
    (None, {"iterations": 2.5}, "tiny", "iterations"),
    (None, {"batch_size": 500}, "tiny", "batch_size"),
    (None, {"speed": 9}, "tiny", "params.speed"),
    # Which files a worker reads is the operator's choice, never a job's.
    (None, {"clips": [{"weights": "/etc/passwd"}]}, "tiny", "params.clips"),
])
def test_bad_jobs_fail_with_the_field_named(runtime, target_png, target, params, base, field):
    job = new_job(runtime, target or target_png, params, base)
    result = run_adaptation(job.id, runtime)
    failed = runtime.jobs.get(job.id)
    assert result["status"] == FAILED and failed.state == FAILED
    assert failed.error_code == "INVALID_ARGUMENT" and failed.error_message.startswith(field + ":")
    assert runtime.jobs.lease_holder(job.id) is None


@pytest.mark.parametrize("models, overrides, setting", [
    ({"clips": ()}, {}, "clips"),
    ({"family": {"encoder": None}}, {}, "encoders"),
    ({}, {"difa_settings": '{"psp_alpha": 7}'}, "difa_settings"),
    ({}, {"difa_settings": "[1, 2]"}, "difa_settings"),
])
def test_a_worker_missing_a_model_or_setting_fails_jobs_as_a_precondition(redis_client, redis_server, namespace,
                                                                          tiny_models, tmp_path, target_png,
                                                                          models, overrides, setting):
    rt = make_runtime(redis_client, redis_server, namespace, tiny_models, tmp_path,
                      models=tiny_model_config(tiny_models, **models), **overrides)
    job = new_job(rt, target_png, {"iterations": 2})
    assert run_adaptation(job.id, rt)["status"] == FAILED
    failed = rt.jobs.get(job.id)
    assert failed.error_code == "FAILED_PRECONDITION" and f"worker setting {setting}:" in failed.error_message


def test_clip_settings_come_from_the_model_configuration(tmp_path, tiny_models):
    (zoo_clip,) = clip_configs(load_model_config(tiny_models["models"]))
    assert zoo_clip.weights == str(tiny_models["clip"]) and zoo_clip.config_path.endswith("clip.json")
    b32, card = clip_configs(tiny_model_config(tiny_models, clips=("ViT-B-32-quickgelu=/clip/b32.safetensors",
                                                                   "/zoo/clip.safetensors")))
    assert (b32.architecture, b32.weights, b32.config_path) == ("ViT-B-32-quickgelu", "/clip/b32.safetensors", None)
    assert (card.weights, card.config_path) == ("/zoo/clip.safetensors", "/zoo/clip.json")
    for clips in ((), ("=/clip/b32.safetensors",)):
        with pytest.raises(WorkerSetupError) as err:
            clip_configs(tiny_model_config(tiny_models, clips=clips))
        assert err.value.setting == "clips"


def test_config_refuses_an_unknown_adaptation_method():
    from faceedit.errors import InvalidInputError

    with pytest.raises(InvalidInputError) as err:
        WorkerConfig(adaptation="nada")
    assert err.value.field == "adaptation"
    assert WorkerConfig.from_env({"FACEEDIT_ADAPTATION": "finetune"}).adaptation == "finetune"


# -- the fallback without CLIP ---------------------------------------------------------------------------
@pytest.mark.slow
def test_the_finetune_fallback_fits_the_target_when_selected(runtime, target_png, tiny_models):
    runtime.config = replace(runtime.config, adaptation="finetune")
    runtime.models = tiny_model_config(tiny_models, clips=())  # the fallback needs no CLIP
    job = new_job(runtime, target_png, {"iterations": 30, "lr": 0.005})
    result = run_adaptation(job.id, runtime)
    assert result["status"] == SUCCEEDED and result["method"] == "finetune"
    base = load_generator(tiny_models["generator"])
    adapted = adapted_of(runtime, result["generator_id"], tiny_models["generator"])
    image = load_target(runtime, job, 32)
    with torch.no_grad():
        ws = target_latent(runtime, "tiny", base, image)
        base_err = (base.synthesis(ws) - image).abs().mean()
        adapted_err = (adapted.synthesis(ws) - image).abs().mean()
    assert adapted_err < 0.8 * base_err
    assert not runtime.store.exists(state_key(job.id, "finetune"))


def test_difa_batches_are_reduced_to_fit_the_memory_budget():
    from services.worker.adapt import within_memory

    config = WorkerConfig()  # 6 GB: ~3 GB per 1024 px training sample, ~0.55 GB per sampled image
    difa = DifaConfig(batch_size=2, clip_mean_batch=16)
    at_1024 = within_memory(difa, 1024, config)
    assert (at_1024.batch_size, at_1024.clip_mean_batch) == (2, 10)
    assert within_memory(difa, 1024, replace(config, memory_budget_mb=4096)).batch_size == 1
    assert within_memory(difa, 64, config) == difa  # the demo zoo is far below the budget


def test_a_shipped_relevance_is_used_when_made_for_these_weights_and_computed_only_when_asked(
        redis_client, redis_server, namespace, tiny_models, tmp_path):
    """A model configuration's `relevance:` file saves the worker the computation, but only when it was made
    for the same generator, CLIP and settings (the key it records); FACEEDIT_COMPUTE_RELEVANCE computes one."""
    from faceedit.adaptation.clip import load_clip, parse_clip_spec
    from faceedit.editing.text import KEY_FIELD, RelevanceConfig, channel_relevance, relevance_key
    from services.common.text_edits import RelevanceMarker
    from services.worker import app as worker_app

    generator = load_generator(tiny_models["generator"]).eval()
    clip = load_clip(parse_clip_spec(str(tiny_models["clip"]))[0])
    config = RelevanceConfig(samples=4)
    shipped = tmp_path / "relevance.safetensors"
    made = channel_relevance(generator, clip, config)
    right = relevance_key(generator, clip, config)
    cases = ((right, False, False, True), ("relevance/x", False, False, False), ("relevance/x", True, True, True))
    for i, (key, compute, computed, ready) in enumerate(cases):
        shipped.write_bytes(made.to_bytes({KEY_FIELD: key}))
        models = tiny_model_config(tiny_models, family={"relevance": shipped})
        rt = make_runtime(redis_client, redis_server, f"{namespace}-{i}", tiny_models, tmp_path / str(i),
                          models=models, relevance_samples=4, compute_relevance=compute)
        result = worker_app.prepare_base(rt, "tiny")
        assert any(k.startswith("relevance/") for k in result.get("computed", [])) == computed, (i, result)
        marker = RelevanceMarker.read(rt.store, "tiny")
        assert (marker is not None and rt.store.exists(marker.artifact_key)) == ready, i


def test_text_edits_prepare_with_the_text_clip_when_one_is_configured(redis_client, redis_server, namespace,
                                                                       tiny_models, tmp_path):
    """`text_clip:` in the model configuration: the relevance is measured with that CLIP, not DIFA's first."""
    from faceedit.adaptation.clip import load_clip, parse_clip_spec
    from faceedit.editing.text import RelevanceConfig, relevance_key
    from services.common.text_edits import RelevanceMarker
    from services.worker import app as worker_app

    torch.manual_seed(7)  # other weights than DIFA's CLIP, same card
    text_clip = tmp_path / "text_clip.safetensors"
    save_file({k: v.contiguous() for k, v in build_clip_module(TINY_CLIP).state_dict().items()}, str(text_clip))
    text_clip.with_suffix(".json").write_bytes(tiny_models["clip"].with_suffix(".json").read_bytes())
    rt = make_runtime(redis_client, redis_server, namespace, tiny_models, tmp_path,
                      models=tiny_model_config(tiny_models, text_clip_override=str(text_clip)),
                      relevance_samples=4, compute_relevance=True)
    assert rt.text_clip() is not rt.clips()[0]
    worker_app.prepare_base(rt, "tiny")
    marker = RelevanceMarker.read(rt.store, "tiny")
    generator = load_generator(tiny_models["generator"]).eval()
    config = RelevanceConfig(samples=4)
    assert marker.clip == str(text_clip)
    assert marker.artifact_key.endswith(relevance_key(generator, load_clip(parse_clip_spec(str(text_clip))[0]), config))
    assert not marker.artifact_key.endswith(relevance_key(generator, rt.clips()[0], config))


def test_text_edits_prepare_one_relevance_for_an_ensemble_of_text_clips(redis_client, redis_server, namespace,
                                                                        tiny_models, tmp_path):
    """`text_clip: [a, b]`: the worker loads both as one ClipEnsemble and prepares one relevance under its key."""
    from faceedit.adaptation.clip import ClipEnsemble, load_text_clip
    from faceedit.editing.text import ChannelRelevance, RelevanceConfig, relevance_key
    from services.common.text_edits import RelevanceMarker
    from services.worker import app as worker_app

    torch.manual_seed(9)
    second = tmp_path / "second.safetensors"
    save_file({k: v.contiguous() for k, v in build_clip_module(TINY_CLIP).state_dict().items()}, str(second))
    second.with_suffix(".json").write_bytes(tiny_models["clip"].with_suffix(".json").read_bytes())
    spec = f"{tiny_models['clip']},{second}"
    rt = make_runtime(redis_client, redis_server, namespace, tiny_models, tmp_path,
                      models=tiny_model_config(tiny_models, text_clip_override=spec),
                      relevance_samples=4, compute_relevance=True)
    assert isinstance(rt.text_clip(), ClipEnsemble) and len(rt.text_clip().members) == 2
    worker_app.prepare_base(rt, "tiny")
    marker = RelevanceMarker.read(rt.store, "tiny")
    generator = load_generator(tiny_models["generator"]).eval()
    assert marker.clip == spec
    assert marker.artifact_key.endswith(relevance_key(generator, load_text_clip(spec), RelevanceConfig(samples=4)))
    relevance = ChannelRelevance.from_bytes(rt.store.get(marker.artifact_key))
    assert relevance.relevance.shape[1] == sum(rt.text_clip().embedding_groups)  # both members' rows
