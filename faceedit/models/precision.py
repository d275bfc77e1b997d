"""Device and precision choices for running the models: validated names, typed errors, autocast."""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from typing import Literal, get_args

import torch

from faceedit.errors import InvalidInputError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DEVICE_CHOICES_HELP = "'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'"

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")
# What `Generator.synthesis` uses when no precision is passed: lets a caller that cannot pass one
# (e.g. `faceedit.sampling.sample_images`) opt in for a block without changing its signature.
_default_precision: contextvars.ContextVar[Precision] = contextvars.ContextVar("synthesis_precision",
                                                                               default="fp32")


class DeviceUnavailableError(InvalidInputError):
    """A device was asked for that this machine (or this torch build) does not have."""

    def __init__(self, problem: str):
        super().__init__("device", problem)


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' → a torch.device that exists here, else a typed error."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    match = _DEVICE.match(spec.strip().lower()) if isinstance(spec, str) else None
    if match is None:
        raise InvalidInputError("device", f"expected {DEVICE_CHOICES_HELP}, got {spec!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if index is not None:
            raise InvalidInputError("device", f"'auto' takes no index, got {spec!r}")
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        if index not in (None, "0"):
            raise InvalidInputError("device", f"there is one CPU device, got {spec!r}")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no visible GPU"
        raise DeviceUnavailableError(f"{spec!r} was requested but CUDA is not available ({build}, "
                                     f"torch {torch.__version__}); use 'cpu' or 'auto'")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise DeviceUnavailableError(f"{spec!r} was requested but only {count} CUDA device(s) are visible")
    # Always indexed: torch.cuda.set_device and friends reject a bare torch.device("cuda").
    return torch.device("cuda", int(index) if index is not None else torch.cuda.current_device())


def check_precision(precision: str) -> Precision:
    """A precision name, validated (device-independent)."""
    if precision not in PRECISIONS:
        raise InvalidInputError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision  # type: ignore[return-value]


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: plain fp32), or a typed error if unsupported."""
    precision = check_precision(precision)
    device_type = torch.device(device).type
    if precision == "fp16" and device_type == "cpu":
        # CPU autocast accepts fp16 on recent torch, but CPU fp16 kernels are slow or emulated on
        # most machines; bf16 is the CPU's reduced-precision path (AMX/AVX512-BF16).
        raise InvalidInputError("precision", "fp16 is not supported on CPU; use bf16 on CPU")
    if precision == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InvalidInputError("precision", "this GPU has no bf16 support (compute capability < 8.0); use fp16")
    if device_type not in ("cpu", "cuda") and precision != "fp32":
        raise InvalidInputError("precision", f"reduced precision is supported on cpu and cuda, not {device_type}")
    return _DTYPES[precision]


@contextlib.contextmanager
def synthesis_precision(precision: str) -> Iterator[None]:
    """Within the block, `Generator.synthesis` calls without a `precision` argument use this one."""
    token = _default_precision.set(check_precision(precision))
    try:
        yield
    finally:
        _default_precision.reset(token)


def default_precision() -> Precision:
    """The precision `synthesis` uses when none is passed: fp32 unless `synthesis_precision` set one."""
    return _default_precision.get()


def active_autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The reduced dtype autocast runs convs in here, or None outside autocast (plain fp32 path)."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Leave autocast for a precision-sensitive step; outside autocast a no-op, so fp32 is untouched."""
    if active_autocast_dtype(x) is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)
