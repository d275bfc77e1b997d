"""Generated gRPC stubs of faceedit.v1 (editor, adaptation, common): `from faceedit_client.v1 import editor_pb2`.

They are written here by `make protos` (services/build_protos.py), never committed: they record the
grpcio-tools version that made them, which the installed grpcio and protobuf must not be older than
(clients/python/setup.py checks that against this package's dependencies when it builds a wheel).
The servicer imports these same modules, so one set of descriptors serves both ends.
"""

from pathlib import Path

if not (Path(__file__).parent / "editor_pb2.py").is_file():
    raise ImportError(f"the faceedit.v1 gRPC stubs are missing in {Path(__file__).parent}: run `make protos` "
                      "(or `python services/build_protos.py`) in the checkout; an installed (not editable) "
                      "clients/python must be reinstalled after")
