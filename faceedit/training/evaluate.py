"""Measure the demo zoo: sample quality against renders, inversion quality on held-out renders, figures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from faceedit.images import grid, to_pil, upscale
from faceedit.metrics import kernel_inception_distance, wasserstein_1d
from faceedit.models.encoders import Encoder
from faceedit.models.stylegan2 import Generator
from faceedit.synth import ATTRIBUTES, render_faces
from faceedit.synth.scorer import Scorer
from faceedit.training.generator import renderer_attributes

# Render seeds used only for evaluation; training draws renders from other seeds.
REFERENCE_SEED, FLOOR_SEED, INVERSION_SEED = 900_001, 900_002, 900_003


@dataclass
class ZooEvalConfig:
    n_samples: int = 2000
    n_inversion: int = 256
    batch_size: int = 128
    truncation: float = 1.0  # sample quality is about the whole distribution
    seed: int = 0


def _batched(fn, inputs: Tensor, batch_size: int, desc: str, progress: bool) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(chunk) for chunk in tqdm(inputs.split(batch_size), desc=desc, disable=not progress,
                                                       leave=False)])


def _scores_and_features(scorer: Scorer, images: Tensor, batch_size: int) -> tuple[dict[str, Tensor], Tensor]:
    scores: dict[str, list[Tensor]] = {}
    feats = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            out = scorer.logits(chunk)
            feats.append(out["features"])
            for name, value in scorer.to_scores(out).items():
                if name != "style_probs":
                    scores.setdefault(name, []).append(value)
    return {k: torch.cat(v) for k, v in scores.items()}, torch.cat(feats)


def _renders(n: int, seed: int, size: int, batch_size: int) -> Tensor:
    # Rendering is deterministic per (seed, index), so chunks of one seed would repeat faces: offset seeds.
    chunks = [render_faces(min(batch_size, n - i), seed * 1000 + i // batch_size, size=size)[0]
              for i in range(0, n, batch_size)]
    return torch.cat(chunks)


def attribute_distance(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, float]:
    """Per attribute: Wasserstein-1 between score distributions, as a fraction of the attribute's range."""
    out = {}
    for name, spec in ATTRIBUTES.items():
        out[name] = wasserstein_1d(a[name], b[name]) / (spec.high - spec.low)
    return out


# images [B, 3, H, W] in [-1, 1] → embeddings [B, D]
Embedder = Callable[[Tensor], Tensor]


def sample_quality(generator: Generator, scorer: Scorer, config: ZooEvalConfig, progress: bool = True,
                   independent: Embedder | None = None) -> dict[str, Any]:
    """Generator samples vs renders, both seen through the scorer, with renders vs renders as the floor.

    The demo generator trains with the scorer as its critic, so the scorer's KID is not an
    independent judge; `independent` (the demo CLIP's image encoder) adds a KID in features the
    generator never saw."""
    size = generator.config.size
    z = torch.randn(config.n_samples, generator.style_dim, generator=torch.Generator().manual_seed(config.seed))
    fakes = _batched(lambda c: generator(c, truncation_psi=config.truncation), z, config.batch_size,
                     "generator samples", progress)
    reference = _renders(config.n_samples, REFERENCE_SEED, size, config.batch_size)
    floor = _renders(config.n_samples, FLOOR_SEED, size, config.batch_size)
    s_fake, f_fake = _scores_and_features(scorer, fakes, config.batch_size)
    s_ref, f_ref = _scores_and_features(scorer, reference, config.batch_size)
    s_floor, f_floor = _scores_and_features(scorer, floor, config.batch_size)
    kid, kid_std = kernel_inception_distance(f_fake, f_ref)
    kid_floor, kid_floor_std = kernel_inception_distance(f_floor, f_ref)
    w_fake, w_floor = attribute_distance(s_fake, s_ref), attribute_distance(s_floor, s_ref)
    independent_kid = {}
    if independent is not None:
        e_fake, e_ref, e_floor = (_batched(independent, images, config.batch_size, "independent features", progress)
                                  for images in (fakes, reference, floor))
        (k, k_std), (kf, kf_std) = kernel_inception_distance(e_fake, e_ref), kernel_inception_distance(e_floor, e_ref)
        independent_kid = {"kid_independent": k, "kid_independent_std": k_std,
                           "kid_independent_floor": kf, "kid_independent_floor_std": kf_std}
    # The generator was taught render(Φ(z)): how well does each sample show the attributes its z asked for?
    truth = renderer_attributes(z)
    fidelity = {name: float((s_fake[name] - truth[name]).abs().mean() / (spec.high - spec.low))
                for name, spec in ATTRIBUTES.items()}
    return {
        "n": config.n_samples,
        "kid": kid, "kid_std": kid_std, "kid_floor": kid_floor, "kid_floor_std": kid_floor_std, **independent_kid,
        "attribute_w1": w_fake, "attribute_w1_floor": w_floor,
        "attribute_w1_mean": sum(w_fake.values()) / len(w_fake),
        "attribute_w1_floor_mean": sum(w_floor.values()) / len(w_floor),
        "glasses_rate": float((s_fake["glasses"] > 0.5).float().mean()),
        "glasses_rate_renders": float((s_ref["glasses"] > 0.5).float().mean()),
        "fidelity_mae": fidelity,
        "photo_style_fraction": float((s_fake["style"] == 0).float().mean()),
    }


