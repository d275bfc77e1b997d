"""Latent arithmetic on W+ batches: conditioned directions, layer-selective edits, paths and strength clamping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from faceedit.editing.directions import PCABasis, check_direction, unit_rows
from faceedit.editing.layers import LayerSpec, resolve_layers
from faceedit.errors import InvalidInputError

EditMode = Literal["step", "distance"]

# Upstream edits use |strength| <= 3..5 (e4e, InterfaceGAN) in units of the unit normal; the demo
# zoo's recommended ranges are a few units too. Far beyond that the latent leaves W entirely.
MAX_STRENGTH = 100.0
MAX_FRAMES = 1000
_EPS = 1e-8  # upstream project_boundary's regulariser, kept so 2-condition results match it


def _as_direction(direction: Tensor, field_name: str) -> Tensor:
    if not isinstance(direction, Tensor):
        raise InvalidInputError(field_name, f"expected a tensor, got {type(direction).__name__}")
    if direction.ndim == 2 and direction.shape[0] == 1:
        direction = direction[0]  # upstream's [1, D]
    return unit_rows(direction, field_name)


def condition(primary: Tensor, conditions: Sequence[Tensor] | Tensor) -> Tensor:
    """The primary unit normal made orthogonal to every condition normal, renormalised.

    Follows InterfaceGAN's `project_boundary`: closed forms for one and two conditions (with its
    1e-8 regulariser, so results match upstream files), a least-squares projection for more.
    Works on [D] or [L, D] (row by row); conditions are [D] each (or [L, D] matching the primary).
    """
    p = _as_direction(primary, "primary").double()
    if isinstance(conditions, Tensor):
        # A [k, D] stack of normals for a [D] primary; any other tensor is one condition.
        conditions = list(conditions) if conditions.ndim == 2 and p.ndim == 1 else [conditions]
    if len(conditions) == 0:
        return p.float()
    conds = []
    for i, c in enumerate(conditions):
        c = _as_direction(c, f"conditions[{i}]").double()
        if c.shape[-1] != p.shape[-1]:
            raise InvalidInputError(f"conditions[{i}]",
                                    f"dimension {c.shape[-1]} differs from the primary's {p.shape[-1]}")
        if c.ndim == 2 and c.shape != p.shape:
            raise InvalidInputError(f"conditions[{i}]",
                                    f"shape {list(c.shape)} does not broadcast to the primary's {list(p.shape)}")
        conds.append(c.expand_as(p))
    rows = p.reshape(-1, p.shape[-1])  # [R, D]
    c = torch.stack([x.reshape(-1, p.shape[-1]) for x in conds], dim=1)  # [R, k, D]
    pc = torch.einsum("rd,rkd->rk", rows, c)  # [R, k]
    if len(conds) == 1:
        projected = rows - pc[:, :1] * c[:, 0]
    elif len(conds) == 2:
        c12 = (c[:, 0] * c[:, 1]).sum(-1)  # [R]
        denom = 1 - c12**2 + _EPS
        a = (pc[:, 0] - pc[:, 1] * c12) / denom
        b = (pc[:, 1] - pc[:, 0] * c12) / denom
        projected = rows - a[:, None] * c[:, 0] - b[:, None] * c[:, 1]
    else:
        gram = c @ c.transpose(1, 2)  # [R, k, k]
        if bool((torch.linalg.matrix_rank(gram) < len(conds)).any()):
            raise InvalidInputError("conditions", "condition directions are linearly dependent")
        x = torch.linalg.solve(gram, pc)  # [R, k]
        projected = rows - torch.einsum("rk,rkd->rd", x, c)
    norms = projected.norm(dim=-1, keepdim=True)  # [R, 1]
    active = rows.norm(dim=-1, keepdim=True) > 0  # zero rows of a per-layer direction stay zero
    if bool((active & (norms < 1e-6)).any()):
        raise InvalidInputError("conditions", "the primary direction lies in the span of the conditions; "
                                              "nothing is left after removing them")
    return torch.where(active, projected / norms.clamp_min(1e-12), rows).reshape(p.shape).float()


@dataclass(frozen=True)
class Edit:
    """One attribute edit: move along `direction` by `strength` on `layers` (None = all).

    mode "step" adds strength·n (e4e / InterfaceGAN on W+); mode "distance" sets the signed
    distance to the hyperplane w·n + offset to `strength` (InterfaceGAN's linear_interpolate on W).
    `strength` may be a float or a [B] tensor (one per sample). `conditions` are normals the
    direction is made orthogonal to first (conditional manipulation).
    """

    direction: Tensor
    strength: float | Tensor
    layers: LayerSpec = None
    conditions: Sequence[Tensor] = ()
    mode: EditMode = "step"
    offset: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", _as_direction(self.direction, "direction"))
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if self.mode not in ("step", "distance"):
            raise InvalidInputError("mode", f"must be 'step' or 'distance', got {self.mode!r}")
        strength = torch.as_tensor(self.strength, dtype=torch.float32) if not isinstance(self.strength, Tensor) \
            else self.strength.detach().float()
        if strength.ndim > 1:
            raise InvalidInputError("strength", f"expected a number or a [B] tensor, got shape {list(strength.shape)}")
        if not bool(torch.isfinite(strength).all()):
            raise InvalidInputError("strength", "is NaN or infinite")
        if bool((strength.abs() > MAX_STRENGTH).any()):
            raise InvalidInputError("strength",
                                    f"|strength| must be <= {MAX_STRENGTH:g}, got {strength.abs().max().item():g}")
        if not isinstance(self.offset, (int, float)) or not abs(self.offset) < float("inf"):
            raise InvalidInputError("offset", f"must be a finite number, got {self.offset!r}")

    def resolved_direction(self) -> Tensor:
        """The direction after conditioning, [D] or [L, D], unit rows."""
        return condition(self.direction, self.conditions) if self.conditions else self.direction

    def with_strength(self, strength: float | Tensor) -> Edit:
        return Edit(self.direction, strength, self.layers, self.conditions, self.mode, self.offset)


def check_latents(ws: Tensor, field_name: str = "ws") -> None:
    """W+ latents from a caller: [B, n_latent, D], floating point, finite."""
    if not isinstance(ws, Tensor):
        raise InvalidInputError(field_name, f"expected a tensor, got {type(ws).__name__}")
    if ws.ndim != 3:
        raise InvalidInputError(field_name, f"expected W+ of shape [B, n_latent, D], got {list(ws.shape)}")
    if ws.shape[0] == 0:
        raise InvalidInputError(field_name, "batch is empty")
    if not ws.is_floating_point():
        raise InvalidInputError(field_name, f"expected a floating-point tensor, got {ws.dtype}")
    if not bool(torch.isfinite(ws).all()):
        raise InvalidInputError(field_name, "contains NaN or infinite values")


def _strengths(edit: Edit, batch: int, ws: Tensor) -> Tensor:
    strength = torch.as_tensor(edit.strength, dtype=ws.dtype, device=ws.device)
    if strength.ndim == 1 and strength.shape[0] not in (1, batch):
        raise InvalidInputError("strength", f"has {strength.shape[0]} values for a batch of {batch}")
    return strength.reshape(-1).expand(batch)  # [B]


def apply_edits(ws: Tensor, edits: Edit | Sequence[Edit]) -> Tensor:
    """Edited copy of W+ latents [B, n_latent, D]; several edits apply in order."""
    check_latents(ws)
    batch, n_latent, dim = ws.shape
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    out = ws.clone()
    for i, edit in enumerate(edits):
        if not isinstance(edit, Edit):
            raise InvalidInputError(f"edits[{i}]", f"expected an Edit, got {type(edit).__name__}")
        direction = edit.resolved_direction().to(ws)
        check_direction(direction, n_latent, dim, field=f"edits[{i}].direction")
        rows = direction.expand(n_latent, dim) if direction.ndim == 1 else direction  # [L, D]
        mask = torch.zeros(n_latent, dtype=ws.dtype, device=ws.device)
        mask[resolve_layers(edit.layers, n_latent, field=f"edits[{i}].layers")] = 1.0
        strength = _strengths(edit, batch, ws)  # [B]
        if edit.mode == "step":
            amount = strength[:, None].expand(batch, n_latent)  # [B, L]
        else:
            distance = (out * rows).sum(-1) + edit.offset  # [B, L]
            amount = strength[:, None] - distance
        out = out + (amount * mask)[:, :, None] * rows  # [B, L, D]
    assert out.shape == ws.shape
    return out


def edit_path(ws: Tensor, edits: Edit | Sequence[Edit], n_frames: int, start: float = 0.0,
              end: float = 1.0) -> Tensor:
    """Frames [n_frames, B, L, D]: each edit applied at strength·t for t from `start` to `end`.

    With start=-1, end=1 an edit of strength 3 sweeps -3 … 3. All frames go through one batched
    apply_edits call (strengths per sample).
    """
    check_latents(ws)
    if not isinstance(n_frames, int) or not 2 <= n_frames <= MAX_FRAMES:
        raise InvalidInputError("n_frames", f"must be an int in [2, {MAX_FRAMES}], got {n_frames!r}")
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    for e in edits:
        if e.mode != "step":
            raise InvalidInputError("mode", "paths scale step edits; for distance edits, pass the distances "
                                            "as per-sample strengths")
    batch = ws.shape[0]
    ts = torch.linspace(start, end, n_frames, dtype=ws.dtype)  # [F]
    stacked = ws.unsqueeze(0).expand(n_frames, *ws.shape).reshape(n_frames * batch, *ws.shape[1:])  # [F·B, L, D]
    scaled = []
    for e in edits:
        base = torch.as_tensor(e.strength, dtype=ws.dtype).reshape(-1).expand(batch)  # [B]
        scaled.append(e.with_strength((ts[:, None] * base[None, :]).reshape(-1)))  # [F·B]
    frames = apply_edits(stacked, scaled)
    return frames.reshape(n_frames, *ws.shape)


def latent_path(ws_from: Tensor, ws_to: Tensor, n_frames: int) -> Tensor:
    """Linear interpolation [n_frames, B, L, D] between two W+ batches (both ends included)."""
    check_latents(ws_from, "ws_from")
    check_latents(ws_to, "ws_to")
    if ws_from.shape != ws_to.shape:
        raise InvalidInputError("ws_to", f"shape {list(ws_to.shape)} differs from ws_from's {list(ws_from.shape)}")
    if not isinstance(n_frames, int) or not 2 <= n_frames <= MAX_FRAMES:
        raise InvalidInputError("n_frames", f"must be an int in [2, {MAX_FRAMES}], got {n_frames!r}")
    ts = torch.linspace(0, 1, n_frames, dtype=ws_from.dtype).reshape(-1, 1, 1, 1)  # [F, 1, 1, 1]
    return ws_from.unsqueeze(0) + ts * (ws_to - ws_from).unsqueeze(0)


def clamp_strengths(ws: Tensor, edit: Edit, distance_range: tuple[float, float], w_avg: Tensor,
                    psi: float = 1.0) -> Tensor:
    """Per-sample strengths [B] of a step edit, limited so no sample leaves the data's distance range.

    `distance_range` is where the training population lies along the normal (a boundary's
    metadata records it). Truncation by `psi` shrinks that population towards w_avg, so the
    allowed range shrinks with it: d_avg + psi·(range − d_avg). A strength is only ever reduced
    towards 0, never reversed, even for a sample already outside the range.
    """
    check_latents(ws)
    if edit.mode != "step":
        raise InvalidInputError("mode", "clamping applies to step edits")
    if not 0.0 < psi <= 1.0:
        raise InvalidInputError("psi", f"must be in (0, 1], got {psi}")
    low, high = (float(x) for x in distance_range)
    if not low < high:
        raise InvalidInputError("distance_range", f"needs low < high, got {distance_range}")
    direction = edit.resolved_direction().to(ws)
    check_direction(direction, ws.shape[1], ws.shape[2])
    rows = direction.expand(ws.shape[1], ws.shape[2]) if direction.ndim == 1 else direction  # [L, D]
    layers = resolve_layers(edit.layers, ws.shape[1])
    distance = ((ws[:, layers] * rows[layers]).sum(-1) + edit.offset).mean(1)  # [B]
    d_avg = float((w_avg.to(ws) * rows[layers]).sum(-1).mean()) + edit.offset
    low_t, high_t = d_avg + psi * (low - d_avg), d_avg + psi * (high - d_avg)
    strength = _strengths(edit, ws.shape[0], ws)
    lower = torch.clamp(low_t - distance, max=0.0)
    upper = torch.clamp(high_t - distance, min=0.0)
    return torch.minimum(torch.maximum(strength, lower), upper)


def ganspace_edit(ws: Tensor, basis: PCABasis, component: int, value: float, layers: LayerSpec = None) -> Tensor:
    """e4e's GANSpace edit: *set* the PCA coordinate (in std units, read off layer 0) to `value` on `layers`."""
    check_latents(ws)
    if ws.shape[2] != basis.mean.shape[0]:
        raise InvalidInputError("ws", f"latent dim {ws.shape[2]} differs from the PCA basis' {basis.mean.shape[0]}")
    if not abs(value) <= MAX_STRENGTH:
        raise InvalidInputError("value", f"must be finite with |value| <= {MAX_STRENGTH:g}, got {value}")
    comp = basis.direction(component).to(ws)  # [D]
    std = basis.std[component].to(ws)
    coord = ((ws[:, 0] - basis.mean.to(ws)) @ comp) / std  # [B]
    delta = ((value - coord) * std)[:, None] * comp[None, :]  # [B, D]
    out = ws.clone()
    out[:, resolve_layers(layers, ws.shape[1])] += delta[:, None, :]
    return out
