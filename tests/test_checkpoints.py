"""Checkpoint loading is safe, recognises the formats users have, and fails with named, typed errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle

import pytest
import torch

from faceedit.checkpoints import read_checkpoint, sha256_file
from faceedit.errors import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatchError,
    ChecksumMismatchError,
    UnsafeCheckpointError,
)
from faceedit.models import (
    Encoder,
    Generator,
    GeneratorConfig,
    convert_checkpoint,
    infer_encoder_config,
    infer_generator_config,
    load_encoder,
    load_generator,
)

from factories import SLIM_CHANNELS, tiny_encoder_config, tiny_generator_config
from reference import REFERENCE_DIR, build_state_dict_from_plan, reference_mark

needs_reference = reference_mark()

TINY_G = tiny_generator_config(style_dim=32, channels=SLIM_CHANNELS)
TINY_E = dataclasses.replace(tiny_encoder_config(style_dim=32), input_size=64)


@pytest.fixture
def tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(TINY_G).eval()


@pytest.fixture
def tiny_encoder() -> Encoder:
    torch.manual_seed(1)
    return Encoder(TINY_E).eval()


def save_rosinality(path, generator: Generator, **extra) -> None:
    torch.save({"g_ema": generator.state_dict(), "latent_avg": torch.randn(32), **extra}, path)


def save_e4e(path, encoder: Encoder, generator: Generator) -> torch.Tensor:
    state = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"decoder.{k}": v for k, v in generator.state_dict().items()}}
    latent_avg = torch.randn(1, 32).repeat(8, 1)
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 32, "start_from_latent_avg": True}
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg}, path)
    return latent_avg


def test_rosinality_file_loads_with_its_latent_avg(tmp_path, tiny_generator):
    path = tmp_path / "g.pt"
    save_rosinality(path, tiny_generator)
    loaded = load_generator(path)
    assert loaded.config == TINY_G
    torch.testing.assert_close(loaded.w_avg, torch.load(path, weights_only=True)["latent_avg"])
    ws = torch.randn(2, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.synthesis(ws), tiny_generator.synthesis(ws), atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_e4e_file_gives_both_encoder_and_decoder(tmp_path, tiny_generator, tiny_encoder):
    path = tmp_path / "e4e.pt"
    latent_avg = save_e4e(path, tiny_encoder, tiny_generator)
    generator, encoder = load_generator(path), load_encoder(path)
    assert encoder.config.kind == "e4e" and encoder.config == TINY_E
    torch.testing.assert_close(generator.w_avg, latent_avg[0])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = tiny_encoder(x) + latent_avg
        torch.testing.assert_close(encoder.encode(x), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_convert_strips_training_state_and_round_trips(tmp_path, tiny_generator, tiny_encoder):
    src = tmp_path / "train.pt"
    save_rosinality(src, tiny_generator, g_optim={"state": {}}, d={"w": torch.ones(3)})
    [out] = convert_checkpoint(src, tmp_path / "conv")
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["sha256"] == sha256_file(out)
    assert sidecar["source_sha256"] == sha256_file(src)
    assert GeneratorConfig.from_dict(sidecar["config"]) == TINY_G
    ckpt = read_checkpoint(out)
    assert set(ckpt.generator) == set(tiny_generator.state_dict())  # no optimiser or D state
    a, b = load_generator(src), load_generator(out)
    ws = torch.randn(1, 8, 32)
    with torch.no_grad():
        assert torch.equal(a.synthesis(ws), b.synthesis(ws))
    assert torch.equal(a.w_avg, b.w_avg)

    e4e = tmp_path / "e4e.pt"
    save_e4e(e4e, tiny_encoder, tiny_generator)
    written = convert_checkpoint(e4e, tmp_path / "conv_e4e")
    assert sorted(p.name for p in written) == ["encoder.safetensors", "generator.safetensors"]
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(e4e).encode(x), load_encoder(written[1]).encode(x),
                                   atol=1e-6, rtol=1e-6)


def test_tampered_safetensors_fail_the_checksum(tmp_path, tiny_generator):
    src = tmp_path / "g.pt"
    save_rosinality(src, tiny_generator)
    [out] = convert_checkpoint(src, tmp_path / "conv")
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        load_generator(out)


def test_args_namespace_is_refused_with_a_conversion_hint(tmp_path, tiny_generator):
    path = tmp_path / "train.pt"
    save_rosinality(path, tiny_generator, args=argparse.Namespace(size=32, lr=0.002))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_generator(path)
    assert str(path) in str(err.value) and "faceedit convert --trust-pickle" in str(err.value)
    # The explicit opt-in converts it to a file that loads safely.
    [out] = convert_checkpoint(path, tmp_path / "conv", trust_pickle=True)
    assert load_generator(out).config == TINY_G


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"g_ema": Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_generator(path)
    assert not marker.exists()


def test_nvidia_pickle_is_refused(tmp_path):
    path = tmp_path / "stylegan2-ffhq-config-f.pkl"
    path.write_bytes(pickle.dumps({"G_ema": 1}))
    with pytest.raises(UnsafeCheckpointError, match="convert_weight.py"):
        load_generator(path)


def test_truncated_file(tmp_path, tiny_generator):
    path = tmp_path / "g.pt"
    save_rosinality(path, tiny_generator)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError) as err:
        load_generator(path)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_truncated_safetensors(tmp_path, tiny_generator):
    src = tmp_path / "g.pt"
    save_rosinality(src, tiny_generator)
    [out] = convert_checkpoint(src, tmp_path / "conv")
    out.with_suffix(".json").unlink()  # no recorded checksum: the reader itself must notice
    out.write_bytes(out.read_bytes()[:-100])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        load_generator(out)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"),
    (b"hello, I am a text file\n", "not a PyTorch checkpoint"),
])
def test_wrong_format_files(tmp_path, content, problem):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match=problem):
        load_generator(path)


def test_unknown_layout_lists_its_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.ones(1)}, "epoch": 3}, path)
    with pytest.raises(CheckpointFormatError, match="epoch, model"):
        load_generator(path)


def test_missing_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator("/nonexistent/g.pt")


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_generator):
    state = tiny_generator.state_dict()
    del state["convs.1.noise.weight"]
    state["extra.weight"] = torch.ones(1)
    path = tmp_path / "g.pt"
    torch.save({"g_ema": state}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_generator(path)
    message = str(err.value)
    assert "convs.1.noise.weight" in message and "extra.weight" in message
    assert "'size': 32" in message  # the config it inferred


def test_wrong_loader_for_the_file(tmp_path, tiny_generator):
    path = tmp_path / "g.pt"
    save_rosinality(path, tiny_generator)
    with pytest.raises(CheckpointError, match="load_generator"):
        load_encoder(path)


@needs_reference
class TestOfficialManifests:
    """Official 1024 checkpoints: config inference and key sets, on the meta device only."""

    @staticmethod
    def manifest(name: str) -> dict:
        return json.loads((REFERENCE_DIR / "manifests" / name).read_text())["keys"]

    def test_ffhq_config_f_generator(self):
        keys = self.manifest("stylegan2_ffhq_config_f_1024_g_ema.json")
        config = infer_generator_config({k: v["shape"] for k, v in keys.items()})
        assert config == GeneratorConfig(1024, 512, 8, channel_multiplier=2)
        with torch.device("meta"):
            generator = Generator(config)
        built = {k: list(v.shape) for k, v in generator.state_dict().items()}
        assert built == {k: v["shape"] for k, v in keys.items()}
        assert sum(v.numel() for v in generator.state_dict().values()) == 33_166_492

    @pytest.mark.parametrize("name, kind", [("psp_gradualstyle_1024_state_dict.json", "psp"),
                                            ("e4e_encoder4editing_1024_state_dict.json", "e4e")])
    def test_psp_and_e4e_files(self, name, kind):
        keys = self.manifest(name)
        decoder = {k[8:]: v["shape"] for k, v in keys.items() if k.startswith("decoder.")}
        encoder = {k[8:]: v["shape"] for k, v in keys.items() if k.startswith("encoder.")}
        assert len(decoder) + len(encoder) == len(keys)
        assert infer_generator_config(decoder) == GeneratorConfig(1024, 512, 8, channel_multiplier=2)
        shapes = {k: torch.empty(v, device="meta") for k, v in encoder.items()}
        config = infer_encoder_config(shapes, kind)
        assert (config.n_styles, config.input_size, config.stage_units) == (18, 256, (3, 4, 14, 3))
        with torch.device("meta"):
            built = {k: list(v.shape) for k, v in Encoder(config).state_dict().items()}
        assert built == encoder


@pytest.mark.slow
@needs_reference
def test_psp_pipeline_reproduces_upstream_images(tmp_path):
    """A pSp-layout file built from the reference weights: encoder → decoder equals upstream."""
    refs = torch.load(REFERENCE_DIR / "psp_e4e_refs.pt", weights_only=True)
    decoder = torch.load(REFERENCE_DIR / "stylegan2_s32_cm2_seed0.pt", weights_only=True)["g_ema"]
    encoder = build_state_dict_from_plan(REFERENCE_DIR / "encoder_irse50_nstyles8_hashinit_plan.json")
    for kind, encoder_type in (("psp", "GradualStyleEncoder"), ("e4e", "Encoder4Editing")):
        path = tmp_path / f"{kind}.pt"
        state = {**{f"encoder.{k}": v for k, v in encoder.items()},
                 **{f"decoder.{k}": v for k, v in decoder.items()}}
        opts = {"encoder_type": encoder_type, "output_size": 32, "start_from_latent_avg": True}
        torch.save({"state_dict": state, "opts": opts, "latent_avg": refs["n8_latent_avg"]}, path)
        enc, gen = load_encoder(path), load_generator(path)
        with torch.inference_mode():
            codes = enc.encode(refs["x"])
            torch.testing.assert_close(codes, refs[f"n8_{kind}_codes"], atol=2e-5, rtol=1e-5)
            images = gen.synthesis(codes)
        torch.testing.assert_close(images, refs[f"n8_{kind}_images"], atol=1e-4, rtol=1e-4)
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, (256, 256))
        torch.testing.assert_close(pooled, refs[f"n8_{kind}_images_pool256"], atol=1e-4, rtol=1e-4)


def test_sidecar_checksum_is_verified_for_torch_files_too(tmp_path, tiny_generator):
    path = tmp_path / "generator.pt"
    save_rosinality(path, tiny_generator)
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({"sha256": sha256_file(path)}))
    assert read_checkpoint(path).sha256 == sha256_file(path)
    sidecar.write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ChecksumMismatchError, match="generator.json"):
        load_generator(path)
