"""Generated gRPC stubs (faceedit.v1, TorchServe inference), built by `make protos` into build/gen."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import faceedit

# Stubs are generated at build time, never committed: they record the grpcio-tools version and
# must match the installed protobuf runtime. $FACEEDIT_PROTO_GEN overrides the location.
GEN_DIR = Path(os.environ.get("FACEEDIT_PROTO_GEN", Path(__file__).resolve().parents[2] / "build" / "gen"))

if not (GEN_DIR / "faceedit" / "v1" / "editor_pb2.py").is_file():
    raise ImportError(f"gRPC stubs are missing in {GEN_DIR}; run `make protos` "
                      "(or `python services/build_protos.py`)")

# protoc names modules after the .proto paths (faceedit/v1/*.proto → faceedit.v1.*_pb2), and the
# generated code imports them by that name. `faceedit` is this library, so the generated folder is
# grafted onto its package path, the same mechanism pkgutil.extend_path uses for split packages.
_graft = str(GEN_DIR / "faceedit")
if _graft not in faceedit.__path__:
    faceedit.__path__.append(_graft)
if str(GEN_DIR) not in sys.path:
    sys.path.append(str(GEN_DIR))  # ts_grpc, TorchServe's inference stubs

from faceedit.v1 import (  # noqa: E402
    adaptation_pb2,
    adaptation_pb2_grpc,
    common_pb2,
    editor_pb2,
    editor_pb2_grpc,
)
from ts_grpc import inference_pb2, inference_pb2_grpc  # noqa: E402

__all__ = ["GEN_DIR", "adaptation_pb2", "adaptation_pb2_grpc", "common_pb2", "editor_pb2", "editor_pb2_grpc",
           "inference_pb2", "inference_pb2_grpc"]
