"""GANSpace and SeFa as named boundary-set entries (ganspace:K, sefa:K): computed, stored, listed, edited with."""

from __future__ import annotations

import pytest
import torch

from faceedit.editing import BoundarySetSpec, apply_edits, load_boundary_set
from faceedit.editing.directions import load_ganspace
from faceedit.editing.ops import Edit
from faceedit.editing.unsupervised import compute_ganspace, save_ganspace, sefa_entries
from faceedit.errors import InvalidInputError

from factories import tiny_generator


@pytest.fixture(scope="module")
def generator():
    return tiny_generator().eval()


def test_ganspace_components_are_orthonormal_by_decreasing_variance_and_round_trip(generator, tmp_path):
    basis = compute_ganspace(generator, n=3000, components=5)
    gram = basis.components @ basis.components.t()
    torch.testing.assert_close(gram, torch.eye(5), atol=1e-4, rtol=0)
    assert (basis.std[:-1] >= basis.std[1:]).all() and (basis.std > 0).all()
    # The std is the spread of sampled w along each component.
    with torch.no_grad():
        w = generator.mapping(torch.randn(3000, generator.style_dim, generator=torch.Generator().manual_seed(9)))
    measured = ((w - basis.mean) @ basis.components.t()).std(0)
    torch.testing.assert_close(measured, basis.std, rtol=0.1, atol=0)
    path = save_ganspace(tmp_path / "ganspace.pt", basis)
    loaded = load_ganspace(path)
    torch.testing.assert_close(loaded.components, basis.components)
    entries = load_boundary_set([BoundarySetSpec(str(path), components="all")], generator.n_latent,
                                generator.style_dim)
    assert entries.names() == [f"ganspace:{k}" for k in range(5)]
    first = entries.get("ganspace:0")
    assert first.recommended == pytest.approx((-2 * float(basis.std[0]), 2 * float(basis.std[0])))
    assert first.format == "ganspace" and first.source.endswith("#component=0")


def test_sefa_entries_are_unit_directions_that_move_the_image(generator):
    entries = sefa_entries(generator, 3)
    assert [e.name for e in entries] == ["sefa:0", "sefa:1", "sefa:2"]
    for e in entries:
        assert e.format == "sefa" and e.space == "w" and e.accuracy is None
        assert float(e.direction.norm()) == pytest.approx(1.0, abs=1e-5)
        assert e.recommended[0] == -e.recommended[1] and e.recommended[1] > 0
        assert float(e.direction[e.direction.abs().argmax()]) > 0  # the sign fixed: same on every host
    ws = generator.broadcast(generator.mapping(torch.randn(2, generator.style_dim)))
    with torch.no_grad():
        moved = generator.synthesis(apply_edits(ws, [Edit(entries[0].direction, entries[0].recommended[1])]))
        assert not torch.allclose(moved, generator.synthesis(ws), atol=1e-3)


@pytest.mark.parametrize("call, field", [
    (lambda g: compute_ganspace(g, n=1000, components=100), "components"),
    (lambda g: compute_ganspace(g, n=3, components=3), "n"),
    (lambda g: sefa_entries(g, 0), "sefa"),
    (lambda g: BoundarySetSpec("x.pt", components="some"), "components"),
])
def test_bad_settings_name_the_field(generator, call, field):
    with pytest.raises(InvalidInputError) as info:
        call(generator)
    assert info.value.field == field
