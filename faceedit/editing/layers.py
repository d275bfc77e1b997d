"""W+ layer selection: the named groups coarse/middle/fine and explicit index lists, for any n_latent."""

from __future__ import annotations

import re
from collections.abc import Sequence

from faceedit.errors import InvalidInputError

LayerSpec = str | int | Sequence[int] | range | None

GROUP_NAMES = ("coarse", "middle", "fine")

# Upstream's split for 18 W+ layers (1024 px): coarse 0-3, middle 4-7, fine 8-17, i.e. the layers
# that feed the 4-8 px, 16-32 px and 64-1024 px blocks. Other sizes keep the same fractions.
_UPSTREAM_LAYERS = 18
_UPSTREAM_CUTS = (4, 8)
# A layer spec is user input: its length and every number in it are checked against n_latent
# before any list is built ("0-2147483648" once expanded to 2^31 indices and killed a server).
MAX_SPEC_CHARS = 256
_ECHO = 40  # characters of a bad part quoted back in the error
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also accepts '²', which int() refuses


def layer_groups(n_latent: int) -> dict[str, range]:
    """coarse/middle/fine as index ranges, the 18-layer split scaled to `n_latent`.

    The cuts are round(n·4/18) and round(n·8/18), each group kept non-empty: exactly upstream's
    0-3 / 4-7 / 8-17 at 18 layers, 0-1 / 2-3 / 4-9 at 10 (64 px), 0-1 / 2-3 / 4-7 at 8 (32 px).
    """
    if n_latent < len(GROUP_NAMES):
        raise InvalidInputError("n_latent", f"need at least {len(GROUP_NAMES)} layers for named groups, got {n_latent}")
    first = min(max(1, round(n_latent * _UPSTREAM_CUTS[0] / _UPSTREAM_LAYERS)), n_latent - 2)
    second = min(max(first + 1, round(n_latent * _UPSTREAM_CUTS[1] / _UPSTREAM_LAYERS)), n_latent - 1)
    return {"coarse": range(0, first), "middle": range(first, second), "fine": range(second, n_latent)}


def resolve_layers(spec: LayerSpec, n_latent: int, field: str = "layers") -> list[int]:
    """Sorted W+ indices for a layer spec; None means every layer.

    A spec is a group name ("coarse", "middle+fine"), a string of indices and ranges ("0-3,8"),
    an int, or a sequence of ints.
    """
    if spec is None:
        return list(range(n_latent))
    if isinstance(spec, str):
        if len(spec) > MAX_SPEC_CHARS:
            raise InvalidInputError(field, f"is {len(spec)} characters long; at most {MAX_SPEC_CHARS}")
        indices = _parse_layer_string(spec, n_latent, field)
    elif isinstance(spec, int) and not isinstance(spec, bool):
        indices = [spec]
    elif isinstance(spec, (Sequence, range)):
        if len(spec) > 4 * n_latent:
            raise InvalidInputError(field, f"lists {len(spec)} indices; n_latent is {n_latent}")
        indices = []
        for item in spec:
            if isinstance(item, bool) or not isinstance(item, int):
                raise InvalidInputError(field, f"layer indices must be ints, got {item!r}")
            indices.append(item)
    else:
        raise InvalidInputError(field,
                                f"expected a group name, index string or list of ints, got {type(spec).__name__}")
    if not indices:
        raise InvalidInputError(field, "selects no layer")
    bad = [i for i in indices if not 0 <= i < n_latent]
    if bad:
        raise InvalidInputError(field, f"indices {bad[:5]} outside [0, {n_latent - 1}] (n_latent={n_latent})")
    return sorted(set(indices))


def _parse_layer_string(spec: str, n_latent: int, field: str) -> list[int]:
    groups = layer_groups(n_latent)
    indices: list[int] = []
    for part in spec.replace("+", ",").split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part in groups:
            indices.extend(groups[part])
            continue
        low_text, dash, high_text = part.partition("-")
        if not (_DIGITS.fullmatch(low_text.strip()) and (not dash or _DIGITS.fullmatch(high_text.strip()))):
            raise InvalidInputError(field, f"cannot read {part[:_ECHO]!r}; use {'/'.join(GROUP_NAMES)}, "
                                           "indices like '0-3,8', or a list of ints")
        # Compared as text lengths first: a 30-digit number is out of range without becoming an int.
        bounds = [t.strip() for t in (low_text, high_text) if t.strip()]
        if any(len(t) > 6 or int(t) >= n_latent for t in bounds):
            raise InvalidInputError(field, f"{part[:_ECHO]!r} goes outside [0, {n_latent - 1}] (n_latent={n_latent})")
        low, high = int(bounds[0]), int(bounds[-1])
        if high < low:
            raise InvalidInputError(field, f"{part[:_ECHO]!r} is a range that runs backwards")
        indices.extend(range(low, high + 1))
    return indices
