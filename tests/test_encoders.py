"""pSp / e4e encoder: equivalence with upstream reference outputs, config inference, properties."""

from __future__ import annotations

import gc
import json

import pytest
import torch
import torch.nn.functional as F

from faceedit.errors import CheckpointMismatchError, InvalidInputError
from faceedit.models.encoders import Encoder, EncoderConfig, infer_encoder_config
from faceedit.models.loading import build_encoder

from reference import (
    REFERENCE_DIR,
    build_state_dict_from_plan,
    hash_uniform,
    hash_uniform_fast,
    load_plan,
    reference_mark,
)

needs_reference = reference_mark()

CODE_TOL = {"atol": 2e-5, "rtol": 1e-5}  # reference README: codes / W+ tolerance

SMALL = {
    "n_styles": 10,  # > 7 so all three pyramid levels (c3, p2, p1) are used
    "style_dim": 256,
    "input_size": 64,
    "stage_units": (1, 1, 2, 1),
    "stage_channels": (16, 32, 64, 128),
}


def small_encoder(kind: str, seed: int = 0, **overrides) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(EncoderConfig(kind=kind, **{**SMALL, **overrides})).eval()


# ---------------------------------------------------------------------------------------------
# Reference equivalence (hash-init weights -> upstream outputs)
# ---------------------------------------------------------------------------------------------


def plan_path(n_styles: int):
    return REFERENCE_DIR / f"encoder_irse50_nstyles{n_styles}_hashinit_plan.json"


def assert_plan_checksums(plan: dict, state_dict: dict[str, torch.Tensor]) -> None:
    assert list(state_dict) == [e["key"] for e in plan["entries"]]
    assert len(state_dict) == plan["num_keys"]
    for entry in plan["entries"]:
        value = state_dict[entry["key"]]
        assert list(value.shape) == entry["shape"], entry["key"]
        assert str(value.dtype) == f"torch.{entry['dtype']}", entry["key"]
        total = value.double().sum().item()
        assert total == pytest.approx(entry["sum"], rel=1e-9, abs=1e-9), entry["key"]
        assert value.flatten()[0].item() == entry["first"], entry["key"]


@pytest.fixture(scope="module")
def refs() -> dict[str, torch.Tensor]:
    return torch.load(REFERENCE_DIR / "psp_e4e_refs.pt", weights_only=True)


@pytest.fixture(scope="module")
def n8_state_dict() -> dict[str, torch.Tensor]:
    return build_state_dict_from_plan(plan_path(8))


@needs_reference
def test_fast_hash_matches_recipe():
    for t, n in [(0, 1000), (7, 4097), (480, 2359296 + 3), (2**20, 512)]:
        assert torch.equal(hash_uniform_fast(t, n), hash_uniform(t, n)), (t, n)


@pytest.mark.slow
@needs_reference
def test_n8_plan_checksums(n8_state_dict):
    assert_plan_checksums(load_plan(plan_path(8)), n8_state_dict)


@pytest.mark.slow
@needs_reference
@pytest.mark.parametrize("kind", ["psp", "e4e"])
def test_n8_matches_upstream(kind, n8_state_dict, refs):
    config = infer_encoder_config(n8_state_dict, kind)
    assert config == EncoderConfig(kind=kind, n_styles=8)  # upstream IR-SE50 defaults
    if kind == "psp":  # the plain path: build, then a strict (copying) load
        with torch.device("meta"):  # skip ~3 s of random init that the load overwrites anyway
            encoder = Encoder(config)
        encoder = encoder.to_empty(device="cpu")
        encoder.load_state_dict(n8_state_dict, strict=True)
        assert encoder.styles[0].linear.weight.data_ptr() != n8_state_dict["styles.0.linear.weight"].data_ptr()
    else:  # the meta-device path (strict load with assign=True), as checkpoint loading uses
        encoder = build_encoder(n8_state_dict, infer_encoder_config(n8_state_dict, kind))
        # adopted, not copied
        assert encoder.styles[0].linear.weight.data_ptr() == n8_state_dict["styles.0.linear.weight"].data_ptr()
    assert list(encoder.state_dict()) == list(n8_state_dict)  # same key order as upstream
    encoder.eval()
    x = refs["x"]
    with torch.inference_mode():
        raw = encoder(x)
        torch.testing.assert_close(raw, refs[f"n8_{kind}_codes_raw"], **CODE_TOL)
        # upstream ckpt layout [n_styles, 512] for one kind, the 1-D [512] layout for the other
        avg = refs["n8_latent_avg"] if kind == "psp" else refs["n8_latent_avg"][0]
        encoder.set_latent_avg(avg)
        codes = encoder.encode(x[:1])  # one image is enough here and halves the cost
        torch.testing.assert_close(codes, refs[f"n8_{kind}_codes"][:1], **CODE_TOL)
    other = "e4e" if kind == "psp" else "psp"
    # the two forwards really differ on these weights, so the comparison above tells them apart
    assert (raw - refs[f"n8_{other}_codes_raw"]).abs().max() > 1e-2


