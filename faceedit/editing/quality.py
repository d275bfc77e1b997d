"""Edit quality on a generator + attribute scorer: success rate, entanglement (plain and conditioned), drift."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from faceedit.editing.boundary import DEFAULT_BATCH, MAX_SAMPLES, Boundary, check_count
from faceedit.editing.directions import check_direction
from faceedit.editing.layers import resolve_layers
from faceedit.editing.ops import Edit, apply_edits
from faceedit.errors import InvalidInputError, NotFoundError
from faceedit.models.stylegan2 import Generator
from faceedit.synth.scorer import Scorer

# Strengths are fractions of each boundary's recommended range; far past it the latent leaves the data.
MAX_FRACTION = 10.0


@dataclass
class EditMeasurement:
    """One (attribute, strength, conditioning) cell; changes are in units of each attribute's range."""

    attribute: str
    strength: float
    conditioned_on: str | None
    success_rate: float  # among samples with room to move `margin` the requested way
    n_eligible: int
    target_change: float  # mean signed change of the target
    entanglement: dict[str, float]  # mean signed change of every other attribute
    drift: float  # mean scorer-feature distance edited vs original (0 same, 2 opposite)


@dataclass
class EditReport:
    measurements: list[EditMeasurement]
    accuracies: dict[str, float]
    reference_drift: float  # the same distance between two different faces, for scale
    n_samples: int
    margin: float
    most_entangled: dict[str, str] = field(default_factory=dict)
    truncation: float = 1.0
    seed: int = 0
    attribute_names: list[str] = field(default_factory=list)  # the scorer's, in its order (matrix columns)

    def find(self, attribute: str, strength: float, conditioned: bool) -> EditMeasurement:
        for m in self.measurements:
            if m.attribute == attribute and m.strength == strength and (m.conditioned_on is not None) == conditioned:
                return m
        raise NotFoundError("measurement", f"{attribute} @ {strength:+.2f}")

    def conditioning_effect(self) -> dict[str, dict[str, Any]]:
        """Per attribute: mean |Δ| of its most entangled attribute over the strengths, plain vs
        conditioned on it, and whether conditioning lowered it (reported either way)."""
        effect = {}
        for attribute, other in self.most_entangled.items():
            plain = [abs(m.entanglement[other]) for m in self.measurements
                     if m.attribute == attribute and m.conditioned_on is None]
            cond = [abs(m.entanglement[other]) for m in self.measurements
                    if m.attribute == attribute and m.conditioned_on == other]
            if plain and cond:
                before, after = sum(plain) / len(plain), sum(cond) / len(cond)
                effect[attribute] = {"condition": other, "plain": before, "conditioned": after,
                                     "lowered": after < before}
        return effect

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (a rate over no eligible sample is null, not NaN), for model cards."""
        return _json_safe({
            "n_samples": self.n_samples, "margin": self.margin, "truncation": self.truncation, "seed": self.seed,
            "attributes": self.attribute_names, "reference_drift": self.reference_drift, "accuracies": self.accuracies,
            "most_entangled": self.most_entangled, "conditioning_effect": self.conditioning_effect(),
            "measurements": [vars(m) for m in self.measurements]})

    def table(self) -> str:
        """Markdown: one row per attribute and strength, plain vs conditioned on the most entangled
        attribute; a line on where conditioning helped; the full entanglement matrix."""
        lines = [
            f"Edit quality on {self.n_samples} samples; success = target moves ≥ {self.margin:g}·range the "
            f"requested way, among the n samples with room to move that far; Δ = mean signed change / attribute range; "
            f"drift = scorer-feature distance (two different faces: {self.reference_drift:.3f}).",
            "",
            "| attribute | val. acc. | strength | success | Δ target | most entangled | Δ it | success (cond.) "
            "| Δ it (cond.) | drift |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.measurements:
            if m.conditioned_on is not None:
                continue
            other = self.most_entangled.get(m.attribute)
            cond = next((c for c in self.measurements if c.attribute == m.attribute and c.strength == m.strength
                         and c.conditioned_on is not None), None)
            lines.append(
                f"| {m.attribute} | {self.accuracies.get(m.attribute, float('nan')):.3f} | {m.strength:+.2f} "
                f"| {_rate(m)} | {m.target_change:+.3f} | {other or '-'} "
                f"| {m.entanglement.get(other, float('nan')):+.3f} | "
                + (f"{_rate(cond)} | {cond.entanglement[other]:+.3f}" if cond else "- | -")
                + f" | {m.drift:.3f} |")
        effect = self.conditioning_effect()
        if effect:
            worse = [f"{a} (|Δ {e['condition']}| {e['plain']:.3f} → {e['conditioned']:.3f})"
                     for a, e in effect.items() if not e["lowered"]]
            lines += ["", f"Conditioning on the most entangled attribute lowered its mean |Δ| for "
                          f"{len(effect) - len(worse)} of {len(effect)} attributes"
                      + (f"; it did not for {', '.join(worse)}." if worse else ".")]
        lines += ["", *self.matrix()]
        return "\n".join(lines)

    def matrix(self) -> list[str]:
        """Markdown rows: Δ of every attribute (columns) for each plain edit at its largest positive strength."""
        rows = {}
        for m in self.measurements:
            if m.conditioned_on is None and m.strength > 0 and m.strength >= rows.get(m.attribute, m).strength:
                rows[m.attribute] = m
        if not rows:
            return []
        first = next(iter(rows.values()))
        columns = self.attribute_names or [first.attribute, *first.entanglement]
        lines = ["Entanglement: Δ of each attribute (column) when editing the row's attribute at the largest "
                 "positive strength (the diagonal is the target).", "",
                 "| edit | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for attribute, m in rows.items():
            values = {**m.entanglement, attribute: m.target_change}
            cells = [f"{values.get(c, float('nan')):+.3f}" for c in columns]
            cells = [f"**{cell}**" if c == attribute else cell for c, cell in zip(columns, cells)]
            lines.append(f"| {attribute} {m.strength:+.2f} | " + " | ".join(cells) + " |")
        return lines


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _rate(m: EditMeasurement) -> str:
    """Success rate with its sample count: a rate over few eligible samples says little."""
    return f"{m.success_rate:.2f} (n={m.n_eligible})" if m.n_eligible else "- (n=0)"


class EditMeasurer:
    """Scores (and embeds) edited latents in batches, against the unedited baseline."""

    def __init__(self, generator: Generator, scorer: Scorer, ws: Tensor, batch_size: int):
        self.generator, self.scorer, self.ws, self.batch_size = generator, scorer, ws, batch_size
        cfg = scorer.config
        self.names = list(cfg.attribute_names)
        self.span = torch.tensor([hi - lo for lo, hi in zip(cfg.attribute_lows, cfg.attribute_highs)])  # [A]
        self.low = torch.tensor(cfg.attribute_lows)
        self.high = torch.tensor(cfg.attribute_highs)
        self.base_scores, self.base_features = self.run(ws)

    def run(self, ws: Tensor) -> tuple[Tensor, Tensor]:
        """ws [N, L, D] → attribute scores [N, A] and unit features [N, F]."""
        scores, feats = [], []
        with torch.inference_mode():
            for start in range(0, ws.shape[0], self.batch_size):
                images = self.generator.synthesis(ws[start:start + self.batch_size])
                out = self.scorer.logits(self.scorer.prepare(images), prepared=True)
                values = self.scorer.to_scores(out)
                scores.append(torch.stack([values[n] for n in self.names], dim=1))
                feats.append(F.normalize(out["features"], dim=1))
        return torch.cat(scores), torch.cat(feats)

    def measure(self, attribute: str, edit: Edit, margin: float, conditioned_on: str | None) -> EditMeasurement:
        scores, feats = self.run(apply_edits(self.ws, edit))
        a = self.names.index(attribute)
        change = (scores - self.base_scores) / self.span  # [N, A]
        sign = 1.0 if float(edit.strength) > 0 else -1.0
        start = self.base_scores[:, a]
        # A face already at the top of the scale cannot move further up: count only those with room.
        room = (self.high[a] - start if sign > 0 else start - self.low[a]) / self.span[a] >= margin
        moved = sign * change[:, a] >= margin
        eligible = int(room.sum())
        success = float((moved & room).sum()) / eligible if eligible else float("nan")
        return EditMeasurement(
            attribute=attribute, strength=float(edit.strength), conditioned_on=conditioned_on,
            success_rate=success, n_eligible=eligible, target_change=float(change[:, a].mean()),
            entanglement={n: float(change[:, i].mean()) for i, n in enumerate(self.names) if i != a},
            drift=float((feats - self.base_features).pow(2).sum(1).mean()))


def evaluate_edits(generator: Generator, scorer: Scorer, boundaries: Mapping[str, Boundary], n: int = 192,
                   fractions: Sequence[float] = (-1.0, 1.0), margin: float = 0.1, seed: int = 0,
                   batch_size: int = DEFAULT_BATCH, truncation: float = 1.0, progress: bool = False) -> EditReport:
    """Edit n seeded samples along each boundary at fractions of its recommended strength range.

    Every attribute is measured plain, then conditioned on the attribute its plain edit moved
    most (mean |Δ| over the strengths, among attributes that have a boundary).
    """
    unknown = sorted(set(boundaries) - set(scorer.config.attribute_names))
    if unknown:
        raise NotFoundError("attribute", unknown[0], f"the scorer knows {list(scorer.config.attribute_names)}")
    if not boundaries:
        raise InvalidInputError("boundaries", "no boundary to evaluate")
    for name, b in boundaries.items():  # before any sampling: a foreign boundary fails fast, named
        check_direction(b.normal, generator.n_latent, generator.style_dim, field=f"boundaries[{name}]")
        resolve_layers(b.metadata.get("layers"), generator.n_latent, field=f"boundaries[{name}].layers")
        _ = b.strength_range  # raises if the recommended range is missing or malformed
    n = check_count(n, "n", 2, MAX_SAMPLES)
    batch_size = check_count(batch_size, "batch_size", 1, 4096)
    if not 0.0 < truncation <= 1.0:
        raise InvalidInputError("truncation", f"must be in (0, 1], got {truncation}")
    if not 0.0 < margin < 1.0:
        raise InvalidInputError("margin", f"must be in (0, 1), got {margin}")
    if not fractions or any(f == 0 or not abs(f) <= MAX_FRACTION for f in fractions):
        raise InvalidInputError("fractions", f"must be non-zero multiples of the recommended strength, got {fractions}")
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ws = generator.broadcast(generator.truncate(generator.mapping(z), truncation)).contiguous()  # [N, L, D]
    measurer = EditMeasurer(generator, scorer, ws, batch_size)
    reference_drift = float((measurer.base_features - measurer.base_features.roll(1, 0)).pow(2).sum(1).mean())

    report = EditReport([], {a: b.accuracy for a, b in boundaries.items()}, reference_drift, n, margin,
                        truncation=float(truncation), seed=int(seed),
                        attribute_names=list(scorer.config.attribute_names))
    for attribute in tqdm(list(boundaries), disable=not progress, desc="evaluating edits", unit="attribute"):
        boundary = boundaries[attribute]
        layers = boundary.metadata.get("layers")
        low, high = boundary.strength_range
        strengths = [f * (high if f > 0 else -low) for f in fractions]
        plain = [measurer.measure(attribute, Edit(boundary.normal, s, layers=layers), margin, None)
                 for s in strengths]
        report.measurements.extend(plain)
        candidates = [a for a in boundaries if a != attribute]
        if not candidates:
            continue
        worst = max(candidates, key=lambda a: sum(abs(m.entanglement[a]) for m in plain))
        report.most_entangled[attribute] = worst
        conditions = [boundaries[worst].normal]
        report.measurements.extend(
            measurer.measure(attribute, Edit(boundary.normal, s, layers=layers, conditions=conditions), margin, worst)
            for s in strengths)
    return report
