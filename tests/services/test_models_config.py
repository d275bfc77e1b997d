"""The one model configuration (services/common/models.py) and the one settings reader (services/common/settings.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from faceedit.errors import InvalidInputError
from faceedit.zoo import text_clip_spec
from services.common.models import load_model_config
from services.common.settings import read_settings


def write(tmp_path, text: str, files=("g.pt", "e.pt", "clip.safetensors")):
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "models.yaml").write_text(text)
    return tmp_path / "models.yaml"


def test_the_demo_zoo_is_the_default_file():
    models = load_model_config(env={})
    assert models.default_generator == "demo" and models.encoder_family == "demo"
    assert models.generators["demo"].checkpoint.name == "generator.pt" and models.encoder().name == "encoder.pt"
    assert models.boundary_specs("demo")[0].path.endswith("boundaries") and models.clips[0].endswith("clip.safetensors")
    # The zoo's text edits read CLIPs of their own, two read as one.
    names = [Path(p).name for p in models.text_clip.split(",")]
    assert names == ["text_clip.safetensors", "text_clip_long.safetensors"]
    assert names == [Path(p).name for p in text_clip_spec().split(",")]  # what `faceedit eval text` reads


def test_the_demo_zoos_relevance_is_the_one_the_worker_would_compute():
    """`make demo` has text edits at once only if the shipped relevance was made for the zoo's generator, its
    text CLIP and the worker's settings (the worker checks the key it records and otherwise ignores it)."""
    from faceedit.adaptation.clip import load_text_clip
    from faceedit.editing.text import RelevanceConfig, recorded_key, relevance_key
    from faceedit.models import load_generator
    from services.worker.config import WorkerConfig

    models = load_model_config(env={})
    generator = load_generator(models.generators["demo"].checkpoint)
    clip = load_text_clip(models.text_clip)
    expected = relevance_key(generator, clip, RelevanceConfig(samples=WorkerConfig().relevance_samples))
    assert recorded_key(models.families["demo"].relevance.read_bytes()) == expected


def test_paths_are_relative_to_the_file_and_the_env_names_the_file(tmp_path):
    path = write(tmp_path, "generators:\n  ffhq: {checkpoint: g.pt}\nfamilies:\n  ffhq: {encoder: e.pt}\n"
                           "clips: ['ViT-B-32=clip.safetensors']\n")
    models = load_model_config(env={"FACEEDIT_MODELS": str(path)})
    assert models.default_generator == "ffhq"  # the only one
    assert models.generators["ffhq"].family == "ffhq" and models.generators["ffhq"].checkpoint == tmp_path / "g.pt"
    assert models.encoder() == tmp_path / "e.pt"
    assert models.clip_specs() == f"ViT-B-32={tmp_path / 'clip.safetensors'}"
    assert models.text_clip == models.clips[0]  # text edits read DIFA's first CLIP unless told otherwise


def test_text_edits_can_read_a_clip_of_their_own(tmp_path):
    path = write(tmp_path, "generators: {a: g.pt}\nclips: [clip.safetensors]\ntext_clip: ViT-B-32=e.pt\n")
    models = load_model_config(path)
    assert models.clips == (str(tmp_path / "clip.safetensors"),) and models.text_clip == f"ViT-B-32={tmp_path / 'e.pt'}"
    assert load_model_config(write(tmp_path, "generators: {a: g.pt}\n")).text_clip is None
    several = load_model_config(write(tmp_path, "generators: {a: g.pt}\n"
                                                "text_clip: [e.pt, ViT-B-32=clip.safetensors]\n"))
    assert several.text_clip == f"{tmp_path / 'e.pt'},ViT-B-32={tmp_path / 'clip.safetensors'}"  # one ensemble spec


