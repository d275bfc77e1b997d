"""`faceedit eval adaptation`: DIFA to one rendered artwork per style, measured with the attribute scorer."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from faceedit.adaptation.blob_cache import MemoryCache
from faceedit.adaptation.clip import ClipModel
from faceedit.adaptation.clip_mean import cached_source_clip_mean
from faceedit.adaptation.difa import AdaptationResult, adapt
from faceedit.adaptation.difa_config import DifaConfig
from faceedit.adaptation.difa_losses import reference_direction
from faceedit.adaptation.style_judge import StyleJudgement, alignment, clip_views, judge_style
from faceedit.editing.boundary import Boundary
from faceedit.editing.quality import evaluate_edits
from faceedit.errors import InvalidInputError
from faceedit.images import grid, to_pil, upscale
from faceedit.models.encoders import Encoder
from faceedit.models.stylegan2 import Generator
from faceedit.synth import STYLES, render_faces
from faceedit.synth.scorer import Scorer

ARTISTIC_STYLES: tuple[str, ...] = tuple(s for s in STYLES if s != "photo")
# Faithfulness compares what the face is (pose, expression, age, accessories). Colour attributes
# (skin tone, hair colour, background, lighting) are left out: a style may change them by design.
FAITHFUL_ATTRIBUTES = ("age", "smile", "mouth_open", "eyes_open", "yaw", "pitch", "glasses", "beard", "hair_length")
# DifaConfig fields an evaluation may not override: the models are passed in, not named.
_FIXED = ("clips", "iterations")


@dataclass(frozen=True)
class AdaptationEvalConfig:
    """Which artworks to adapt to and how many samples to measure each adapted generator on."""

    styles: tuple[str, ...] = ARTISTIC_STYLES
    iterations: int = 301  # upstream's schedule
    samples: int = 64  # w's scored on the base and each adapted generator
    edit_samples: int = 64  # w's edited per boundary and strength
    truncation: float = 0.7  # upstream shows adapted samples at truncation 0.5–0.7
    reference_seed: int = 0  # the artwork is face 0 of render_faces(1, reference_seed, style=…)
    seed: int = 0
    grid_samples: int = 6
    difa_settings: Mapping[str, Any] = field(default_factory=dict)  # DifaConfig overrides

    def __post_init__(self) -> None:
        object.__setattr__(self, "styles", tuple(self.styles))
        if not self.styles:
            raise InvalidInputError("styles", "name at least one artistic style")
        for style in self.styles:
            if style not in ARTISTIC_STYLES:
                raise InvalidInputError("styles", f"{style!r} is not an artistic style; choose from "
                                                  f"{', '.join(ARTISTIC_STYLES)}")
        for name in ("iterations", "samples", "edit_samples", "grid_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(name, f"must be a positive integer, got {value!r}")
        if self.samples < 2:
            raise InvalidInputError("samples", "diversity needs at least 2 samples")
        if not 0.0 < self.truncation <= 1.0:
            raise InvalidInputError("truncation", f"must be in (0, 1], got {self.truncation}")
        fixed = sorted(set(self.difa_settings) & set(_FIXED))
        if fixed:
            raise InvalidInputError(f"difa_settings.{fixed[0]}", "is set by the evaluation itself")
        self.difa_config()  # unknown or bad DIFA settings fail here, before any work

    def difa_config(self) -> DifaConfig:
        return DifaConfig.from_dict({**dict(self.difa_settings), "iterations": self.iterations, "clips": []})


@dataclass
class StyleResult:
    """One adaptation and its measurements; rates are fractions, distances squared unit-feature distances."""

    style: str
    iterations: int
    seconds: float
    style_rate: float  # adapted samples the scorer calls `style`
    base_style_rate: float  # base samples it calls `style` (the floor)
    faithfulness: float  # 1 − mean |Δattribute| / range between G_A(w) and G_B(w), FAITHFUL_ATTRIBUTES
    faithfulness_by_attribute: dict[str, float]
    diversity: float  # mean pairwise scorer-feature distance among adapted samples
    edit_success: float | None  # mean success of the boundary edits on the adapted generator
    edit_success_by_attribute: dict[str, float] = field(default_factory=dict)
    judge: list[JudgeView] = field(default_factory=list)  # one per CLIP DIFA used
    read_as: dict[str, float] = field(default_factory=dict)  # the scorer's style decisions on the adapted samples


@dataclass
class JudgeView:
    """What one of DIFA's CLIPs sees of the style (faceedit.adaptation.style_judge): is the style visible to
    it at all (separation d′ of photo vs style renders, globally and in the local loss's block tokens), does
    the one artwork point along it (alignment), and how far the adapted samples went (progress, 0..1)."""

    clip: str
    separation_global: float
    separation_tokens: float
    alignment: float
    progress_global: float
    progress_tokens: float
    separation_by_block: list[float]  # d′ in each transformer block's tokens: where the style becomes visible
    closest_style: str  # the other artistic style whose axis is most like this one's in the block tokens
    closest_cosine_global: float
    closest_cosine_tokens: float


@dataclass
class AdaptationEvalReport:
    results: list[StyleResult]
    base_diversity: float
    random_pair_faithfulness: float  # the same agreement between two different faces, for scale
    base_edit_success: float | None
    clip_mean_seconds: float  # once per (generator, CLIP); every adaptation after the first reuses it
    notes: list[str]
    config: AdaptationEvalConfig

    def table(self) -> str:
        """Markdown: one row per artistic style."""
        edits = "-" if self.base_edit_success is None else f"{self.base_edit_success:.2f}"
        lines = [
            f"DIFA, {self.config.iterations} iterations, one rendered artwork per style (reference seed "
            f"{self.config.reference_seed}); {self.config.samples} samples at truncation {self.config.truncation:g}. "
            f"Style = adapted samples the scorer classifies as the target style (base generator in brackets); "
            f"faithfulness = 1 − mean |Δ attribute| / range between G_A(w) and G_B(w) over "
            f"{', '.join(FAITHFUL_ATTRIBUTES)} (two different faces: {self.random_pair_faithfulness:.3f}); "
            f"diversity = mean pairwise scorer-feature distance (base: {self.base_diversity:.3f}); "
            f"edit success on the adapted generator (base: {edits}). The mean source CLIP embedding took "
            f"{self.clip_mean_seconds:.1f} s once, outside the per-adaptation times.",
            "",
            "| style | style rate (base) | faithfulness | diversity | edit success | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.results:
            success = "-" if r.edit_success is None else f"{r.edit_success:.2f}"
            lines.append(f"| {r.style} | {r.style_rate:.2f} ({r.base_style_rate:.2f}) | {r.faithfulness:.3f} "
                         f"| {r.diversity:.3f} | {success} | {r.seconds:.1f} |")
        lines += ["", "What DIFA's judge sees, per CLIP: d′ = how far it separates the same faces rendered as photos "
                  "and in the style (global embedding / mean block-"
                  f"{self.config.difa_config().clip_layer} tokens); alignment = cosine of the artwork's DIFA "
                  "direction with the style's axis; progress = fraction of the photo → style gap the adapted "
                  "samples crossed in that CLIP's eyes; closest other style = the artistic style whose axis is most "
                  "like this one's in those tokens (the local loss cannot tell the two apart when it is near 1).", "",
                  "| style | CLIP | d′ global | d′ tokens | alignment | progress global | progress tokens "
                  "| d′ tokens by block | closest other style (cos global / tokens) "
                  "| scorer reads the adapted samples as |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            read_as = ", ".join(f"{name} {rate:.2f}" for name, rate in sorted(r.read_as.items(), key=lambda x: -x[1])
                                if rate > 0)
            for j in r.judge:
                blocks = " / ".join(f"{d:.1f}" for d in j.separation_by_block)
                lines.append(f"| {r.style} | {j.clip} | {j.separation_global:.2f} | {j.separation_tokens:.2f} "
                             f"| {j.alignment:.2f} | {j.progress_global:.2f} | {j.progress_tokens:.2f} | {blocks} "
                             f"| {j.closest_style} ({j.closest_cosine_global:.2f} / {j.closest_cosine_tokens:.2f}) "
                             f"| {read_as} |")
        lines += [f"\n{note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        config = asdict(self.config)
        config["difa_settings"] = dict(self.config.difa_settings)
        return {"config": config, "difa_config": self.config.difa_config().to_dict(),
                "base_diversity": self.base_diversity, "random_pair_faithfulness": self.random_pair_faithfulness,
                "base_edit_success": self.base_edit_success, "clip_mean_seconds": self.clip_mean_seconds,
                "notes": self.notes, "results": [asdict(r) for r in self.results]}


# -- measurements ----------------------------------------------------------------------------------
def reference_artwork(style: str, seed: int, size: int) -> Tensor:
    """The target: one rendered face in `style`, [1, 3, size, size] in [-1, 1]."""
    images, _ = render_faces(1, seed=seed, size=size, style=style)
    return images


@torch.no_grad()
def score_images(scorer: Scorer, images: Tensor, batch: int = 32) -> tuple[dict[str, Tensor], Tensor]:
    """Scorer outputs (attributes on their scales, "style" index) [N] each, and unit features [N, F]."""
    scores: dict[str, list[Tensor]] = {}
    features = []
    for chunk in images.split(batch):
        out = scorer.logits(chunk)
        for name, value in scorer.to_scores(out).items():
            scores.setdefault(name, []).append(value)
        features.append(F.normalize(out["features"], dim=1))
    return {k: torch.cat(v) for k, v in scores.items()}, torch.cat(features)


def attribute_agreement(a: Mapping[str, Tensor], b: Mapping[str, Tensor], scorer: Scorer,
                        attributes: Sequence[str] = FAITHFUL_ATTRIBUTES) -> dict[str, float]:
    """Per attribute, 1 − mean |a − b| / (attribute range): 1 when every pair scores alike."""
    cfg = scorer.config
    out = {}
    for name in attributes:
        i = cfg.attribute_names.index(name)
        span = cfg.attribute_highs[i] - cfg.attribute_lows[i]
        out[name] = float(1.0 - ((a[name] - b[name]).abs() / span).mean())
    return out


def diversity(features: Tensor) -> float:
    """Mean squared distance between distinct unit feature vectors [N, F] (0: all alike, 2: orthogonal)."""
    n = features.shape[0]
    if n < 2:
        raise InvalidInputError("samples", "diversity needs at least 2 samples")
    squared = (2.0 - 2.0 * features @ features.t()).clamp_min(0.0)  # [N, N]
    return float(squared.sum() / (n * (n - 1)))  # the diagonal is 0


def edit_success(generator: Generator, scorer: Scorer, boundaries: Mapping[str, Boundary], n: int,
                 seed: int) -> tuple[float, dict[str, float]]:
    """Mean success rate of the plain boundary edits (both directions) and its value per attribute."""
    report = evaluate_edits(generator, scorer, boundaries, n=n, seed=seed)
    by_attribute: dict[str, list[float]] = {}
    for m in report.measurements:
        if m.conditioned_on is None and not math.isnan(m.success_rate):
            by_attribute.setdefault(m.attribute, []).append(m.success_rate)
    rates = {a: sum(v) / len(v) for a, v in by_attribute.items()}
    return (sum(rates.values()) / len(rates) if rates else float("nan")), rates


def sample_latents(generator: Generator, n: int, seed: int, truncation: float) -> Tensor:
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.broadcast(generator.truncate(generator.mapping(z), truncation)).contiguous()  # [N, L, D]


@torch.no_grad()
def synthesize(generator: Generator, ws: Tensor, batch: int = 16) -> Tensor:
    # Constant noise: base and adapted images of one w differ only by the adaptation.
    return torch.cat([generator.synthesis(chunk, noise_mode="const") for chunk in ws.split(batch)])


def before_after_grid(base_images: Tensor, references: Sequence[Tensor], adapted_images: Sequence[Tensor],
                      columns: int, cell: int = 128) -> Image.Image:
    """Row 0: a blank cell, then base samples G_A(w); one row per style: its artwork, then G_B(w) for the same w."""
    size = base_images.shape[-1]
    factor = max(1, cell // size)

    def cells(images: Tensor) -> list[Image.Image]:
        return [upscale(img, factor) for img in to_pil(images[:columns])]

    blank = Image.new("RGB", (size * factor, size * factor), (255, 255, 255))
    tiles = [blank, *cells(base_images)]
    for reference, adapted in zip(references, adapted_images):
        ref = F.interpolate(reference, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=reference.shape[-1] > size)
        tiles += [*cells(ref), *cells(adapted)]
    return grid(tiles, columns=columns + 1)


@torch.no_grad()
def judge_view(clip: ClipModel, style: str, judgements: Mapping[str, StyleJudgement], difa_config: DifaConfig,
               base: Generator, reference: Tensor, before: tuple[Tensor, Tensor], adapted_images: Tensor,
               cache: MemoryCache) -> JudgeView:
    """One CLIP's view of one adaptation (`judgements`: that CLIP's of every artistic style); `before` is its
    clip_views of the base images, which the adapted images [N, 3, H, W] render again from the same w's."""
    judgement = judgements[style]
    source_mean = cached_source_clip_mean(base, clip, difa_config, cache)
    reference_embedding = clip.features(reference, difa_config.clip_layer)[0]  # [1, E]
    before_global, before_tokens = before
    after_global, after_tokens = clip_views(clip, adapted_images, difa_config.clip_layer)
    # The other style whose axis this one's is closest to, in the block tokens the local loss reads: a
    # CLIP that moves both alike cannot tell DIFA which of the two it is asked for.
    cosines = {other: (float(judgement.global_axis.direction @ j.global_axis.direction),
                       float(judgement.token_axis.direction @ j.token_axis.direction))
               for other, j in judgements.items() if other != style}
    closest = max(cosines, key=lambda other: cosines[other][1])
    return JudgeView(clip.name, round(judgement.global_axis.separation, 3), round(judgement.token_axis.separation, 3),
                     round(alignment(judgement, reference_direction(reference_embedding, source_mean)), 3),
                     round(judgement.global_axis.progress(before_global, after_global), 3),
                     round(judgement.token_axis.progress(before_tokens, after_tokens), 3),
                     [round(d, 2) for d in judgement.separation_by_block],
                     closest, round(cosines[closest][0], 3), round(cosines[closest][1], 3))


