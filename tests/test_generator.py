"""The generator reproduces rosinality stylegan2-pytorch outputs and validates its inputs."""

from __future__ import annotations

import json

import pytest
import torch

from faceedit.errors import InvalidInputError
from faceedit.models import (
    Generator,
    GeneratorConfig,
    infer_generator_config,
    load_generator,
)

from factories import SLIM_CHANNELS, tiny_generator_config
from reference import REFERENCE_DIR, reference_mark

IMAGE_TOL = dict(atol=1e-4, rtol=1e-4)
LATENT_TOL = dict(atol=2e-5, rtol=1e-5)

needs_reference = reference_mark()


@pytest.fixture(scope="module")
def reference_generator() -> Generator:
    return load_generator(REFERENCE_DIR / "stylegan2_s32_cm2_seed0.pt")


@pytest.fixture(scope="module")
def refs() -> dict:
    return torch.load(REFERENCE_DIR / "stylegan2_s32_refs.pt", weights_only=True)


@needs_reference
class TestUpstreamEquivalence:
    def test_config_is_inferred_from_weights(self, reference_generator):
        cfg = reference_generator.config
        assert (cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, cfg.channels) == (32, 512, 8, 2, None)
        assert reference_generator.n_latent == 8

    def test_w_avg_is_the_checkpoint_latent_avg(self, reference_generator, refs):
        torch.testing.assert_close(reference_generator.w_avg, refs["latent_avg"], atol=0, rtol=0)

    def test_mapping(self, reference_generator, refs):
        with torch.inference_mode():
            torch.testing.assert_close(reference_generator.mapping(refs["z"]), refs["w_from_z"], **LATENT_TOL)
            torch.testing.assert_close(reference_generator.mapping(refs["z_for_w"]), refs["w_in"], **LATENT_TOL)

    @pytest.mark.slow
    def test_images_from_z_w_and_wplus(self, reference_generator, refs):
        g = reference_generator
        with torch.inference_mode():
            ws_z = g.broadcast(g.mapping(refs["z"]))
            torch.testing.assert_close(ws_z, refs["latents_z"], **LATENT_TOL)
            torch.testing.assert_close(g.synthesis(ws_z), refs["img_z"], **IMAGE_TOL)
            torch.testing.assert_close(g.synthesis(g.broadcast(refs["w_in"])), refs["img_w"], **IMAGE_TOL)
            torch.testing.assert_close(g.synthesis(refs["wplus_in"]), refs["img_wplus"], **IMAGE_TOL)

    @pytest.mark.slow
    def test_truncation(self, reference_generator, refs):
        g = reference_generator
        with torch.inference_mode():
            img = g.synthesis(g.broadcast(g.truncate(g.mapping(refs["z"]), 0.7)))
            torch.testing.assert_close(img, refs["img_z_trunc07"], **IMAGE_TOL)
            img = g.synthesis(g.broadcast(g.truncate(refs["w_in"], 0.5)))
            torch.testing.assert_close(img, refs["img_w_trunc05"], **IMAGE_TOL)
            # forward() is mapping → truncation → synthesis in one call.
            torch.testing.assert_close(g(refs["z"], truncation_psi=0.7), refs["img_z_trunc07"], **IMAGE_TOL)

    @pytest.mark.slow
    def test_style_mixing(self, reference_generator, refs):
        g = reference_generator
        with torch.inference_mode():
            ws = g.mix(g.mapping(refs["z"]), g.mapping(refs["z2"]), 3)
            torch.testing.assert_close(ws, refs["latents_mix_inject3"], **LATENT_TOL)
            torch.testing.assert_close(g.synthesis(ws), refs["img_mix_inject3"], **IMAGE_TOL)

    @pytest.mark.slow
    def test_explicit_noise(self, reference_generator, refs):
        g = reference_generator
        with torch.inference_mode():
            img = g.synthesis(g.broadcast(refs["w_in"]), noise=refs["explicit_noise"])
        torch.testing.assert_close(img, refs["img_w_explicit_noise"], **IMAGE_TOL)

    @pytest.mark.slow
    def test_gradients_reach_the_synthesis_weights(self, refs):
        g = load_generator(REFERENCE_DIR / "stylegan2_s32_cm2_seed0.pt").requires_grad_(True)
        g.synthesis(refs["wplus_in"][:1]).square().mean().backward()
        assert g.convs[0].conv.weight.grad.abs().sum() > 0
        assert g.to_rgbs[-1].bias.grad.abs().sum() > 0