@pytest.mark.parametrize("text, field, problem", [
    ("generators: {a: {checkpoint: missing.pt}}\n", "generators.a.checkpoint", "does not exist"),
    ("generators: {a: g.pt, b: g.pt}\n", "default_generator", "several generators"),
    ("generators: {a: g.pt}\ndefault_generator: b\n", "default_generator", "not among"),
    ("generators: {a: g.pt}\nbogus: 1\n", "bogus", "unknown key"),
    ("generators: {a: {checkpoint: g.pt, size: 1024}}\n", "generators.a.size", "unknown key"),
    ("generators: {'a b': g.pt}\n", "generators.a b", "ids are"),
    ("generators: {a: g.pt}\nfamilies: {other: {encoder: e.pt}}\n", "families.other", "no generator"),
    ("generators: {}\n", "generators", "names no generator"),
    ("generators: {a: g.pt}\nclips: [missing.pt]\n", "clips[0]", "does not exist"),
    ("generators: {a: g.pt}\ntext_clip: missing.pt\n", "text_clip", "does not exist"),
    ("generators: {a: g.pt}\ntext_clip: []\n", "text_clip", "empty list"),
    ("generators: {a: g.pt}\ntext_clip: [g.pt, missing.pt]\n", "text_clip[1]", "does not exist"),
    ("generators: {a: g.pt}\ntext_clip: {x: 1}\n", "text_clip", "expected '[architecture=]weights'"),
])
def test_a_bad_file_names_the_key_and_the_file(tmp_path, text, field, problem):
    with pytest.raises(InvalidInputError) as info:
        load_model_config(write(tmp_path, text))
    assert info.value.field == field and problem in info.value.problem and "models.yaml" in info.value.problem


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_model_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("generators: [unclosed\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_model_config(tmp_path / "bad.yaml")


def test_boundary_sets_are_parsed_with_their_position(tmp_path):
    path = write(tmp_path, "generators: {a: g.pt}\nfamilies:\n  a:\n    boundaries:\n"
                           "      - {path: dirs, include: ['*_w_boundary.npy']}\n      - {path: dirs, colour: red}\n")
    models = load_model_config(path)
    with pytest.raises(InvalidInputError) as info:
        models.boundary_specs("a")
    assert info.value.field.startswith("families.a.boundaries[1]")


@dataclass(frozen=True)
class _Settings:
    port: int = 1
    ratio: float = 0.5
    name: str = "x"
    flag: bool = False
    maybe: bool | None = None
    pairs: Mapping[str, str] = field(default_factory=dict)


def test_one_reader_for_every_service_setting():
    got = read_settings(_Settings, {"FACEEDIT_PORT": "7", "FACEEDIT_FLAG": "yes", "FACEEDIT_MAYBE": "false",
                                    "FACEEDIT_PAIRS": "a=1, b=2", "FACEEDIT_NAME": ""},
                        section={"ratio": 0.25, "name": "from-yaml"})
    assert got == _Settings(7, 0.25, "from-yaml", True, False, {"a": "1", "b": "2"})
    assert read_settings(_Settings, {"FACEEDIT_RATIO": "0.75"}, section={"ratio": 0.25}).ratio == 0.75  # env wins
    for env, name in (({"FACEEDIT_PORT": "http"}, "FACEEDIT_PORT"), ({"FACEEDIT_FLAG": "maybe"}, "FACEEDIT_FLAG"),
                      ({"FACEEDIT_PAIRS": "novalue"}, "FACEEDIT_PAIRS")):
        with pytest.raises(InvalidInputError) as info:
            read_settings(_Settings, env)
        assert info.value.field == name


def test_the_documented_official_example_parses_once_its_files_exist(tmp_path):
    import shutil

    from faceedit.editing import BoundarySetSpec

    example = Path(__file__).resolve().parents[2] / "docs" / "models.example.yaml"
    shutil.copy(example, tmp_path / "models.yaml")
    for name in ("stylegan2-ffhq-config-f.pt", "e4e_ffhq_encode.pt", "clip/ViT-B-32.safetensors"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "interfacegan").mkdir()
    (tmp_path / "e4e").mkdir()
    models = load_model_config(tmp_path / "models.yaml")
    assert models.default_generator == "ffhq" and models.encoder() == tmp_path / "e4e_ffhq_encode.pt"
    interfacegan, e4e = models.boundary_specs("ffhq")
    assert (isinstance(e4e, BoundarySetSpec) and e4e.names["pose.pt"] == "pose_e4e"
            and e4e.components["ganspace_pc1"] == 1)
    assert interfacegan.path == str(tmp_path / "interfacegan")
