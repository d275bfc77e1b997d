"""Edit latency through the serving stack (client → editor → TorchServe) vs the same synthesis + PNG in process,
where the difference goes, and throughput at 1 and 8 concurrent clients with TorchServe's dynamic batching
on and off."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from faceedit.images import to_pil  # noqa: E402
from faceedit.models import load_generator  # noqa: E402
from faceedit_client import FaceEditClient, Step  # noqa: E402
from services import launcher  # noqa: E402
from services.common.models import load_model_config  # noqa: E402
from services.common.ts_grpc import inference_pb2, inference_pb2_grpc  # noqa: E402
from services.inference.archive import build_archive  # noqa: E402
from services.inference.handler_support import encode_image  # noqa: E402

# Editor stages of one Edit by latent id, in the order they run (services/editor/editing.py).
EDIT_STAGES = ("cache.get", "edit", "inference.synthesize")  # cache.put runs during the synthesis


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


class InProcess:
    """What one Edit costs without any serving: synthesis of one W+ plus PNG encoding, as the handler does them."""

    def __init__(self, generator_path: Path):
        self.generator = load_generator(generator_path).eval()
        with torch.inference_mode():
            self.ws = self.generator.broadcast(self.generator.mapping(torch.randn(1, self.generator.style_dim)))
        for _ in range(3):
            self()  # the first calls pick kernels

    def __call__(self) -> None:
        with torch.inference_mode():
            encode_image(to_pil(self.generator.synthesis(self.ws))[0], "png")


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def through_stack(client: FaceEditClient, latent_id: str, steps: list[Step], n: int, local: InProcess,
                  block: int = 10) -> tuple[list[float], list[float]]:
    """`n` sequential edits and as many in-process runs, alternating in blocks of `block`: both see the
    machine's load of the moment, and the stack is timed back to back as a busy client uses it (a
    stack left idle between calls answers the next one slower: its caches and threads have gone cold)."""
    stacked, alone = [], []
    while len(stacked) < n:
        count = min(block, n - len(stacked))
        alone += [timed(local) for _ in range(count)]
        stacked += [timed(lambda: client.edit(steps, latent_id=latent_id)) for _ in range(count)]
    return stacked, alone


def warm_torchserve(target: str, calls: int) -> None:
    """TorchServe's Java frontend runs interpreted until its JIT has seen a few thousand calls (measured:
    ~3 ms more per call before); a server in use is past that. Calls the handler refuses at once warm
    the same gRPC → queue → worker → reply path without minutes of synthesis."""
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        request = inference_pb2.PredictionsRequest(model_name="generator", input={"data": b'{"probe": true}'})
        for _ in range(calls):
            stub.Predictions(request, timeout=30)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text endpoint: (name, sorted labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def mean_delta(before: dict, after: dict, name: str, **labels: str) -> float | None:
    """Mean of a histogram's observations made between two scrapes, in seconds (None: none made)."""
    key = tuple(sorted(labels.items()))

    def value(scrape_: dict, suffix: str) -> float:
        return sum(v for (n, lab), v in scrape_.items()
                   if n == name + suffix and all(item in lab for item in key))

    count = value(after, "_count") - value(before, "_count")
    return None if count <= 0 else (value(after, "_sum") - value(before, "_sum")) / count


@dataclass
class Breakdown:
    """Means over the timed loop, in seconds: the client's call, what the editor saw of it, and of its stages."""

    client: float
    rpc: float | None
    stages: dict[str, float | None]
    handler: float | None  # the handler's own time as it reports it (services/inference/generator_handler.py)


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


def print_breakdown(b: Breakdown, local_mean: float) -> None:
    """Where the client's mean time goes beyond the in-process mean; the indented lines add up to it."""

    def ms(x: float | None) -> str:
        return "    n/a" if x is None else f"{x * 1e3:7.2f}"

    synthesize = b.stages.get("inference.synthesize")
    if b.rpc is None or synthesize is None or b.handler is None:
        print(f"  means (ms): client call {ms(b.client)}, in process {ms(local_mean)} (no editor or handler metrics)")
        return
    # The handler's own time is the same work as the in-process run, so client - handler is the serving
    # overhead without the synthesis time's run-to-run noise.
    print(f"  means (ms): client call {ms(b.client)} = in process {ms(local_mean)} + overhead "
          f"{ms(b.client - local_mean)}; serving alone (client call - handler's own time) {ms(b.client - b.handler)}")
    print(f"    client ↔ editor gRPC (client call - editor RPC)       {ms(b.client - b.rpc)}")
    print(f"    editor cache.get (Redis)                              {ms(b.stages['cache.get'])}")
    print(f"    editor edit (apply the steps)                         {ms(b.stages['edit'])}")
    print(f"    editor ↔ TorchServe (synthesize - handler's time)     {ms(synthesize - b.handler)}")
    print(f"    editor cache.put (Redis, during the synthesis: not added) {ms(b.stages['cache.put'])}")
    print(f"    editor rest of the RPC (RPC - its stages)             "
          f"{ms(b.rpc - sum(b.stages[s] or 0.0 for s in EDIT_STAGES))}")
    print(f"    handler - in process (the same work elsewhere)        {ms(b.handler - local_mean)}")


