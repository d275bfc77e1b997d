"""Edit-quality measurement, edit pictures, the zoo's boundary listing and the two editing commands."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from faceedit import zoo
from faceedit.checkpoints import sha256_file
from faceedit.cli import CommandGroups, main
from faceedit.cli.editing import ZOO_COMMANDS, register
from faceedit.editing import Boundary, Edit
from faceedit.editing.media import edit_animation, edit_strip, strip_strengths
from faceedit.editing.quality import evaluate_edits
from faceedit.errors import InvalidInputError, NotFoundError
from faceedit.images import to_pil
from faceedit.models.stylegan2 import Generator, GeneratorConfig
from faceedit.synth.scorer import Scorer, ScorerConfig, default_scorer_path, load_scorer, save_scorer

D = 64


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(size=32, style_dim=D, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})).eval()


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    torch.manual_seed(1)
    return Scorer(ScorerConfig(image_size=32, stem_width=4, widths=(8, 8), feature_dim=16)).eval()


def boundary(seed: int, strength: float = 2.0) -> Boundary:
    n = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return Boundary(normal=n / n.norm(), offset=0.0, accuracy=0.9, remaining_accuracy=None,
                    metadata={"recommended_strength": [-strength, strength]})


def test_evaluate_edits_measures_the_target_and_conditions_on_the_most_entangled(generator, scorer) -> None:
    boundaries = {"smile": boundary(1), "age": boundary(2)}
    report = evaluate_edits(generator, scorer, boundaries, n=8, fractions=(-1.0, 1.0), margin=0.01, batch_size=8,
                            seed=5)
    assert len(report.measurements) == 8  # 2 attributes x 2 strengths x (plain, conditioned)
    assert report.most_entangled == {"smile": "age", "age": "smile"}
    for m in report.measurements:
        assert set(m.entanglement) == set(scorer.config.attribute_names) - {m.attribute}
        assert m.conditioned_on in (None, report.most_entangled[m.attribute])

    # Recompute one cell independently: smile at +2 on the same seeded samples.
    z = torch.randn(8, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ws = generator.broadcast(generator.mapping(z))
        before = scorer.score(generator.synthesis(ws))["smile"]
        edited = generator.synthesis(ws + 2.0 * boundaries["smile"].normal)
        after = scorer.score(edited)["smile"]
        drift = scorer.perceptual_distance(generator.synthesis(ws), edited).mean()
    cell = report.find("smile", 2.0, conditioned=False)
    assert cell.target_change == pytest.approx(float((after - before).mean()), abs=1e-5)
    room = before <= 1.0 - 0.01
    assert cell.n_eligible == int(room.sum())
    assert cell.success_rate == pytest.approx(float(((after - before >= 0.01) & room).sum()) / int(room.sum()))
    assert cell.drift == pytest.approx(float(drift), abs=1e-4)
    table = report.table()
    assert table.count("\n| smile |") == 2 and "success (cond.)" in table

    # Conditioning: the conditioned edit's effect on the condition is compared with the plain one.
    effect = report.conditioning_effect()["smile"]
    plain = [abs(report.find("smile", s, conditioned=False).entanglement["age"]) for s in (-2.0, 2.0)]
    cond = [abs(report.find("smile", s, conditioned=True).entanglement["age"]) for s in (-2.0, 2.0)]
    assert effect == {"condition": "age", "plain": pytest.approx(sum(plain) / 2),
                      "conditioned": pytest.approx(sum(cond) / 2), "lowered": sum(cond) < sum(plain)}
    assert "lowered its mean |Δ| for" in table
    # The matrix: one row per edited attribute, a column per scorer attribute, the target on the diagonal.
    matrix = [line for line in table.splitlines() if line.startswith("| smile +2.00 |")]
    assert len(matrix) == 1 and matrix[0].count("|") == len(scorer.config.attribute_names) + 2
    assert f"**{cell.target_change:+.3f}**" in matrix[0]
    json.loads(json.dumps(report.to_dict(), allow_nan=False))  # strict JSON for the model card


def test_evaluate_edits_rejects_unknown_attributes_and_bad_margins(generator, scorer) -> None:
    with pytest.raises(NotFoundError, match="charisma"):
        evaluate_edits(generator, scorer, {"charisma": boundary(1)}, n=4)
    foreign = Boundary(normal=torch.ones(D // 2) / (D // 2) ** 0.5, offset=0.0, accuracy=1.0, remaining_accuracy=None,
                       metadata={"recommended_strength": [-1.0, 1.0]})
    cases = [({"margin": 2.0}, {"smile": boundary(1)}, "margin"),
             ({"fractions": (50.0,)}, {"smile": boundary(1)}, "fractions"),  # absurd strength
             ({"fractions": (float("nan"),)}, {"smile": boundary(1)}, "fractions"),
             ({"n": 0}, {"smile": boundary(1)}, "n"),
             ({"truncation": 1.5}, {"smile": boundary(1)}, "truncation"),
             ({}, {"smile": foreign}, "boundaries[smile]"),  # another latent space
             ({}, {"smile": Boundary(boundary(1).normal, 0.0, 1.0, None)}, "recommended_strength")]
    for kwargs, boundaries, field in cases:
        with pytest.raises(InvalidInputError) as err:
            evaluate_edits(generator, scorer, boundaries, **{"n": 4, **kwargs})
        assert err.value.field == field


def test_strip_and_animation(generator, tmp_path) -> None:
    ws = generator.broadcast(generator.mapping(torch.randn(2, D, generator=torch.Generator().manual_seed(0))))
    strengths = strip_strengths(-3.0, 1.5, per_side=2)
    assert strengths == [-3.0, -1.5, 0.0, 0.75, 1.5]
    strip = edit_strip(generator, ws.detach(), Edit(boundary(4).normal, 1.0), strengths, scale=1)
    assert strip.size == (5 * 34 + 2, 2 * 34 + 2)  # 32 px tiles with 2 px padding
    middle = strip.crop((2 + 2 * 34, 2, 2 + 2 * 34 + 32, 34))  # row 0, column 2: strength 0
    unedited = np.asarray(to_pil(generator.synthesis(ws.detach()))[0], dtype=np.int16)
    assert np.abs(np.asarray(middle, dtype=np.int16) - unedited).max() <= 1  # rounding of batched float maths
    path = edit_animation(generator, ws.detach(), [(Edit(boundary(4).normal, 1.0), -3.0, 3.0)],
                          tmp_path / "a.gif", frames_per_sweep=4, scale=1)
    with Image.open(path) as gif:
        assert gif.n_frames >= 4  # identical consecutive frames may be merged by the encoder
    with pytest.raises(InvalidInputError):
        edit_animation(generator, ws.detach(), [], tmp_path / "a.mp4")


def test_zoo_boundaries_lists_the_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path))
    with pytest.raises(NotFoundError):
        zoo.boundaries()
    boundary(5).save(tmp_path / "boundaries" / "smile.safetensors", attribute="smile")
    assert zoo.boundaries() == {"smile": tmp_path / "boundaries" / "smile.safetensors"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceedit")
    top = parser.add_subparsers(dest="command", required=True)
    groups = CommandGroups(top, top.add_parser("train").add_subparsers(dest="what", required=True),
                           top.add_parser("eval").add_subparsers(dest="what", required=True))
    register(groups)
    return parser


@pytest.fixture(scope="module")
def trained(generator, scorer, tmp_path_factory):
    """A generator and scorer on disk and two boundaries trained for them by `faceedit train boundary`."""
    root = tmp_path_factory.mktemp("zoo")
    gen_path, scorer_path = root / "g.pt", root / "scorer.safetensors"
    torch.save({"g_ema": generator.state_dict(), "latent_avg": generator.w_avg.clone()}, gen_path)
    save_scorer(scorer, scorer_path)
    common = ["--generator", str(gen_path), "--scorer", str(scorer_path)]
    args = _parser().parse_args(["train", "boundary", *common, "--attributes", "smile,yaw", "--n", "80",
                                 "--ratio", "0.2", "--batch-size", "40", "--out-dir", str(root / "boundaries")])
    assert args.run(args) == 0
    return root, common


def test_train_boundary_command(trained, capsys) -> None:
    root, common = trained
    meta = json.loads((root / "boundaries" / "yaw.json").read_text())
    assert meta["attribute"] == "yaw" and meta["space"] == "W" and meta["n_samples"] == 80
    assert len(meta["generator_sha256"]) == 64 and 0.0 <= meta["validation_accuracy"] <= 1.0
    assert sorted(p.name for p in (root / "boundaries").glob("*.safetensors")) == ["smile.safetensors",
                                                                                  "yaw.safetensors"]
    args = _parser().parse_args(["train", "boundary", *common, "--attributes", "charisma"])
    with pytest.raises(NotFoundError, match="charisma"):
        args.run(args)


@pytest.mark.slow
def test_eval_edits_command(trained, tmp_path, capsys) -> None:
    root, common = trained
    capsys.readouterr()  # drop the fixture's training output
    args = _parser().parse_args(["eval", "edits", *common, "--boundaries", str(root / "boundaries"), "--n", "8",
                                 "--docs", str(tmp_path), "--json", str(tmp_path / "q.json"), "--strip-rows", "2",
                                 "--frames", "3", "--record"])
    assert args.run(args) == 0
    assert capsys.readouterr().out.count("\n| yaw |") == 2  # one table row per strength
    assert {p.name for p in tmp_path.iterdir()} == {"smile.png", "yaw.png", "animation.gif", "q.json", "README.md"}
    assert len(json.loads((tmp_path / "q.json").read_text())["measurements"]) == 8
    recorded = json.loads((root / "boundaries" / "smile.json").read_text())["edit_quality"]["measurements"]
    assert {m["attribute"] for m in recorded} == {"smile"} and len(recorded) == 4
    Boundary.load(root / "boundaries" / "smile.safetensors")  # the weights' sha256 still checks out


def test_eval_edits_refuses_boundaries_of_another_generator(trained, scorer, tmp_path) -> None:
    root, common = trained
    other = Generator(GeneratorConfig(size=32, style_dim=D, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16}))
    torch.save({"g_ema": other.state_dict()}, tmp_path / "other.pt")
    args = _parser().parse_args(["eval", "edits", "--generator", str(tmp_path / "other.pt"), "--scorer",
                                 common[-1], "--boundaries", str(root / "boundaries"), "--n", "4"])
    with pytest.raises(InvalidInputError, match="trained for generator"):
        args.run(args)


def test_bad_command_arguments_fail_before_any_sampling(tmp_path, capsys) -> None:
    missing = str(tmp_path / "no-generator.pt")  # never opened: the arguments are checked first
    for argv, field in [(["--ratio", "0"], "ratio"), (["--split", "1.5"], "split"), (["--n", "3"], "--n"),
                        (["--n", "100", "--ratio", "0.01"], "ratio")]:
        assert main(["train", "boundary", "--generator", missing, *argv]) == 2
        assert capsys.readouterr().err.startswith(f"error: {field}: ")
    assert main(["eval", "edits", "--generator", missing, "--frames", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --frames: ")


@pytest.mark.slow
def test_zoo_flow_end_to_end_with_the_shipped_scorer(generator, tmp_path, monkeypatch, capsys) -> None:
    """The documented sequence (`train boundary` then `eval edits`) on a tiny generator, default paths."""
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)
    shipped = default_scorer_path()
    if not shipped.is_file():
        pytest.skip(f"the shipped scorer is missing at {shipped}")
    zoo_root = tmp_path / "zoo"
    zoo_root.mkdir()
    torch.save({"g_ema": generator.state_dict(), "latent_avg": generator.w_avg.clone()}, zoo_root / "generator.pt")
    for name in (shipped.name, shipped.with_suffix(".json").name):  # linked, not copied
        (zoo_root / name).symlink_to(shipped.parent / name)
    monkeypatch.setenv(zoo.ZOO_ENV, str(zoo_root))
    names = list(load_scorer().config.attribute_names)

    assert main(["train", "boundary", "--n", "240", "--ratio", "0.1", "--threads", "1"]) == 0
    files = zoo.boundaries()
    assert sorted(files) == sorted(names)  # one boundary per attribute the scorer knows
    generator_sha = sha256_file(zoo_root / "generator.pt")
    accuracies = []
    for name, path in files.items():
        meta = json.loads(path.with_suffix(".json").read_text())
        assert (meta["attribute"], meta["space"], meta["generator_sha256"]) == (name, "W", generator_sha)
        assert meta["scorer_sha256"] == sha256_file(shipped) and meta["n_samples"] == 240
        assert 0 <= meta["remaining_accuracy"] <= 1 and meta["chosen_per_class"] == 24
        low, high = meta["recommended_strength"]
        assert low < 0 < high
        scores = meta["score_distribution"]
        assert scores["min"] <= scores["quantiles"]["0.5"] <= scores["max"]
        accuracies.append(meta["validation_accuracy"])
    assert sum(accuracies) / len(accuracies) > 0.6  # better than chance on 8 + 8 held-out extremes each
    capsys.readouterr()

    docs, card = tmp_path / "docs", tmp_path / "edit_quality.json"
    assert main(["eval", "edits", "--n", "12", "--record", "--json", str(card), "--docs", str(docs),
                 "--strip-rows", "2", "--frames", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert all(out.count(f"\n| {name} |") == 2 for name in names)
    measured = json.loads(card.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert measured["generator_sha256"] == generator_sha
    assert len(measured["measurements"]) == len(names) * 2 * 2  # x strengths x (plain, conditioned)
    assert set(measured["conditioning_effect"]) == set(names)
    for m in measured["measurements"]:
        assert m["success_rate"] is None or 0 <= m["success_rate"] <= 1
        assert 0 <= m["drift"] <= 4 and len(m["entanglement"]) == len(names) - 1
    assert "edit_quality" in json.loads(files["age"].with_suffix(".json").read_text())

    assert {p.name for p in docs.iterdir()} == {f"{n}.png" for n in names} | {"animation.gif", "README.md"}
    with Image.open(docs / "age.png") as strip:  # 7 strengths x 2 faces of 32 px, 2 px padding, doubled
        assert strip.size == ((7 * 34 + 2) * 2, (2 * 34 + 2) * 2)
        pixels = np.asarray(strip.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 5  # faces, not a blank canvas
    with Image.open(docs / "animation.gif") as gif:
        assert gif.size == ((2 * 34 + 2) * 2, (34 + 2) * 2) and gif.n_frames > 3
    readme = (docs / "README.md").read_text()
    assert ZOO_COMMANDS in readme and "| age |" in readme and "age, smile, yaw, glasses" in readme
