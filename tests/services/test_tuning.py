"""The worker's pivotal-tuning job on the tiny models: a tuned generator that renders the photo's pivot closer to the
photo, the photo kept with it, cancel, resume from the optimised pivot after a crash, a deleted photo."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_worker import SimulatedCrash, make_runtime

from faceedit.images import from_pil, to_pil
from faceedit.models import load_generator
from services.common.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED
from services.common.latent_cache import LatentCache
from services.common.photos import PhotoStore, kept_photo_id
from services.common.registry import generator_id_for, load_adapted_generator
from services.worker.adapt import run_adaptation
from services.worker.tuning import pivot_key, tuning_config

from editor_fakes import fake_placement

pytestmark = pytest.mark.inference

OPTIMIZE_STEPS, TUNE_STEPS = 8, 12


@pytest.fixture
def runtime(redis_client, redis_server, namespace, tiny_models, tmp_path):
    rt = make_runtime(redis_client, redis_server, namespace, tiny_models, tmp_path,
                      pti_settings=json.dumps({"optimize_steps": OPTIMIZE_STEPS, "tune_lr": 3e-3}))
    return dataclasses.replace(rt, cache=LatentCache(redis_client, 600, namespace), photos=PhotoStore(rt.store))


@pytest.fixture
def photo(tiny_models) -> bytes:
    """A face the base does not quite produce: one of its own renders, brightened and tinted."""
    generator = load_generator(tiny_models["generator"]).eval()
    with torch.no_grad():
        image = generator.synthesis(generator.broadcast(generator.mapping(torch.randn(1, generator.style_dim))))
    image = (image * 0.7 + torch.tensor([0.25, 0.0, -0.2]).view(1, 3, 1, 1)).clamp(-1, 1)
    out = io.BytesIO()
    to_pil(image)[0].save(out, format="PNG")
    return out.getvalue()


def tuning_job(rt, photo: bytes, params: dict | None = None):
    """As the editor makes one: the job, and the photo copied under its generator-to-be's id."""
    photo_id = rt.photos.put("acme", photo, photo, fake_placement((32, 32)), ttl_s=600)
    job, _ = rt.jobs.create("acme", "tiny", "", {"method": "pti", "iterations": TUNE_STEPS, **(params or {})},
                            kind="tune")
    kept = rt.photos.copy(rt.photos.get("acme", photo_id), kept_photo_id(generator_id_for(job.id)))
    return job, kept


def mse(generator, ws: torch.Tensor, photo: bytes) -> float:
    target = from_pil([Image.open(io.BytesIO(photo)).convert("RGB")])
    with torch.no_grad():
        return float(((generator.synthesis(ws) - target) ** 2).mean())


def test_a_tuning_job_tunes_the_base_to_the_photo_and_keeps_the_photo_with_it(runtime, photo, tiny_models):
    job, _ = tuning_job(runtime, photo)
    result = run_adaptation(job.id, runtime)
    assert result["status"] == SUCCEEDED, result
    done = runtime.jobs.get(job.id)
    assert done.result_generator_id == result["generator_id"] and done.result_latent_id == result["pivot_latent_id"]
    pivot = runtime.cache.entry("acme", done.result_latent_id, "latent_id")
    assert pivot.photo_id == kept_photo_id(done.result_generator_id)
    assert runtime.photos.get("acme", pivot.photo_id).image == photo
    base = load_generator(tiny_models["generator"]).eval()
    tuned = load_adapted_generator(runtime.store, runtime.index.get(done.result_generator_id, "acme"),
                                   load_generator(tiny_models["generator"])).eval()
    ws = torch.from_numpy(pivot.ws)
    assert mse(tuned, ws, photo) < 0.8 * mse(base, ws, photo)
    assert not runtime.store.exists(pivot_key(job.id))


def test_cancel_while_tuning_leaves_no_generator_and_nothing_of_the_photo(runtime, photo):
    job, _ = tuning_job(runtime, photo)

    def cancel_in_tuning(fraction: float, message: str) -> None:
        if message.startswith(f"iteration {OPTIMIZE_STEPS + 2}/"):
            runtime.jobs.request_cancel(job.id, "acme")

    result = run_adaptation(job.id, runtime, cancel_in_tuning)
    assert result["status"] == CANCELLED and result["phase"] == "tune"
    assert runtime.jobs.get(job.id).state == CANCELLED
    assert not list(runtime.store.keys("generators")) and not runtime.store.exists(pivot_key(job.id))
    assert [k for k in runtime.store.keys("photos") if "phk-" in k] == []  # its copy of the photo went too


