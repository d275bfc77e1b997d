"""Edit quality on a generator + attribute scorer: success rate, entanglement (plain and conditioned), drift."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from faceedit.editing.boundary import Boundary
from faceedit.editing.ops import Edit, apply_edits
from faceedit.errors import InvalidInputError, NotFoundError
from faceedit.models.stylegan2 import Generator
from faceedit.synth.scorer import Scorer


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

    def find(self, attribute: str, strength: float, conditioned: bool) -> EditMeasurement:
        for m in self.measurements:
            if m.attribute == attribute and m.strength == strength and (m.conditioned_on is not None) == conditioned:
                return m
        raise NotFoundError("measurement", f"{attribute} @ {strength:+.2f}")

    def table(self) -> str:
        """Markdown: one row per attribute and strength, plain vs conditioned on the most entangled attribute."""
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
        return "\n".join(lines)


def _rate(m: EditMeasurement) -> str:
    """Success rate with its sample count: a rate over few eligible samples says little."""
    return f"{m.success_rate:.2f} (n={m.n_eligible})" if m.n_eligible else "- (n=0)"


class _Measurer:
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


def evaluate_edits(generator: Generator, scorer: Scorer, boundaries: Mapping[str, Boundary], n: int = 256,
                   fractions: Sequence[float] = (-1.0, 1.0), margin: float = 0.1, seed: int = 0,
                   batch_size: int = 64, truncation: float = 1.0, progress: bool = False) -> EditReport:
    """Edit n seeded samples along each boundary at fractions of its recommended strength range.

    Every attribute is measured plain, then conditioned on the attribute its plain edit moved
    most (mean |Δ| over the strengths, among attributes that have a boundary).
    """
    unknown = sorted(set(boundaries) - set(scorer.config.attribute_names))
    if unknown:
        raise NotFoundError("attribute", unknown[0], f"the scorer knows {list(scorer.config.attribute_names)}")
    if not boundaries:
        raise InvalidInputError("boundaries", "no boundary to evaluate")
    if not 0.0 < margin < 1.0:
        raise InvalidInputError("margin", f"must be in (0, 1), got {margin}")
    if not fractions or any(f == 0 or not abs(f) <= 10 for f in fractions):
        raise InvalidInputError("fractions", f"must be non-zero multiples of the recommended strength, got {fractions}")
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ws = generator.broadcast(generator.truncate(generator.mapping(z), truncation)).contiguous()  # [N, L, D]
    measurer = _Measurer(generator, scorer, ws, batch_size)
    reference_drift = float((measurer.base_features - measurer.base_features.roll(1, 0)).pow(2).sum(1).mean())

    report = EditReport([], {a: b.accuracy for a, b in boundaries.items()}, reference_drift, n, margin)
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
