"""Inversion quality and cost on the demo zoo: the encoder (the baseline, same run), W+ optimisation and PTI,
on held-out renders of the zoo's own photo-style faces; reconstruction L2, the scorer's perceptual distance,
seconds per face and the size of PTI's delta."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from faceedit.inversion import InversionConfig, invert  # noqa: E402
from faceedit.models import load_encoder, load_generator  # noqa: E402
from faceedit.models.delta import delta_to_bytes, with_tensors  # noqa: E402
from faceedit.synth.render import render_faces  # noqa: E402
from faceedit.synth.scorer import load_scorer  # noqa: E402
from faceedit.zoo import paths  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faces", type=int, default=3)
    parser.add_argument("--optimize-steps", type=int, default=InversionConfig.optimize_steps)
    parser.add_argument("--tune-steps", type=int, default=InversionConfig.tune_steps)
    # PTI's 0.06 is on LPIPS's scale; the zoo scorer's distance reaches ~0 within the first phase, so by
    # default tuning runs all its steps here.
    parser.add_argument("--perceptual-stop", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-step-size", type=int, default=0, choices=(0, 256, 512, 1024),
                        help="also time single optimize and tune steps on a config-f generator of this size "
                             "(random weights in the official layout: the cost per step, not the quality)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.per_step_size:
        per_step(args.per_step_size)
        if not args.faces:
            return 0
    zoo = paths()
    generator, encoder = load_generator(zoo["generator"]).eval(), load_encoder(zoo["encoder"]).eval()
    scorer = load_scorer().eval().requires_grad_(False)
    config = dataclasses.replace(InversionConfig(), optimize_steps=args.optimize_steps, tune_steps=args.tune_steps,
                                 perceptual_stop=args.perceptual_stop)
    faces, _ = render_faces(args.faces, seed=90_210, size=generator.config.size)  # held out: not a training seed
    rows: dict[str, dict[str, list[float]]] = {}
    delta_mb = []
    for i in range(args.faces):
        target = faces[i:i + 1]
        for mode in ("encoder", "optimize", "pti"):
            started = time.perf_counter()
            result = invert(target, generator, encoder, mode=mode, config=config, perceptual=scorer.perceptual_distance)
            seconds = time.perf_counter() - started
            with torch.no_grad():
                image = result.generator.synthesis(result.ws)
                l2 = float(torch.nn.functional.mse_loss(image, target))
                perceptual = float(scorer.perceptual_distance(image, target).mean())
            row = rows.setdefault(mode, {"l2": [], "perceptual": [], "seconds": []})
            row["l2"].append(l2), row["perceptual"].append(perceptual), row["seconds"].append(seconds)
            if mode == "pti":
                delta_mb.append(len(delta_to_bytes(result.tuned_tensors(), generator)) / 1e6)
                half = {k: v.half().float() for k, v in result.tuned_tensors().items()}  # what an fp16 delta holds
                with torch.no_grad():
                    image16 = with_tensors(generator, half).synthesis(result.ws)
                row16 = rows.setdefault("pti fp16", {"l2": [], "perceptual": [], "seconds": []})
                row16["l2"].append(float(torch.nn.functional.mse_loss(image16, target)))
                row16["perceptual"].append(float(scorer.perceptual_distance(image16, target).mean()))
                row16["seconds"].append(seconds)
        print(f"face {i + 1}/{args.faces} done", flush=True)
    base = {k: statistics.mean(v) for k, v in rows["encoder"].items()}
    print(f"\n{args.faces} held-out faces, {generator.config.size} px, optimize {config.optimize_steps} steps, "
          f"tune {config.tune_steps} steps (PTI stops early under perceptual {config.perceptual_stop})")
    print(f"{'mode':9} {'L2':>8} {'x enc':>6} {'percept':>8} {'x enc':>6} {'s/face':>7}")
    for mode, row in rows.items():
        m = {k: statistics.mean(v) for k, v in row.items()}
        print(f"{mode:9} {m['l2']:8.4f} {m['l2'] / base['l2']:6.2f} {m['perceptual']:8.4f} "
              f"{m['perceptual'] / base['perceptual']:6.2f} {m['seconds']:7.1f}")
    print(f"PTI delta: {statistics.mean(delta_mb):.1f} MB per photo in fp32, {statistics.mean(delta_mb) / 2:.1f} MB "
          f"in fp16 (the 'pti fp16' row)")
    return 0


def per_step(size: int, steps: int = 2) -> None:
    """Seconds per W+ optimisation step and per tuning step at `size` (config-f, 512-d W, official layout)."""
    import tempfile

    from dropin import build_generator_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"stylegan2-{size}.pt"
        build_generator_file(path, size)
        generator = load_generator(path).eval()
    target = torch.rand(1, 3, size, size) * 2 - 1
    times: dict[str, list[float]] = {"optimize": [], "tune": []}
    last = [time.perf_counter()]

    def tick(phase: str, step: int, total: int, losses: dict) -> None:
        now = time.perf_counter()
        times[phase].append(now - last[0])
        last[0] = now

    config = InversionConfig(optimize_steps=steps + 1, tune_steps=steps + 1, perceptual_stop=0.0)
    invert(target, generator, None, mode="pti", config=config, progress=tick)
    # The first step of each phase includes its set-up (the tuned copy, the optimiser): report the rest.
    optimize, tune = (statistics.mean(times[p][1:]) for p in ("optimize", "tune"))
    print(f"{size} px, {torch.get_num_threads()} threads: {optimize:.2f} s per optimize step, {tune:.2f} s per tune "
          f"step; PTI's 450 + 350 steps would take {(450 * optimize + 350 * tune) / 60:.0f} min here")


if __name__ == "__main__":
    sys.exit(main())
