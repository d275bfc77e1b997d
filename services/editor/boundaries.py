"""Each generator family's boundary set (faceedit.editing.BoundarySet), looked up by attribute name and space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from faceedit.errors import InvalidInputError, NotFoundError
from services.common import protocol
from services.editor.catalog import BaseGenerator

if TYPE_CHECKING:
    from faceedit.editing import BoundarySet, BoundarySetSpec, DirectionEntry


class BoundaryRegistry:
    """Each family's boundary set (faceedit.editing.BoundarySet); an adapted generator edits with its base's."""

    def __init__(self, families: Mapping[str, BoundarySet] | None = None):
        self.families: dict[str, BoundarySet] = dict(families or {})

    @staticmethod
    def read_sets(specs: Sequence[BoundarySetSpec], base: BaseGenerator) -> BoundarySet:
        """Every file of the specs, checked against the base's latent space and weights; one unusable
        file fails the whole load, naming it (a start-up error, never a silently missing attribute)."""
        from faceedit.editing import BoundarySet, load_boundary_set

        if not specs:
            return BoundarySet()
        return load_boundary_set(specs, base.n_latent, base.style_dim, base.sha256)

    def add_family(self, family: str, boundaries: BoundarySet) -> None:
        self.families[family] = boundaries

    def attributes(self, family: str) -> BoundarySet:
        from faceedit.editing import BoundarySet

        return self.families.get(family) or BoundarySet()

    def get(self, family: str, name: str, field_name: str, conditions: Sequence[str] = (),
            space: str = "") -> DirectionEntry:
        """The entry for `name` in `space` ("" = W when it has one, else Z); with `conditions`, a
        precomputed conditional variant of that space if the set has one for exactly those names."""
        if len(name) > protocol.MAX_ID_LENGTH:
            raise InvalidInputError(field_name, f"longer than {protocol.MAX_ID_LENGTH} characters")
        boundaries = self.attributes(family)
        if name not in boundaries:
            raise NotFoundError("attribute", name, f"{field_name}; known: {boundaries.names()}")
        spaces = boundaries.spaces(name)
        if space and space not in spaces:
            raise InvalidInputError(field_name.replace(".attribute", ".space"),
                                    f"{name[:100]!r} has boundaries in {list(spaces)}, not {space[:10]!r}")
        space = space or spaces[0]  # W first
        return boundaries.variant(name, conditions, space) or boundaries.get(name, space)
