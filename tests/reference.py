"""Helpers for the shared reference data (``../shared/reference`` relative to the repo root).

The pSp/e4e reference weights are not stored; they are rebuilt from a "hash-init plan" JSON
following the recipe in the reference README: every entry is ``a + b * hash_uniform(index, numel)``
computed in float32 and reshaped row-major; int64 entries (``num_batches_tracked``) are 0.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
# CI (.ci/run, CI=true) always has ../shared beside the checkout: there a missing reference fails the
# tests that need it (tests/conftest.py) instead of skipping every equivalence test without a word.
ON_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def reference_mark(path: Path = REFERENCE_DIR) -> pytest.MarkDecorator:
    """The mark of a test (or class) that reads path, under the shared reference data: tests/conftest.py
    skips it, with the reason, where path is missing, and fails it under CI=true."""
    return pytest.mark.reference(path=path)


def missing_reason(path: Path = REFERENCE_DIR) -> str:
    return f"reference data not found at {path} (expected ../shared/reference beside the checkout)"

_MASK32 = 0xFFFFFFFF


def hash_uniform(t: int, n: int) -> torch.Tensor:
    """``n`` float32 values in [-1, 1) from an exact int64 integer hash seeded by ``t``."""
    i = torch.arange(n, dtype=torch.int64)
    x = (i * 2654435761 + (t + 1) * 2246822519) & _MASK32
    x ^= x >> 16
    x = (x * 0x45D9F3B) & _MASK32
    x ^= x >> 16
    x = (x * 0x45D9F3B) & _MASK32
    x ^= x >> 16
    return (((x >> 16) - 32768).double() / 32768.0).float()


def hash_uniform_fast(t: int, n: int) -> torch.Tensor:
    """Same values as :func:`hash_uniform`, computed in uint32 numpy (about 8x faster).

    Every step of the recipe is taken modulo 2**32 (``& 0xFFFFFFFF`` after each product), which
    is exactly what wrapping uint32 arithmetic does; the shifts are logical on unsigned values.
    """
    x = np.arange(n, dtype=np.uint32)
    x *= np.uint32(2654435761)
    x += np.uint32(((t + 1) * 2246822519) & _MASK32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x45D9F3B)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x45D9F3B)
    x ^= x >> np.uint32(16)
    k = (x >> np.uint32(16)).astype(np.int32) - np.int32(32768)  # integers in [-32768, 32767]
    return torch.from_numpy(k.astype(np.float32) / np.float32(32768.0))  # exact: k / 2**15


def load_plan(plan_path: str | Path) -> dict[str, Any]:
    with open(plan_path, encoding="utf-8") as f:
        return json.load(f)


def build_state_dict_from_plan(plan_path: str | Path) -> dict[str, torch.Tensor]:
    """Rebuild the state_dict a hash-init plan describes, in plan order."""
    plan = load_plan(plan_path)
    state_dict: dict[str, torch.Tensor] = {}
    for entry in plan["entries"]:
        shape = tuple(entry["shape"])
        if entry["dtype"] == "int64":
            state_dict[entry["key"]] = torch.zeros(shape, dtype=torch.int64)
            continue
        if entry["dtype"] != "float32":
            raise ValueError(f"{entry['key']}: unsupported dtype {entry['dtype']!r} in plan")
        numel = 1
        for s in shape:
            numel *= s
        v = hash_uniform_fast(int(entry["index"]), numel)
        a = torch.tensor(entry["a"], dtype=torch.float32)
        b = torch.tensor(entry["b"], dtype=torch.float32)
        state_dict[entry["key"]] = (a + b * v).reshape(shape)
    return state_dict
