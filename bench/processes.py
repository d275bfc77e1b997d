"""Memory of a run's services (the launcher's pidfiles name process groups), read from /proc."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path


def service_memory_kb(run_dir: Path, field: str) -> dict[str, list[int]]:
    """`field` of /proc/<pid>/status ("VmRSS": now, "VmHWM": peak), in kB, for every process of each
    service of `run_dir`. TorchServe's group is split into its Java frontend and its model workers."""
    groups = {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid") if p.read_text().strip()}
    found: dict[str, list[int]] = defaultdict(list)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            pgid = os.getpgid(int(proc.name))
            status = (proc / "status").read_text()
            program = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue  # ended while we looked
        for name, group in groups.items():
            if pgid != group:
                continue
            value = next((int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")), 0)
            if name == "torchserve":
                name = "torchserve (java)" if program.endswith("java") else "torchserve (model workers)"
            found[name].append(value)
    return dict(found)
