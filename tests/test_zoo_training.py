"""The demo-zoo pipeline on tiny models: renderer numbers, trainers (a few steps), model cards, metrics, eval zoo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from faceedit.checkpoints import sha256_file
from faceedit.cli import main
from faceedit.errors import ChecksumMismatchError, InvalidInputError
from faceedit.metrics import kernel_inception_distance, wasserstein_1d
from faceedit.models import load_encoder, load_generator
from faceedit.synth import RENDER_UNIFORMS, render_from_uniform
from faceedit.synth.attributes import ATTRIBUTE_UNIFORMS
from faceedit.synth.scorer import Scorer, ScorerConfig
from faceedit.training.cards import read_card, update_card, write_card
from faceedit.training.encoder import EncoderTrainingConfig, train_demo_encoder
from faceedit.training.generator import (
    GeneratorTrainer,
    GeneratorTrainingConfig,
    renderer_target,
    scorer_guidance_loss,
    train_demo_generator,
)

TINY_GENERATOR = dict(size=32, style_dim=160, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16},
                      batch_size=2, checkpoint_every=2, warmup_steps=1)
TINY_ENCODER = dict(stage_channels=(8, 12, 16, 24), stage_units=(1, 1, 1, 1), se_reduction=4, batch_size=2,
                    checkpoint_every=2)


class TestRenderFromUniform:
    def test_same_numbers_same_faces(self):
        u = np.random.default_rng(0).uniform(size=(3, RENDER_UNIFORMS))
        a, attrs_a = render_from_uniform(u, size=32)
        b, attrs_b = render_from_uniform(u, size=32)
        assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
        assert all(torch.equal(attrs_a[k], attrs_b[k]) for k in attrs_a)

    def test_each_attribute_number_is_monotone(self):
        u = np.full((5, RENDER_UNIFORMS), 0.5)
        u[:, 0] = np.linspace(0.01, 0.99, 5)  # the first attribute number only
        _, attrs = render_from_uniform(u, size=32)
        moved = [name for name, v in attrs.items() if name != "style" and not torch.all(v == v[0])]
        assert len(moved) == 1
        values = attrs[moved[0]]
        assert torch.all(values[1:] >= values[:-1]) and values[-1] > values[0]

    def test_identity_numbers_change_the_face_not_the_attributes(self):
        u = np.full((2, RENDER_UNIFORMS), 0.5)
        u[1, ATTRIBUTE_UNIFORMS:] = 0.9
        images, attrs = render_from_uniform(u, size=32)
        assert all(torch.equal(v[0], v[1]) for v in attrs.values())
        assert (images[0] - images[1]).abs().mean() > 0.01

    @pytest.mark.parametrize("u, problem", [(np.full((2, 5), 0.5), "shape"),
                                            (np.full((1, RENDER_UNIFORMS), 1.5), "[0, 1]")])
    def test_bad_numbers_name_the_field(self, u, problem):
        with pytest.raises(InvalidInputError, match=r"u.*" + problem.replace("[", r"\[").replace("]", r"\]")):
            render_from_uniform(u)


class TestMetrics:
    def test_kid_is_near_zero_for_one_distribution_and_large_for_two(self):
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(600, 16, generator=gen), torch.randn(600, 16, generator=gen)
        same, _ = kernel_inception_distance(a, b, subsets=10, subset_size=200)
        shifted, _ = kernel_inception_distance(a, b + 1.0, subsets=10, subset_size=200)
        assert abs(same) < 0.05 and shifted > 20 * max(abs(same), 1e-3)

    def test_wasserstein_of_a_shift_is_the_shift(self):
        x = torch.randn(5000, generator=torch.Generator().manual_seed(1))
        assert wasserstein_1d(x, x + 0.3) == pytest.approx(0.3, abs=1e-6)
        assert wasserstein_1d(x, x) == pytest.approx(0.0, abs=1e-9)


class TestCards:
    def test_card_records_the_sha256_the_loader_checks(self, tmp_path, tiny_generator_file):
        card = read_card(tiny_generator_file)
        assert len(card["sha256"]) == 64 and card["bytes"] == tiny_generator_file.stat().st_size
        load_generator(tiny_generator_file)  # the recorded sha256 matches
        with open(tiny_generator_file, "ab") as f:
            f.write(b"tampered")
        with pytest.raises(ChecksumMismatchError, match="sha256"):
            load_generator(tiny_generator_file)

    def test_update_merges_sections_and_keeps_the_sha256_current(self, tmp_path):
        weights = tmp_path / "w.bin"
        weights.write_bytes(b"one")
        write_card(weights, {"model": "m", "metrics": {"samples": 1}})
        weights.write_bytes(b"two")
        update_card(weights, metrics={"edits": 2})
        card = read_card(weights)
        assert card["metrics"] == {"samples": 1, "edits": 2} and card["model"] == "m"
        assert card["bytes"] == 3 and card["sha256"] == sha256_file(weights)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A generator and an encoder trained for two steps each, through the zoo's own entry points."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    generator = train_demo_generator(GeneratorTrainingConfig(steps=2, **TINY_GENERATOR), root / "g-work",
                                     root / "generator.pt", progress=False)
    encoder = train_demo_encoder(EncoderTrainingConfig(steps=2, **TINY_ENCODER), generator, root / "e-work",
                                 root / "encoder.pt", progress=False)
    return root, generator, encoder


@pytest.fixture
def tiny_generator_file(tiny_zoo, tmp_path):
    import shutil

    root, generator, _ = tiny_zoo
    for name in ("generator.pt", "generator.json"):
        shutil.copy(root / name, tmp_path / name)
    return tmp_path / "generator.pt"


class TestTrainers:
    def test_exports_load_through_the_public_loaders(self, tiny_zoo):
        _, generator_path, encoder_path = tiny_zoo
        generator, encoder = load_generator(generator_path), load_encoder(encoder_path)
        assert generator.config.size == 32 and generator.style_dim == 160
        ws = encoder.encode(torch.zeros(1, 3, 32, 32))
        assert ws.shape == (1, generator.n_latent, 160)
        card = read_card(generator_path)
        assert card["training"]["steps"] == 2 and "faceedit train generator" in card["training"]["command"]
        assert read_card(encoder_path)["generator"]["sha256"] == read_card(generator_path)["sha256"]

    def test_training_resumes_where_it_stopped(self, tmp_path):
        config = GeneratorTrainingConfig(steps=2, **TINY_GENERATOR)
        first = GeneratorTrainer(config, renderer_target(32), tmp_path)
        first.train(progress=False)
        assert (tmp_path / "train_state.pt").is_file()
        config.steps = 3
        second = GeneratorTrainer(config, renderer_target(32), tmp_path)
        assert second.resume() and second.step == 2
        for a, b in zip(first.generator_ema.parameters(), second.generator_ema.parameters()):
            assert torch.equal(a, b)
        second.train(progress=False)
        assert second.step == 3

    @pytest.mark.slow
    def test_a_run_paused_and_extended_replays_step_for_step(self, tmp_path):
        """The zoo's schedule: planned for N steps, paused at k, resumed for M > N. A replay with
        stop_at_step must land on exactly the same weights (what makes `make zoo` reproduce the card)."""
        def run(work_dir):
            first = GeneratorTrainer(GeneratorTrainingConfig(steps=4, **TINY_GENERATOR), renderer_target(32), work_dir)
            first.train(progress=False, stop_at_step=2)
            assert first.step == 2
            second = GeneratorTrainer(GeneratorTrainingConfig(steps=5, **TINY_GENERATOR), renderer_target(32), work_dir)
            assert second.resume() and second.step == 2
            second.train(progress=False)
            return second
        a, b = run(tmp_path / "a"), run(tmp_path / "b")
        assert a.step == b.step == 5
        assert all(torch.equal(p, q) for p, q in zip(a.generator_ema.parameters(), b.generator_ema.parameters()))

    @pytest.mark.slow
    def test_an_encoder_run_stopped_at_a_step_replays_exactly(self, tiny_zoo, tmp_path):
        from faceedit.training.encoder import EncoderTrainer

        _, generator_path, _ = tiny_zoo
        runs = []
        for name in ("a", "b"):
            trainer = EncoderTrainer(EncoderTrainingConfig(steps=4, **TINY_ENCODER), load_generator(generator_path),
                                     tmp_path / name)
            trainer.train(progress=False, stop_at_step=2)
            runs.append(trainer)
        assert runs[0].step == runs[1].step == 2
        assert all(torch.equal(p, q) for p, q in zip(runs[0].encoder.parameters(), runs[1].encoder.parameters()))

    @pytest.mark.slow
    def test_the_loss_goes_down_on_a_fixed_target(self, tmp_path):
        config = GeneratorTrainingConfig(steps=30, **{**TINY_GENERATOR, "checkpoint_every": 100})
        target = renderer_target(32)
        fixed_z = torch.randn(2, 160, generator=torch.Generator().manual_seed(3))
        fixed = target(fixed_z)
        trainer = GeneratorTrainer(config, lambda z: fixed, tmp_path)
        trainer.rng = torch.Generator().manual_seed(3)
        losses = [trainer.train_step() for _ in range(30)]
        assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


class TestScorerGuidance:
    @pytest.fixture
    def scorer(self):
        torch.manual_seed(0)
        return Scorer(ScorerConfig(image_size=32, stem_width=4, widths=(8, 8), feature_dim=16)).eval()

    def test_zero_for_the_target_and_larger_for_a_blurred_one(self, scorer):
        target = renderer_target(32)(torch.randn(4, 160, generator=torch.Generator().manual_seed(0)))
        blurred = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2)
        assert scorer_guidance_loss(scorer, target, target, 1.0).item() == pytest.approx(0.0, abs=1e-6)
        assert scorer_guidance_loss(scorer, blurred, target, 1.0).item() > 0.01

    def test_gradients_reach_the_generator_and_never_change_the_scorer(self, scorer, tmp_path):
        config = GeneratorTrainingConfig(steps=3, **TINY_GENERATOR)
        before = {k: v.clone() for k, v in scorer.state_dict().items()}
        guided = GeneratorTrainer(config, renderer_target(32), tmp_path / "guided", scorer=scorer)
        plain = GeneratorTrainer(config, renderer_target(32), tmp_path / "plain")
        guided_losses = [guided.train_step() for _ in range(3)]
        plain_losses = [plain.train_step() for _ in range(3)]
        # Same seeds, same first batch: the guided loss adds a positive term.
        assert guided_losses[0] > plain_losses[0]
        after_guided = [p.clone() for p in guided.generator.parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(after_guided, plain.generator.parameters()))
        assert all(torch.equal(v, scorer.state_dict()[k]) for k, v in before.items())
        assert not any(p.requires_grad for p in scorer.parameters())

    def test_weight_zero_turns_it_off(self, scorer, tmp_path):
        config = GeneratorTrainingConfig(steps=1, perceptual_weight=0.0, **TINY_GENERATOR)
        assert GeneratorTrainer(config, renderer_target(32), tmp_path, scorer=scorer).scorer is None


@pytest.mark.slow
def test_eval_zoo_prints_the_metrics_and_records_them(tiny_zoo, tmp_path, capsys):
    root, generator_path, encoder_path = tiny_zoo
    code = main(["eval", "zoo", "--generator", str(generator_path), "--encoder", str(encoder_path),
                 "--n-samples", "24", "--n-inversion", "8", "--docs", str(tmp_path / "docs"),
                 "--json", str(tmp_path / "m.json"), "--write-cards"])
    assert code == 0
    out = capsys.readouterr().out
    assert "KID" in out and "pixel MSE" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["samples"]["n"] == 24 and 0 <= metrics["inversion"]["pixel_mse"] <= 1
    # The independent KID (the shipped CLIP's features): untrained samples sit far above the floor.
    samples = metrics["samples"]
    assert ("CLIP" in out
            and samples["kid_independent"] > samples["kid_independent_floor"] + 3 * samples["kid_independent_std"])
    assert (tmp_path / "docs" / "samples.png").is_file() and (tmp_path / "docs" / "inversion.png").is_file()
    card = read_card(generator_path)
    assert card["metrics"]["samples"]["kid"] == pytest.approx(metrics["samples"]["kid"])
    assert "inversion" in read_card(encoder_path)["metrics"]
    load_generator(generator_path)  # the card update kept the recorded sha256 valid