def tiny_config() -> GeneratorConfig:
    return tiny_generator_config(style_dim=32, channels=SLIM_CHANNELS)


@pytest.fixture
def tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(tiny_config()).eval()


def test_custom_widths_round_trip_through_inference(tiny_generator):
    shapes = {k: v.shape for k, v in tiny_generator.state_dict().items()}
    assert infer_generator_config(shapes) == tiny_config()


def test_noise_modes(tiny_generator):
    g = tiny_generator
    with torch.no_grad():
        # Noise weights start at zero upstream; give them weight so the modes differ.
        for module in g.modules():
            if hasattr(module, "noise") and hasattr(module.noise, "weight"):
                module.noise.weight.fill_(0.5)
        ws = g.broadcast(g.mapping(torch.randn(2, 32)))
        const_a, const_b = g.synthesis(ws), g.synthesis(ws)
        random_a, random_b = g.synthesis(ws, "random"), g.synthesis(ws, "random")
        silent = g.synthesis(ws, "none")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(random_a, random_b)
    assert not torch.allclose(silent, const_a)


def test_batch_items_are_independent(tiny_generator):
    ws = tiny_generator.broadcast(tiny_generator.mapping(torch.randn(3, 32)))
    with torch.no_grad():
        together = tiny_generator.synthesis(ws)
        alone = torch.cat([tiny_generator.synthesis(ws[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_w_avg_is_estimated_once_when_missing(tiny_generator):
    first = tiny_generator.w_avg.clone()
    assert torch.equal(first, tiny_generator.w_avg)
    with torch.no_grad():
        sample_mean = tiny_generator.mapping(torch.randn(4096, 32)).mean(0)
    assert (first - sample_mean).abs().max() < 0.1 * sample_mean.abs().max() + 1e-3


@pytest.mark.parametrize("bad, field", [
    (torch.randn(2, 7, 32), "ws"),  # wrong n_latent
    (torch.randn(2, 32), "ws"),  # W, not W+
    (torch.full((1, 8, 32), float("nan")), "ws"),
    (torch.zeros(0, 8, 32), "ws"),
    (torch.zeros(1, 8, 32, dtype=torch.int64), "ws"),
])
def test_synthesis_rejects_bad_latents(tiny_generator, bad, field):
    with pytest.raises(InvalidInputError) as err:
        tiny_generator.synthesis(bad)
    assert err.value.field == field


def test_mapping_and_mix_reject_bad_input(tiny_generator):
    with pytest.raises(InvalidInputError, match="z"):
        tiny_generator.mapping(torch.randn(2, 31))
    with pytest.raises(InvalidInputError, match="index"):
        tiny_generator.mix(torch.randn(1, 32), torch.randn(1, 32), 99)
    with pytest.raises(InvalidInputError, match="noise_mode"):
        tiny_generator.synthesis(torch.randn(1, 8, 32), noise_mode="loud")


def test_config_round_trips_through_json():
    cfg = tiny_config()
    assert GeneratorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InvalidInputError, match="size"):
        GeneratorConfig(size=48)
    with pytest.raises(InvalidInputError, match="channels"):
        GeneratorConfig(size=32, channels={4: 8, 8: 8})


def test_stylespace_synthesis_equals_wplus_synthesis_and_moves_single_channels(tiny_generator):
    generator = tiny_generator
    z = torch.randn(3, generator.style_dim, generator=torch.Generator().manual_seed(4))
    ws = generator.broadcast(generator.mapping(z))
    ws = ws + 0.1 * torch.randn_like(ws)  # a W+ code: every layer its own w
    with torch.no_grad():
        styles = generator.styles(ws)
        assert [s.shape for s in styles] == [(3, conv.in_ch) for conv, _ in generator.style_layers()]
        assert torch.equal(generator.synthesis_from_styles(styles), generator.synthesis(ws))
        moved = [s.clone() for s in styles]
        moved[3][:, 5] += 10.0  # one channel of one layer
        changed = generator.synthesis_from_styles(moved)
    assert not torch.equal(changed, generator.synthesis(ws))
    with pytest.raises(InvalidInputError) as info:
        generator.synthesis_from_styles(styles[:-1])
    assert info.value.field == "styles"
