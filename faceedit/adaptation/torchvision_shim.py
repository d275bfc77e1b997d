"""Import open_clip on CPU-only torch when the installed torchvision is a CUDA build
(workaround, used only on failure)."""

from __future__ import annotations

import sys
from types import ModuleType

import torch

# torchvision registers fake (meta) kernels for these ops unconditionally at import time. When its
# C++ extension cannot load (PyPI ships only a CUDA torchvision for torch 2.13, which fails on the
# CPU wheel), the ops were never defined and `import torchvision` dies with
# "operator torchvision::nms does not exist". Defining just the schemas lets the pure-Python parts
# (transforms, models, ops.misc — all that open_clip and timm need) import; calling these ops
# still fails, and nothing in faceedit calls them.
_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it would unregister the schemas


def _define_missing_schemas() -> None:
    global _library
    if _library is None:
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _MISSING_SCHEMAS.values():
            _library.define(schema)


def _forget_partial_import() -> None:
    """A failed `import torchvision` leaves its already-run submodules behind; drop them to retry cleanly."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def import_open_clip() -> ModuleType:
    """`import open_clip`, applying the torchvision schema workaround only if the plain import fails that way."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        _forget_partial_import()
        _define_missing_schemas()
        import torchvision  # noqa: F401,F811
    import open_clip

    return open_clip


def workaround_applied() -> bool:
    """Whether this process needed the schema workaround (for diagnostics and tests)."""
    return _library is not None
