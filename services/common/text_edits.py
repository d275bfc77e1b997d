"""Where a base generator's text-edit relevance lives: the worker prepares it, the editor reads it (artifact store)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from faceedit.errors import NotFoundError
from services.common.artifacts import ArtifactStore

MARKER_PREFIX = "cache/relevance/ready"


@dataclass(frozen=True)
class RelevanceMarker:
    """Written once the channel relevance of `base_id` with the deployment's text-edit CLIP is complete."""

    base_id: str
    artifact_key: str  # the ChannelRelevance artifact (faceedit.editing.text)
    clip: str  # the CLIP spec it was measured with (ModelConfig.text_clip)
    channels: int

    @staticmethod
    def key(base_id: str) -> str:
        return f"{MARKER_PREFIX}/{base_id}.json"

    def write(self, store: ArtifactStore) -> None:
        store.put(self.key(self.base_id), json.dumps({"artifact_key": self.artifact_key, "clip": self.clip,
                                                      "channels": self.channels}).encode())

    @classmethod
    def read(cls, store: ArtifactStore, base_id: str) -> RelevanceMarker | None:
        try:
            data = json.loads(store.get(cls.key(base_id)))
        except NotFoundError:
            return None
        return cls(base_id, str(data["artifact_key"]), str(data["clip"]), int(data["channels"]))
