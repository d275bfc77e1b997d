"""Text steps of Edit/Animate → one StyleSpace offset for TorchServe (StyleCLIP global directions)."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceedit.errors import FaceEditError, InvalidInputError
from services.common.artifacts import ArtifactStore
from services.common.errors import PreconditionError
from services.common.protocol import StyleOffset
from services.common.text_edits import RelevanceMarker

log = logging.getLogger("faceedit.editor")

DEFAULT_NEUTRAL = "a face"
DEFAULT_THRESHOLD = 0.1


@dataclass(frozen=True)
class TextStep:
    text: str
    strength: float  # α: each relevant channel moves α of its σ (times the channel's share of the direction)
    neutral: str = DEFAULT_NEUTRAL
    threshold: float = DEFAULT_THRESHOLD
    field: str = "edits[0]"


class TextEdits:
    """Reads each base's relevance (once) and the deployment's text-edit CLIP (on the first text step), and turns
    a request's text steps into the sum of their directions. Adapted generators use their base's relevance:
    DIFA and tuning move the weights little, and StyleCLIP's directions carry over (approximately)."""

    def __init__(self, store: ArtifactStore, clip_spec: str | None):
        self.store = store
        self.clip_spec = clip_spec
        self._clip: Any = None
        self._relevance: dict[str, Any] = {}
        self._lock = threading.Lock()

    def available(self, base_id: str) -> bool:
        return self.clip_spec is not None and RelevanceMarker.read(self.store, base_id) is not None

    def warm_up(self) -> None:
        """Load the CLIP before the first text step (the editor's warm-up, before it reports SERVING): ~0.6 s
        that no request should pay. A CLIP that fails to load is logged, not raised: attribute edits still
        serve, and text steps report the error."""
        if self.clip_spec is None:
            return
        try:
            with self._lock:
                self._clip_model()
        except FaceEditError as exc:
            log.warning(json.dumps({"event": "text_clip_unavailable", "clip": self.clip_spec, "error": str(exc)}))

    def _clip_model(self) -> Any:
        from faceedit.adaptation.clip import load_text_clip

        if self._clip is None:
            self._clip = load_text_clip(self.clip_spec)
        return self._clip

    def _relevance_of(self, base_id: str) -> Any:
        from faceedit.editing.text import ChannelRelevance

        if base_id not in self._relevance:
            marker = RelevanceMarker.read(self.store, base_id)
            if marker is None:
                raise PreconditionError(f"text edits for generator {base_id!r} are not prepared yet: the worker "
                                        "computes their channel relevance at start (faceedit.prepare)")
            self._relevance[base_id] = ChannelRelevance.from_bytes(self.store.get(marker.artifact_key),
                                                                   marker.artifact_key)
        return self._relevance[base_id]

    def offset(self, base_id: str, steps: Sequence[TextStep], strengths: np.ndarray) -> StyleOffset:
        """Σ α_i · direction_i, applied with `strengths` [B] per latent (1 for an edit, t for animation frames)."""
        from faceedit.editing.text import text_direction

        if self.clip_spec is None:
            raise PreconditionError("text edits need a CLIP: the model configuration names none "
                                    "(text_clip: or clips: [...])")
        with self._lock:  # one load of each model, whatever the number of RPC threads
            relevance = self._relevance_of(base_id)
            clip = self._clip_model()
            total = None
            for step in steps:
                try:
                    direction = text_direction(relevance, clip, step.text, step.neutral, step.threshold)
                except InvalidInputError as exc:
                    field = {"target": "text", "neutral": "neutral"}.get(exc.field, exc.field)
                    raise InvalidInputError(f"{step.field}.{field}", exc.problem) from None
                total = step.strength * direction if total is None else total + step.strength * direction
        assert total is not None
        return StyleOffset(tuple(relevance.layers), tuple(relevance.widths),
                           total.numpy().astype("<f4"), np.asarray(strengths, dtype="<f4"))


def text_step(text: str, strength: float, neutral: str, threshold: float, field: str) -> TextStep:
    """An AttributeStep with `text` set, checked (the prompt's own checks run when its direction is made)."""
    if not math.isfinite(strength) or abs(strength) > 100:
        raise InvalidInputError(f"{field}.strength", f"must be finite with |strength| <= 100, got {strength}")
    threshold = threshold or DEFAULT_THRESHOLD
    if not (math.isfinite(threshold) and 0 < threshold < 1):
        raise InvalidInputError(f"{field}.threshold", f"must be in (0, 1) (0: {DEFAULT_THRESHOLD}), got {threshold}")
    for name, value in (("text", text), ("neutral", neutral)):
        if len(value) > 300:
            raise InvalidInputError(f"{field}.{name}", f"is {len(value)} characters, over the limit of 300")
    if not text.strip():
        raise InvalidInputError(f"{field}.text", "is empty; give a prompt such as 'a smiling face'")
    return TextStep(text, float(strength), neutral.strip() or DEFAULT_NEUTRAL, float(threshold), field)
