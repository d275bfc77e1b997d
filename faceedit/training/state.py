"""Resumable trainer state: modules, optimiser, RNG, step and history in one atomically written file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn


class ResumableTrainer:
    """Save/resume for trainers that own `work_dir`, `config` (a dataclass), `optimizer`, `rng`,
    `step` and `history`; subclasses name their modules in `state_modules()`."""

    work_dir: Path
    config: Any
    optimizer: torch.optim.Optimizer
    rng: torch.Generator
    step: int
    history: list[dict]

    def state_modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    @property
    def state_path(self) -> Path:
        return self.work_dir / "train_state.pt"

    def save_state(self) -> None:
        state = {name: module.state_dict() for name, module in self.state_modules().items()}
        state.update({"step": self.step, "optimizer": self.optimizer.state_dict(), "rng": self.rng.get_state(),
                      "history": json.dumps(self.history), "config": json.dumps(asdict(self.config))})
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.state_path)  # atomic: a crash never leaves half a checkpoint

    def resume(self) -> bool:
        """Load the saved state if there is one; True when it did."""
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        for name, module in self.state_modules().items():
            module.load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.history = json.loads(state["history"])
        self.step = int(state["step"])
        return True
