"""`faceedit invert PHOTO` and `faceedit edit PHOTO`: a photo edited in process with the demo zoo; the full
photo comes back."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from faceedit.cli import main
from faceedit.images import to_pil
from faceedit.synth.render import render_faces

HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def portrait(tmp_path_factory):
    """A zoo-style face (one dlib finds) on a larger, plain background: a "photo" with room around the face."""
    faces, _ = render_faces(2, seed=5, size=256)
    photo = Image.new("RGB", (560, 460), (40, 90, 140))
    photo.paste(to_pil(faces[1:2])[0].resize((384, 384)), (120, 40))
    path = tmp_path_factory.mktemp("photo") / "portrait.png"
    photo.save(path)
    return path


@pytest.mark.skipif(not HAVE_DLIB, reason="alignment needs dlib and its landmark model (the align extra)")
def test_edit_returns_the_full_photo_with_only_the_face_changed(portrait, tmp_path, capsys):
    out = tmp_path / "edited.png"
    assert main(["edit", str(portrait), "--smile", "2", "--edit", "age=1", "--out", str(out)]) == 0
    before, after = np.asarray(Image.open(portrait)).astype(int), np.asarray(Image.open(out)).astype(int)
    assert after.shape == before.shape  # the whole photo, not the crop
    changed = np.abs(after - before).sum(axis=-1) > 0
    assert changed[150:300, 230:450].mean() > 0.5  # the face
    assert not changed[:, :110].any() and not changed[:, 515:].any() and not changed[440:].any()  # background
    assert "smile +2, age +1" in capsys.readouterr().out


def test_invert_writes_the_crop_reconstruction_photo_latent_and_the_tuned_delta(portrait, tmp_path):
    out = tmp_path / "inv"
    assert main(["invert", str(portrait), "--no-align", "--mode", "pti", "--steps", "3", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"aligned.png", "reconstruction.png", "photo.png", "latent.npy",
                                               "tuned.safetensors"}
    assert Image.open(out / "photo.png").size == Image.open(portrait).size
    assert np.load(out / "latent.npy").shape[0] == 1


@pytest.mark.parametrize("argv, problem", [
    (["--edit", "smile"], "--edit"),
    (["--edit", "wings=1"], "no boundary for ['wings']"),
    ([], "give at least one"),
])
def test_bad_edits_are_refused_by_name(portrait, tmp_path, capsys, argv, problem):
    assert main(["edit", str(portrait), "--no-align", *argv, "--out", str(tmp_path / "x.png")]) == 2
    assert problem in capsys.readouterr().err
