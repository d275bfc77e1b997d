"""Generate the Python gRPC stubs (faceedit.v1 and TorchServe's inference API) into build/gen at build time."""

from __future__ import annotations

import argparse
import sys
import zipfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# TorchServe's own inference.proto ships inside its Java frontend; we vendor nothing and
# extract it at build time so the stubs always match the installed TorchServe.
TS_PROTOS = ("proto/inference.proto",)
TS_PACKAGE = "ts_grpc"  # generated module name root: ts_grpc.inference_pb2


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


def build(out: Path) -> list[Path]:
    from grpc_tools import protoc

    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    staging = out.parent / "protos-src"
    ts_dir = staging / TS_PACKAGE
    ts_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_torchserve_jar()) as jar:
        for name in TS_PROTOS:
            (ts_dir / Path(name).name).write_bytes(jar.read(name))
    out.mkdir(parents=True, exist_ok=True)
    ours = sorted((ROOT / "protos").rglob("*.proto"))
    jobs = [
        (ROOT / "protos", [str(p.relative_to(ROOT / "protos")) for p in ours]),
        (staging, [f"{TS_PACKAGE}/{Path(n).name}" for n in TS_PROTOS]),
    ]
    for include, files in jobs:
        args = ["grpc_tools.protoc", f"-I{include}", f"-I{_googleapis_root()}", f"-I{well_known}",
                f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {files}")
    # Namespace-less folders are fine for ts_grpc (plain package) but faceedit/v1 is grafted
    # onto the faceedit package at import time (see faceedit/proto/__init__.py).
    for package in (out / TS_PACKAGE, out / "faceedit" / "v1"):
        (package / "__init__.py").touch()
    return sorted(out.rglob("*_pb2*.py"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gen")
    args = parser.parse_args()
    for path in build(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    sys.exit(main())
