"""Where the shipped demo models live (`model_store/demo/`, or $FACEEDIT_ZOO_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

from faceedit.errors import NotFoundError

ZOO_ENV = "FACEEDIT_ZOO_DIR"
FILES = {
    "generator": "generator.pt",
    "encoder": "encoder.pt",
    "scorer": "scorer.safetensors",
    "clip": "clip.safetensors",
}


def zoo_dir() -> Path:
    """The demo zoo folder: $FACEEDIT_ZOO_DIR if set, else `model_store/demo` in the checkout."""
    override = os.environ.get(ZOO_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "model_store" / "demo"


def paths() -> dict[str, Path]:
    """The shipped generator, encoder, scorer and CLIP files (those that exist)."""
    root = zoo_dir()
    found = {name: root / file for name, file in FILES.items() if (root / file).is_file()}
    if not found:
        raise NotFoundError("demo zoo", str(root), f"no models there; train them (see README) or set {ZOO_ENV}")
    return found


def boundaries() -> dict[str, Path]:
    """The shipped InterfaceGAN boundaries, by attribute name: `zoo_dir()/boundaries/<attribute>.safetensors`."""
    folder = zoo_dir() / "boundaries"
    found = {p.stem: p for p in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}
    if not found:
        raise NotFoundError("demo boundaries", str(folder), "train them with `faceedit train boundary`")
    return found
