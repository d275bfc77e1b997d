"""Device resolution and reduced-precision synthesis: typed errors, and bf16 autocast close to fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faceedit.cli import main as cli_main
from faceedit.errors import InvalidInputError
from faceedit.models import Generator, load_generator
from faceedit.models.precision import (
    DeviceUnavailableError,
    autocast_dtype,
    default_precision,
    resolve_device,
    synthesis_precision,
)

import factories
from factories import SLIM_CHANNELS

DEMO_GENERATOR = Path(__file__).resolve().parents[1] / "model_store" / "demo" / "generator.pt"

# fp32 vs bf16 autocast max |Δ| over 4 images (ψ = 0.7, const noise, seed 0), measured on this
# project's 2-core CPU (torch 2.13, avx512_bf16): demo 64 px 0.0086 (about one 8-bit grey level
# of the [-1, 1] image; batch 1: 0.0072), tiny random 32 px 0.048 (its images span ±7.6, so 0.6%).
# Bounds at ~2.5x the measurements leave room for other CPUs' bf16 kernels.
DEMO_BF16_BOUND = 0.02
TINY_BF16_BOUND = 0.12
# Below any real bf16 rounding: a smaller difference would mean autocast never ran.
MIN_BF16_EFFECT = 1e-4


def tiny_generator() -> Generator:
    return factories.tiny_generator(style_dim=32, channels=SLIM_CHANNELS).requires_grad_(False)


@pytest.fixture(scope="module")
def demo_generator() -> Generator:
    return load_generator(DEMO_GENERATOR)


def latents(generator: Generator, n: int = 4) -> torch.Tensor:
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return generator.broadcast(generator.truncate(generator.mapping(z), 0.7)).contiguous()


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _check_bf16_close(generator: Generator, bound: float) -> None:
    ws = latents(generator)
    with torch.inference_mode():
        for batch in (1, 4):  # batch 1 scales the weights, larger batches the activations
            ref = generator.synthesis(ws[:batch])
            low = generator.synthesis(ws[:batch], precision="bf16")
            assert low.dtype == torch.float32 and low.shape == ref.shape
            diff = float((low - ref).abs().max())
            assert MIN_BF16_EFFECT < diff < bound, f"batch {batch}: max |fp32 - bf16| = {diff}"


@pytest.mark.slow
def test_bf16_synthesis_of_the_demo_generator_is_close_to_fp32(demo_generator):
    _check_bf16_close(demo_generator, DEMO_BF16_BOUND)


def test_bf16_synthesis_of_a_tiny_generator_is_close_to_fp32():
    _check_bf16_close(tiny_generator(), TINY_BF16_BOUND)


def test_fp32_precision_is_the_default_path_and_leaves_no_autocast(demo_generator):
    ws = latents(demo_generator, 2)
    with torch.inference_mode():
        ref = demo_generator.synthesis(ws)
        assert torch.equal(demo_generator.synthesis(ws, precision="fp32"), ref)
        low = demo_generator.synthesis(ws, precision="bf16")
    assert not torch.is_autocast_enabled("cpu")
    assert not torch.equal(low, ref)


def test_synthesis_precision_sets_the_default_for_a_block(demo_generator):
    ws = latents(demo_generator, 2)
    with torch.inference_mode():
        explicit = demo_generator.synthesis(ws, precision="bf16")
        with synthesis_precision("bf16"):
            assert default_precision() == "bf16"
            implicit = demo_generator.synthesis(ws)
            forced = demo_generator.synthesis(ws, precision="fp32")  # an explicit argument wins
        assert default_precision() == "fp32"
        ref = demo_generator.synthesis(ws)
    assert torch.equal(implicit, explicit)
    assert torch.equal(forced, ref)


def test_fp16_on_cpu_is_a_typed_error_that_points_to_bf16():
    generator = tiny_generator()
    with pytest.raises(InvalidInputError, match="bf16") as info:
        generator.synthesis(latents(generator, 1), precision="fp16")
    assert info.value.field == "precision"


@pytest.mark.parametrize("bad", ["int8", "float32", "", "BF16"])
def test_unknown_precisions_are_rejected(bad):
    with pytest.raises(InvalidInputError) as info:
        autocast_dtype(bad, "cpu")
    assert info.value.field == "precision"
    with pytest.raises(InvalidInputError):
        with synthesis_precision(bad):
            pass


def test_autocast_dtypes_on_cpu():
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_cpu_and_auto_resolve_without_cuda(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1", torch.device("cuda")])
def test_cuda_without_cuda_is_a_typed_error(no_cuda, spec):
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available") as info:
        resolve_device(spec)
    assert isinstance(info.value, InvalidInputError) and info.value.field == "device"


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "cpu:1", "auto:0", "", "mps", 3])
def test_malformed_devices_are_rejected(spec):
    with pytest.raises(InvalidInputError) as info:
        resolve_device(spec)
    assert info.value.field == "device"


def test_sample_command_device_and_precision_flags(no_cuda, tmp_path, capsys):
    common = ["sample", "--checkpoint", str(DEMO_GENERATOR), "--seeds", "0-1", "--out", str(tmp_path / "g.png")]
    assert cli_main(common + ["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert cli_main(common + ["--device", "cpu", "--precision", "fp16"]) == 2
    assert "use bf16 on CPU" in capsys.readouterr().err
    assert cli_main(common + ["--device", "auto", "--precision", "bf16"]) == 0
    assert (tmp_path / "g.png").is_file()


def test_synthesis_from_styles_takes_the_same_precision_as_synthesis():
    generator = tiny_generator()
    ws = latents(generator, 2)
    with torch.inference_mode():
        styles = generator.styles(ws)
        low = generator.synthesis_from_styles(styles, precision="bf16")
        assert low.dtype == torch.float32
        assert torch.allclose(low, generator.synthesis(ws, precision="bf16"), atol=1e-5)  # the same bf16 path
        assert MIN_BF16_EFFECT < float((low - generator.synthesis_from_styles(styles)).abs().max()) < TINY_BF16_BOUND
