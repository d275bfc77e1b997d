"""Synthesis throughput of the generator against this machine's dense matmul rate, measured in the same run."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faceedit.errors import FaceEditError  # noqa: E402
from faceedit.models import Generator, GeneratorConfig  # noqa: E402
from faceedit.models.precision import PRECISIONS, autocast_dtype, resolve_device  # noqa: E402

_MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def _no_sync() -> None:
    pass


def best_time(fn: Callable[[], object], repeats: int, budget_s: float, sync: Callable[[], None] = _no_sync,
              warmup: int = 1) -> float:
    """Best wall time of `fn`; `sync` waits for queued device work, so a CUDA call is timed to its end."""
    for _ in range(warmup):  # oneDNN picks its kernels, cuDNN autotunes, on the first calls
        fn()
    sync()
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or (spent < budget_s and n < 50):
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        best, spent, n = min(best, elapsed), spent + elapsed, n + 1
        if spent > budget_s and n >= 1:
            break
    return best


def matmul_flops(size: int = 2048, device: torch.device = torch.device("cpu"), precision: str = "fp32",
                 sync: Callable[[], None] = _no_sync, warmup: int = 1) -> float:
    """Dense square matmul rate (FLOP/s) in `precision`'s dtype: the baseline of that precision."""
    dtype = _MATMUL_DTYPES[precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = best_time(lambda: a @ b, repeats=5, budget_s=3.0, sync=sync, warmup=warmup)
    return 2 * size**3 / seconds


def _ieee_fp32_on_cuda() -> str:
    """cuDNN convs default to TF32 while fp32 matmuls do not: make both IEEE fp32, so the fp32 rows
    and their baseline use the same arithmetic."""
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision"):
        # torch >= 2.9: only the new API, since reading a flag after mixing the two APIs raises.
        cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return "fp32 = IEEE fp32 (TF32 off in cuBLAS and cuDNN)"


def _list(text: str, field: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise FaceEditError(f"{field}: empty list")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", "--size", default=None,
                        help="generator sizes (config-f widths); default 256,1024 on CPU, 1024 on CUDA")
    parser.add_argument("--batches", default=None, help="default 1,8 on CPU, 1,8,32 on CUDA")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per row at most")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto",
                        help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--precision", default=None,
                        help=f"comma-separated, of {', '.join(PRECISIONS)}; default fp32 on CPU, fp32,bf16 on CUDA, "
                             "where fp32 is always measured as the reference")
    args = parser.parse_args()
    try:
        run(args)
    except FaceEditError as exc:
        parser.exit(2, f"error: {exc}\n")


def run(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    precisions = _list(args.precision or ("fp32,bf16" if cuda else "fp32"), "--precision")
    if cuda and "fp32" not in precisions:
        precisions.insert(0, "fp32")  # the reference every other precision's speed-up is read against
    for p in precisions:
        autocast_dtype(p, device)  # an unknown name, or fp16 on CPU, fails before minutes of timing
    sizes = [int(s) for s in _list(args.sizes or ("1024" if cuda else "256,1024"), "--sizes")]
    batches = [int(b) for b in _list(args.batches or ("1,8,32" if cuda else "1,8"), "--batches")]
    # Today's CPU table, unchanged, unless another precision is asked for.
    plain = not cuda and precisions == ["fp32"]

    torch.manual_seed(0)
    if cuda:
        torch.cuda.set_device(device)
        # Fixed shapes: let cuDNN time its algorithms once per shape (inside the warm-up calls).
        torch.backends.cudnn.benchmark = True
        note = _ieee_fp32_on_cuda()
        sync: Callable[[], None] = lambda: torch.cuda.synchronize(device)  # noqa: E731
        warmup, matmul_size, unit, unit_name = 3, 8192, 1e12, "TFLOP/s"
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)} ({device}), {note}")
    else:
        sync, warmup, matmul_size, unit, unit_name = _no_sync, 1, 2048, 1e9, "GFLOP/s"
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    baseline = {}
    for p in precisions:
        baseline[p] = matmul_flops(matmul_size, device, p, sync=sync, warmup=warmup)
        print(f"dense {p} matmul {matmul_size}²: {baseline[p] / unit:.1f} {unit_name} (baseline)")
    if plain:
        print(f"{'size':>5} {'batch':>5} {'GMAC/img':>9} {'img/s':>8} {'GFLOP/s':>8} {'ratio':>6}")
    else:
        print(f"{'size':>5} {'batch':>5} {'prec':>5} {'GMAC/img':>9} {'img/s':>8} {unit_name:>8} {'ratio':>6} "
              f"{'vs fp32':>7}")
    for size in sizes:
        config = GeneratorConfig(size)
        generator = Generator(config).eval().requires_grad_(False).to(device)
        if args.channels_last:
            generator = generator.to(memory_format=torch.channels_last)
        macs = synthesis_macs(config)
        for batch in batches:
            ws = torch.randn(batch, config.n_latent, config.style_dim, device=device)
            fp32_rate = None
            for p in precisions:
                with torch.inference_mode():
                    seconds = best_time(lambda g=generator, w=ws, p=p: g.synthesis(w, precision=p), repeats=2,
                                        budget_s=args.budget, sync=sync, warmup=warmup)
                rate = batch / seconds
                flops = 2 * macs * rate
                if plain:
                    print(f"{size:>5} {batch:>5} {macs / 1e9:>9.1f} {rate:>8.2f} {flops / 1e9:>8.1f} "
                          f"{flops / baseline[p]:>6.2f}", flush=True)
                    continue
                fp32_rate = rate if p == "fp32" else fp32_rate
                speedup = f"{rate / fp32_rate:>6.2f}x" if fp32_rate else f"{'-':>7}"
                print(f"{size:>5} {batch:>5} {p:>5} {macs / 1e9:>9.1f} {rate:>8.2f} {flops / unit:>8.1f} "
                      f"{flops / baseline[p]:>6.2f} {speedup}", flush=True)
            del ws
        del generator
        if cuda:
            torch.cuda.empty_cache()  # the next size should not inherit this one's cached blocks


if __name__ == "__main__":
    main()
