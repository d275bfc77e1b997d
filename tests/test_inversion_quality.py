"""`faceedit eval inversion` on tiny seeded models: each mode's reconstruction, editability and portrait figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from faceedit.align import AlignedFace
from faceedit.cli import main
from faceedit.editing.boundary import Boundary
from faceedit.editing.directions import save_boundary
from faceedit.errors import InvalidInputError
from faceedit.images import to_pil
from faceedit.inversion import InversionConfig
from faceedit.inversion_quality import evaluate_inversion
from faceedit.synth import load_scorer

from factories import face_landmarks, write_tiny_models

FAST = InversionConfig(optimize_steps=30, optimize_lr=0.05, tune_steps=30, tune_lr=3e-3, perceptual_stop=0.0)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("inv-zoo")
    write_tiny_models(root, n_w_avg=500)
    save_boundary(root / "boundaries" / "age.safetensors", torch.randn(64, generator=torch.Generator().manual_seed(3)),
                  {"attribute": "age", "offset": 0.0, "accuracy": 0.9, "recommended_strength": [-3.0, 3.0]})
    from faceedit.models import load_encoder, load_generator

    return {"root": root, "generator": load_generator(root / "generator.pt").eval(),
            "encoder": load_encoder(root / "encoder.pt").eval()}


def faces(generator, n: int) -> torch.Tensor:
    """Renders the generator cannot quite make: its own, tinted."""
    with torch.no_grad():
        ws = generator.broadcast(generator.mapping(torch.randn(n, generator.style_dim,
                                                               generator=torch.Generator().manual_seed(7))))
        return (generator.synthesis(ws) * 0.8 + 0.1).clamp(-1, 1)


def centre_aligner(photo, size: int) -> AlignedFace:
    """The whole (square) photo as the aligned crop, face-shaped landmarks in it."""
    side = photo.width
    quad = np.array([[0, 0], [0, side], [side, side], [side, 0]], float)
    return AlignedFace(photo.resize((size, size)), face_landmarks(0, 0, side), quad, (side, side))


@pytest.mark.slow
def test_each_mode_reconstructs_better_and_pti_keeps_the_edits(zoo):
    generator, encoder = zoo["generator"], zoo["encoder"]
    boundary = Boundary.load(zoo["root"] / "boundaries" / "age.safetensors")
    portrait = to_pil(faces(generator, 1))[0].resize((48, 48))
    report = evaluate_inversion(generator, encoder, load_scorer(), {"age": boundary}, faces(generator, 2),
                                [portrait], FAST, sample_edits=4, align=centre_aligner)
    enc, opt, pti = (report.by_mode(m) for m in ("encoder", "optimize", "pti"))
    assert pti.pixel_mse < opt.pixel_mse < enc.pixel_mse
    assert pti.portrait_face_mse < enc.portrait_face_mse
    assert pti.delta_mb > 0.1 and enc.delta_mb is None and opt.delta_mb is None
    # The tuned generators' own samples are measured; the base's figure comes from the base's samples.
    assert 0 <= report.base_sample_edit_success <= 1 and 0 <= pti.sample_edit_success <= 1
    assert 0 <= pti.pivot_edit_success <= 1 and 0 <= enc.pivot_edit_success <= 1
    assert report.n_faces == 2 and report.n_portraits == 1
    table = report.table()
    assert "| pti |" in table and f"{pti.pixel_mse:.4f}" in table


def test_bad_arguments_are_named(zoo):
    generator, encoder = zoo["generator"], zoo["encoder"]
    boundary = Boundary.load(zoo["root"] / "boundaries" / "age.safetensors")
    for kwargs, field in (({"faces": torch.zeros(3, 32, 32)}, "faces"), ({"modes": ("pti",)}, "modes")):
        args = {"faces": faces(generator, 1), **kwargs}
        with pytest.raises(InvalidInputError) as info:
            evaluate_inversion(generator, encoder, load_scorer(), {"age": boundary}, config=FAST, sample_edits=0,
                               **args)
        assert info.value.field == field


def test_the_command_prints_the_table_and_writes_the_json(zoo, tmp_path, capsys):
    root, out = zoo["root"], tmp_path / "inversion.json"
    assert main(["eval", "inversion", "--faces", "1", "--steps", "3", "--edit-samples", "0",
                 "--generator", str(root / "generator.pt"), "--encoder", str(root / "encoder.pt"),
                 "--boundaries", str(root / "boundaries"), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [m["mode"] for m in record["modes"]] == ["encoder", "optimize", "pti"]
    assert record["config"]["optimize_steps"] == 3 and record["n_faces"] == 1
    assert "| optimize |" in capsys.readouterr().out
