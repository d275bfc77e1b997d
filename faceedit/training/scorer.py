"""Train the attribute scorer on rendered faces (all styles) and evaluate it on held-out renders.

A dataset is rendered once (uint8, in chunks, mostly photo and the rest split over the artistic
styles), then a small CNN learns every attribute (smooth L1 on the range-normalised value for
continuous ones, BCE for binary ones) and the style (cross-entropy), with light augmentation
(sub-pixel shifts, blur, noise, a little brightness) so it also reads generator outputs.
Held-out faces come from seeds no training chunk uses.

    faceedit train scorer   # writes model_store/demo/scorer.safetensors
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from faceedit.synth.scorer import Scorer, ScorerConfig, default_scorer_path, load_scorer, save_scorer
from faceedit.training.cards import provenance

CHUNK = 500  # faces per render call
TRAIN_SPLIT, EVAL_SPLIT = 0, 1
SEEDS_PER_SPLIT = 1_000_000  # render seed = seed * 4M + split * 1M + style * 100k + chunk
# Attributes a left-right mirror negates (about the middle of their range); all others keep their value.
MIRRORED = frozenset({"yaw", "lighting"})


def render_seed(seed: int, split: int, style_index: int, chunk: int) -> int:
    """Render seed of one chunk; training and held-out chunks never share a seed."""
    if chunk >= 100_000:
        raise ValueError("too many chunks")
    return seed * 4 * SEEDS_PER_SPLIT + split * SEEDS_PER_SPLIT + style_index * 100_000 + chunk


def style_counts(n: int, style_names: tuple[str, ...], photo_fraction: float) -> dict[str, int]:
    """`photo_fraction` of n is photo (when "photo" is a style); the rest splits evenly over the others."""
    if "photo" not in style_names:
        photo_fraction = 0.0
    others = [s for s in style_names if s != "photo"]
    n_photo = round(n * photo_fraction) if others else n
    counts = {"photo": n_photo} if "photo" in style_names else {}
    rest = n - n_photo
    for i, s in enumerate(others):
        counts[s] = rest // len(others) + (1 if i < rest % len(others) else 0)
    return {s: c for s, c in counts.items() if c > 0}


def _render_chunk(job: tuple[int, int, int, str, tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """(n, seed, size, style, names) → uint8 images [n, 3, size, size] and float32 attributes [n, len(names)]."""
    from faceedit.synth import render_faces

    n, seed, size, style, names = job
    images, attrs = render_faces(n, seed, size=size, style=style)
    u8 = images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    table = np.stack([attrs[name].numpy() for name in names], axis=1).astype(np.float32)
    return u8, table


def render_dataset(config: ScorerConfig, n: int, seed: int, split: int = TRAIN_SPLIT, photo_fraction: float = 0.6,
                   workers: int = 1, progress: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Render n faces over the config's styles: uint8 images [n, 3, S, S], attribute values [n, A]
    (renderer units, config order) and style labels [n] (index into config.style_names)."""
    jobs, labels = [], []
    for style, count in style_counts(n, config.style_names, photo_fraction).items():
        style_index = config.style_names.index(style)
        for chunk, start in enumerate(range(0, count, CHUNK)):
            k = min(CHUNK, count - start)
            jobs.append((k, render_seed(seed, split, style_index, chunk), config.image_size, style,
                         config.attribute_names))
            labels.append(np.full(k, style_index, dtype=np.int64))
    bar = tqdm(total=n, unit="img", desc=f"render {'train' if split == TRAIN_SPLIT else 'eval'}",
               disable=not progress, leave=False)
    results = []
    if workers > 1 and len(jobs) > 1:
        # fork like DataLoader workers (spawn would re-import an unguarded __main__); one thread each.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=torch.set_num_threads,
                                 initargs=(1,)) as pool:
            for res in pool.map(_render_chunk, jobs):
                results.append(res)
                bar.update(len(res[0]))
    else:
        for job in jobs:
            results.append(_render_chunk(job))
            bar.update(job[0])
    bar.close()
    images = torch.from_numpy(np.concatenate([r[0] for r in results]))
    values = torch.from_numpy(np.concatenate([r[1] for r in results]))
    styles = torch.from_numpy(np.concatenate(labels))
    return images, values, styles


