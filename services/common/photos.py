"""Callers' photos kept for paste-back, in the artifact store (never Redis, never logs), with their expiry in the id.

An `Invert(align=true)` keeps the uploaded photo, its aligned crop and where that crop sits in it, for the
latent's TTL, so that Edit/Animate can return the whole photo with the edited face blended in. A tuning
job keeps a copy for as long as the tuned generator lives. Photos are personal data: they are deleted with
their latent (DeleteLatent), with their tuned generator (DeleteGenerator), or by the sweep once expired.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from faceedit.align import AlignedFace
from faceedit.errors import InvalidInputError, NotFoundError
from services.common.artifacts import ArtifactStore

PREFIX = "photos"
# Expiring ids carry their expiry (unix seconds), so the sweep lists names and reads nothing.
_EXPIRING, _KEPT = "pho", "phk"


@dataclass(frozen=True)
class Placement:
    """Where the aligned crop lies in the photo (faceedit.align.AlignedFace without the pixels)."""

    quad: np.ndarray  # [4, 2] photo coordinates of the crop's corners (TL, BL, BR, TR)
    landmarks: np.ndarray  # [68, 2] photo coordinates
    photo_size: tuple[int, int]  # (width, height)

    def to_dict(self) -> dict:
        return {"quad": np.asarray(self.quad, float).round(3).tolist(),
                "landmarks": np.asarray(self.landmarks, float).round(3).tolist(),
                "photo_size": [int(v) for v in self.photo_size]}

    @classmethod
    def from_dict(cls, data: object, field_name: str = "placement") -> Placement:
        """Checked: a placement also crosses the TorchServe wire."""
        try:
            assert isinstance(data, dict)
            quad = np.asarray(data["quad"], dtype=np.float64)
            landmarks = np.asarray(data["landmarks"], dtype=np.float64)
            width, height = (int(v) for v in data["photo_size"])
        except (AssertionError, KeyError, TypeError, ValueError):
            raise InvalidInputError(field_name, "expected {quad: [4, 2], landmarks: [N, 2], photo_size: [w, h]}") \
                from None
        if quad.shape != (4, 2) or landmarks.ndim != 2 or landmarks.shape[1:] != (2,) or len(landmarks) > 1000 \
                or not (np.isfinite(quad).all() and np.isfinite(landmarks).all()) or min(width, height) < 1:
            raise InvalidInputError(field_name, f"bad shapes: quad {list(quad.shape)}, landmarks "
                                                f"{list(landmarks.shape)}, photo_size {[width, height]}")
        return cls(quad, landmarks, (width, height))


@dataclass(frozen=True)
class StoredPhoto:
    id: str
    tenant: str
    image: bytes  # the upload without its metadata (uploads.without_metadata)
    aligned: bytes  # PNG of the aligned crop
    placement: Placement
    # The placement is on the upright pixels (EXIF orientation applied). False: a photo kept before
    # uploads were turned upright, whose placement is on the pixels as stored.
    upright: bool = True

    def aligned_face(self) -> AlignedFace:
        crop = Image.open(io.BytesIO(self.aligned)).convert("RGB")
        p = self.placement
        return AlignedFace(crop, p.landmarks, p.quad, p.photo_size)


def _key(photo_id: str) -> str:
    return f"{PREFIX}/{photo_id}"


def expires_at(photo_id: str) -> float | None:
    """When an expiring photo goes (unix seconds, written into its id); None for a kept one (or a name not ours)."""
    kind, _, rest = photo_id.partition("-")
    stamp = rest.partition("-")[0]
    return float(stamp) if kind == _EXPIRING and stamp.isdigit() else None


def kept_photo_id(generator_id: str) -> str:
    """The photo a tuned generator keeps: one per generator, deleted with it."""
    return f"{_KEPT}-{generator_id}"


def owned_by_generator(photo_id: str) -> bool:
    """A tuned generator's photo: it goes with the generator, not with a latent."""
    return photo_id.startswith(f"{_KEPT}-")


class PhotoStore:
    def __init__(self, store: ArtifactStore):
        self.store = store

    def put(self, tenant: str, image: bytes, aligned: bytes, placement: Placement, ttl_s: float | None,
            photo_id: str = "", upright: bool = True) -> str:
        """Keeps a photo; `ttl_s` None keeps it until deleted (under `photo_id`)."""
        if ttl_s is not None:
            photo_id = f"{_EXPIRING}-{int(time.time() + ttl_s) + 1}-{uuid.uuid4().hex}"
        elif not photo_id:
            raise InvalidInputError("photo_id", "a photo kept without expiry needs an id (kept_photo_id)")
        header = json.dumps({"tenant": tenant, "placement": placement.to_dict(),
                             "parts": [len(image), len(aligned)], "upright": upright}).encode()
        self.store.put(_key(photo_id), header + b"\n" + bytes(image) + bytes(aligned))
        return photo_id

    def get(self, tenant: str, photo_id: str) -> StoredPhoto:
        """NotFound when expired, deleted, or another tenant's."""
        expiry = expires_at(photo_id)
        missing = NotFoundError("photo", photo_id[:100], "expired or deleted; invert the photo again")
        if expiry is not None and expiry < time.time():
            self.store.delete(_key(photo_id))
            raise missing
        try:
            raw = self.store.get(_key(photo_id))
        except NotFoundError:
            raise missing from None
        head, _, body = raw.partition(b"\n")
        header = json.loads(head)
        if header.get("tenant") != tenant:
            raise missing
        n_image, n_aligned = header["parts"]
        return StoredPhoto(photo_id, tenant, body[:n_image], body[n_image:n_image + n_aligned],
                           Placement.from_dict(header["placement"]), header.get("upright", False))

    def copy(self, photo: StoredPhoto, photo_id: str) -> str:
        """A copy kept without expiry (a tuned generator's own)."""
        return self.put(photo.tenant, photo.image, photo.aligned, photo.placement, None, photo_id, photo.upright)

    def delete(self, photo_ids: Sequence[str]) -> None:
        for photo_id in photo_ids:
            if photo_id:
                self.store.delete(_key(photo_id))

    def sweep(self, now: float | None = None) -> int:
        """Deletes every expired photo (read off the names); returns how many."""
        now = time.time() if now is None else now
        expired = [k for k in self.store.keys(PREFIX) if (expires_at(k.rpartition("/")[2]) or now) < now]
        for key in expired:
            self.store.delete(key)
        return len(expired)
