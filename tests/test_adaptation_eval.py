"""`faceedit eval adaptation` on tiny seeded models: metric definitions, config errors, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from faceedit.adaptation.evaluate import (
    AdaptationEvalConfig,
    attribute_agreement,
    diversity,
    evaluate_adaptation,
)
from faceedit.checkpoints import sha256_file
from faceedit.cli import main
from faceedit.editing.directions import save_boundary
from faceedit.errors import InvalidInputError
from faceedit.models import (
    load_generator,
)
from faceedit.synth import load_scorer

from factories import TINY_CLIP, tiny_clip, write_tiny_models

# Small enough for a test: a few source samples for the CLIP mean, a one-iteration code window.
TINY_SETTINGS = {"clip_mean_samples": 4, "clip_mean_batch": 4, "sliding_window": 1}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """Tiny generator, encoder, CLIP (with card) and one boundary, as files the command reads."""
    root = tmp_path_factory.mktemp("tiny-zoo")
    write_tiny_models(root, n_w_avg=500, noise_strength=0.1)
    normal = torch.randn(64, generator=torch.Generator().manual_seed(3))
    save_boundary(root / "boundaries" / "age.safetensors", normal,
                  {"attribute": "age", "offset": 0.0, "accuracy": 0.9, "recommended_strength": [-3.0, 3.0],
                   "generator_sha256": sha256_file(root / "generator.pt")})
    return {"root": root, "generator": root / "generator.pt", "encoder": root / "encoder.pt",
            "clip": root / "clip.safetensors", "boundaries": root / "boundaries"}


def run_command(zoo: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["eval", "adaptation", "--generator", str(zoo["generator"]), "--encoder", str(zoo["encoder"]),
                 "--clip", str(zoo["clip"]), "--samples", "4", "--edit-samples", "4",
                 "--difa-settings", json.dumps(TINY_SETTINGS), "--docs", str(out), *extra])


# -- metric definitions ----------------------------------------------------------------------------------
def test_a_style_axis_measures_separation_and_progress_along_it():
    from faceedit.adaptation.style_judge import _axis

    rng = torch.Generator().manual_seed(0)
    photos = torch.randn(200, 16, generator=rng) + torch.tensor([8.0] + [0.0] * 15)
    shifted = photos + torch.tensor([0.0, 4.0] + [0.0] * 14)  # the same faces, moved along axis 1
    axis = _axis(photos, shifted)
    assert axis.separation > 2 and abs(float(axis.direction[1])) > 0.9
    assert axis.progress(photos, shifted) == pytest.approx(1.0, abs=1e-5)  # the styled faces themselves
    assert 0.4 < axis.progress(photos, photos + 0.5 * (shifted - photos)) < 0.6  # half way there
    assert axis.progress(photos, photos) == 0.0
    same = _axis(photos, torch.randn(200, 16, generator=rng) + torch.tensor([8.0] + [0.0] * 15))
    assert abs(same.separation) < 0.5  # two draws of one distribution: the CLIP sees no style


def test_the_judges_style_axis_carries_over_to_faces_it_was_not_built_from():
    from faceedit.adaptation.style_judge import clip_views, judge_style
    from faceedit.synth import render_faces

    clip = tiny_clip()
    judgement = judge_style(clip, "sketch", block=1, n=8, seed=4, size=32)
    assert judgement.global_axis.separation > 1 and judgement.token_axis.separation > 1
    photos, _ = render_faces(8, seed=11, size=32, style="photo")  # other faces than the axis's
    sketches, _ = render_faces(8, seed=11, size=32, style="sketch")
    (pg, pt), (sg, st) = clip_views(clip, photos, 1), clip_views(clip, sketches, 1)
    assert judgement.global_axis.progress(pg, sg) > 0.5 and judgement.token_axis.progress(pt, st) > 0.5
    assert judgement.global_axis.progress(pg, pg) == 0.0


def test_diversity_is_the_mean_squared_distance_between_distinct_samples():
    same = torch.nn.functional.normalize(torch.ones(3, 4), dim=1)
    assert diversity(same) == pytest.approx(0.0, abs=1e-6)
    assert diversity(torch.eye(3)) == pytest.approx(2.0)  # orthogonal unit vectors: |a − b|² = 2
    mixed = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert diversity(mixed) == pytest.approx((0 + 2 + 2) * 2 / 6)
    with pytest.raises(InvalidInputError) as err:
        diversity(torch.eye(1))
    assert err.value.field == "samples"


def test_attribute_agreement_is_one_minus_the_mean_change_over_the_range():
    scorer = load_scorer()
    names = scorer.config.attribute_names
    a = {n: torch.tensor([0.2, 0.4]) for n in names}
    b = {n: torch.tensor([0.2, 0.4]) for n in names}
    b["age"] = torch.tensor([0.7, 0.4])  # age spans [0, 1]: a change of 0.5 on one of two samples
    b["yaw"] = torch.tensor([0.6, 0.4])  # yaw spans [-1, 1]: a change of 0.4 is 0.2 of the range
    agreement = attribute_agreement(a, b, scorer, ("age", "yaw", "smile"))
    assert agreement == pytest.approx({"age": 1 - 0.25, "yaw": 1 - 0.1, "smile": 1.0})


def test_config_errors_name_the_field():
    for kwargs, field in [({"styles": ("photo",)}, "styles"), ({"styles": ()}, "styles"),
                          ({"samples": 1}, "samples"), ({"truncation": 0.0}, "truncation"),
                          ({"difa_settings": {"iterations": 5}}, "difa_settings.iterations"),
                          ({"difa_settings": {"lambda_globl": 1.0}}, "lambda_globl")]:
        with pytest.raises(InvalidInputError) as err:
            AdaptationEvalConfig(**kwargs)
        assert err.value.field == field


@pytest.mark.slow
def test_an_adaptation_that_changes_nothing_scores_as_perfectly_faithful(zoo):
    from faceedit.adaptation.clip import ClipConfig, load_clip
    from faceedit.models import load_encoder

    base = load_generator(zoo["generator"])
    clip = load_clip(ClipConfig(config_path=str(zoo["root"] / "clip.json"), weights=str(zoo["clip"])))
    config = AdaptationEvalConfig(styles=("sketch",), iterations=1, samples=6,
                                  difa_settings={**TINY_SETTINGS, "lr": 1e-12})
    report, _ = evaluate_adaptation(base, load_encoder(zoo["encoder"]), [clip], load_scorer(), config,
                                    log=lambda line: None)
    (result,) = report.results
    assert result.faithfulness == pytest.approx(1.0, abs=1e-4)  # G_B = G_A, up to a 1e-12 step
    assert result.diversity == pytest.approx(report.base_diversity, abs=1e-4)
    assert result.style_rate == pytest.approx(result.base_style_rate)
    assert report.random_pair_faithfulness < result.faithfulness  # different faces agree less
    assert result.edit_success is None and "no boundaries given" in report.notes[0]


# -- the command --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_adaptation_end_to_end_writes_the_table_json_and_grid(zoo, tmp_path, capsys):
    out = tmp_path / "docs"
    assert run_command(zoo, out, "--boundaries", str(zoo["boundaries"]), "--styles", "sketch,comic",
                       "--iterations", "2") == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "adaptation.json").read_text())
    assert [r["style"] for r in record["results"]] == ["sketch", "comic"]
    for row in record["results"]:
        assert row["iterations"] == 2 and row["seconds"] > 0
        assert 0.0 <= row["style_rate"] <= 1.0 and 0.0 < row["faithfulness"] <= 1.0
        assert set(row["edit_success_by_attribute"]) == {"age"} and row["edit_success"] is not None
        assert f"| {row['style']} | {row['style_rate']:.2f} ({row['base_style_rate']:.2f}) |" in printed
        (judge,) = row["judge"]  # one CLIP: what it sees of the style, printed as a row of the second table
        assert -1.0 <= judge["alignment"] <= 1.0
        assert len(judge["separation_by_block"]) == TINY_CLIP["vision_cfg"]["layers"]  # one per block
        assert sum(row["read_as"].values()) == pytest.approx(1.0)
        assert judge["closest_style"] in {"sketch", "comic", "watercolor"} - {row["style"]}
        assert f"| {row['style']} | {judge['clip']} | {judge['separation_global']:.2f} |" in printed
    assert record["base_edit_success"] is not None and record["notes"] == []
    assert record["difa_config"]["iterations"] == 2 and record["difa_config"]["clip_mean_samples"] == 4
    assert record["command"].startswith("faceedit eval adaptation") and "--iterations 2" in record["command"]
    assert "--styles sketch,comic" in record["command"]  # every effective option, to rerun it as it was
    # Grid: a base row and one row per style, 1 + 4 columns (4 samples), 32 px cells enlarged 4x, 2 px padding.
    with Image.open(out / "before_after.png") as sheet:
        assert sheet.size == (5 * 130 + 2, 3 * 130 + 2)
    readme = (out / "README.md").read_text()
    assert "| sketch |" in readme and "before_after.png" in readme


@pytest.mark.slow
def test_without_boundaries_the_edit_column_is_skipped_with_a_note(zoo, tmp_path, monkeypatch, capsys):
    from faceedit.synth.scorer import default_scorer_path

    scorer = default_scorer_path()  # the shipped one, before the zoo moves
    monkeypatch.setenv("FACEEDIT_ZOO_DIR", str(tmp_path / "empty-zoo"))  # no zoo boundaries either
    out = tmp_path / "docs"
    assert run_command(zoo, out, "--styles", "watercolor", "--iterations", "1", "--scorer", str(scorer)) == 0
    record = json.loads((out / "adaptation.json").read_text())
    assert record["results"][0]["edit_success"] is None and record["base_edit_success"] is None
    assert "faceedit train boundary" in record["notes"][0]
    assert "| watercolor |" in capsys.readouterr().out


def test_bad_arguments_fail_with_the_flag_named(zoo, tmp_path, capsys):
    assert run_command(zoo, tmp_path, "--styles", "oil") == 2
    assert "styles:" in capsys.readouterr().err
    assert main(["eval", "adaptation", "--generator", str(tmp_path / "missing.pt")]) == 2
    assert "--generator:" in capsys.readouterr().err
    assert run_command(zoo, tmp_path, "--difa-settings", "[1]") == 2
    assert "--difa-settings:" in capsys.readouterr().err