def test_a_job_redelivered_after_a_crash_resumes_from_its_pivot(runtime, photo):
    job, _ = tuning_job(runtime, photo)

    def crash_in_tuning(fraction: float, message: str) -> None:
        if message.startswith(f"iteration {OPTIMIZE_STEPS + 3}/"):
            raise SimulatedCrash()

    with pytest.raises(SimulatedCrash):
        run_adaptation(job.id, runtime, crash_in_tuning)
    assert runtime.jobs.get(job.id).state == RUNNING and runtime.store.exists(pivot_key(job.id))
    seen: list[str] = []
    result = run_adaptation(job.id, runtime, lambda f, m: seen.append(m))
    assert result["status"] == SUCCEEDED and result["resumed_from"] == OPTIMIZE_STEPS
    # Only the tuning ran again: its first report is the first tuning step.
    assert seen[0].startswith(f"iteration {OPTIMIZE_STEPS + 1}/{OPTIMIZE_STEPS + TUNE_STEPS}")


def test_a_photo_deleted_before_the_job_ran_fails_it_not_found(runtime, photo):
    job, kept = tuning_job(runtime, photo)
    runtime.photos.delete([kept])  # DeleteGenerator of the generator-to-be
    result = run_adaptation(job.id, runtime)
    failed = runtime.jobs.get(job.id)
    assert result["status"] == FAILED and failed.state == FAILED and failed.error_code == "NOT_FOUND"
    assert "photo" in failed.error_message


def test_tuning_settings_are_checked_and_the_job_sets_the_tuning_phase():
    config = tuning_config('{"optimize_steps": 5}', {"iterations": 7, "lr": 0.01})
    assert (config.optimize_steps, config.tune_steps, config.tune_lr, config.perceptual_stop) == (5, 7, 0.01, 0.0)
    from faceedit.errors import InvalidInputError

    for bad, field in (('{"nope": 1}', "pti_settings.nope"), ("[1]", "pti_settings")):
        with pytest.raises(InvalidInputError) as info:
            tuning_config(bad, {})
        assert info.value.field == field
    assert np.isfinite(tuning_config("", {}).optimize_lr)


def test_a_crash_after_the_generator_was_stored_finishes_without_tuning_again(runtime, photo, monkeypatch):
    import services.worker.tuning as tuning

    job, _ = tuning_job(runtime, photo)
    calls = {"n": 0}
    real_finish = tuning._finish

    def die_in_finish(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise SimulatedCrash()  # stored the generator, died before caching the pivot and finishing
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(tuning, "_finish", die_in_finish)
    with pytest.raises(SimulatedCrash):
        run_adaptation(job.id, runtime)
    assert runtime.jobs.get(job.id).state == RUNNING and runtime.store.exists(pivot_key(job.id))
    seen: list[str] = []
    result = run_adaptation(job.id, runtime, lambda f, m: seen.append(m))
    assert result["status"] == SUCCEEDED and result["resumed_from"] == "result" and not seen  # no step re-run
    done = runtime.jobs.get(job.id)
    assert done.result_latent_id and runtime.cache.entry("acme", done.result_latent_id, "x").photo_id
    assert len(runtime.index.list("acme")) == 1


def test_a_job_that_fails_leaves_nothing_of_the_photo(runtime, photo, monkeypatch):
    import services.worker.tuning as tuning

    job, kept = tuning_job(runtime, photo)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in tuning")

    real = tuning.invert
    calls = {"n": 0}

    def fail_when_tuning(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the pivot is checkpointed; the tuning phase fails
            broken()
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "invert", fail_when_tuning)
    result = run_adaptation(job.id, runtime)
    assert result["status"] == FAILED and runtime.jobs.get(job.id).error_code == "INTERNAL"
    assert not runtime.store.exists(pivot_key(job.id)) and not runtime.store.exists(f"photos/{kept}")
