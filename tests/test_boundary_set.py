"""Boundary sets: upstream InterfaceGAN/e4e/GANSpace folders, the demo zoo's boundaries, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from faceedit.editing import (
    BoundarySet,
    BoundarySetError,
    BoundarySetSpec,
    attribute_name,
    load_boundary_set,
    save_boundary,
)
from faceedit.errors import CheckpointFormatError, InvalidInputError, NotFoundError
from faceedit.models.stylegan2 import GeneratorConfig

from reference import REFERENCE_DIR, reference_mark

REPO = Path(__file__).resolve().parents[1]
DIRECTIONS = REFERENCE_DIR / "directions"
IGAN = DIRECTIONS / "interfacegan_stylegan1_ffhq"
E4E = DIRECTIONS / "e4e_stylegan2_ffhq"
DEMO = REPO / "model_store" / "demo"
needs_reference = reference_mark(DIRECTIONS)
needs_demo = pytest.mark.skipif(not (DEMO / "boundaries").is_dir(), reason="demo zoo not found")

IGAN_ATTRIBUTES = ["age", "eyeglasses", "gender", "pose", "smile"]
IGAN_VARIANTS = {("age", ("eyeglasses",)), ("age", ("gender",)), ("eyeglasses", ("age",)),
                 ("eyeglasses", ("gender",))}


def load(path: Path, n_latent: int = 18, style_dim: int = 512, **spec) -> BoundarySet:
    return load_boundary_set([BoundarySetSpec(str(path), **spec)], n_latent, style_dim)


def refusals(path: Path, n_latent: int = 18, style_dim: int = 512, **spec) -> dict[str, str]:
    """{file name: reason} of a load that must fail."""
    with pytest.raises(BoundarySetError) as caught:
        load(path, n_latent, style_dim, **spec)
    error = caught.value
    # Typed, and no numpy/torch exception chained onto it.
    assert isinstance(error, CheckpointFormatError) and error.__cause__ is None and error.__context__ is None
    for file, reason in error.refused:
        assert f"{file}: {reason}" in str(error)
    return {Path(file.split("#")[0]).name: reason for file, reason in error.refused}


def unit_rows(array: np.ndarray) -> np.ndarray:
    return array / np.linalg.norm(array, axis=-1, keepdims=True)


@pytest.mark.parametrize("file_name, expected", [
    ("stylegan_ffhq_age_w_boundary.npy", ("age", "w", ())),
    ("stylegan_ffhq_age_boundary.npy", ("age", "z", ())),
    ("stylegan_ffhq_age_c_eyeglasses_boundary.npy", ("age", "z", ("eyeglasses",))),
    ("pggan_celebahq_gender_c_age_eyeglasses_boundary.npy", ("gender", "z", ("age", "eyeglasses"))),
    ("stylegan2_ffhq_smile_wp_boundary.npy", ("smile", "w", ())),
    ("age.pt", ("age", None, ())),
    ("smile.safetensors", ("smile", None, ())),
    ("eyes_open.safetensors", ("eyes_open", None, ())),
    ("age_boundary.pt", ("age", None, ())),  # only InterfaceGAN's .npy boundaries are Z by default
])
def test_attribute_name(file_name: str, expected: tuple) -> None:
    assert attribute_name(file_name) == expected


# -- upstream folders ----------------------------------------------------------------------------
@needs_reference
def test_interfacegan_folder_gives_w_z_and_conditional_variants() -> None:
    boundaries = load(IGAN)
    assert boundaries.names() == IGAN_ATTRIBUTES
    assert len(boundaries) == 14
    for name in IGAN_ATTRIBUTES:
        assert boundaries.spaces(name) == ("w", "z")
        assert boundaries.get(name).source.endswith(f"stylegan_ffhq_{name}_w_boundary.npy")  # W preferred
        assert boundaries.get(name, space="z").source.endswith(f"stylegan_ffhq_{name}_boundary.npy")
    assert {(e.name, e.conditioned_on) for e in boundaries if e.conditioned_on} == IGAN_VARIANTS
    for entry in boundaries:
        expected = unit_rows(np.load(entry.source))[0]  # [1, 512] float64 → [512]
        assert entry.direction.dtype == torch.float32 and tuple(entry.direction.shape) == (512,)
        np.testing.assert_allclose(entry.direction.numpy(), expected, atol=1e-6)
        assert entry.format == "interfacegan" and entry.accuracy is None and entry.recommended == (-3.0, 3.0)
        assert entry.space == ("w" if "_w_" in Path(entry.source).name else "z")
    assert all(e.space == "z" for e in boundaries if e.conditioned_on)


@needs_reference
def test_lookup_of_conditional_variants() -> None:
    boundaries = load(IGAN)
    age_c_gender = boundaries.get("age", conditioned_on=["gender"])  # only exists in Z: found there
    assert age_c_gender.space == "z" and age_c_gender.source.endswith("age_c_gender_boundary.npy")
    assert boundaries.variant("age", {"eyeglasses"}).source.endswith("age_c_eyeglasses_boundary.npy")
    assert boundaries.variant("age", ["eyeglasses", "gender"]) is None  # not precomputed: project at run time
    assert boundaries.variant("smile", ["age"]) is None
    assert boundaries.variant("age", [], space="z") is None
    assert [v.conditioned_on for v in boundaries.variants("eyeglasses")] == [("age",), ("gender",)]
    assert boundaries.variants("age", space="w") == []
    with pytest.raises(NotFoundError, match="age"):
        boundaries.get("age", space="w", conditioned_on=["gender"])
    with pytest.raises(NotFoundError, match="known"):
        boundaries.get("beard")
    rows = {(r["name"], r["space"], tuple(r["conditioned_on"])): r for r in boundaries.describe()}
    assert rows[("age", "z", ())]["variants"] == [["eyeglasses"], ["gender"]]
    assert rows[("age", "w", ())]["variants"] == []
    assert rows[("pose", "w", ())]["accuracy"] is None and rows[("pose", "w", ())]["recommended"] == [-3.0, 3.0]
    json.dumps(boundaries.describe())  # a service can send it as is


@needs_reference
def test_e4e_folder_with_ganspace_components() -> None:
    boundaries = load(E4E, components={"yaw": 0, "smile_pca": 46})
    assert boundaries.names() == ["age", "pose", "smile", "smile_pca", "yaw"]
    assert {e.format for e in boundaries} == {"e4e", "ganspace"} and {e.space for e in boundaries} == {"w"}
    assert tuple(boundaries.get("pose").direction.shape) == (18, 512)
    assert boundaries.get("pose").layers is None  # all 18 rows move
    np.testing.assert_allclose(boundaries.get("age").direction.numpy(),
                               unit_rows(torch.load(E4E / "age.pt", map_location="cpu").numpy())[0], atol=1e-6)
    pca = torch.load(E4E / "ganspace_ffhq_pca.pt", map_location="cpu", weights_only=True)
    yaw = boundaries.get("yaw")
    assert yaw.format == "ganspace" and yaw.source.endswith("ganspace_ffhq_pca.pt#component=0")
    np.testing.assert_allclose(yaw.direction.numpy(), pca["comp"][0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(boundaries.get("smile_pca").direction.numpy(), pca["comp"][46, 0].numpy(), atol=1e-6)
    assert yaw.component == 0 and yaw.basis is not None and yaw.metadata["std"] == pytest.approx(float(pca["std"][0]))


@needs_reference
def test_e4e_folder_refusals_name_the_files() -> None:
    assert set(refusals(E4E)) == {"ganspace_ffhq_pca.pt"}
    assert "components: {name: index}" in refusals(E4E)["ganspace_ffhq_pca.pt"]
    refused = refusals(E4E, n_latent=10, components={"yaw": 0})
    assert set(refused) == {"pose.pt"}
    assert "[18, 512] does not fit" in refused["pose.pt"] and "n_latent 10" in refused["pose.pt"]
    assert "must be in [0, 79]" in refusals(E4E, components={"yaw": 80})["ganspace_ffhq_pca.pt"]
    # Z is the mapping's input: a per-layer direction cannot live there.
    assert "Z-space direction must be [512]" in refusals(E4E, include=("pose.pt",), space="z")["pose.pt"]


@needs_reference
def test_include_globs_and_single_files() -> None:
    boundaries = load(E4E, include=("age.pt", "smi*"))
    assert boundaries.names() == ["age", "smile"]  # the PCA file is not selected, so not refused
    assert load(IGAN, include=("*_w_boundary.npy",)).spaces("age") == ("w",)
    assert "'beard*' matches no direction file" in refusals(E4E, include=("age.pt", "beard*"))[E4E.name]
    single = load(IGAN / "stylegan_ffhq_smile_boundary.npy")
    assert single.names() == ["smile"] and single.get("smile").space == "z"
    two = load_boundary_set([BoundarySetSpec(str(E4E / "age.pt")), BoundarySetSpec(str(IGAN), include=("*smile*",))],
                            18, 512)
    assert two.names() == ["age", "smile"] and two.spaces("smile") == ("w", "z")


@needs_reference
def test_name_overrides() -> None:
    boundaries = load(IGAN, include=("*_w_boundary.npy",),
                      names={"stylegan_ffhq_pose_w_boundary.npy": "yaw", "stylegan_ffhq_gender_w_boundary": "sex"})
    assert boundaries.names() == ["age", "eyeglasses", "sex", "smile", "yaw"]
    assert boundaries.get("yaw").source.endswith("pose_w_boundary.npy")
    refused = refusals(E4E, include=("age.pt",), names={"age": "old", "agee.pt": "x"})
    assert refused == {E4E.name: "names: 'agee.pt' matches no file of the set"}


@needs_reference
def test_duplicate_names_are_refused_naming_both_files() -> None:
    with pytest.raises(BoundarySetError) as caught:
        load_boundary_set([BoundarySetSpec(str(E4E), include=("age.pt",)),
                           BoundarySetSpec(str(IGAN), include=("*age_w_boundary.npy",))], 18, 512)
    (file, reason), = caught.value.refused
    assert file.endswith("stylegan_ffhq_age_w_boundary.npy") and str(E4E / "age.pt") in reason
    # Renaming one resolves it.
    fixed = load_boundary_set([BoundarySetSpec(str(E4E), include=("age.pt",), names={"age.pt": "age_e4e"}),
                               BoundarySetSpec(str(IGAN), include=("*age_w_boundary.npy",))], 18, 512)
    assert fixed.names() == ["age", "age_e4e"]


# -- the demo zoo --------------------------------------------------------------------------------
@needs_demo
def test_demo_zoo_keeps_sidecar_metadata() -> None:
    record = json.loads((DEMO / "generator.json").read_text())
    config = record["config"]
    n_latent = GeneratorConfig(size=config["size"], style_dim=config["style_dim"]).n_latent
    spec = BoundarySetSpec(str(DEMO / "boundaries"))
    boundaries = load_boundary_set([spec], n_latent, config["style_dim"], generator_sha256=record["sha256"])
    stems = sorted(p.stem for p in (DEMO / "boundaries").glob("*.safetensors"))
    assert boundaries.names() == stems  # edit_quality.json and the sidecars are not directions
    for name in stems:
        sidecar = json.loads((DEMO / "boundaries" / f"{name}.json").read_text())
        entry = boundaries.get(name)
        assert entry.format == "faceedit" and entry.space == "w" and entry.layers is None
        assert entry.accuracy == sidecar["accuracy"]
        assert entry.recommended == tuple(sidecar["recommended_strength"]) != (-3.0, 3.0)
        assert tuple(entry.direction.shape) == (config["style_dim"],)
        assert entry.metadata["offset"] == sidecar["offset"]
    with pytest.raises(BoundarySetError, match="was trained for generator sha256") as caught:
        load_boundary_set([spec], n_latent, config["style_dim"], generator_sha256="0" * 64)
    assert len(caught.value.refused) == len(stems)


# -- files written here --------------------------------------------------------------------------
def test_float64_npy_and_our_boundary_metadata(tmp_path: Path) -> None:
    vector = np.random.default_rng(0).normal(size=(1, 64)) * 7.0  # float64, not unit
    np.save(tmp_path / "beard.npy", vector)
    rows = np.zeros((8, 64))
    rows[2:4] = np.random.default_rng(1).normal(size=(2, 64))
    np.save(tmp_path / "hair.npy", rows[None])  # [1, 8, 64], rows 2-3 only
    save_boundary(tmp_path / "tilt.safetensors", torch.randn(64),
                  {"attribute": "pitch", "space": "W+", "layers": [0, 1, 2], "accuracy": 0.875,
                   "recommended_strength": [-2.0, 5.0], "description": "head up/down"})
    boundaries = load(tmp_path, n_latent=8, style_dim=64)
    assert boundaries.names() == ["beard", "hair", "pitch"]
    beard = boundaries.get("beard")
    assert beard.direction.dtype == torch.float32 and beard.space == "w" and beard.format == "interfacegan"
    np.testing.assert_allclose(beard.direction.numpy(), unit_rows(vector)[0], atol=1e-6)
    assert boundaries.get("hair").layers == (2, 3)
    pitch = boundaries.get("pitch")
    assert (pitch.space, pitch.layers, pitch.accuracy, pitch.recommended, pitch.description) == \
        ("w", (0, 1, 2), 0.875, (-2.0, 5.0), "head up/down")
    forced = load(tmp_path, n_latent=8, style_dim=64, include=("beard.npy",), space="z", recommended_strength=(-1, 2))
    assert forced.get("beard").space == "z" and forced.get("beard").recommended == (-1.0, 2.0)
    assert "records space W" in refusals(tmp_path, 8, 64, include=("tilt.safetensors",), space="z")["tilt.safetensors"]


def test_recorded_layers_outside_the_generator_are_refused(tmp_path: Path) -> None:
    save_boundary(tmp_path / "smile.safetensors", torch.randn(16), {"layers": [0, 9]})
    assert refusals(tmp_path, 8, 16)["smile.safetensors"].startswith("layers: indices [9] outside")


def test_unknown_and_corrupt_files_are_refused_by_name(tmp_path: Path) -> None:
    np.save(tmp_path / "good.npy", np.ones((1, 16)))
    (tmp_path / "notes.txt").write_text("age direction from a paper\n")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "broken.pt").write_bytes(b"not a zip or pickle")
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    np.save(tmp_path / "strings.npy", np.array([["a", "b"]]))
    np.save(tmp_path / "cube.npy", np.ones((2, 3, 16)))
    save_boundary(tmp_path / "lost.safetensors", torch.randn(16), {"attribute": "lost"})
    (tmp_path / "lost.safetensors").unlink()  # its sidecar stays behind
    torch.save({"weights": torch.ones(16)}, tmp_path / "dict.pt")
    # Not direction files: skipped quietly.
    for quiet in ("README.md", "LICENSE", ".DS_Store", "notes.md", "report.json"):
        (tmp_path / quiet).write_text("{}")
    (tmp_path / "sub").mkdir()
    refused = refusals(tmp_path, 8, 16)
    assert set(refused) == {"notes.txt", "broken.npy", "broken.pt", "broken.safetensors", "strings.npy", "cube.npy",
                            "lost.json", "dict.pt"}
    assert refused["notes.txt"].startswith("unknown direction format '.txt'")
    assert "numpy" in refused["broken.npy"] and "safetensors" in refused["broken.safetensors"]
    assert "weights_only" in refused["broken.pt"] and "GANSpace" in refused["dict.pt"]
    assert "lost.safetensors is missing" in refused["lost.json"]
    assert "[2, 3, 16]" in refused["cube.npy"]
    assert "good" not in refused


def test_nan_and_zero_files_are_refused(tmp_path: Path) -> None:
    vector = np.ones((1, 16))
    vector[0, 3] = np.nan
    np.save(tmp_path / "nan.npy", vector)
    torch.save(torch.zeros(1, 16), tmp_path / "zero.pt")
    refused = refusals(tmp_path, 8, 16)
    assert refused["nan.npy"] == "contains NaN or infinite values"
    assert refused["zero.pt"] == "is all zeros"


def test_missing_and_empty_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(BoundarySetError) as caught:
        load(missing)
    assert caught.value.refused == ((str(missing), "does not exist"),) and str(missing) in str(caught.value)
    (tmp_path / "README.md").write_text("no directions yet")
    assert refusals(tmp_path) == {tmp_path.name: "holds no direction file"}
    np.save(tmp_path / "age.npy", np.ones((1, 16)))
    assert refusals(tmp_path, 8, 16, components={"yaw": 0}) == \
        {tmp_path.name: "components: given, but the set has no GANSpace PCA file"}


def test_same_name_in_one_folder_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "age.npy", np.ones((1, 16)))
    torch.save(torch.ones(1, 16), tmp_path / "age.pt")
    np.save(tmp_path / "stylegan_ffhq_age_boundary.npy", np.ones((1, 16)))  # age in Z: allowed next to W
    with pytest.raises(BoundarySetError) as caught:
        load(tmp_path, 8, 16)
    (file, reason), = caught.value.refused
    assert {Path(file).name, Path(reason.split(" as ")[1].split(" does")[0]).name} == {"age.npy", "age.pt"}
    boundaries = load(tmp_path, 8, 16, include=("age.pt", "stylegan_*"))
    assert boundaries.spaces("age") == ("w", "z")
    with pytest.raises(InvalidInputError, match="both give"):
        BoundarySet(list(boundaries) + [boundaries.get("age")])


# -- specs -----------------------------------------------------------------------------------------
def test_spec_from_dict(tmp_path: Path) -> None:
    spec = BoundarySetSpec.from_dict({"path": "dirs/e4e", "include": "*.pt", "names": {"age.pt": "old"},
                                      "components": {"yaw": 0}, "space": "W+", "recommended_strength": [-2, 4]},
                                     base_dir=tmp_path)
    assert spec.path == str(tmp_path / "dirs" / "e4e") and spec.include == ("*.pt",)
    assert spec.space == "w" and spec.recommended_strength == (-2.0, 4.0) and dict(spec.names) == {"age.pt": "old"}
    assert BoundarySetSpec.from_dict({"path": "/abs/dir"}, base_dir=tmp_path).path == "/abs/dir"
    with pytest.raises(InvalidInputError) as caught:
        BoundarySetSpec.from_dict({"path": "x", "inclde": ["*.npy"]}, base_dir=tmp_path)
    assert caught.value.field == "inclde"
    for bad in ({}, {"path": ""}, {"path": "x", "space": "s"}, {"path": "x", "components": {"yaw": -1}},
                {"path": "x", "components": {"yaw": True}}, {"path": "x", "recommended_strength": [3, -3]},
                {"path": "x", "names": {"a": 1}}, {"path": "x", "include": [1]}):
        with pytest.raises(InvalidInputError):
            BoundarySetSpec.from_dict(bad, base_dir=tmp_path)
    with pytest.raises(InvalidInputError):
        BoundarySetSpec.from_dict(["x"], base_dir=tmp_path)
