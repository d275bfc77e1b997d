"""faceedit.artifacts, the one reader/writer of tensors + metadata + sha256 sidecar, and the deltas built on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from faceedit import artifacts
from faceedit.errors import CheckpointError, CheckpointFormatError, CheckpointMismatchError, ChecksumMismatchError
from faceedit.models import Generator, GeneratorConfig, load_generator
from faceedit.models.delta import (
    apply_delta,
    apply_delta_bytes,
    delta_to_bytes,
    save_delta,
    trainable_names,
    with_tensors,
)
from faceedit.zoo import zoo_dir

TENSORS = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}


def test_file_round_trip_with_metadata_and_sidecar(tmp_path):
    path = tmp_path / "sub" / "thing.safetensors"
    meta = artifacts.metadata("thing", {"z": 1, "a": [2]}, {"extra": "x"})
    assert list(meta) == [artifacts.KIND_KEY, artifacts.CONFIG_KEY, "extra"]
    sha = artifacts.write(path, TENSORS, meta, {"note": "n", "sha256": "stale", "size_bytes": 1})
    assert sha == artifacts.sha256_file(path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == {"note": "n", "file": "thing.safetensors", "sha256": sha, "bytes": path.stat().st_size}
    art = artifacts.read(path)
    assert art.kind == "thing" and art.config() == {"z": 1, "a": [2]} and art.metadata["extra"] == "x"
    assert art.sha256 == sha and art.source == str(path)
    assert all(torch.equal(art.tensors[k], v) for k, v in TENSORS.items())


def test_bytes_round_trip_equals_the_file(tmp_path):
    meta = artifacts.metadata("thing", {"k": 1})
    data = artifacts.to_bytes(TENSORS, meta)
    artifacts.write(tmp_path / "t.safetensors", TENSORS, meta)
    assert (tmp_path / "t.safetensors").read_bytes() == data  # one encoding for files and the artifact store
    assert not (tmp_path / "t.json").exists()  # a sidecar only when asked for
    art = artifacts.from_bytes(data, "store/key", sha256=artifacts.sha256_bytes(data))
    assert art.kind == "thing" and art.source == "store/key" and torch.equal(art.tensors["b"], TENSORS["b"])
    assert artifacts.header_metadata(data) == meta
    assert artifacts.from_bytes(artifacts.to_bytes(TENSORS)).metadata == {}


def test_bytes_errors_name_the_source():
    data = artifacts.to_bytes(TENSORS, artifacts.metadata("thing"))
    with pytest.raises(ChecksumMismatchError, match="the index records") as err:
        artifacts.from_bytes(data, "s3://b/k", sha256="0" * 64, recorded_by="the index")
    assert err.value.path == "s3://b/k"
    for bad in (b"", b"short", b"\xff" * 16, data[:-3]):
        with pytest.raises(CheckpointFormatError) as err:
            artifacts.from_bytes(bad, "s3://b/k")
        assert err.value.path == "s3://b/k"
    with pytest.raises(CheckpointFormatError, match="not valid JSON"):
        artifacts.from_bytes(artifacts.to_bytes(TENSORS, {artifacts.CONFIG_KEY: "{"}), "k").config()
    with pytest.raises(CheckpointFormatError, match="no faceedit.config"):
        artifacts.from_bytes(data, "k").config(required=True)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "t.safetensors"
    with pytest.raises(CheckpointError, match="does not exist"):
        artifacts.read(path)
    artifacts.write(path, TENSORS, None, {})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="t.json records") as err:
        artifacts.read(path)
    assert err.value.path == str(path)
    assert artifacts.read(path, verify=False).sha256 == ""
    path.write_bytes(bytes(data[:-10]))
    path.with_suffix(".json").unlink()  # nothing recorded: the reader itself must notice
    with pytest.raises(CheckpointFormatError, match="truncated"):
        artifacts.read(path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="unreadable JSON"):
        artifacts.verify_sidecar(path)


def test_sidecar_keeps_the_callers_order_when_asked(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"abc")
    artifacts.write_sidecar(weights, {"created": "now", "model": "m", "file": "old"}, sort_keys=False)
    text = (tmp_path / "w.json").read_text()
    assert list(json.loads(text)) == ["created", "model", "file", "sha256", "bytes"]
    assert artifacts.verify_sidecar(weights) == artifacts.sha256_file(weights)
    assert artifacts.read_sidecar(tmp_path / "none.bin") == {}


@pytest.mark.parametrize("relative", ["scorer.safetensors", "clip.safetensors", "boundaries/smile.safetensors"])
def test_shipped_files_re_encode_to_their_own_bytes(relative):
    """The library writes exactly the bytes the zoo shipped with: same layout, same metadata order."""
    path = zoo_dir() / relative
    art = artifacts.read(path)
    assert art.sha256 == artifacts.read_sidecar(path)["sha256"]
    assert artifacts.to_bytes(art.tensors, art.metadata) == path.read_bytes()


# -- deltas (faceedit.models.delta) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def base() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(size=16, style_dim=16, n_mlp=2, channels={4: 8, 8: 8, 16: 8})).eval()


def _adapted(base: Generator, seed: int = 1) -> Generator:
    state = base.state_dict()
    rng = torch.Generator().manual_seed(seed)
    return with_tensors(base, {name: state[name] + 0.1 * torch.randn(state[name].shape, generator=rng)
                               for name in trainable_names(base)})


def test_a_delta_file_and_delta_bytes_are_one_format(base, tmp_path):
    target = _adapted(base)
    path = tmp_path / "delta.safetensors"
    sha = save_delta(target, base, path, {"method": "test"})
    state = target.state_dict()
    data = delta_to_bytes({name: state[name] for name in trainable_names(target)}, base)
    assert data == path.read_bytes() and sha == artifacts.sha256_bytes(data)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["kind"] == "generator-delta" and sidecar["method"] == "test" and sidecar["bytes"] == len(data)
    from_file, from_bytes = apply_delta(base, path), apply_delta_bytes(base, data, "store/delta")
    loaded = load_generator(path, base=base)
    ws = base.broadcast(base.w_avg.unsqueeze(0))
    for adapted in (from_file, from_bytes, loaded):
        assert torch.equal(adapted.synthesis(ws, noise_mode="const"), target.synthesis(ws, noise_mode="const"))


def test_delta_bytes_refuse_another_base_and_other_kinds(base):
    data = delta_to_bytes({"convs.0.conv.weight": base.state_dict()["convs.0.conv.weight"] * 2}, base,
                          extra={"faceedit.record": "{}"})
    assert artifacts.header_metadata(data)["faceedit.record"] == "{}"
    other = _adapted(base, seed=3)
    with pytest.raises(CheckpointMismatchError) as err:
        apply_delta_bytes(other, data, "store/delta")
    assert err.value.path == "store/delta"
    with pytest.raises(ChecksumMismatchError):
        apply_delta_bytes(base, data, "store/delta", sha256="0" * 64, recorded_by="the index")
    with pytest.raises(CheckpointError, match="not a generator delta"):
        apply_delta_bytes(base, artifacts.to_bytes({"x": torch.ones(1)}, artifacts.metadata("generator", {})), "k")


def _fresh_interpreter(code: str) -> str:
    """What `code` prints in a new interpreter (nothing this test process imported counts)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1]).stdout.strip()


def test_models_do_not_import_adaptation():
    """Deltas live with the models: loading a generator (delta or not) needs nothing from faceedit.adaptation."""
    assert _fresh_interpreter("import sys, faceedit.models, faceedit.models.delta, faceedit.checkpoints, "
                              "faceedit.artifacts; print(sorted(m for m in sys.modules "
                              "if m.startswith('faceedit.adaptation')))") == "[]"


def test_the_header_reader_needs_no_torch():
    assert _fresh_interpreter("import sys, faceedit.artifacts, services.common.registry; "
                              "print('torch' in sys.modules)") == "False"
