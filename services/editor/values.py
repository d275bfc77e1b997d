"""The editor core's values: requests in and results out as plain dataclasses, and their limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from services.common.jobs import Job
from services.common.latent_cache import StoredLatent

if TYPE_CHECKING:
    from faceedit.editing import Edit
    from services.editor.text_edits import TextStep

IMAGE_FORMATS = ("png", "jpeg", "webp")
ANIMATION_FORMATS = ("gif", "webp")
BASE, ADAPTED = "base", "adapted"
MAX_STEPS = 16  # attribute steps per request
MAX_CONDITIONS = 8


@dataclass(frozen=True)
class LatentSource:
    """Exactly one of latent_id, seed, inline (W+ [1, L, D] or [L, D])."""

    latent_id: str | None = None
    seed: int | None = None
    inline: np.ndarray | None = None
    truncation: float = 0.0  # for seeds; 0 = the configured default


@dataclass(frozen=True)
class Step:
    attribute: str
    strength: float
    layers: str = ""  # "" = the boundary's recorded layers (all if none)
    conditions: tuple[str, ...] = ()
    space: str = ""  # "w" / "z" for an attribute in both spaces; "" = W when it has one
    text: str = ""  # a prompt instead of the attribute (StyleCLIP global direction)
    neutral: str = ""
    threshold: float = 0.0


@dataclass
class EditPlan:
    """A request's attribute steps as library edits: W-space ones move W+, Z-space ones move a seed's z."""

    w: list[Edit] = field(default_factory=list)
    z: list[Edit] = field(default_factory=list)
    z_fields: list[str] = field(default_factory=list)  # the step of each Z edit, for errors
    text: list[TextStep] = field(default_factory=list)  # prompts: one StyleSpace offset, applied by TorchServe


@dataclass(frozen=True)
class RenderedImage:
    """An encoded image as a reply carries it."""

    data: bytes
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class InvertResult:
    """Invert: the cached latent, its reconstruction, and the crop the encoder saw when asked for."""

    latent: StoredLatent
    reconstruction: RenderedImage
    aligned: RenderedImage | None


@dataclass(frozen=True)
class Rendered:
    """An image and the cached latent it shows: a face of Generate (in the order of its seeds), or what
    Edit returns (the crop, or the whole photo with paste-back, and the edited latent)."""

    image: RenderedImage
    latent: StoredLatent


@dataclass(frozen=True)
class Frame:
    """One frame of Animate: its index, its position t along the edit, its image."""

    index: int
    t: float
    image: RenderedImage


@dataclass(frozen=True)
class GeneratorSummary:
    """A generator as ListGenerators lists it: a base, or one of the tenant's adapted or tuned ones."""

    id: str
    kind: str  # BASE or ADAPTED
    family: str
    size: int
    n_latent: int
    style_dim: int
    display_name: str = ""
    created: float = 0.0


@dataclass(frozen=True)
class AttributeSummary:
    name: str
    accuracy: float | None  # None: the file records none (official direction files)
    recommended_min: float
    recommended_max: float
    default_layers: str
    description: str
    source: str = ""
    format: str = ""
    space: str = "w"
    conditioned_variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdaptationJob:
    job: Job
    generator: GeneratorSummary | None  # set once the job succeeded and the generator still exists
