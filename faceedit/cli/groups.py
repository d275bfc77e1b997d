"""CommandGroups: where each faceedit.cli module adds its sub-commands."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass
class CommandGroups:
    """Where command modules add their sub-commands: top level, `faceedit train …` and `faceedit eval …`."""

    top: argparse._SubParsersAction
    train: argparse._SubParsersAction
    eval: argparse._SubParsersAction
