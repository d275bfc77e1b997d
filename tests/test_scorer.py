"""The attribute scorer: the shipped one reads held-out renders back, files are checked, training learns."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from faceedit.errors import CheckpointError, CheckpointFormatError, ChecksumMismatchError, InvalidInputError
from faceedit.synth import ATTRIBUTES, STYLES, render_faces
from faceedit.synth.scorer import Scorer, ScorerConfig, default_scorer_path, load_scorer, save_scorer
from faceedit.training.scorer import train_scorer

HELD_OUT_SEED = 31_337  # never a training or evaluation render seed (those are style*100k+chunk, 1M+...)
N_PHOTO = 200

# Mean absolute error allowed on held-out photo renders, in each attribute's own units: 1.5-3x what
# the shipped scorer measures on these faces (age 0.09, eyes_open 0.07, smile 0.05, pitch 0.045,
# yaw 0.03...), and at most ~60% of what a constant guess at the mean scores (~0.19-0.27 for the
# [0, 1] attributes, ~0.5 for yaw/pitch/lighting on [-1, 1]); an untrained net scores about that guess.
PHOTO_MAE = {
    "age": 0.15, "smile": 0.10, "mouth_open": 0.08, "eyes_open": 0.12, "yaw": 0.08, "pitch": 0.10,
    "beard": 0.08, "hair_length": 0.08, "hair_color": 0.06, "skin_tone": 0.05, "background": 0.06,
    "lighting": 0.08, "gender": 0.15, "anger": 0.14, "crying": 0.12,
}
MIN_CORR = 0.8  # Pearson correlation of every continuous attribute on photos (measured 0.85-0.997)
# The expressions added with issue 16 must read back from a 64 px face of any style (measured on the
# training run's 2,000 held-out faces: gender 0.916, anger 0.911, crying 0.943).
EXPRESSION_CORR = {"gender": 0.85, "anger": 0.85, "crying": 0.85}
# Artistic styles hide some attributes (a sketch has no skin or backdrop colour), so only pose and
# expression are held to a bound there (measured at most 0.044 / 0.054 / 0.084 / 0.063).
ART_MAE = {"yaw": 0.10, "pitch": 0.10, "smile": 0.15, "mouth_open": 0.10}


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return load_scorer()


@pytest.fixture(scope="module")
def photos():
    return render_faces(N_PHOTO, HELD_OUT_SEED, size=64, style="photo")


@pytest.fixture(scope="module")
def photo_scores(scorer, photos):
    with torch.inference_mode():
        return scorer.score(photos[0])


def test_shipped_scorer_reads_photo_attributes(photo_scores, photos):
    _, truth = photos
    for name, tol in PHOTO_MAE.items():
        pred, true = photo_scores[name], truth[name]
        spec = ATTRIBUTES[name]
        assert pred.shape == (N_PHOTO,)
        assert float(pred.min()) >= spec.low and float(pred.max()) <= spec.high, name
        mae = float((pred - true).abs().mean())
        assert mae < tol, f"{name}: MAE {mae:.3f} >= {tol}"
        corr = float(np.corrcoef(pred.numpy(), true.numpy())[0, 1])
        assert corr > MIN_CORR, f"{name}: correlation {corr:.3f}"
    glasses = photo_scores["glasses"]
    assert float(glasses.min()) >= 0.0 and float(glasses.max()) <= 1.0
    accuracy = float(((glasses > 0.5).float() == truth["glasses"]).float().mean())
    assert accuracy >= 0.95


@pytest.mark.slow
def test_shipped_scorer_reads_gender_anger_and_crying_in_every_style(scorer):
    predicted, true = {name: [] for name in EXPRESSION_CORR}, {name: [] for name in EXPRESSION_CORR}
    for style in STYLES:
        images, truth = render_faces(100, HELD_OUT_SEED + 2, size=64, style=style)
        with torch.inference_mode():
            scores = scorer.score(images)
        for name in EXPRESSION_CORR:
            predicted[name].append(scores[name])
            true[name].append(truth[name])
    for name, floor in EXPRESSION_CORR.items():
        corr = float(np.corrcoef(torch.cat(predicted[name]).numpy(), torch.cat(true[name]).numpy())[0, 1])
        assert corr >= floor, f"{name}: held-out correlation {corr:.3f} over all styles"


@pytest.mark.slow
def test_shipped_scorer_classifies_styles_and_reads_artworks(scorer):
    for index, style in enumerate(STYLES):
        images, truth = render_faces(40, HELD_OUT_SEED + 1, size=64, style=style)
        with torch.inference_mode():
            scores = scorer.score(images)
        assert scores["style_probs"].shape == (40, len(STYLES))
        assert torch.allclose(scores["style_probs"].sum(1), torch.ones(40), atol=1e-5)
        assert float((scores["style"] == index).float().mean()) >= 0.95, style
        glasses_acc = float(((scores["glasses"] > 0.5).float() == truth["glasses"]).float().mean())
        assert glasses_acc >= 0.9, style
        if style != "photo":
            for name, tol in ART_MAE.items():
                mae = float((scores[name] - truth[name]).abs().mean())
                assert mae < tol, f"{style} {name}: MAE {mae:.3f} >= {tol}"


@pytest.mark.slow
def test_scores_are_nearly_size_invariant(scorer, photo_scores):
    big, _ = render_faces(48, HELD_OUT_SEED, size=128, style="photo")  # the same 48 first faces
    with torch.inference_mode():
        scores = scorer.score(big)
    for name in ("yaw", "pitch", "smile", "age", "hair_length", "skin_tone"):
        gap = float((scores[name] - photo_scores[name][:48]).abs().mean())
        assert gap < 0.06, f"{name}: 64 vs 128 px differ by {gap:.3f}"
    assert float((scores["style"] == 0).float().mean()) == 1.0


def test_features_embed_faces(scorer, photos):
    images = photos[0][:16]
    with torch.inference_mode():
        feats = scorer.features(images)
        assert feats.shape == (16, scorer.config.feature_dim) and torch.isfinite(feats).all()
        same = scorer.perceptual_distance(images, images)
        other = scorer.perceptual_distance(images, images.roll(1, dims=0))
    assert torch.allclose(same, torch.zeros(16), atol=1e-5)
    assert float(other.min()) > 0.0


def test_gradients_flow_to_the_images(scorer, photos):
    stats = {k: v.clone() for k, v in scorer.state_dict().items()}
    images = photos[0][:4].clone().requires_grad_(True)
    scores = scorer.score(images)
    (scores["smile"].sum() + scores["yaw"].sum() + scores["style_probs"][:, 1].sum()).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert float(images.grad.abs().sum()) > 0.0
    scorer.zero_grad(set_to_none=True)
    assert not scorer.training
    assert all(torch.equal(v, stats[k]) for k, v in scorer.state_dict().items())  # BN statistics untouched


@pytest.mark.parametrize("bad", [
    torch.zeros(3, 64, 64),  # rank 3
    torch.zeros(2, 1, 64, 64),  # one channel
    torch.zeros(0, 3, 64, 64),  # empty batch
    torch.full((1, 3, 64, 64), float("nan")),
    torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
    torch.zeros(1, 3, 8, 8),  # too small
    np.zeros((1, 3, 64, 64), dtype=np.float32),  # not a tensor
], ids=["rank3", "channels", "empty", "nan", "uint8", "tiny", "numpy"])
def test_rejects_bad_images(scorer, bad):
    with pytest.raises(InvalidInputError) as info:
        scorer.score(bad)
    assert info.value.field == "images"


def test_save_load_round_trip_and_zoo_override(scorer, photos, tmp_path, monkeypatch):
    path = tmp_path / "scorer.safetensors"
    sha = save_scorer(scorer, path, info={"note": "copy"})
    record = json.loads((tmp_path / "scorer.json").read_text())
    assert record["sha256"] == sha and record["kind"] == "scorer" and record["note"] == "copy"
    assert ScorerConfig.from_dict(record["config"]) == scorer.config
    monkeypatch.setenv("FACEEDIT_ZOO_DIR", str(tmp_path))
    assert default_scorer_path() == path
    again = load_scorer()
    assert not again.training
    images = photos[0][:8]
    with torch.inference_mode():
        a, b = scorer.score(images), again.score(images)
        assert torch.equal(scorer.features(images), again.features(images))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_shipped_sidecar_records_training(scorer):
    record = json.loads(default_scorer_path().with_suffix(".json").read_text())
    assert record["kind"] == "scorer" and len(record["sha256"]) == 64
    assert record["training"]["command"].startswith("faceedit train scorer")  # make zoo's first step
    assert record["training"]["wall_time_s"] > 0
    assert record["metrics"]["style_accuracy"] >= 0.95
    assert default_scorer_path().stat().st_size <= 5 * 1024 * 1024


def test_tampered_missing_and_corrupt_files(tmp_path):
    shipped = default_scorer_path()
    path = tmp_path / "scorer.safetensors"
    shutil.copy(shipped, path)
    shutil.copy(shipped.with_suffix(".json"), tmp_path / "scorer.json")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a weight byte; the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError) as info:
        load_scorer(path)
    assert str(path) in str(info.value)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_scorer(tmp_path / "nope.safetensors")

    (tmp_path / "scorer.json").unlink()
    path.write_bytes(bytes(data[:1000]))  # truncated, no sidecar to catch it
    with pytest.raises(CheckpointFormatError) as info:
        load_scorer(path)
    assert info.value.path == str(path)


@pytest.mark.slow
def test_tiny_training_run_lowers_the_loss(tmp_path):
    tiny = ScorerConfig(stem_width=4, widths=(8, 16, 16, 16), feature_dim=32)
    out = tmp_path / "tiny.safetensors"
    metrics = train_scorer(tiny, out, n_train=96, steps=60, seed=3, progress=False, batch_size=32,
                           lr=3e-3, n_eval=24, warmup_steps=5)
    assert metrics["train_loss_end"] < 0.8 * metrics["train_loss_start"]
    assert set(metrics["attributes"]) == set(tiny.attribute_names)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["metrics"]["train_loss_end"] == pytest.approx(metrics["train_loss_end"])
    loaded = load_scorer(out)
    assert loaded.config == tiny
    assert set(loaded.score(torch.zeros(2, 3, 64, 64))) == {*tiny.attribute_names, "style", "style_probs"}
