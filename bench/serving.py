"""Edit latency through the serving stack (client → editor → TorchServe) vs the in-process forward, and
throughput at 1 and 8 concurrent clients with TorchServe's dynamic batching on and off."""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from faceedit.client import FaceEditClient, Step  # noqa: E402
from faceedit.images import to_pil  # noqa: E402
from faceedit.models import load_generator  # noqa: E402
from services import launcher  # noqa: E402
from services.inference.archive import build_archive  # noqa: E402


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def in_process(generator_path: Path, n: int) -> list[float]:
    """What one Edit costs without any serving: synthesis of one W+ plus PNG encoding."""
    generator = load_generator(generator_path).eval()
    with torch.inference_mode():
        ws = generator.broadcast(generator.mapping(torch.randn(1, generator.style_dim)))
        times = []
        for _ in range(n + 3):
            start = time.perf_counter()
            image = to_pil(generator.synthesis(ws))[0]
            image.save(io.BytesIO(), format="PNG")
            times.append(time.perf_counter() - start)
    return times[3:]  # the first calls pick kernels


def through_stack(client: FaceEditClient, latent_id: str, steps: list[Step], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.edit(steps, latent_id=latent_id)
        times.append(time.perf_counter() - start)
    return times


def throughput(target: str, key: str, latent_id: str, steps: list[Step], clients: int, per_client: int) -> float:
    """Edits per second with `clients` threads, each with its own channel, `per_client` edits each."""
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with FaceEditClient(target, key, timeout_s=120) as client:
                client.edit(steps, latent_id=latent_id)  # connect before the clock starts
                barrier.wait()
                for _ in range(per_client):
                    client.edit(steps, latent_id=latent_id)
        except threading.BrokenBarrierError:
            pass  # another client failed its warm-up; its error is the one reported
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
            barrier.abort()  # a failed warm-up must not leave the others (and us) waiting forever

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return clients * per_client / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generator", type=Path, default=REPO / "model_store" / "demo" / "generator.pt")
    parser.add_argument("--encoder", type=Path, default=REPO / "model_store" / "demo" / "encoder.pt")
    parser.add_argument("-n", type=int, default=60, help="sequential edits for the latency percentiles")
    parser.add_argument("--per-client", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same single thread a TorchServe worker uses

    local = in_process(args.generator, args.n)
    rows = []
    with tempfile.TemporaryDirectory(prefix="faceedit-bench-") as tmp:
        for batching in (True, False):
            store = Path(tmp) / ("batch" if batching else "nobatch")
            settings = {} if batching else {"batchSize": 1, "maxBatchDelay": 0}
            build_archive("generator", args.generator, store, torchserve=settings)
            build_archive("encoder", args.encoder, store)
            os.environ.setdefault("FACEEDIT_GENERATORS", f"demo={args.generator}")
            stack = launcher.up(Path(tmp) / "run", store, worker=False)
            try:
                with FaceEditClient(stack.editor_target, stack.api_key, timeout_s=120) as client:
                    attributes = client.list_attributes()
                    steps = [Step(attributes[0].name, 1.0)] if attributes else []
                    latent_id = client.generate([1])[0].latent_id
                    through_stack(client, latent_id, steps, 5)  # warm-up
                    stacked = through_stack(client, latent_id, steps, args.n)
                one = throughput(stack.editor_target, stack.api_key, latent_id, steps, 1, args.per_client)
                eight = throughput(stack.editor_target, stack.api_key, latent_id, steps, 8, args.per_client)
            finally:
                launcher.down(Path(tmp) / "run", stack.run_dir)
            rows.append((batching, stacked, one, eight))

    p50, p95 = percentiles(local)
    print(f"in-process forward + PNG     p50 {p50 * 1e3:7.2f} ms  p95 {p95 * 1e3:7.2f} ms")
    for batching, stacked, one, eight in rows:
        s50, s95 = percentiles(stacked)
        label = "on " if batching else "off"
        print(f"Edit through the stack, batching {label}: p50 {s50 * 1e3:7.2f} ms  p95 {s95 * 1e3:7.2f} ms  "
              f"({s50 / p50:.1f}x in-process p50)   throughput 1 client {one:6.1f}/s, 8 clients {eight:6.1f}/s "
              f"({eight / one:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
