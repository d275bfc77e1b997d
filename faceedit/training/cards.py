"""Model cards: the sidecar JSON next to a shipped checkpoint (how it was made, its metrics, its sha256).

One schema for every model of the zoo (generator, encoder, scorer, CLIP): whatever sections a trainer adds
("model", "config", "metrics", ...), the card has a "training" section holding at least `command` (what was
run), `commit` (`git_commit()`: the short hash, "+dirty" with local changes) and `hardware` (one string,
`hardware()`), which `provenance()` gives; the file's name, sha256 and size in bytes come last
(faceedit.artifacts writes them).
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from faceedit import artifacts


def hardware() -> str:
    """One line naming where a model was trained (so a card's wall time can be read right)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return (f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(command: str) -> dict[str, str]:
    """The card's required "training" fields: how to rerun it, at which commit, on what."""
    return {"command": command, "commit": git_commit(), "hardware": hardware()}


def write_card(weights: Path, card: dict[str, Any]) -> Path:
    """Write `<stem>.json` next to `weights` with the card, the file's sha256 and size; returns its path.

    The loader checks this sha256 before it trusts the weights (faceedit.checkpoints).
    """
    full = {"created": datetime.now(UTC).isoformat(timespec="seconds"), **card}
    return artifacts.write_sidecar(weights, full, sort_keys=False)


def read_card(weights: Path) -> dict[str, Any]:
    return artifacts.read_sidecar(weights)


def update_card(weights: Path, **sections: Any) -> Path:
    """Merge sections (e.g. metrics=...) into an existing card, keeping its recorded sha256 in step."""
    card = read_card(weights)
    for key, value in sections.items():
        # One level deep, so `eval zoo` and `eval edits` can each add their part of "metrics".
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    return write_card(weights, card)
