"""`faceedit invert PHOTO` and `faceedit edit PHOTO`: a photo edited in process with the demo zoo; the full
photo comes back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceedit.cli import main

HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models")
pytestmark = pytest.mark.slow
# The README's strip script: its portrait is the photo these tests edit.
_spec = importlib.util.spec_from_file_location("photo_edit", Path(__file__).parents[1] / "examples" / "photo_edit.py")
photo_edit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(photo_edit)


@pytest.fixture(scope="module")
def portrait(tmp_path_factory):
    """A zoo-style face (one dlib finds) on a larger, plain background: a "photo" with room around the face."""
    return photo_edit.portrait(tmp_path_factory.mktemp("photo") / "portrait.png")


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


@pytest.mark.skipif(not HAVE_DLIB, reason="alignment needs dlib and its landmark model (the align extra)")
def test_readme_strip_script_puts_the_photo_and_both_edits_side_by_side(tmp_path, capsys):
    out = tmp_path / "strip.png"
    photo_edit.main(["--out", str(out), "--pti-steps", "3"])
    strip = np.asarray(Image.open(out)).astype(int)
    pad, width = 2, 560
    assert strip.shape == (460 + 2 * pad, 3 * (width + pad) + pad, 3)
    panels = [strip[pad:pad + 460, pad + k * (width + pad):pad + k * (width + pad) + width] for k in range(3)]
    for edited in panels[1:]:
        changed = np.abs(edited - panels[0]).sum(axis=-1) > 0
        assert changed[150:300, 230:450].mean() > 0.5 and not changed[:, :110].any()  # the face, not the backdrop
    assert "wrote" in capsys.readouterr().out


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