def start_stack(run_root: Path, store: Path, models: Path) -> tuple[launcher.Stack, str]:
    """The stack and its editor's Prometheus URL, read from the launcher's log line (FACEEDIT_METRICS_PORT)."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            stack = launcher.up(run_root, store, worker=False, models=models)
    finally:
        print(log.getvalue(), end="")
    found = re.search(r"metrics (http://\S+/metrics)", log.getvalue())
    if found is None:
        raise RuntimeError("the launcher logged no editor metrics URL")
    return stack, found.group(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=REPO / "model_store" / "demo" / "models.yaml",
                        help="model configuration (services/common/models.py); the in-process run uses its "
                             "default generator")
    parser.add_argument("-n", type=int, default=60, help="sequential edits for the latency percentiles")
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20, help="edits before the timed ones")
    parser.add_argument("--warmup-calls", type=int, default=3000,
                        help="cheap TorchServe calls before those, for its JIT (0: a freshly started frontend)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same single thread a TorchServe worker uses
    models = load_model_config(args.models)

    local = InProcess(models.generators[models.default_generator].checkpoint)
    rows = []
    with tempfile.TemporaryDirectory(prefix="faceedit-bench-") as tmp:
        for batching in (True, False):
            store = Path(tmp) / ("batch" if batching else "nobatch")
            settings = {} if batching else {"batchSize": 1, "maxBatchDelay": 0}
            build_archive("generator", store, torchserve=settings)
            build_archive("encoder", store)
            stack, metrics_url = start_stack(Path(tmp) / "run", store, models.source)
            try:
                with FaceEditClient(stack.editor_target, stack.api_key, timeout_s=120) as client:
                    attributes = client.list_attributes()
                    steps = [Step(attributes[0].name, 1.0)] if attributes else []
                    latent_id = client.generate([1])[0].latent_id
                    warm_torchserve(stack.torchserve_grpc, args.warmup_calls)
                    through_stack(client, latent_id, steps, args.warmup, local)
                    before = scrape(metrics_url)
                    stacked, alone = through_stack(client, latent_id, steps, args.n, local)
                    after = scrape(metrics_url)
                one = throughput(stack.editor_target, stack.api_key, latent_id, steps, 1, args.per_client)
                eight = throughput(stack.editor_target, stack.api_key, latent_id, steps, 8, args.per_client)
            finally:
                launcher.down(Path(tmp) / "run", stack.run_dir)
            name = "faceedit_editor_stage_seconds"
            breakdown = Breakdown(statistics.fmean(stacked),
                                  mean_delta(before, after, "faceedit_editor_rpc_seconds", method="Edit"),
                                  {s: mean_delta(before, after, name, stage=s) for s in (*EDIT_STAGES, "cache.put")},
                                  mean_delta(before, after, name, stage="inference.handler"))
            rows.append((batching, stacked, alone, one, eight, breakdown))

    for batching, stacked, alone, one, eight, breakdown in rows:
        s50, s95 = percentiles(stacked)
        p50, p95 = percentiles(alone)
        print(f"batching {'on ' if batching else 'off'}: Edit through the stack p50 {s50 * 1e3:7.2f} ms  p95 "
              f"{s95 * 1e3:7.2f} ms; in process (interleaved) p50 {p50 * 1e3:7.2f} ms  p95 {p95 * 1e3:7.2f} ms; "
              f"overhead p50 {(s50 - p50) * 1e3:+6.2f} ms ({s50 / p50:.2f}x in process)")
        print(f"  throughput 1 client {one:6.1f}/s, 8 clients {eight:6.1f}/s ({eight / one:.2f}x)")
        print_breakdown(breakdown, statistics.fmean(alone))
    by_mode = {batching: eight for batching, _, _, _, eight, _ in rows}
    print(f"8 clients, batching on vs off: {by_mode[True] / by_mode[False]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
