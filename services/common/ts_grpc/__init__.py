"""Generated gRPC stubs of TorchServe's inference API (`from services.common.ts_grpc import inference_pb2`).

Written here by `make protos` (services/build_protos.py) from the installed TorchServe's own
inference.proto, never committed. Only the services speak this API (the editor calls TorchServe with it);
the public faceedit.v1 stubs live in the client package, faceedit_client.v1.
"""

from pathlib import Path

if not (Path(__file__).parent / "inference_pb2.py").is_file():
    raise ImportError(f"TorchServe's gRPC stubs are missing in {Path(__file__).parent}: run `make protos` "
                      "(or `python services/build_protos.py`)")
