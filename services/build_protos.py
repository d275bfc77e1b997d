"""Generate the Python gRPC stubs at build time (`make protos`); they are never committed.

- faceedit.v1 (protos/faceedit/v1: editor, adaptation, common), the public API, into the client package:
  clients/python/faceedit_client/v1 (`from faceedit_client.v1 import editor_pb2`). The editor's servicer
  imports the same modules, so one set of descriptors serves both ends.
- TorchServe's inference API (from its own jar), which only the services speak, into
  services/common/ts_grpc (`from services.common.ts_grpc import inference_pb2`).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT_STUBS = ROOT / "clients" / "python" / "faceedit_client" / "v1"
SERVICE_STUBS = ROOT / "services" / "common" / "ts_grpc"
# TorchServe's own inference.proto ships inside its Java frontend; we vendor nothing and
# extract it at build time so the stubs always match the installed TorchServe.
TS_PROTOS = ("proto/inference.proto",)
TS_PACKAGE = "ts_grpc"  # the .proto's folder when compiled: descriptors name it ts_grpc/inference.proto


def _torchserve_jar() -> Path:
    import ts  # the torchserve package

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise SystemExit(f"TorchServe's frontend jar is missing at {jar}; reinstall torchserve")
    return jar


def _googleapis_root() -> Path:
    # googleapis-common-protos ships google/rpc/status.proto next to its modules.
    import google.rpc.status_pb2 as status

    return Path(status.__file__).resolve().parents[2]


def _protoc(include: Path, files: list[str], out: Path) -> None:
    from grpc_tools import protoc

    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    args = ["grpc_tools.protoc", f"-I{include}", f"-I{_googleapis_root()}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {files}")


def _install(generated: Path, source: str, package: str, dest: Path) -> list[Path]:
    """Move protoc's modules of proto folder `generated` (importable as `source`) into `dest` (as `package`).

    protoc names modules after the .proto paths, so faceedit/v1/editor_pb2.py imports its siblings as
    `from faceedit.v1 import common_pb2`; those imports are pointed at where the modules now live. The
    descriptors inside are untouched: file names (faceedit/v1/*.proto) and wire names stay what they are.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for stale in (*dest.glob("*_pb2.py"), *dest.glob("*_pb2_grpc.py"), *dest.glob("*_pb2.pyi")):
        stale.unlink()  # a proto removed upstream must not leave its stub behind
    written = []
    sibling = re.compile(rf"^(\s*)from {re.escape(source)} import ", re.M)
    for path in sorted(generated.iterdir()):
        if path.suffix in (".py", ".pyi") and path.stem.endswith(("_pb2", "_pb2_grpc")):
            target = dest / path.name
            target.write_text(sibling.sub(rf"\1from {package} import ", path.read_text()))
            written.append(target)
    return written


def build() -> list[Path]:
    """Generate both sets of stubs (protoc writes into a temporary folder first); returns the files written."""
    with tempfile.TemporaryDirectory(prefix="faceedit-protos-") as tmp:
        work = Path(tmp)
        ts_src = work / "src" / TS_PACKAGE
        ts_src.mkdir(parents=True)
        with zipfile.ZipFile(_torchserve_jar()) as jar:
            for name in TS_PROTOS:
                (ts_src / Path(name).name).write_bytes(jar.read(name))
        out = work / "out"
        out.mkdir()
        ours = sorted((ROOT / "protos").rglob("*.proto"))
        _protoc(ROOT / "protos", [str(p.relative_to(ROOT / "protos")) for p in ours], out)
        _protoc(work / "src", [f"{TS_PACKAGE}/{Path(n).name}" for n in TS_PROTOS], out)
        return [*_install(out / "faceedit" / "v1", "faceedit.v1", "faceedit_client.v1", CLIENT_STUBS),
                *_install(out / TS_PACKAGE, TS_PACKAGE, "services.common.ts_grpc", SERVICE_STUBS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    for path in build():
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    sys.exit(main())
