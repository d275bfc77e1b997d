"""DIFA seconds per iteration on this machine at the demo-zoo size (64 px generator, demo CLIP, demo e4e),
random weights."""

from __future__ import annotations

import argparse
import json
import time

import torch

from faceedit.adaptation.clip import build_clip_module, wrap_clip
from faceedit.adaptation.difa import DifaConfig, adapt
from faceedit.models.encoders import Encoder
from faceedit.models.stylegan2 import Generator, GeneratorConfig
from faceedit.training.clip import DEMO_CLIP_CONFIG
from faceedit.training.encoder import EncoderTrainingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--clips", type=int, default=1, help="how many demo-CLIP copies (upstream uses two backbones)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(64, 256, 4, channels={4: 256, 8: 256, 16: 128, 32: 128, 64: 64})).eval()
    encoder = Encoder(EncoderTrainingConfig().encoder_config(generator)).eval()
    clips = [wrap_clip(build_clip_module(DEMO_CLIP_CONFIG)) for _ in range(args.clips)]
    reference = torch.rand(1, 3, 64, 64) * 2 - 1
    # Half the iterations with the consistency term off (window filling), half with it on.
    config = DifaConfig(iterations=args.iterations, sliding_window=args.iterations // 2, clips=(),
                        clip_layer=3, clip_mean_samples=64)
    # Wall time depends on what else runs on the machine; CPU time (all threads) much less so.
    stamps: list[tuple[float, float]] = []
    started = time.perf_counter()
    adapt(generator, encoder, clips, reference, config,
          progress=lambda done, total, losses: stamps.append((time.perf_counter(), time.process_time())))
    wall = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    half = len(wall) // 2

    def median(values: list[float]) -> float:
        return round(sorted(values)[len(values) // 2], 3)

    report = {
        "threads": torch.get_num_threads(),
        "clips": args.clips,
        "setup_wall_seconds": round(stamps[0][0] - started - wall[0], 2),
        "wall_seconds_per_iteration": {"consistency_off": median(wall[:half]), "consistency_on": median(wall[half:])},
        "cpu_seconds_per_iteration": {"consistency_off": median(cpu[:half]), "consistency_on": median(cpu[half:])},
        "estimated_301_iterations_wall_seconds": round(sum(wall) / len(wall) * 301, 0),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
