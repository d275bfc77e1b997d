"""Build hook of faceedit-client (the metadata is pyproject.toml's): a wheel is built only with its generated
faceedit.v1 stubs in faceedit_client/v1, and only when they need no newer grpcio/protobuf than it declares.

An editable install (the checkout's `make install`) is exempt: it runs before `make protos` can, and reads the
stubs from the source folder once they are generated.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

STUBS = Path(__file__).resolve().parent / "faceedit_client" / "v1"
MODULES = ("common_pb2", "editor_pb2", "editor_pb2_grpc", "adaptation_pb2", "adaptation_pb2_grpc")
# What each kind of generated module records about the generator that wrote it.
RECORDED = {"grpcio": re.compile(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'", re.M),
            "protobuf": re.compile(r"^# Protobuf Python Version: ([0-9.]+)", re.M)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _floors(requirements: list[str]) -> dict[str, tuple[int, ...]]:
    floors = {}
    for requirement in map(str, requirements):  # "protobuf<8,>=7.35.1": setuptools reorders the specifiers
        name = re.match(r"\s*([A-Za-z0-9_.-]+)", requirement)
        floor = re.search(r">=\s*([0-9.]+)", requirement.split(";")[0])
        if name and floor:
            floors[name.group(1).lower()] = _version(floor.group(1))
    return floors


def check_stubs(requirements: list[str]) -> None:
    missing = [m for m in MODULES if not (STUBS / f"{m}.py").is_file()]
    if missing:
        raise SystemExit(f"faceedit-client: the generated stubs {missing} are missing in {STUBS}; run `make protos` "
                         "(or `python services/build_protos.py`) in the checkout first")
    floors = _floors(requirements)
    for module in MODULES:
        text = (STUBS / f"{module}.py").read_text()
        for package, pattern in RECORDED.items():
            found = pattern.search(text)
            floor = floors.get(package, ())
            if found and _version(found.group(1)) > floor:
                allowed = f">={'.'.join(map(str, floor))}" if floor else " of any version"
                raise SystemExit(f"faceedit-client: {module}.py was generated for {package}>={found.group(1)}, but "
                                 f"its dependencies allow {package}{allowed}: raise the floor in pyproject.toml")


class BuildPy(build_py):
    def run(self) -> None:
        if not getattr(self, "editable_mode", False):
            check_stubs(self.distribution.install_requires or [])
        super().run()


setup(cmdclass={"build_py": BuildPy})