def evaluate_adaptation(base: Generator, encoder: Encoder, clips: Sequence[ClipModel], scorer: Scorer,
                        config: AdaptationEvalConfig = AdaptationEvalConfig(),
                        boundaries: Mapping[str, Boundary] | None = None, boundary_note: str = "",
                        log: Callable[[str], None] = print) -> tuple[AdaptationEvalReport, Image.Image]:
    """Adapt `base` to one artwork per style and measure each result; returns the report and a before/after grid.

    Without `boundaries`, the edit columns are left empty and `boundary_note` says why.
    """
    difa_config = config.difa_config()
    cache = MemoryCache()
    started = time.perf_counter()
    for clip in clips:  # computed once here, so each adaptation's time is comparable
        cached_source_clip_mean(base, clip, difa_config, cache)
    clip_mean_seconds = time.perf_counter() - started

    ws = sample_latents(base, config.samples, config.seed, config.truncation)
    base_images = synthesize(base, ws)
    base_scores, base_features = score_images(scorer, base_images)
    shuffled = {k: v.roll(1, 0) for k, v in base_scores.items()}  # each face against another one
    random_pairs = attribute_agreement(base_scores, shuffled, scorer)
    notes = []
    base_success = None
    if boundaries:
        base_success, _ = edit_success(base, scorer, boundaries, config.edit_samples, config.seed)
    else:
        notes.append(f"Edit success not measured: {boundary_note or 'no boundaries given'}.")

    # Each CLIP's photo → style axes, of every artistic style (adapted to or not), to compare them.
    judgements = [{style: judge_style(clip, style, difa_config.clip_layer, n=config.samples,
                                      seed=config.reference_seed + 1, size=base.config.size)
                   for style in ARTISTIC_STYLES} for clip in clips]
    base_views = [clip_views(clip, base_images, difa_config.clip_layer) for clip in clips]
    results, references, adapted_images = [], [], []
    for style in config.styles:
        reference = reference_artwork(style, config.reference_seed, base.config.size)
        log(f"adapting to a {style} artwork ({config.iterations} iterations)")
        result: AdaptationResult = adapt(base, encoder, clips, reference, difa_config, clip_mean_cache=cache)
        adapted = result.apply(base)
        images = synthesize(adapted, ws)
        scores, features = score_images(scorer, images)
        index = float(STYLES.index(style))
        agreement = attribute_agreement(base_scores, scores, scorer)
        success, success_by = (None, {})
        if boundaries:
            success, success_by = edit_success(adapted, scorer, boundaries, config.edit_samples, config.seed)
        judge = [judge_view(clip, style, views, difa_config, base, reference, before, images, cache)
                 for clip, views, before in zip(clips, judgements, base_views)]
        results.append(StyleResult(
            style=style, iterations=result.iterations, seconds=round(result.seconds, 2),
            style_rate=float((scores["style"] == index).float().mean()),
            base_style_rate=float((base_scores["style"] == index).float().mean()),
            faithfulness=sum(agreement.values()) / len(agreement), faithfulness_by_attribute=agreement,
            diversity=diversity(features), edit_success=success, edit_success_by_attribute=success_by, judge=judge,
            read_as={name: float((scores["style"] == i).float().mean()) for i, name in enumerate(STYLES)}))
        log(f"{style}: {result.seconds:.1f} s, style rate {results[-1].style_rate:.2f}, "
            f"faithfulness {results[-1].faithfulness:.3f}")
        references.append(reference)
        adapted_images.append(images)
    report = AdaptationEvalReport(results, diversity(base_features), sum(random_pairs.values()) / len(random_pairs),
                                  base_success, round(clip_mean_seconds, 2), notes, config)
    columns = min(config.grid_samples, config.samples)
    return report, before_after_grid(base_images, references, adapted_images, columns)
