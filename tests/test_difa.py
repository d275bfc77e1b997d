"""DIFA on tiny seeded models: each loss's values and gradients, determinism, checkpoint/resume, cancel, deltas."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from faceedit.adaptation import clip_mean, difa
from faceedit.adaptation import difa_losses as losses
from faceedit.adaptation.blob_cache import DirectoryCache, MemoryCache
from faceedit.adaptation.clip import ClipModel
from faceedit.adaptation.clip_mean import (
    cached_source_clip_mean,
    has_source_mean,
    prepare_source_mean,
    source_clip_mean,
    source_mean_key,
)
from faceedit.adaptation.difa import (
    CHECKPOINT_FILE,
    AdaptationCancelled,
    adapt,
    make_target,
)
from faceedit.adaptation.difa_config import DifaConfig
from faceedit.checkpoints import read_checkpoint
from faceedit.errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatchError,
    ChecksumMismatchError,
    InvalidInputError,
)
from faceedit.models.delta import apply_delta, state_fingerprint, trainable_names
from faceedit.models.loading import load_generator
from faceedit.models.stylegan2 import Generator

import factories
from factories import TINY_CLIP, tiny_clip, tiny_encoder


def tiny_generator(seed: int = 0):
    return factories.tiny_generator(seed, noise_strength=0.1)


def reference(seed: int = 3) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 40, 40, generator=rng) * 2 - 1


# Upstream's schedule, scaled down: windows fill in 2 iterations, consistency ramps in over the rest.
FAST = DifaConfig(iterations=5, sliding_window=2, clip_mean_samples=4, clip_mean_batch=4, checkpoint_every=2,
                  clips=())


def moved_target_and_inputs(generator: Generator, seed: int):
    """A target a little off the source (so the global direction is defined), and 2 latents with their noise."""
    target = make_target(generator)
    with torch.no_grad():
        for _name, param in target.named_parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(2, generator.style_dim, generator=rng)
    noise = (generator.make_noise(2, generator=rng), generator.make_noise(2, generator=rng))
    return target, z, noise


@pytest.fixture(scope="module")
def models():
    return tiny_generator(), tiny_encoder(), tiny_clip()


@pytest.fixture(scope="module")
def full_run(models):
    generator, encoder, clip = models
    return adapt(generator, encoder, [clip], reference(), FAST)


# -- one DIFA step ------------------------------------------------------------------------------------
def test_gradients_reach_only_the_trainable_generator_tensors(models):
    generator, encoder, clip = models
    encoder.requires_grad_(False)
    config = replace(FAST, iterations=4, sliding_window=1)
    prepared = difa._prepare(generator, encoder, [clip], reference(), config, None)
    target = make_target(generator)
    windows = losses.CodeWindow(config.sliding_window)
    rng = torch.Generator().manual_seed(0)
    z = torch.randn(2, generator.style_dim, generator=rng)
    noise = (generator.make_noise(2, generator=rng), generator.make_noise(2, generator=rng))
    loss, parts = difa.difa_losses(generator, target, encoder, [clip], prepared, windows, z, noise, 3, config)
    assert parts["ramp"] > 0 and parts["consistency"] > 0  # the consistency term is in the graph
    loss.backward()
    with_grad = {n for n, p in target.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == set(trainable_names(target))
    assert not any(n.startswith(("style.", "to_rgb")) for n in with_grad)
    assert {n.split(".")[0] for n in with_grad} == {"input", "conv1", "convs"}
    assert all(p.grad is None for p in generator.parameters())  # the source stays frozen
    assert all(p.grad is None for p in clip.parameters())
    assert all(p.grad is None for p in encoder.parameters())


@pytest.mark.parametrize("only", ["global", "local", "consistency"])
def test_each_loss_alone_reaches_only_trainable_tensors(models, only):
    generator, encoder, clip = models
    weights = {"global": (1.0, 0.0, 0.0), "local": (0.0, 1.0, 0.0), "consistency": (0.0, 0.0, 6.0)}[only]
    config = replace(FAST, iterations=4, sliding_window=1, lambda_global=weights[0], lambda_local=weights[1],
                     consistency_weight=weights[2])
    prepared = difa._prepare(generator, encoder, [clip], reference(), config, None)
    target, z, noise = moved_target_and_inputs(generator, seed=4)
    window = losses.CodeWindow(1)
    loss, parts = difa.difa_losses(generator, target, encoder, [clip], prepared, window, z, noise, 3, config)
    assert parts[only] > 0
    loss.backward()
    with_grad = {n for n, p in target.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= set(trainable_names(target))
    assert "conv1.conv.weight" in with_grad  # the first synthesis layer feeds every term
    assert all(p.grad is None for p in generator.parameters())
    assert all(p.grad is None for p in clip.parameters()) and all(p.grad is None for p in encoder.parameters())


def test_loss_parts_on_tiny_models_are_the_losses_of_the_generated_images(models):
    generator, encoder, clip = models
    config = replace(FAST, iterations=4, sliding_window=1, lambda_local=1.5, consistency_weight=7.0)
    prepared = difa._prepare(generator, encoder, [clip], reference(), config, None)
    target, z, noise = moved_target_and_inputs(generator, seed=5)
    window = losses.CodeWindow(1)
    _, parts = difa.difa_losses(generator, target, encoder, [clip], prepared, window, z, noise, 3, config)
    with torch.no_grad():  # the same terms, recomputed from the images by hand
        ws = generator.broadcast(generator.mapping(z))
        source_images = generator.synthesis(ws, noise=noise[0])
        target_images = target.synthesis(ws, noise=noise[1])
        expected_global = losses.global_loss(clip.encode_image(target_images), clip.encode_image(source_images),
                                      prepared.directions[0])
        expected_local = losses.local_loss(clip.tokens(target_images, config.clip_layer), prepared.reference_tokens[0])
        source_codes = losses.encode_first_layers(encoder, source_images, config.num_keep_first)
        target_codes = losses.encode_first_layers(encoder, target_images, config.num_keep_first)
        mask = losses.consistency_mask(source_codes.mean(0), target_codes.mean(0), config.psp_alpha)
        expected_consistency = losses.consistency_loss(target_codes, source_codes, mask)
    assert parts["global"] == pytest.approx(float(expected_global), rel=1e-5)
    assert parts["local"] == pytest.approx(float(expected_local), rel=1e-5)
    assert parts["consistency"] == pytest.approx(float(expected_consistency), rel=1e-5)
    ramp = losses.consistency_ramp(3, 1, 4)
    assert parts["ramp"] == ramp and 0 < ramp < 1
    assert parts["total"] == pytest.approx(parts["global"] + 1.5 * parts["local"] + ramp * 7.0 * parts["consistency"],
                                           rel=1e-5)


@pytest.mark.slow
def test_a_checkpoint_store_other_than_a_directory_resumes_the_same_run(models, full_run):
    generator, encoder, clip = models

    store = MemoryCache()
    with pytest.raises(AdaptationCancelled):
        adapt(generator, encoder, [clip], reference(), FAST, should_cancel=lambda: len(store.blobs) > 0,
              checkpoint_dir=store)
    assert list(store.blobs) == [CHECKPOINT_FILE]
    resumed = adapt(generator, encoder, [clip], reference(), FAST, checkpoint_dir=store)
    assert resumed.resumed_from == FAST.checkpoint_every
    assert all(torch.equal(resumed.delta[n], full_run.delta[n]) for n in full_run.delta)


def test_consistency_term_is_off_while_the_window_fills(models):
    generator, encoder, clip = models
    config = replace(FAST, sliding_window=3)
    prepared = difa._prepare(generator, encoder, [clip], reference(), config, None)
    target = make_target(generator)
    z = torch.randn(2, generator.style_dim)
    noise = (generator.make_noise(2), generator.make_noise(2))
    window = losses.CodeWindow(3)
    _, parts = difa.difa_losses(generator, target, encoder, [clip], prepared, window, z, noise, 0, config)
    assert parts["ramp"] == 0.0
    assert parts["total"] == pytest.approx(parts["global"] + parts["local"], rel=1e-5)


# -- whole runs ---------------------------------------------------------------------------------------
def test_adapt_changes_only_trainable_tensors_and_leaves_the_base_alone(models, full_run):
    generator, _, _ = models
    assert full_run.base_fingerprint == state_fingerprint(generator)  # base untouched by the run
    assert set(full_run.delta) == set(trainable_names(generator))
    base_state = generator.state_dict()
    changed = [n for n, v in full_run.delta.items() if not torch.equal(v, base_state[n])]
    assert "conv1.conv.weight" in changed and len(changed) > len(full_run.delta) // 2
    assert len(full_run.history) == FAST.iterations
    adapted = full_run.apply(generator)
    ws = generator.broadcast(generator.mapping(torch.randn(1, generator.style_dim)))
    assert not torch.allclose(adapted.synthesis(ws), generator.synthesis(ws))


def test_adapt_is_deterministic(models, full_run):
    generator, encoder, clip = models
    again = adapt(generator, encoder, [clip], reference(), FAST)
    assert all(torch.equal(again.delta[n], full_run.delta[n]) for n in full_run.delta)
    assert [h["total"] for h in again.history] == [h["total"] for h in full_run.history]


@pytest.mark.slow
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(models, full_run, tmp_path):
    generator, encoder, clip = models

    def crash_at_3(done: int, total: int, losses: dict) -> None:
        if done == 3:
            raise RuntimeError("simulated worker crash")

    with pytest.raises(RuntimeError, match="simulated"):
        adapt(generator, encoder, [clip], reference(), FAST, progress=crash_at_3, checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_FILE).is_file()  # written at iteration 2
    seen: list[int] = []
    resumed = adapt(generator, encoder, [clip], reference(), FAST, checkpoint_dir=tmp_path,
                    progress=lambda done, total, losses: seen.append(done))
    assert resumed.resumed_from == 2 and seen == [3, 4, 5]
    assert all(torch.equal(resumed.delta[n], full_run.delta[n]) for n in full_run.delta)
    assert [h["total"] for h in resumed.history] == [h["total"] for h in full_run.history]


@pytest.mark.slow
def test_cancel_stops_cooperatively_and_the_run_can_resume(models, full_run, tmp_path):
    generator, encoder, clip = models
    done: list[int] = []  # should_cancel is polled during the source mean too, so count iterations

    with pytest.raises(AdaptationCancelled) as err:
        adapt(generator, encoder, [clip], reference(), FAST, progress=lambda d, total, losses: done.append(d),
              should_cancel=lambda: len(done) == 3, checkpoint_dir=tmp_path)
    assert err.value.iteration == 3 and not err.value.preparing
    resumed = adapt(generator, encoder, [clip], reference(), FAST, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 3
    assert all(torch.equal(resumed.delta[n], full_run.delta[n]) for n in full_run.delta)


def test_a_checkpoint_from_another_run_is_refused(models, tmp_path):
    generator, encoder, clip = models
    means = MemoryCache()
    cached_source_clip_mean(generator, clip, FAST, means)  # so the first poll is before iteration 1, not a batch
    with pytest.raises(AdaptationCancelled):
        adapt(generator, encoder, [clip], reference(), FAST, should_cancel=lambda: True, checkpoint_dir=tmp_path,
              clip_mean_cache=means)
    with pytest.raises(CheckpointMismatchError) as err:
        adapt(generator, encoder, [clip], reference(seed=9), FAST, checkpoint_dir=tmp_path)
    assert CHECKPOINT_FILE in err.value.path
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointFormatError) as err:
        adapt(generator, encoder, [clip], reference(), FAST, checkpoint_dir=tmp_path)
    assert CHECKPOINT_FILE in err.value.path


def test_bad_reference_names_the_field(models):
    generator, encoder, clip = models
    for bad in (torch.zeros(2, 3, 32, 32), torch.full((1, 3, 32, 32), 3.0), torch.zeros(1, 1, 32, 32)):
        with pytest.raises(InvalidInputError) as err:
            adapt(generator, encoder, [clip], bad, FAST)
        assert err.value.field == "reference_image"


# -- mean source embedding cache ----------------------------------------------------------------------
def test_source_clip_mean_is_computed_once_per_generator_and_clip(models, tmp_path, monkeypatch):
    generator, _, clip = models
    cache = DirectoryCache(tmp_path)
    first = cached_source_clip_mean(generator, clip, FAST, cache)
    assert first.shape == (TINY_CLIP["embed_dim"],) and 0 < first.norm() <= 1
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(clip_mean, "source_clip_means", must_not_run)
    assert torch.equal(cached_source_clip_mean(generator, clip, FAST, cache), first)
    with pytest.raises(AssertionError, match="recomputed"):  # another generator is another key
        cached_source_clip_mean(tiny_generator(seed=5), clip, FAST, cache)


def _mean_the_old_way(generator: Generator, clip: ClipModel, samples: int, batch: int) -> torch.Tensor:
    """The loop the cached means were computed with before progress existed: the numbers must not move."""
    z_all = torch.randn(samples, generator.style_dim, generator=torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(0)
    total = None
    with torch.no_grad():
        for z in z_all.split(batch):
            ws = generator.broadcast(generator.truncate(generator.mapping(z), 1.0))
            emb = clip.encode_image(generator.synthesis(ws, noise=generator.make_noise(z.shape[0], generator=rng)))
            total = emb.sum(0) if total is None else total + emb.sum(0)
    return total / samples


def test_source_mean_reports_samples_done_after_each_batch_and_keeps_its_numbers(models):
    generator, _, clip = models
    seen: list[tuple[int, int]] = []
    mean = source_clip_mean(generator, clip, samples=5, batch=2,
                            progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]  # 0 first: computing starts; then after each batch
    assert torch.equal(mean, _mean_the_old_way(generator, clip, 5, 2))
    with pytest.raises(InvalidInputError) as err:
        source_clip_mean(generator, clip, samples=0)
    assert err.value.field == "samples"


def test_several_clips_share_one_pass_and_each_gets_its_own_mean(models):
    generator, _, clip = models
    other = tiny_clip(seed=8)
    calls: list[int] = []
    both = clip_mean.source_clip_means(generator, [clip, other], samples=4, batch=2,
                                       progress=lambda done, total: calls.append(done))
    assert calls == [0, 2, 4]  # one pass over the source samples, not one per CLIP
    assert torch.equal(both[0], _mean_the_old_way(generator, clip, 4, 2))
    assert torch.equal(both[1], _mean_the_old_way(generator, other, 4, 2))


def test_prepare_computes_only_the_missing_means_and_a_second_call_nothing(models):
    generator, _, clip = models
    other = tiny_clip(seed=8)
    cache = MemoryCache()
    assert not has_source_mean(generator, [clip], FAST, cache)
    cached_source_clip_mean(generator, clip, FAST, cache)
    assert has_source_mean(generator, [clip], FAST, cache) and not has_source_mean(generator, [clip, other], FAST,
                                                                                    cache)
    counts: list[int] = []
    keys = prepare_source_mean(generator, [clip, other], FAST, cache, lambda done, total: counts.append(done))
    assert list(keys.values()) == [False, True] and counts == [0, FAST.clip_mean_samples]
    assert list(keys) == [source_mean_key(generator, c, FAST) for c in (clip, other)]
    assert set(cache.blobs) == set(keys) and has_source_mean(generator, [clip, other], FAST, cache)
    counts.clear()
    again = prepare_source_mean(generator, [clip, other], FAST, cache, lambda done, total: counts.append(done))
    assert again == dict.fromkeys(keys, False) and counts == []
    # The key is the one caches were written under before: existing caches stay valid.
    gen_fp, clip_fp = state_fingerprint(generator), state_fingerprint(clip.model)
    assert list(keys)[0] == f"clip-mean/{gen_fp[:24]}-{clip_fp[:24]}-32-n4-t1.safetensors"
    cache.blobs[list(keys)[0]] = b"damaged"  # unreadable: counts as missing and is rewritten
    assert prepare_source_mean(generator, [clip], FAST, cache) == {list(keys)[0]: True}


def test_adapt_reports_preparing_only_when_it_computes_the_mean(models):
    generator, encoder, clip = models
    config = replace(FAST, iterations=1, clip_mean_batch=2)
    cache = MemoryCache()
    prepared: list[int] = []
    adapt(generator, encoder, [clip], reference(), config, clip_mean_cache=cache,
          prepare_progress=lambda done, total: prepared.append(done))
    assert prepared == [0, 2, 4]
    prepared.clear()
    adapt(generator, encoder, [clip], reference(), config, clip_mean_cache=cache,
          prepare_progress=lambda done, total: prepared.append(done))
    assert prepared == []


def test_cancel_while_preparing_stops_before_any_iteration_and_caches_nothing(models, tmp_path):
    generator, encoder, clip = models
    config = replace(FAST, clip_mean_batch=2)
    cache = MemoryCache()
    prepared: list[int] = []
    with pytest.raises(AdaptationCancelled) as err:
        adapt(generator, encoder, [clip], reference(), config, clip_mean_cache=cache, checkpoint_dir=tmp_path,
              prepare_progress=lambda done, total: prepared.append(done), should_cancel=lambda: prepared[-1] >= 2)
    assert err.value.preparing and err.value.iteration == 0 and "preparing" in str(err.value)
    assert prepared == [0, 2] and cache.blobs == {} and not (tmp_path / CHECKPOINT_FILE).exists()


@pytest.mark.slow
def test_prepare_clip_mean_command_writes_the_key_once(models, tmp_path, capsys):
    from safetensors.torch import save_file

    from faceedit.adaptation.clip import ClipConfig, load_clip
    from faceedit.cli import main
    from faceedit.training.generator import export_rosinality

    generator, _, clip = models
    export_rosinality(copy.deepcopy(generator), tmp_path / "generator.pt", n_w_avg=100)
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    (tmp_path / "clip.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    cache_dir = tmp_path / "cache"
    argv = ["prepare", "clip-mean", "--generator", str(tmp_path / "generator.pt"),
            "--clip", str(tmp_path / "clip.safetensors"), "--cache", str(cache_dir), "--samples", "4",
            "--batch-size", "2", "--device", "cpu"]
    assert main(argv) == 0
    first = capsys.readouterr()
    (written,) = [p.relative_to(cache_dir).as_posix() for p in cache_dir.rglob("*.safetensors")]
    assert f"wrote {written}" in first.out and "nothing to do" not in first.out
    assert "4/4" in first.err  # the progress bar
    # The key is the one an adaptation with these models and settings looks up.
    loaded = load_generator(tmp_path / "generator.pt")
    loaded_clip = load_clip(ClipConfig(config_path=str(tmp_path / "clip.json"),
                                       weights=str(tmp_path / "clip.safetensors")))
    assert written == source_mean_key(loaded, loaded_clip, replace(FAST, clip_mean_samples=4))
    stamp = (cache_dir / written).stat().st_mtime_ns

    assert main(argv) == 0
    second = capsys.readouterr()
    assert f"cached {written}" in second.out and "nothing to do" in second.out and "4/4" not in second.err
    assert (cache_dir / written).stat().st_mtime_ns == stamp
    assert main([*argv[:-2], "--device", "tpu-9"]) == 2 and "--device" in capsys.readouterr().err
    assert main([*argv, "--samples", "0"]) == 2 and "--samples" in capsys.readouterr().err


# -- the delta file -----------------------------------------------------------------------------------
def test_delta_round_trip_onto_its_base_only(models, full_run, tmp_path):
    generator, _, _ = models
    path = tmp_path / "adapted.safetensors"
    full_run.save(path, generator, {"reference": "test"})
    ckpt = read_checkpoint(path)
    assert ckpt.kind == "generator-delta" and set(ckpt.generator) == set(full_run.delta)
    assert path.stat().st_size < sum(v.numel() * 4 for v in generator.state_dict().values())
    adapted = apply_delta(generator, path)
    ws = generator.broadcast(generator.mapping(torch.randn(2, generator.style_dim)))
    assert torch.equal(adapted.synthesis(ws), full_run.apply(generator).synthesis(ws))
    with pytest.raises(CheckpointMismatchError) as err:
        apply_delta(tiny_generator(seed=7), path)
    assert str(path) == err.value.path
    with pytest.raises(CheckpointError, match="delta"):  # load_generator needs the base as well
        load_generator(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        apply_delta(generator, path)


def test_adaptation_moves_held_out_samples_along_the_reference_direction(models, full_run):
    generator, encoder, clip = models
    prepared = difa._prepare(generator, encoder, [clip], reference(), FAST, None)
    rng = torch.Generator().manual_seed(123)
    z = torch.randn(16, generator.style_dim, generator=rng)
    noise = (generator.make_noise(16, generator=rng), generator.make_noise(16, generator=rng))

    def direction_loss(target: Generator) -> float:
        with torch.no_grad():
            ws = generator.broadcast(generator.mapping(z))
            source_emb = clip.encode_image(generator.synthesis(ws, noise=noise[0]))
            target_emb = clip.encode_image(target.synthesis(ws, noise=noise[1]))
            return losses.global_loss(target_emb, source_emb, prepared.directions[0]).item()

    before, after = direction_loss(generator), direction_loss(full_run.apply(generator))
    assert before == pytest.approx(1.0, abs=0.1)  # noise alone: no preferred direction
    assert after < before - 0.2