@needs_reference
@pytest.mark.slow
def test_n18_matches_upstream(refs):
    """IR-SE50 with 18 styles (the 1024 layout): ~267M params, built once and shared by both views."""
    state_dict = build_state_dict_from_plan(plan_path(18))
    try:
        assert_plan_checksums(load_plan(plan_path(18)), state_dict)
        x = refs["x"]
        for kind in ("psp", "e4e"):
            # assign=True: both encoders adopt the same tensors, no 1 GB copy and no random init
            encoder = build_encoder(state_dict, infer_encoder_config(state_dict, kind), refs["n18_latent_avg"])
            assert encoder.config == EncoderConfig(kind=kind, n_styles=18)
            with torch.inference_mode():
                raw = encoder(x)
                torch.testing.assert_close(raw, refs[f"n18_{kind}_codes_raw"], **CODE_TOL)
                codes = raw + encoder.latent_avg
                torch.testing.assert_close(codes, refs[f"n18_{kind}_codes"], **CODE_TOL)
            del encoder
    finally:
        del state_dict
        gc.collect()


# ---------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------


@needs_reference
@pytest.mark.parametrize(
    "manifest,kind",
    [("psp_gradualstyle_1024_state_dict.json", "psp"), ("e4e_encoder4editing_1024_state_dict.json", "e4e")],
)
def test_infer_config_from_1024_manifest(manifest, kind):
    data = json.loads((REFERENCE_DIR / "manifests" / manifest).read_text())
    entries = {
        k[len("encoder.") :]: v for k, v in data["keys"].items() if k.startswith("encoder.")
    }
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    meta_sd = {k: torch.empty(v["shape"], dtype=dtypes[v["dtype"]], device="meta") for k, v in entries.items()}
    config = infer_encoder_config(meta_sd, kind, source=manifest)
    assert config == EncoderConfig(kind=kind, n_styles=18)
    with torch.device("meta"):  # never allocate the 1 GB model
        encoder = Encoder(config)
    built = encoder.state_dict()
    assert list(built) == list(entries)
    for key, tensor in built.items():
        assert list(tensor.shape) == entries[key]["shape"], key
        assert str(tensor.dtype) == f"torch.{entries[key]['dtype']}", key
    assert sum(t.numel() for t in built.values()) == data["encoder_num_elements"]
    # a prefixed (unstripped) dict is refused with a hint rather than misread
    prefixed = {"encoder." + k: v for k, v in meta_sd.items()}
    with pytest.raises(CheckpointMismatchError, match="prefix"):
        infer_encoder_config(prefixed, kind, source=manifest)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_styles": 2, "input_nc": 1, "se_reduction": 4},  # fewer styles than the coarse split
        {"n_styles": 5, "input_size": 128, "stage_units": (2, 1, 3, 2), "style_dim": 64},
    ],
)
def test_infer_config_roundtrip_small(overrides):
    encoder = small_encoder("e4e", **overrides)
    inferred = infer_encoder_config(encoder.state_dict(), "e4e")
    assert inferred == encoder.config
    assert infer_encoder_config(encoder.state_dict(), "psp") == EncoderConfig(
        **{**encoder.config.to_dict(), "kind": "psp"}
    )
    # JSON round trip of the config
    assert EncoderConfig.from_dict(json.loads(json.dumps(encoder.config.to_dict()))) == encoder.config


