"""Inversion quality: reconstruction, attribute agreement and editability of each mode, on renders and portraits."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from faceedit.editing.boundary import Boundary
from faceedit.editing.ops import Edit
from faceedit.editing.quality import EditMeasurer, evaluate_edits
from faceedit.errors import InvalidInputError
from faceedit.images import from_pil
from faceedit.inversion import MODES, Distance, InversionConfig, invert
from faceedit.models.delta import delta_to_bytes
from faceedit.models.encoders import Encoder
from faceedit.models.stylegan2 import Generator
from faceedit.synth.scorer import Scorer

MARGIN = 0.1  # an edit succeeds when its attribute moves at least this fraction of its range


@dataclass
class ModeResult:
    """One mode over the held-out faces (means), and over the real portraits."""

    mode: str
    pixel_mse: float
    perceptual: float
    attribute_error: float  # mean |attribute(reconstruction) - attribute(photo)| in units of each range
    pivot_edit_success: float  # the boundaries' edits on each face's own latent, on the mode's generator
    sample_edit_success: float | None  # on random samples of the mode's generator (pti: the tuned ones)
    seconds: float
    delta_mb: float | None = None
    portrait_face_mse: float | None = None  # inside the face mask of the aligned real portraits


@dataclass
class InversionReport:
    modes: list[ModeResult]
    n_faces: int
    n_portraits: int
    config: dict[str, Any]
    base_sample_edit_success: float | None
    threads: int = field(default_factory=torch.get_num_threads)

    def by_mode(self, mode: str) -> ModeResult:
        return next(m for m in self.modes if m.mode == mode)

    def table(self) -> str:
        enc = self.by_mode("encoder")
        lines = [
            f"{self.n_faces} held-out renders and {self.n_portraits} real portrait(s); the encoder is the baseline "
            f"of the same run; edit success = attribute moves ≥ {MARGIN:g}·range the requested way "
            f"(base generator on random samples: {_fmt(self.base_sample_edit_success)}).",
            "",
            "| mode | pixel MSE | × encoder | perceptual | attribute error | edit success (own latent) "
            "| edit success (samples) | portrait face MSE | × encoder | s / face | delta MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.modes:
            ratio = m.pixel_mse / enc.pixel_mse if enc.pixel_mse else math.nan
            portrait_ratio = (m.portrait_face_mse / enc.portrait_face_mse
                              if m.portrait_face_mse is not None and enc.portrait_face_mse else None)
            lines.append(f"| {m.mode} | {m.pixel_mse:.4f} | {ratio:.2f} | {m.perceptual:.4f} | {m.attribute_error:.3f} "
                         f"| {m.pivot_edit_success:.2f} | {_fmt(m.sample_edit_success)} "
                         f"| {_fmt(m.portrait_face_mse, 4)} | {_fmt(portrait_ratio)} | {m.seconds:.1f} "
                         f"| {_fmt(m.delta_mb, 1)} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _attribute_error(scorer: Scorer, images: Tensor, targets: Tensor) -> float:
    cfg = scorer.config
    span = torch.tensor([hi - lo for lo, hi in zip(cfg.attribute_lows, cfg.attribute_highs)])
    with torch.inference_mode():
        a = scorer.to_scores(scorer.logits(scorer.prepare(images), prepared=True))
        b = scorer.to_scores(scorer.logits(scorer.prepare(targets), prepared=True))
    diffs = torch.stack([(a[n] - b[n]).abs() / span[i] for i, n in enumerate(cfg.attribute_names)], 1)  # [N, A]
    return float(diffs.mean())


def _pivot_edit_success(generator: Generator, scorer: Scorer, ws: Tensor, boundaries: Mapping[str, Boundary]
                        ) -> list[float]:
    """Each boundary at the ends of its recommended range on this one latent: 1/0 per eligible edit."""
    measurer = EditMeasurer(generator, scorer, ws, batch_size=1)
    out = []
    for name, boundary in boundaries.items():
        low, high = boundary.strength_range
        for strength in (low, high):
            m = measurer.measure(name, Edit(boundary.normal, strength, layers=boundary.metadata.get("layers")),
                                 MARGIN, None)
            if m.n_eligible:
                out.append(m.success_rate)
    return out


def _sample_edit_success(generator: Generator, scorer: Scorer, boundaries: Mapping[str, Boundary], n: int,
                         seed: int) -> float:
    report = evaluate_edits(generator, scorer, boundaries, n=n, seed=seed, margin=MARGIN)
    rates = [m.success_rate for m in report.measurements if m.conditioned_on is None and not math.isnan(m.success_rate)]
    return statistics.fmean(rates) if rates else math.nan


def _face_mse(image: Tensor, target: Tensor, mask: np.ndarray) -> float:
    """Pixel MSE inside the face mask [H, W] in 0..1 (weighted), both images [1, 3, H, W]."""
    weight = torch.from_numpy(mask).float()[None, None]  # [1, 1, H, W]
    return float(((image - target) ** 2 * weight).sum() / (3 * weight.sum()).clamp_min(1e-8))


def evaluate_inversion(generator: Generator, encoder: Encoder, scorer: Scorer, boundaries: Mapping[str, Boundary],
                       faces: Tensor, portraits: Sequence[Image.Image] = (), config: InversionConfig | None = None,
                       perceptual: Distance | None = None, sample_edits: int = 64, seed: int = 0,
                       modes: Sequence[str] = MODES, progress: Callable[[str], None] | None = None,
                       align: Callable[[Image.Image, int], Any] | None = None) -> InversionReport:
    """Every mode on `faces` [N, 3, S, S] in [-1, 1] (held-out renders: the ground truth is known) and on real
    `portraits` (aligned with `align(photo, size) -> AlignedFace`, faceedit.align.align_face by default).

    Editability: the boundaries' edits at the ends of their recommended ranges on each face's own latent,
    rendered by the mode's generator (the tuned copy for "pti"), and, for "pti", on random samples of each
    tuned generator against the base's (PTI must not break the edits elsewhere)."""
    if faces.ndim != 4 or faces.shape[0] < 1:
        raise InvalidInputError("faces", f"expected [N, 3, H, W] with N >= 1, got {list(faces.shape)}")
    unknown = [m for m in modes if m not in MODES]
    if unknown or "encoder" not in modes:
        raise InvalidInputError("modes", f"must include 'encoder' (the baseline) and be among {list(MODES)}")
    config = config or InversionConfig(perceptual_stop=0.0)
    perceptual = perceptual or scorer.perceptual_distance
    say = progress or (lambda _: None)
    base_samples = _sample_edit_success(generator, scorer, boundaries, sample_edits, seed) if sample_edits else None

    crops, masks = [], []
    if portraits:
        from faceedit.blending import face_mask

        if align is None:
            from faceedit.align import align_face

            align = align_face
        for photo in portraits:
            aligned = align(photo, generator.config.size)
            crops.append(from_pil([aligned.image]))
            masks.append(np.asarray(face_mask(aligned), dtype=np.float32) / 255.0)

    rows = []
    for mode in modes:
        mse, dist, attr, pivot_rates, sample_rates, seconds, sizes, portrait_mse = [], [], [], [], [], [], [], []
        for i in range(faces.shape[0]):
            say(f"{mode}: face {i + 1}/{faces.shape[0]}")
            target = faces[i:i + 1]
            started = time.perf_counter()
            result = invert(target, generator, encoder, mode=mode, config=config, perceptual=perceptual)
            seconds.append(time.perf_counter() - started)
            with torch.no_grad():
                image = result.generator.synthesis(result.ws)
                mse.append(float(torch.nn.functional.mse_loss(image, target)))
                dist.append(float(perceptual(image, target).mean()))
            attr.append(_attribute_error(scorer, image, target))
            pivot_rates += _pivot_edit_success(result.generator, scorer, result.ws, boundaries)
            if mode == "pti":
                sizes.append(len(delta_to_bytes(result.tuned_tensors(), generator)) / 1e6)
                if sample_edits:
                    sample_rates.append(_sample_edit_success(result.generator, scorer, boundaries, sample_edits,
                                                             seed))
        for j, (crop, mask) in enumerate(zip(crops, masks)):
            say(f"{mode}: portrait {j + 1}/{len(crops)}")
            result = invert(crop, generator, encoder, mode=mode, config=config, perceptual=perceptual)
            with torch.no_grad():
                portrait_mse.append(_face_mse(result.generator.synthesis(result.ws), crop, mask))
        rows.append(ModeResult(
            mode, statistics.fmean(mse), statistics.fmean(dist), statistics.fmean(attr),
            statistics.fmean(pivot_rates) if pivot_rates else math.nan,
            statistics.fmean(sample_rates) if sample_rates else (base_samples if mode != "pti" else None),
            statistics.fmean(seconds), statistics.fmean(sizes) if sizes else None,
            statistics.fmean(portrait_mse) if portrait_mse else None))
    return InversionReport(rows, int(faces.shape[0]), len(crops), config.to_dict(), base_samples)
