"""Model cards: the sidecar JSON next to a shipped checkpoint (how it was made, its metrics, its sha256)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from faceedit.checkpoints import sha256_file, sidecar_path


def hardware() -> str:
    """One line naming where a model was trained (so a card's wall time can be read right)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_card(weights: Path, card: dict[str, Any]) -> Path:
    """Write `<stem>.json` next to `weights` with the card, the file's sha256 and size; returns its path.

    The loader checks this sha256 before it trusts the weights (faceedit.checkpoints).
    """
    weights = Path(weights)
    full = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **card,
            "file": weights.name, "sha256": sha256_file(weights), "bytes": weights.stat().st_size}
    path = sidecar_path(weights)
    path.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return path


def read_card(weights: Path) -> dict[str, Any]:
    path = sidecar_path(Path(weights))
    return json.loads(path.read_text()) if path.is_file() else {}


def update_card(weights: Path, **sections: Any) -> Path:
    """Merge sections (e.g. metrics=...) into an existing card, keeping its recorded sha256 in step."""
    card = read_card(weights)
    for key in ("file", "sha256", "bytes"):
        card.pop(key, None)
    for key, value in sections.items():
        # One level deep, so `eval zoo` and `eval edits` can each add their part of "metrics".
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    return write_card(weights, card)
