"""How well text edits move what their prompt names (scorer change, success rate), next to the attribute's boundary."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from faceedit.editing.boundary import Boundary
from faceedit.editing.ops import Edit
from faceedit.editing.quality import EditMeasurer
from faceedit.editing.text import ChannelRelevance, ImageTextModel, apply_text_direction, text_direction
from faceedit.errors import InvalidInputError
from faceedit.models.stylegan2 import Generator
from faceedit.synth.scorer import Scorer

MARGIN = 0.1  # success: the named attribute moves at least this fraction of its range the prompt's way


@dataclass(frozen=True)
class TextPrompt:
    text: str
    target: str  # a scorer attribute, or "style:<name>" for an artistic style's probability
    sign: float  # +1: the prompt asks for more of it, -1 for less (yaw: -1 is the viewer's left)


# The prompts the product promises, each with what it should move.
PROMPTS = (
    TextPrompt("an old face", "age", 1.0),
    TextPrompt("a smiling face", "smile", 1.0),
    TextPrompt("a face with glasses", "glasses", 1.0),
    TextPrompt("an angry face", "anger", 1.0),
    TextPrompt("a crying face", "crying", 1.0),
    TextPrompt("a watercolor painting of a face", "style:watercolor", 1.0),
    TextPrompt("a face turned to the left", "yaw", -1.0),
)


@dataclass
class TextEditMeasurement:
    prompt: str
    target: str
    success_rate: float | None  # among samples with room to move; None: the scorer cannot measure it
    change: float | None  # mean change of the target the prompt's way, in units of its range
    channels: int  # style channels the direction moves (the threshold's doing)
    boundary_success: float | None  # the InterfaceGAN boundary of the same attribute, same direction
    boundary_change: float | None
    note: str = ""
    # Entanglement: the other attribute the edit moved most (mean |Δ| in units of its range) and its mean Δ.
    side_attribute: str = ""
    side_change: float | None = None


@dataclass
class TextEditReport:
    measurements: list[TextEditMeasurement]
    n_samples: int
    strength: float
    threshold: float
    neutral: str

    def table(self) -> str:
        lines = [f"Text edits on {self.n_samples} samples (α = {self.strength:g}, β = {self.threshold:g}, neutral "
                 f"{self.neutral!r}); success = the named attribute moves ≥ {MARGIN:g}·range the prompt's way, "
                 "among samples with room; the boundary columns edit the same samples at the end of its "
                 "recommended range.", "",
                 "| prompt | measures | success | Δ (range) | channels | boundary success | boundary Δ "
                 "| moved most besides | note |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for m in self.measurements:
            side = f"{m.side_attribute} {m.side_change:+.3f}" if m.side_change is not None else "-"
            lines.append(f"| {m.prompt} | {m.target} | {_fmt(m.success_rate)} | {_fmt(m.change, 3)} | {m.channels} "
                         f"| {_fmt(m.boundary_success)} | {_fmt(m.boundary_change, 3)} | {side} | {m.note} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _rate(change: Tensor, room: Tensor) -> float | None:
    """Success among the samples with room to move; None when none has (nothing to measure)."""
    eligible = int(room.sum())
    return float(((change >= MARGIN) & room).sum()) / eligible if eligible else None


def _largest_side_change(base: Mapping[str, Tensor], edited: Mapping[str, Tensor], span: Mapping[str, float],
                         target: str) -> tuple[str, float | None]:
    """The attribute other than `target` whose mean |change| (in units of its range) is largest, and its mean change."""
    moved = {a: (edited[a] - base[a]) / width for a, width in span.items() if a != target}  # name → [N]
    if not moved:
        return "", None
    name = max(moved, key=lambda a: float(moved[a].abs().mean()))
    return name, float(moved[name].mean())


def _scores(scorer: Scorer, images: Tensor) -> dict[str, Tensor]:
    with torch.inference_mode():
        return scorer.to_scores(scorer.logits(scorer.prepare(images), prepared=True))


def evaluate_text_edits(generator: Generator, clip: ImageTextModel, scorer: Scorer, relevance: ChannelRelevance,
                        boundaries: Mapping[str, Boundary], prompts: Sequence[TextPrompt] = PROMPTS, n: int = 64,
                        strength: float = 4.0, threshold: float = 0.1, neutral: str = "a face", seed: int = 1,
                        batch_size: int = 32) -> TextEditReport:
    """Each prompt's text edit on n seeded samples, scored, and the same attribute's boundary edit beside it."""
    if not 2 <= n <= 4096:
        raise InvalidInputError("n", f"must be in [2, 4096], got {n}")
    cfg = scorer.config
    names = list(cfg.attribute_names)
    span = {a: hi - lo for a, lo, hi in zip(names, cfg.attribute_lows, cfg.attribute_highs)}
    low = dict(zip(names, cfg.attribute_lows))
    high = dict(zip(names, cfg.attribute_highs))
    styles_known = list(cfg.style_names)
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    z = z.to(next(generator.parameters()).device)
    with torch.no_grad():
        ws = generator.broadcast(generator.mapping(z))  # [N, L, D]
        styles = generator.styles(ws)
        base_images = torch.cat([generator.synthesis(ws[i:i + batch_size]) for i in range(0, n, batch_size)])
    base = _scores(scorer, base_images)
    measurer = EditMeasurer(generator, scorer, ws, batch_size) if boundaries else None
    out = []
    for prompt in prompts:
        attribute, style = prompt.target, None
        if attribute.startswith("style:"):
            style = attribute.split(":", 1)[1]
        direction = text_direction(relevance, clip, prompt.text, neutral, threshold)
        moved = apply_text_direction(styles, relevance, direction, strength)
        with torch.no_grad():
            images = torch.cat([generator.synthesis_from_styles([s[i:i + batch_size] for s in moved])
                                for i in range(0, n, batch_size)])
        edited = _scores(scorer, images)
        channels = int((direction != 0).sum())
        side = _largest_side_change(base, edited, span, attribute)
        if style is not None:
            if style not in styles_known:
                out.append(TextEditMeasurement(prompt.text, attribute, None, None, channels, None, None,
                                               f"the scorer has no style {style!r}"))
                continue
            k = styles_known.index(style)
            change = prompt.sign * (edited["style_probs"][:, k] - base["style_probs"][:, k])  # [N]
            room = (base["style_probs"][:, k] <= 1 - MARGIN) if prompt.sign > 0 else base["style_probs"][:, k] >= MARGIN
            out.append(TextEditMeasurement(prompt.text, attribute, _rate(change, room), float(change.mean()),
                                           channels, None, None, "style probability; no boundary for styles", *side))
            continue
        if attribute not in names:
            out.append(TextEditMeasurement(prompt.text, attribute, None, None, channels, None, None,
                                           "no ground truth: the renderer has no such attribute yet"))
            continue
        change = prompt.sign * (edited[attribute] - base[attribute]) / span[attribute]  # [N]
        start = base[attribute]
        room = ((high[attribute] - start) if prompt.sign > 0 else (start - low[attribute])) / span[attribute] >= MARGIN
        rate = _rate(change, room)
        b_rate = b_change = None
        if measurer is not None and attribute in boundaries:
            boundary = boundaries[attribute]
            lo, hi = boundary.strength_range
            m = measurer.measure(attribute, Edit(boundary.normal, hi if prompt.sign > 0 else lo,
                                                 layers=boundary.metadata.get("layers")), MARGIN, None)
            b_rate, b_change = m.success_rate, prompt.sign * m.target_change
        out.append(TextEditMeasurement(prompt.text, attribute, rate, float(change.mean()), channels, b_rate,
                                       b_change, "", *side))
    return TextEditReport(out, n, strength, threshold, neutral)
