"""Synthesis throughput of the generator against this machine's dense matmul rate, measured in the same run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faceedit.models import Generator, GeneratorConfig  # noqa: E402


def synthesis_macs(config: GeneratorConfig) -> int:
    """Multiply-accumulates of the modulated convs for one image (transposed convs counted at
    their input resolution, as upstream's FLOP estimates do)."""
    ch = config.resolved_channels()
    macs = 16 * ch[4] * ch[4] * 9 + 16 * ch[4] * 3  # conv1 + to_rgb1
    res = 8
    while res <= config.size:
        c_in, c_out = ch[res // 2], ch[res]
        macs += (res // 2) ** 2 * c_in * c_out * 9  # upsampling conv
        macs += res * res * c_out * c_out * 9  # plain conv
        macs += res * res * c_out * 3  # to_rgb
        res *= 2
    return macs


def best_time(fn, repeats: int, budget_s: float) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or (spent < budget_s and n < 50):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, n = min(best, elapsed), spent + elapsed, n + 1
        if spent > budget_s and n >= 1:
            break
    return best


def matmul_flops(size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = best_time(lambda: a @ b, repeats=5, budget_s=3.0)
    return 2 * size**3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="256,1024", help="generator sizes (config-f widths)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per row at most")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    baseline = matmul_flops()
    print(f"dense fp32 matmul 2048²: {baseline / 1e9:.1f} GFLOP/s (baseline)")
    print(f"{'size':>5} {'batch':>5} {'GMAC/img':>9} {'img/s':>8} {'GFLOP/s':>8} {'ratio':>6}")
    for size in map(int, args.sizes.split(",")):
        config = GeneratorConfig(size)
        generator = Generator(config).eval().requires_grad_(False)
        if args.channels_last:
            generator = generator.to(memory_format=torch.channels_last)
        macs = synthesis_macs(config)
        for batch in map(int, args.batches.split(",")):
            ws = torch.randn(batch, config.n_latent, config.style_dim)
            with torch.inference_mode():
                seconds = best_time(lambda: generator.synthesis(ws), repeats=2, budget_s=args.budget)
            rate = batch / seconds
            flops = 2 * macs * rate
            print(f"{size:>5} {batch:>5} {macs / 1e9:>9.1f} {rate:>8.2f} {flops / 1e9:>8.1f} "
                  f"{flops / baseline:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