def inversion_quality(generator: Generator, encoder: Encoder, scorer: Scorer, config: ZooEvalConfig,
                      progress: bool = True) -> dict[str, Any]:
    """Held-out renders → encoder → generator: pixel MSE, attribute agreement, perceptual distance."""
    originals = _renders(config.n_inversion, INVERSION_SEED, generator.config.size, config.batch_size)
    rebuilt = _batched(lambda c: generator.synthesis(encoder.encode(c)), originals, config.batch_size,
                       "inversions", progress)
    s_orig, _ = _scores_and_features(scorer, originals, config.batch_size)
    s_rec, _ = _scores_and_features(scorer, rebuilt.clamp(-1, 1), config.batch_size)
    agreement = {}
    for name, spec in ATTRIBUTES.items():
        if spec.kind == "binary":
            agreement[name] = float(((s_orig[name] > 0.5) == (s_rec[name] > 0.5)).float().mean())
        else:
            agreement[name] = float((s_orig[name] - s_rec[name]).abs().mean() / (spec.high - spec.low))
    with torch.no_grad():
        perceptual = scorer.perceptual_distance(originals, rebuilt.clamp(-1, 1))
        # Scale for the perceptual distance: unrelated faces (each original against the next one).
        unrelated = scorer.perceptual_distance(originals, originals.roll(1, dims=0))
    return {
        "n": config.n_inversion,
        "pixel_mse": float(((rebuilt.clamp(-1, 1) - originals) / 2).pow(2).mean()),  # images in [0, 1]
        "attribute_error": {k: v for k, v in agreement.items() if ATTRIBUTES[k].kind != "binary"},
        "attribute_accuracy": {k: v for k, v in agreement.items() if ATTRIBUTES[k].kind == "binary"},
        "perceptual": float(perceptual.mean()),
        "perceptual_unrelated_pairs": float(unrelated.mean()),
    }


def write_figures(generator: Generator, encoder: Encoder | None, out_dir: Path, truncation: float = 0.8) -> list[Path]:
    """docs figures: an 8×8 sample grid and an inversion strip (renders above, reconstructions below)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    z = torch.randn(64, generator.style_dim, generator=torch.Generator().manual_seed(2026))
    with torch.no_grad():
        samples = generator(z, truncation_psi=truncation)
    path = out_dir / "samples.png"
    upscale(grid(to_pil(samples), columns=8), 2).save(path)
    written.append(path)
    if encoder is not None:
        originals = render_faces(8, INVERSION_SEED, size=generator.config.size)[0]
        with torch.no_grad():
            rebuilt = generator.synthesis(encoder.encode(originals))
        path = out_dir / "inversion.png"
        upscale(grid(to_pil(torch.cat([originals, rebuilt])), columns=8), 2).save(path)
        written.append(path)
    return written


def format_report(sample: dict[str, Any] | None, inversion: dict[str, Any] | None) -> str:
    lines = []
    if sample:
        lines += [f"sample quality (n={sample['n']}, scorer features/scores; floor = renders vs renders)",
                  f"  KID x1000       generator {1000 * sample['kid']:.2f} ± {1000 * sample['kid_std']:.2f}"
                  f"   floor {1000 * sample['kid_floor']:.2f} ± {1000 * sample['kid_floor_std']:.2f}",
                  # Unit-norm CLIP embeddings give small kernel values: three decimals.
                  *([f"  KID x1000 (CLIP, independent of training) generator {1000 * sample['kid_independent']:.3f}"
                     f" ± {1000 * sample['kid_independent_std']:.3f}"
                     f"   floor {1000 * sample['kid_independent_floor']:.3f}"
                     f" ± {1000 * sample['kid_independent_floor_std']:.3f}"] if "kid_independent" in sample else []),
                  f"  glasses rate    generator {sample['glasses_rate']:.3f}"
                  f"   renders {sample['glasses_rate_renders']:.3f}",
                  f"  {'attribute':<12} {'W1/range':>9} {'floor':>7} {'fidelity MAE/range':>19}"]
        for name in ATTRIBUTES:
            lines.append(f"  {name:<12} {sample['attribute_w1'][name]:>9.4f} {sample['attribute_w1_floor'][name]:>7.4f}"
                         f" {sample['fidelity_mae'][name]:>19.4f}")
    if inversion:
        lines += [f"inversion (n={inversion['n']} held-out renders)",
                  f"  pixel MSE [0,1]  {inversion['pixel_mse']:.4f}",
                  f"  perceptual       {inversion['perceptual']:.4f}   (unrelated faces: "
                  f"{inversion['perceptual_unrelated_pairs']:.4f})"]
        for name, err in inversion["attribute_error"].items():
            lines.append(f"  {name:<12} MAE/range {err:.4f}")
        for name, acc in inversion["attribute_accuracy"].items():
            lines.append(f"  {name:<12} agreement {acc:.3f}")
    return "\n".join(lines)
