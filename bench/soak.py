"""Soak: mixed traffic through the demo stack for N minutes; RSS of every process each minute and its slope.

    python bench/soak.py                  # 30 minutes, the demo zoo, 4 client threads
    python bench/soak.py --minutes 2      # a quick look

Each client thread loops over Generate, Edit (by id), Invert, Animate (GIF) and ListAttributes;
errors are counted by status code. Every minute the resident set of each process of the stack
(the editor, TorchServe's Java frontend and its model workers, the worker, Redis) is printed; at the
end, the least-squares slope of each over the second half of the run (MB per minute): a leak keeps
growing, a warm-up levels off.
"""

from __future__ import annotations

import argparse
import collections
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb(run_dir: Path) -> dict[str, float]:
    """Current resident set (VmRSS, MB) per service of a run, summed over its processes."""
    from processes import service_memory_kb

    return {name: sum(values) / 1024 for name, values in service_memory_kb(run_dir, "VmRSS").items()}


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (y per x) of (x, y) points; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in points) / var


def traffic(target: str, key: str, stop: threading.Event, counts: collections.Counter, lock: threading.Lock) -> None:
    import grpc

    from faceedit.images import to_pil
    from faceedit.synth import render_faces
    from faceedit_client import FaceEditClient, FaceEditClientError, Step

    buffer = io.BytesIO()
    to_pil(render_faces(1, seed=3, size=64)[0])[0].save(buffer, format="PNG")
    photo = buffer.getvalue()
    with FaceEditClient(target, key, timeout_s=60) as client:
        attribute = client.list_attributes()[0].name
        seed = 0
        while not stop.is_set():
            seed += 1
            calls = (lambda seed=seed: client.generate([seed % 1000]),
                     lambda seed=seed: client.edit([Step(attribute, 1.5)], seed=seed % 1000),
                     lambda: client.invert(photo),
                     lambda seed=seed: list(client.animate([Step(attribute, 2.0)], seed=seed % 1000, frames=6,
                                                        animation="gif")),
                     lambda: client.list_attributes())
            for call in calls:
                try:
                    call()
                    code = "OK"
                except FaceEditClientError as exc:
                    code = exc.code.name if isinstance(exc.code, grpc.StatusCode) else str(exc.code)
                with lock:
                    counts[code] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--models", type=Path, default=None, help="model configuration (default: the demo zoo)")
    args = parser.parse_args(argv)

    from services import launcher
    from services.inference.archive import build_archive

    # A short root: TorchServe's unix sockets live under it.
    with tempfile.TemporaryDirectory(prefix="fe-soak-", dir="/tmp") as tmp:
        store = Path(tmp) / "store"
        for kind in ("generator", "encoder"):
            build_archive(kind, store)
        stack = launcher.up(Path(tmp) / "run", store, worker=False, models=args.models)
        stop, lock, counts = threading.Event(), threading.Lock(), collections.Counter()
        threads = [threading.Thread(target=traffic, args=(stack.editor_target, stack.api_key, stop, counts, lock),
                                    daemon=True) for _ in range(args.clients)]
        history: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        started = time.monotonic()
        try:
            for t in threads:
                t.start()
            minute = 0
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(min(60.0, max(0.0, args.minutes * 60 - (time.monotonic() - started))))
                minute += 1
                now = (time.monotonic() - started) / 60
                sample = rss_mb(stack.run_dir)
                for name, value in sample.items():
                    history[name].append((now, value))
                with lock:
                    calls = dict(counts)
                print(f"[{now:5.1f} min] " + "  ".join(f"{k} {v:6.0f} MB" for k, v in sorted(sample.items()))
                      + f"  calls {calls}", flush=True)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
            launcher.down(Path(tmp) / "run", stack.run_dir)
    print(f"{sum(counts.values())} calls in {args.minutes:g} min: {dict(counts)}")
    for name, points in sorted(history.items()):
        second_half = [p for p in points if p[0] >= args.minutes / 2] or points
        print(f"{name:<20} first {points[0][1]:7.0f} MB  last {points[-1][1]:7.0f} MB  "
              f"slope (second half) {slope(second_half):+6.2f} MB/min  (whole run {slope(points):+6.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