def _without(sd, key):
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda sd: _without(sd, "latlayer1.weight"), "missing"),
        (lambda sd: _without(sd, "styles.0.linear.weight"), "styles.0.linear.weight"),
        (lambda sd: _without(sd, "styles.8.convs.6.weight"), "styles.8 has 3 convs"),
        (lambda sd: {**sd, "body.3.res_layer.3.weight": torch.zeros(64, 32, 3, 3)}, "shape"),
        (lambda sd: {**sd, "extra.weight": torch.zeros(1)}, "unexpected"),
        (lambda sd: {k: v for k, v in sd.items() if not k.startswith("body.4.")}, "3 backbone stages"),
        (lambda sd: {k: v for k, v in sd.items() if not k.startswith("body.")}, "body"),
        (lambda sd: {}, "empty"),
    ],
)
def test_infer_config_rejects_broken_state_dicts(mutate, match):
    sd = small_encoder("psp").state_dict()
    with pytest.raises(CheckpointMismatchError, match=match) as info:
        infer_encoder_config(mutate(sd), "psp", source="ckpt/e4e.pt")
    assert info.value.path == "ckpt/e4e.pt"


def test_infer_config_rejects_unknown_kind():
    with pytest.raises(InvalidInputError) as info:
        infer_encoder_config(small_encoder("psp").state_dict(), "restyle")
    assert info.value.field == "kind"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"kind": "restyle"}, "kind"),
        ({"n_styles": 0}, "n_styles"),
        ({"input_size": 48}, "input_size"),
        ({"input_size": 16}, "input_size"),
        ({"stage_units": (3, 4, 14)}, "stage_units"),
        ({"stage_units": (3, 0, 14, 3)}, "stage_units"),
        ({"stage_channels": (64, 64, 256, 512)}, "stage_channels"),
        ({"stage_channels": (8, 128, 256, 512)}, "se_reduction"),
        ({"style_dim": True}, "style_dim"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(InvalidInputError) as info:
        EncoderConfig(**{"kind": "psp", "n_styles": 18, **kwargs})
    assert info.value.field == field


def test_config_from_dict_rejects_unknown_and_missing_fields():
    with pytest.raises(InvalidInputError) as info:
        EncoderConfig.from_dict({"kind": "psp", "n_styles": 18, "output_size": 1024})
    assert info.value.field == "output_size"
    with pytest.raises(InvalidInputError) as info:
        EncoderConfig.from_dict({"kind": "psp"})
    assert info.value.field == "n_styles"


# ---------------------------------------------------------------------------------------------
# Small seeded encoder: structure and properties
# ---------------------------------------------------------------------------------------------


def test_small_structure_follows_pyramid_levels():
    encoder = small_encoder("psp")
    # c3 = 64/16 = 4 -> 2 convs, p2 = 8 -> 3 convs, p1 = 16 -> 4 convs
    n_convs = [sum(isinstance(m, torch.nn.Conv2d) for m in block.convs) for block in encoder.styles]
    assert n_convs == [2, 2, 2, 3, 3, 3, 3, 4, 4, 4]
    assert encoder.styles[0].convs[0].weight.shape == (256, 128, 3, 3)  # last stage width -> style_dim
    assert encoder.latlayer1.weight.shape == (128, 64, 1, 1)  # c2 width -> last stage width
    assert encoder.latlayer2.weight.shape == (128, 32, 1, 1)  # c1 width -> last stage width
    assert encoder.config.tap_indices == (1, 3, 4)
    assert encoder.n_styles == 10
    assert "latent_avg" not in encoder.state_dict()  # non-persistent
    assert encoder.latent_avg.shape == (10, 256) and not encoder.latent_avg.any()


@pytest.mark.slow
def test_small_e4e_is_w0_plus_psp_deltas():
    psp = small_encoder("psp", seed=1)
    e4e = Encoder(EncoderConfig(**{**psp.config.to_dict(), "kind": "e4e"})).eval()
    e4e.load_state_dict(psp.state_dict(), strict=True)
    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        p = psp(x)
        e = e4e(x)
        assert p.shape == e.shape == (2, 10, 256)
        assert torch.equal(psp.forward_e4e(x), e)  # kind only selects the forward
        torch.testing.assert_close(e[:, 0], p[:, 0], rtol=0, atol=0)
        # every later e4e code is w0 plus the pSp code of the same block (same pyramid level)
        torch.testing.assert_close(e[:, 1:], p[:, :1] + p[:, 1:], rtol=1e-6, atol=1e-6)
        # zeroing the delta heads leaves w0 repeated for e4e, zero codes for pSp
        for block in e4e.styles[1:]:
            block.linear.weight.zero_()
            block.linear.bias.zero_()
        e0 = e4e(x)
        assert torch.equal(e0, e0[:, :1].expand_as(e0))
        torch.testing.assert_close(e0[:, 0], p[:, 0], rtol=0, atol=0)
        e4e.load_state_dict(psp.state_dict())
        assert not torch.equal(e4e(x), e0)  # and the deltas did matter


@pytest.mark.slow
def test_small_gradients_flow_to_params_and_images():
    # se_reduction 4: with 16 // 16 = 1 hidden SE unit, a dead ReLU can legitimately zero fc1's grad
    encoder = small_encoder("e4e", seed=3, se_reduction=4)
    torch.manual_seed(4)
    images = (torch.rand(2, 3, 80, 96) * 2 - 1).requires_grad_(True)  # resized (shrunk) to 64x64
    ws = encoder.encode(images)
    assert ws.shape == (2, 10, 256)
    (ws**2).mean().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.slow
def test_encode_resizes_and_adds_latent_avg():
    encoder = small_encoder("psp", seed=5)
    torch.manual_seed(6)
    big = torch.rand(3, 3, 128, 128) * 2 - 1
    small = torch.rand(3, 3, 64, 64) * 2 - 1
    avg = torch.randn(256)
    with torch.no_grad():
        assert torch.equal(encoder.encode(small), encoder(small))  # latent_avg defaults to zeros
        encoder.set_latent_avg(avg)
        assert torch.equal(encoder.latent_avg, avg.expand(10, 256))
        torch.testing.assert_close(encoder.encode(small), encoder(small) + avg, rtol=0, atol=0)
        shrunk = F.interpolate(big, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(encoder.encode(big), encoder(shrunk) + avg, rtol=0, atol=0)
        # float64 input is cast to the model dtype
        torch.testing.assert_close(encoder.encode(small.double()), encoder(small) + avg, rtol=0, atol=0)
    per_style = torch.randn(10, 256)
    encoder.set_latent_avg(per_style)
    assert torch.equal(encoder.latent_avg, per_style)
    encoder.set_latent_avg(per_style[:1])
    assert torch.equal(encoder.latent_avg, per_style[:1].expand(10, 256))
    for bad in (torch.zeros(9, 256), torch.zeros(512), torch.full((256,), float("nan"))):
        with pytest.raises(InvalidInputError) as info:
            encoder.set_latent_avg(bad)
        assert info.value.field == "latent_avg"


@pytest.mark.parametrize(
    "images",
    [
        torch.zeros(3, 64, 64),  # wrong rank
        torch.zeros(1, 1, 3, 64, 64),  # wrong rank
        torch.zeros(1, 1, 64, 64),  # wrong channel count
        torch.zeros(1, 4, 64, 64),  # wrong channel count
        torch.zeros(0, 3, 64, 64),  # no images
        torch.zeros(1, 3, 64, 64, dtype=torch.uint8),  # not float
        torch.zeros(1, 3, 64, 64).index_fill_(2, torch.tensor([5]), float("nan")),
        torch.zeros(1, 3, 64, 64).index_fill_(3, torch.tensor([0]), float("inf")),
        [[0.0]],  # not a tensor
    ],
)
def test_encode_rejects_bad_images(images):
    encoder = small_encoder("e4e")
    with pytest.raises(InvalidInputError) as info:
        encoder.encode(images)
    assert info.value.field == "images"


def test_forward_rejects_wrong_size():
    # upstream would fold a 2x2 final map into the batch (view(-1, 512)); we refuse instead
    encoder = small_encoder("psp")
    with pytest.raises(InvalidInputError) as info:
        encoder(torch.zeros(1, 3, 128, 128))
    assert info.value.field == "x"
