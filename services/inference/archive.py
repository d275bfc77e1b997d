"""Build the TorchServe model directories (generator, encoder) with torch-model-archiver: `make mar` and the tests."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import yaml

from faceedit.checkpoints import sidecar_path

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


def build_archive(kind: str, weights: str | Path, export_dir: str | Path, name: str | None = None,
                  settings: Mapping[str, Any] | None = None, torchserve: Mapping[str, Any] | None = None,
                  version: str = "1.0") -> Path:
    """Write `export_dir/<name>/` (no-archive format) serving `weights` with the `kind` handler.

    no-archive: TorchServe serves the directory in place, so a worker (re)start does not unzip
    megabytes of weights, and what is served can be inspected and diffed. The weights' sidecar
    JSON travels along, so the handler's loader verifies their recorded sha256.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}")
    weights, export_dir = Path(weights), Path(export_dir)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such weights file")
    name = name or kind
    handler, _ = KINDS[kind]
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="faceedit-mar-") as tmp:
        config_file = Path(tmp) / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(model_config(kind, settings, torchserve), sort_keys=False))
        cmd = [_archiver(), "--model-name", name, "--version", version, "--handler", str(handler),
               "--serialized-file", str(weights), "--config-file", str(config_file),
               "--export-path", str(export_dir), "--archive-format", "no-archive", "--force"]
        if sidecar_path(weights).is_file():
            cmd += ["--extra-files", str(sidecar_path(weights))]
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
    parser.add_argument("--generator", type=Path, required=True, help="generator checkpoint")
    parser.add_argument("--encoder", type=Path, required=True, help="encoder checkpoint")
    parser.add_argument("--export", type=Path, default=Path("model_store"), help="model store directory")
    parser.add_argument("--base-generator-id", default="demo", help="id under which the base generator is served")
    args = parser.parse_args(argv)
    for kind, weights, settings in (("generator", args.generator, {"base_generator_id": args.base_generator_id}),
                                    ("encoder", args.encoder, {})):
        print(build_archive(kind, weights, args.export, settings=settings))


if __name__ == "__main__":
    main()
