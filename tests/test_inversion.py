"""faceedit.inversion on tiny seeded models: the encoder's code, W+ optimisation, pivotal tuning and its delta."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from faceedit.errors import InvalidInputError
from faceedit.inversion import InversionCancelled, InversionConfig, invert
from faceedit.models.delta import save_delta, state_fingerprint, trainable_names
from faceedit.models.loading import load_generator

from factories import tiny_encoder, tiny_generator

FAST = InversionConfig(optimize_steps=40, optimize_lr=0.05, tune_steps=40, tune_lr=3e-3)


@pytest.fixture(scope="module")
def models():
    generator = tiny_generator(noise_strength=0.1)
    encoder = tiny_encoder(n_styles=generator.n_latent)
    encoder.set_latent_avg(generator.w_avg.clone())
    return generator, encoder


def photo(generator, seed: int = 7) -> torch.Tensor:
    """An out-of-domain "photo": smooth colour ramps with a blob, [1, 3, 32, 32] in [-1, 1]."""
    rng = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.8, 0.8, 32)
    image = torch.stack([ramp.expand(32, 32), ramp.expand(32, 32).T, -ramp.expand(32, 32)])[None]
    return (image + 0.2 * torch.randn(1, 3, 32, 32, generator=rng)).clamp(-1, 1)


def l2(generator, ws, target) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(generator.synthesis(ws), target))


def test_encoder_mode_is_the_encoders_code(models):
    generator, encoder = models
    target = photo(generator)
    result = invert(target, generator, encoder, mode="encoder")
    with torch.no_grad():
        assert torch.equal(result.ws, encoder.encode(target))
    assert result.generator is generator and result.ws.shape == (1, generator.n_latent, generator.style_dim)
    assert result.losses["l2"] == pytest.approx(l2(generator, result.ws, target), rel=1e-5)


def test_optimize_fits_better_than_the_encoder_and_leaves_the_generator_alone(models):
    generator, encoder = models
    target = photo(generator)
    before, grads = state_fingerprint(generator), [p.requires_grad for p in generator.parameters()]
    start = invert(target, generator, encoder, mode="encoder")
    result = invert(target, generator, encoder, mode="optimize", config=FAST)
    assert result.generator is generator and state_fingerprint(generator) == before
    assert [p.requires_grad for p in generator.parameters()] == grads  # as it was handed in
    assert l2(generator, result.ws, target) < 0.8 * l2(generator, start.ws, target)
    assert len(result.history) == FAST.optimize_steps and result.history[-1]["total"] < result.history[0]["total"]


def test_pti_tunes_a_copy_whose_delta_loads_onto_the_base(models, tmp_path):
    generator, encoder = models
    target = photo(generator)
    before = state_fingerprint(generator)
    pivot = invert(target, generator, encoder, mode="optimize", config=FAST)
    tuned = invert(target, generator, encoder, mode="pti", config=FAST)
    assert tuned.generator is not generator and state_fingerprint(generator) == before
    assert torch.equal(tuned.ws, pivot.ws)  # the same pivot, seeded
    assert l2(tuned.generator, tuned.ws, target) < 0.7 * l2(generator, pivot.ws, target)
    delta = tuned.tuned_tensors()
    assert set(delta) == set(trainable_names(generator))
    path = tmp_path / "photo-delta.safetensors"
    save_delta(tuned.generator, generator, path)
    reloaded = load_generator(path, base=generator)
    with torch.no_grad():
        assert torch.allclose(reloaded.synthesis(tuned.ws), tuned.generator.synthesis(tuned.ws), atol=1e-6)


def test_losses_are_handed_in_and_tuning_stops_at_the_perceptual_threshold(models):
    generator, encoder = models
    calls = []

    def perceptual(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return (a - b).abs().mean(dim=(1, 2, 3))  # [B]

    config = dataclasses.replace(FAST, optimize_steps=3, tune_steps=200, perceptual_stop=0.3)
    result = invert(photo(generator), generator, encoder, mode="pti", config=config, perceptual=perceptual)
    assert calls and all(shape == ((1, 3, 32, 32), (1, 3, 32, 32)) for shape in calls)
    tuning = [h for h in result.history if h["phase"] == 1.0]
    assert 0 < len(tuning) < 200 and tuning[-1]["perceptual"] < 0.3  # stopped early, under the threshold
    assert "identity" not in result.losses
    with pytest.raises(InvalidInputError) as info:
        invert(photo(generator), generator, encoder, mode="optimize",
               config=dataclasses.replace(FAST, identity_weight=0.1))
    assert info.value.field == "identity"


def test_locality_keeps_other_faces_closer_to_the_base(models):
    generator, encoder = models
    target = photo(generator)
    free = invert(target, generator, encoder, mode="pti", config=dataclasses.replace(FAST, optimize_steps=5))
    local = invert(target, generator, encoder, mode="pti",
                   config=dataclasses.replace(FAST, optimize_steps=5, locality=True, locality_l2_weight=10.0))
    others = generator.broadcast(generator.mapping(torch.randn(8, generator.style_dim,
                                                               generator=torch.Generator().manual_seed(11))))
    with torch.no_grad():
        base_images = generator.synthesis(others)
        drift_free = float((free.generator.synthesis(others) - base_images).pow(2).mean())
        drift_local = float((local.generator.synthesis(others) - base_images).pow(2).mean())
    assert "locality_l2" in local.history[-1] and drift_local < drift_free


def test_cancel_stops_between_steps(models):
    generator, encoder = models
    seen = []
    with pytest.raises(InversionCancelled) as info:
        invert(photo(generator), generator, encoder, mode="pti", config=FAST,
               progress=lambda phase, step, steps, losses: seen.append((phase, step)),
               should_cancel=lambda: len(seen) >= FAST.optimize_steps + 2)
    assert info.value.phase == "tune" and info.value.step == 2


def test_a_time_limit_returns_what_the_optimisation_reached_and_a_start_replaces_the_encoder(models):
    generator, encoder = models
    target = photo(generator)
    with torch.no_grad():
        code = encoder.encode(target)
    config = dataclasses.replace(FAST, optimize_steps=10_000)
    result = invert(target, generator, None, mode="optimize", config=config, start=code, time_limit_s=0.3)
    steps = len(result.history)
    assert 1 <= steps < 10_000 and result.seconds < 30  # stopped by the limit, not the step count
    assert result.losses["l2"] < invert(target, generator, encoder, mode="encoder").losses["l2"]
    # Without an encoder and without a start it would begin at w_avg: the start is what it began from.
    first = invert(target, generator, None, mode="optimize", config=dataclasses.replace(FAST, optimize_steps=1),
                   start=code)
    from_avg = invert(target, generator, None, mode="optimize", config=dataclasses.replace(FAST, optimize_steps=1))
    assert first.history[0]["l2"] != from_avg.history[0]["l2"]


@pytest.mark.parametrize("kwargs, field", [
    ({"mode": "gan-magic"}, "mode"),
    ({"mode": "optimize", "start": torch.zeros(1, 2, 3)}, "start"),
    ({"mode": "encoder", "pivot": torch.zeros(1, 8, 64)}, "pivot"),
    ({"mode": "encoder", "encoder": None}, "encoder"),
    ({"image": torch.zeros(2, 3, 32, 32)}, "image"),
    ({"image": torch.full((1, 3, 32, 32), 255.0)}, "image"),
    ({"image": torch.full((1, 3, 32, 32), float("nan"))}, "image"),
])
def test_bad_input_names_the_field(models, kwargs, field):
    generator, encoder = models
    args = {"image": photo(generator), "generator": generator, "encoder": encoder, **kwargs}
    with pytest.raises(InvalidInputError) as info:
        invert(**args)
    assert info.value.field == field


@pytest.mark.parametrize("name, value", [("optimize_steps", -1), ("tune_lr", 0.0), ("optimize_lr", float("nan"))])
def test_bad_config_names_the_setting(name, value):
    with pytest.raises(InvalidInputError) as info:
        InversionConfig(**{name: value})
    assert info.value.field == name


def test_an_fp16_delta_is_half_the_size_and_renders_the_photo_nearly_as_well(models, tmp_path):
    generator, encoder = models
    target = photo(generator)
    tuned = invert(target, generator, encoder, mode="pti", config=FAST)
    sizes, errors = {}, {}
    for storage in ("fp32", "fp16"):
        path = tmp_path / f"{storage}.safetensors"
        save_delta(tuned.generator, generator, path, storage=storage)
        sizes[storage] = path.stat().st_size
        errors[storage] = l2(load_generator(path, base=generator), tuned.ws, target)
    assert sizes["fp16"] < 0.55 * sizes["fp32"]
    assert errors["fp16"] == pytest.approx(errors["fp32"], rel=0.05)  # fp16 rounding, not a different fit
    with pytest.raises(InvalidInputError) as info:
        save_delta(tuned.generator, generator, tmp_path / "x.safetensors", storage="int4")
    assert info.value.field == "storage"
