"""Container health check of the editor: exit 0 only if grpc.health.v1 says SERVING (docker compose healthcheck)."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Health name for liveness probes: SERVING while the process serves RPCs at all, whatever its
# dependencies say. Readiness asks for "" (NOT_SERVING while TorchServe or Redis is down); a
# liveness probe on "" would restart a healthy editor every time a dependency blips.
LIVENESS_SERVICE = "liveness"


def check(target: str, service: str = "", timeout_s: float = 3.0) -> bool:
    """True when the health service at `target` reports SERVING for `service`."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051", help="host:port of the editor")
    parser.add_argument("--service", default="", help=f"health name: '' (ready) or {LIVENESS_SERVICE!r} (alive)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    # Imported without torch or the editor's core, so a probe every few seconds stays cheap.
    return 0 if check(args.target, args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