def to_float(u8: Tensor) -> Tensor:
    return u8.float().div_(127.5).sub_(1.0)


def _blur3(x: Tensor) -> Tensor:
    """[1, 2, 1] / 4 separable blur, per channel, edges replicated."""
    k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype)
    c = x.shape[1]
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 3).expand(c, 1, 1, 3).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, 3, 1).expand(c, 1, 3, 1).contiguous(), groups=c)


def mirror(x: Tensor, values: Tensor, config: ScorerConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip half the batch left-right, reflecting yaw and lighting: twice the faces for free."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).nonzero().flatten()
    cols = [i for i, name in enumerate(config.attribute_names) if name in MIRRORED]
    if len(flip) == 0:
        return x, values
    x, values = x.clone(), values.clone()
    x[flip] = x[flip].flip(-1)
    for i in cols:
        values[flip, i] = config.attribute_lows[i] + config.attribute_highs[i] - values[flip, i]
    return x, values


def augment(x: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Label-preserving jitter (after `mirror`): whole-pixel shifts up to `max_shift` (sub-pixel resampling would
    blur every image and erase the 1-px cues of smiles and eyelids), a partial blur on a fifth of
    the batch (generator outputs are softer), pixel noise and ±3% brightness/contrast."""
    b, _, h, w = x.shape
    r = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if max_shift > 0:
        padded = F.pad(x, (max_shift,) * 4, mode="replicate")
        offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
        out = torch.empty_like(x)
        for dy in range(2 * max_shift + 1):
            for dx in range(2 * max_shift + 1):
                sel = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().flatten()
                if len(sel):
                    out[sel] = padded[sel, :, dy:dy + h, dx:dx + w]
        x = out
    blur = (r(b) < 0.2).nonzero().flatten()
    if len(blur):
        amount = r(len(blur), 1, 1, 1)
        x[blur] = torch.lerp(x[blur], _blur3(x[blur]), amount)
    gain = 1.0 + (r(b, 1, 1, 1) * 2 - 1) * 0.03
    bias = (r(b, 1, 1, 1) * 2 - 1) * 0.03
    noise = torch.randn(x.shape, generator=generator) * (r(b, 1, 1, 1) * 0.02)
    return (x * gain + bias + noise).clamp_(-1.0, 1.0)


class _Targets:
    """Range-normalised attribute targets and which columns are binary, for one config."""

    def __init__(self, config: ScorerConfig):
        self.low = torch.tensor(config.attribute_lows)
        self.span = torch.tensor(config.attribute_highs) - self.low
        self.binary = torch.tensor([k == "binary" for k in config.attribute_kinds])

    def normalise(self, values: Tensor) -> Tensor:
        return (values - self.low) / self.span


def scorer_loss(scorer: Scorer, images: Tensor, values: Tensor, styles: Tensor,
                prepared: bool = True) -> tuple[Tensor, dict[str, float]]:
    """Mean over attributes of (smooth L1 on the [0, 1]-normalised value | BCE) plus style cross-entropy."""
    targets = _Targets(scorer.config)
    out = scorer.logits(images, prepared=prepared)
    y = targets.normalise(values.to(out["attributes"].dtype))
    logits = out["attributes"]
    binary = targets.binary.to(logits.device)
    per_attr = torch.where(
        binary,
        F.binary_cross_entropy_with_logits(logits, y, reduction="none"),
        F.smooth_l1_loss(torch.sigmoid(logits), y, beta=0.02, reduction="none") * 10.0,
    ).mean(dim=0)
    style_loss = F.cross_entropy(out["style"], styles)
    loss = per_attr.mean() + 0.5 * style_loss
    return loss, {"attributes": float(per_attr.detach().mean()), "style": float(style_loss.detach())}


@torch.inference_mode()
def evaluate(scorer: Scorer, images_u8: Tensor, values: Tensor, styles: Tensor, batch: int = 500) -> dict[str, Any]:
    """Per-attribute MAE (attribute units), Pearson correlation and normalised MAE for continuous
    attributes, accuracy for binary ones; style accuracy overall and per style; metrics per style too."""
    scorer.eval()
    config = scorer.config
    preds, probs = [], []
    for start in range(0, len(images_u8), batch):
        s = scorer.score(to_float(images_u8[start:start + batch]))
        preds.append(torch.stack([s[name] for name in config.attribute_names], dim=1))
        probs.append(s["style_probs"])
    pred, prob = torch.cat(preds).double(), torch.cat(probs)
    true = values.double()
    style_pred = prob.argmax(dim=1)

    def attr_metrics(mask: Tensor) -> dict[str, dict[str, float]]:
        out = {}
        for i, (name, kind) in enumerate(zip(config.attribute_names, config.attribute_kinds)):
            p, t = pred[mask, i], true[mask, i]
            if kind == "binary":
                out[name] = {"accuracy": float(((p > 0.5).double() == t).double().mean())}
            else:
                span = config.attribute_highs[i] - config.attribute_lows[i]
                mae = float((p - t).abs().mean())
                corr = float(torch.corrcoef(torch.stack([p, t]))[0, 1]) if len(p) > 2 else float("nan")
                out[name] = {"mae": mae, "mae_normalised": mae / span, "corr": corr}
        return out

    everyone = torch.ones(len(true), dtype=torch.bool)
    per_style = {}
    for k, style in enumerate(config.style_names):
        mask = styles == k
        if mask.any():
            per_style[style] = {"n": int(mask.sum()), "style_accuracy": float((style_pred[mask] == k).double().mean()),
                                "attributes": attr_metrics(mask)}
    return {
        "n_eval": len(true),
        "attributes": attr_metrics(everyone),
        "style_accuracy": float((style_pred == styles).double().mean()),
        "per_style": per_style,
    }


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index batches over reshuffled epochs, forever."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def train_scorer(config: ScorerConfig, out_path: str | Path, n_train: int, steps: int, seed: int,
                 progress: bool = True, *, batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 1e-4,
                 n_eval: int = 2000, photo_fraction: float = 0.6, warmup_steps: int = 200, augmentation: bool = True,
                 workers: int = 1, threads: int = 0, command: str | None = None) -> dict[str, Any]:
    """Render, train, evaluate on held-out seeds, save `out_path` (+ sidecar JSON); returns the metrics."""
    t0 = time.time()
    if threads > 0:
        torch.set_num_threads(threads)
    if n_train < 1 or steps < 1 or n_eval < 1:
        raise ValueError("n_train, steps and n_eval must be positive")
    batch_size = min(batch_size, n_train)
    images, values, styles = render_dataset(config, n_train, seed, TRAIN_SPLIT, photo_fraction, workers, progress)
    eval_set = render_dataset(config, n_eval, seed, EVAL_SPLIT, photo_fraction, workers, progress)
    t_render = time.time() - t0

    torch.manual_seed(seed)
    scorer = Scorer(config).train()
    scorer = scorer.to(memory_format=torch.channels_last)
    decay = [p for n, p in scorer.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in scorer.named_parameters() if p.ndim <= 1]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))
    warmup = min(warmup_steps, max(1, steps // 10))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 2% of lr
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    gen = torch.Generator().manual_seed(seed)
    batches = _batches(n_train, batch_size, gen)
    curve: list[float] = []
    bar = tqdm(range(steps), desc="train scorer", disable=not progress)
    for step in bar:
        for group in optim.param_groups:
            group["lr"] = lr_at(step)
        idx = next(batches)
        x, y = to_float(images[idx]), values[idx]
        if augmentation:
            x, y = mirror(x, y, config, gen)
            x = augment(x, gen)
        x = x.contiguous(memory_format=torch.channels_last)
        loss, parts = scorer_loss(scorer, x, y, styles[idx])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        curve.append(float(loss.detach()))
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(curve[-25:]):.4f}", style=f"{parts['style']:.3f}")
    bar.close()
    scorer = scorer.to(memory_format=torch.contiguous_format).eval()
    t_train = time.time() - t0 - t_render

    metrics = evaluate(scorer, *eval_set)
    k = max(1, min(50, steps // 10))
    metrics["train_loss_start"] = float(np.mean(curve[:k]))
    metrics["train_loss_end"] = float(np.mean(curve[-k:]))
    metrics["train_loss_curve"] = [float(np.mean(curve[i:i + k])) for i in range(0, steps, k)]
    wall = time.time() - t0
    info = {
        "metrics": metrics,
        "training": {"n_train": n_train, "steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr,
                     "weight_decay": weight_decay, "photo_fraction": photo_fraction, "augmentation": augmentation,
                     "n_eval": n_eval, "eval_seeds": "split 1 of the training seed (disjoint render seeds)",
                     "wall_time_s": round(wall, 1), "render_time_s": round(t_render, 1),
                     "train_time_s": round(t_train, 1), **provenance(command or "train_scorer(...) from Python")},
    }
    save_scorer(scorer, out_path, info=info)
    metrics["wall_time_s"] = wall
    return metrics


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of the held-out metrics."""
    lines = [f"{'attribute':<12} {'MAE':>7} {'MAE/range':>9} {'corr':>6} {'acc':>6}"]
    for name, m in metrics["attributes"].items():
        if "accuracy" in m:
            lines.append(f"{name:<12} {'':>7} {'':>9} {'':>6} {m['accuracy']:>6.3f}")
        else:
            lines.append(f"{name:<12} {m['mae']:>7.4f} {m['mae_normalised']:>9.4f} {m['corr']:>6.3f} {'':>6}")
    lines.append(f"{'style':<12} {'':>7} {'':>9} {'':>6} {metrics['style_accuracy']:>6.3f}")
    for style, m in metrics.get("per_style", {}).items():
        lines.append(f"  {style:<10} n={m['n']:<5} style acc {m['style_accuracy']:.3f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="output .safetensors (default: the zoo's scorer.safetensors); "
                                                     "the sidecar .json is written next to it")
    parser.add_argument("--n-train", type=int, default=30_000)
    parser.add_argument("--steps", type=int, default=6_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--n-eval", type=int, default=2_000)
    parser.add_argument("--photo-fraction", type=float, default=0.6)
    parser.add_argument("--widths", type=str, default=None, help="comma-separated stage widths, e.g. 32,64,128,128")
    parser.add_argument("--feature-dim", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="render processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace, command: str) -> int:
    overrides: dict[str, Any] = {}
    if args.widths:
        overrides["widths"] = tuple(int(w) for w in args.widths.split(","))
    if args.feature_dim:
        overrides["feature_dim"] = args.feature_dim
    config = ScorerConfig(**overrides)
    out = args.out or default_scorer_path()
    metrics = train_scorer(config, out, args.n_train, args.steps, args.seed, progress=not args.no_progress,
                           batch_size=args.batch_size, lr=args.lr, n_eval=args.n_eval,
                           photo_fraction=args.photo_fraction, augmentation=not args.no_augment,
                           workers=args.workers, threads=args.threads, command=command)
    print(format_metrics(metrics))
    print(f"wall time {metrics['wall_time_s']:.0f} s; wrote {out}")
    load_scorer(out)  # the file round-trips
    return 0
