"""Build the TorchServe model directories (generator, encoder) with torch-model-archiver: `make mar` and the tests."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
KINDS = {
    "generator": (HERE / "generator_handler.py", HERE / "config" / "generator.yaml"),
    "encoder": (HERE / "encoder_handler.py", HERE / "config" / "encoder.yaml"),
}


def model_config(kind: str, settings: Mapping[str, Any] | None = None,
                 torchserve: Mapping[str, Any] | None = None) -> dict:
    """The shipped model-config.yaml of `kind`, with `settings` merged into its `faceedit:` section
    and `torchserve` (batchSize, maxBatchDelay, …) over the top level."""
    config = yaml.safe_load(KINDS[kind][1].read_text())
    config.update(dict(torchserve or {}))
    config["faceedit"] = {**(config.get("faceedit") or {}), **dict(settings or {})}
    return config


def build_archive(kind: str, export_dir: str | Path, name: str | None = None,
                  settings: Mapping[str, Any] | None = None, torchserve: Mapping[str, Any] | None = None,
                  version: str = "1.0") -> Path:
    """Write `export_dir/<name>/` (no-archive format) serving the `kind` handler.

    The archive holds code and settings, not weights: the handlers load the files the model
    configuration names (`settings["models"]` or $FACEEDIT_MODELS), the same file the editor and the
    worker read, so ids and weights agree across services and a 1.2 GB checkpoint is never copied.
    no-archive: TorchServe serves the directory in place, and what is served can be inspected.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}")
    export_dir = Path(export_dir)
    name = name or kind
    handler, _ = KINDS[kind]
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="faceedit-mar-") as tmp:
        config_file = Path(tmp) / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(model_config(kind, settings, torchserve), sort_keys=False))
        cmd = [_archiver(), "--model-name", name, "--version", version, "--handler", str(handler),
               "--config-file", str(config_file),
               "--export-path", str(export_dir), "--archive-format", "no-archive", "--force"]
        target = export_dir / name
        if target.exists():
            shutil.rmtree(target)  # --force does not clear files of an older build
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return target


def _archiver() -> str:
    # The venv's script when run from the venv; PATH otherwise.
    local = Path(sys.executable).parent / "torch-model-archiver"
    return str(local) if local.exists() else (shutil.which("torch-model-archiver") or "torch-model-archiver")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=None,
                        help="model configuration to bake in (default: none; the handlers then read "
                             "$FACEEDIT_MODELS, else the demo zoo's models.yaml)")
    parser.add_argument("--export", type=Path, default=Path("model_store"), help="model store directory")
    args = parser.parse_args(argv)
    settings = {}
    if args.models is not None:
        from services.common.models import load_model_config

        settings["models"] = str(load_model_config(args.models).source)  # checked now, absolute
    for kind in KINDS:
        print(build_archive(kind, args.export, settings=settings))


if __name__ == "__main__":
    main()
