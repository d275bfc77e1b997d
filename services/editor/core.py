"""The editor's transport-free core: generator catalog, boundary registry, latent cache and the edit/adapt logic.

Nothing here knows about gRPC: requests come in as plain values, results go out as dataclasses,
failures as typed errors (faceedit.errors and services.editor.errors) that the servicer maps to
status codes in one place.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
import uuid
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from faceedit.errors import FaceEditError, InvalidInputError, NotFoundError
from services.common import jobs as jobstates
from services.common.artifacts import ArtifactStore
from services.common.jobs import Job, JobStore
from services.common.registry import GeneratorIndex, GeneratorRecord, check_id
from services.editor.budget import RenderBudget
from services.common.errors import PreconditionError, TooLargeError, UnavailableError
from services.common.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, decode_upload
from services.editor.inference import Inference
from services.editor.metrics import EditorMetrics
from services.common import protocol

if TYPE_CHECKING:
    import redis

    from faceedit.editing import BoundarySet, BoundarySetSpec, DirectionEntry, Edit
    from faceedit.models import Generator

log = logging.getLogger("faceedit.editor")

IMAGE_FORMATS = ("png", "jpeg", "webp")
ANIMATION_FORMATS = ("gif", "webp")
BASE, ADAPTED = "base", "adapted"
MAX_IDEMPOTENCY_KEY = jobstates.MAX_IDEMPOTENCY_KEY
MAX_STEPS = 16  # attribute steps per request
MAX_CONDITIONS = 8
MAX_LISTED_JOBS = 100_000  # deepest page offset ListAdaptations serves


# -- values in and out -------------------------------------------------------------------------

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


@dataclass
class EditPlan:
    """A request's attribute steps as library edits: W-space ones move W+, Z-space ones move a seed's z."""

    w: list["Edit"] = field(default_factory=list)
    z: list["Edit"] = field(default_factory=list)
    z_fields: list[str] = field(default_factory=list)  # the step of each Z edit, for errors


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class StoredLatent:
    id: str
    ws: np.ndarray  # [1, n_latent, style_dim] float32
    expires_at: float  # unix time


@dataclass(frozen=True)
class FaceResult:
    seed: int
    image: RenderedImage
    latent: StoredLatent


@dataclass(frozen=True)
class InvertResult:
    latent: StoredLatent
    reconstruction: RenderedImage
    aligned: RenderedImage | None


@dataclass(frozen=True)
class EditResult:
    image: RenderedImage
    latent: StoredLatent


@dataclass(frozen=True)
class Frame:
    index: int
    t: float
    image: RenderedImage


@dataclass(frozen=True)
class GeneratorSummary:
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


# -- generators -----------------------------------------------------------------------------------

@dataclass
class BaseGenerator:
    """What the editor keeps of a base generator: the mapping MLP and w_avg, not the synthesis net."""

    id: str
    mapping: torch.nn.Module  # z [B, D] → w [B, D]
    w_avg: torch.Tensor  # [D]
    size: int
    n_latent: int
    style_dim: int
    sha256: str = ""
    family: str = ""  # its latent space (encoder, boundaries); "" = its own id

    def __post_init__(self) -> None:
        self.family = self.family or self.id

    @classmethod
    def from_generator(cls, generator_id: str, generator: "Generator", sha256: str = "",
                       family: str = "") -> "BaseGenerator":
        generator.eval()
        w_avg = generator.w_avg.detach().clone()
        return cls(generator_id, generator.style, w_avg, generator.config.size, generator.n_latent,
                   generator.style_dim, sha256, family)

    @classmethod
    def load(cls, generator_id: str, path: str | Path, family: str = "") -> "BaseGenerator":
        from faceedit.checkpoints import sha256_file
        from faceedit.models import load_generator

        return cls.from_generator(generator_id, load_generator(path), sha256_file(path), family)

    def latents_from_seeds(self, seeds: Sequence[int], psi: float) -> np.ndarray:
        """Seeds → W+ [B, n_latent, style_dim]: the same z per seed as faceedit.sampling."""
        from faceedit.sampling import z_from_seeds

        return self.latents_from_z(z_from_seeds(seeds, self.style_dim), psi)

    def latents_from_z(self, z: torch.Tensor, psi: float) -> np.ndarray:
        """z [B, D] → mapped, truncated, broadcast W+ [B, n_latent, style_dim]."""
        assert z.ndim == 2 and z.shape[1] == self.style_dim, z.shape
        with torch.inference_mode():
            w = self.mapping(z)  # [B, D]
            w = self.w_avg + psi * (w - self.w_avg)  # truncation towards the mean
        return w[:, None, :].expand(-1, self.n_latent, -1).numpy().astype(np.float32)  # [B, L, D]


@dataclass(frozen=True)
class ResolvedGenerator:
    id: str
    kind: str
    base: BaseGenerator  # its family's base: latent space, mapping, boundaries
    record: GeneratorRecord | None = None

    @property
    def family(self) -> str:
        return self.base.family


class GeneratorCatalog:
    """Base generators (every tenant) and adapted ones from the index (their tenant only)."""

    def __init__(self, bases: Mapping[str, BaseGenerator], default: str, index: GeneratorIndex | None):
        if not bases:
            raise InvalidInputError("generators", "no base generator configured")
        if default not in bases:
            raise InvalidInputError("default_generator", f"{default!r} is not among {sorted(bases)}")
        self.bases = dict(bases)
        self.default = default
        self.index = index

    def resolve(self, tenant: str, generator_id: str, field_name: str = "generator_id") -> ResolvedGenerator:
        generator_id = generator_id or self.default
        if generator_id in self.bases:
            return ResolvedGenerator(generator_id, BASE, self.bases[generator_id])
        if len(generator_id) > protocol.MAX_ID_LENGTH:
            raise InvalidInputError(field_name, f"longer than {protocol.MAX_ID_LENGTH} characters")
        if self.index is None:
            raise NotFoundError("generator", generator_id)
        check_id(generator_id, field_name)  # the index checks it too, but names it generator_id
        with redis_errors():
            record = self.index.get(generator_id, tenant)  # another tenant's id: NotFound, like a missing one
        base = self.bases.get(record.base_generator)
        if base is None:
            raise PreconditionError(f"generator {generator_id!r} was adapted from {record.base_generator!r}, "
                                    "which this editor does not serve")
        return ResolvedGenerator(generator_id, ADAPTED, base, record)

    def summaries(self, tenant: str) -> list[GeneratorSummary]:
        out = [_summary(ResolvedGenerator(b.id, BASE, b)) for b in self.bases.values()]
        if self.index is not None:
            with redis_errors():
                records = self.index.list(tenant)
            for record in records:
                base = self.bases.get(record.base_generator)
                if base is not None:
                    out.append(_summary(ResolvedGenerator(record.id, ADAPTED, base, record)))
        return out


def _summary(g: ResolvedGenerator) -> GeneratorSummary:
    return GeneratorSummary(g.id, g.kind, g.family, g.base.size, g.base.n_latent, g.base.style_dim,
                            display_name=g.id if g.record is None else (g.record.display_name or g.id),
                            created=0.0 if g.record is None else g.record.created)


# -- boundaries -------------------------------------------------------------------------------

class BoundaryRegistry:
    """Each family's boundary set (faceedit.editing.BoundarySet); an adapted generator edits with its base's."""

    def __init__(self, families: Mapping[str, "BoundarySet"] | None = None):
        self.families: dict[str, BoundarySet] = dict(families or {})

    @staticmethod
    def read_sets(specs: Sequence["BoundarySetSpec"], base: BaseGenerator) -> "BoundarySet":
        """Every file of the specs, checked against the base's latent space and weights; one unusable
        file fails the whole load, naming it (a start-up error, never a silently missing attribute)."""
        from faceedit.editing import BoundarySet, load_boundary_set

        if not specs:
            return BoundarySet()
        return load_boundary_set(specs, base.n_latent, base.style_dim, base.sha256)

    def add_family(self, family: str, boundaries: "BoundarySet") -> None:
        self.families[family] = boundaries

    def attributes(self, family: str) -> "BoundarySet":
        from faceedit.editing import BoundarySet

        return self.families.get(family) or BoundarySet()

    def get(self, family: str, name: str, field_name: str, conditions: Sequence[str] = (),
            space: str = "") -> "DirectionEntry":
        """The entry for `name` in `space` ("" = W when it has one, else Z); with `conditions`, a
        precomputed conditional variant of that space if the set has one for exactly those names."""
        if len(name) > protocol.MAX_ID_LENGTH:
            raise InvalidInputError(field_name, f"longer than {protocol.MAX_ID_LENGTH} characters")
        boundaries = self.attributes(family)
        if name not in boundaries:
            raise NotFoundError("attribute", name, f"{field_name}; known: {boundaries.names()}")
        spaces = boundaries.spaces(name)
        if space and space not in spaces:
            raise InvalidInputError(field_name.replace(".attribute", ".space"),
                                    f"{name[:100]!r} has boundaries in {list(spaces)}, not {space[:10]!r}")
        space = space or spaces[0]  # W first
        return boundaries.variant(name, conditions, space) or boundaries.get(name, space)


# -- latent cache -----------------------------------------------------------------------------

@contextmanager
def redis_errors() -> Iterator[None]:
    """Redis connection problems → UnavailableError (retryable), at the adapter boundary."""
    import redis as redis_lib

    try:
        yield
    except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
        raise UnavailableError("redis", type(exc).__name__) from None


class LatentCache:
    """W+ latents by id in Redis with a TTL; a tenant only reads its own entries."""

    def __init__(self, client: "redis.Redis", ttl_s: int, namespace: str = "faceedit",
                 metrics: EditorMetrics | None = None):
        self.client = client
        self.ttl_s = int(ttl_s)
        self.ns = namespace
        self.metrics = metrics

    def _key(self, latent_id: str) -> str:
        return f"{self.ns}:latent:{latent_id}"

    def put(self, tenant: str, family: str, ws: np.ndarray) -> StoredLatent:
        ws = np.ascontiguousarray(ws, dtype="<f4")  # [1, L, D]
        latent_id = f"lat-{uuid.uuid4().hex}"
        header = json.dumps({"tenant": tenant, "family": family, "shape": list(ws.shape)}).encode()
        with redis_errors():
            self.client.set(self._key(latent_id), header + b"\n" + ws.tobytes(), ex=self.ttl_s)
        return StoredLatent(latent_id, ws, time.time() + self.ttl_s)

    def get(self, tenant: str, latent_id: str, field_name: str) -> tuple[str, np.ndarray]:
        """(family, ws [1, L, D]); NotFound when expired, unknown, or another tenant's."""
        if not latent_id or len(latent_id) > protocol.MAX_ID_LENGTH or not latent_id.replace("-", "").isalnum():
            raise InvalidInputError(field_name, "is not a latent id")
        with redis_errors():
            raw = self.client.get(self._key(latent_id))
        header = None
        if raw is not None:
            head, _, data = raw.partition(b"\n")
            header = json.loads(head)
        if header is None or header.get("tenant") != tenant:
            if self.metrics:
                self.metrics.cache.labels("miss").inc()
            raise NotFoundError("latent", latent_id, "expired or unknown; invert or generate again")
        if self.metrics:
            self.metrics.cache.labels("hit").inc()
        return header["family"], np.frombuffer(data, dtype="<f4").reshape(header["shape"]).copy()


# -- image helpers --------------------------------------------------------------------------------

def encode_animation(frames: Sequence[bytes], fmt: str, duration_ms: int) -> RenderedImage:
    """Encoded frames → one looping GIF or animated WebP."""
    images = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames]
    out = io.BytesIO()
    kwargs: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": duration_ms, "loop": 0}
    if fmt == "webp":
        kwargs["lossless"] = True
    images[0].save(out, format=fmt.upper(), **kwargs)
    return RenderedImage(out.getvalue(), fmt, images[0].width, images[0].height)


def _choice(value: str, choices: Sequence[str], field_name: str) -> str:
    value = (value or choices[0]).lower()
    if value not in choices:
        raise InvalidInputError(field_name, f"must be one of {list(choices)}, got {value!r}")
    return value


def _prefixed(exc: InvalidInputError, prefix: str) -> InvalidInputError:
    return type(exc)(f"{prefix}.{exc.field}" if not exc.field.startswith(prefix) else exc.field, exc.problem)


# -- the editor ---------------------------------------------------------------------------------

class EditorCore:
    """Generate, invert, edit and animate, over an Inference client, a catalog and a latent cache."""

    def __init__(self, catalog: GeneratorCatalog, boundaries: BoundaryRegistry, cache: LatentCache,
                 inference: Inference, metrics: EditorMetrics | None = None, default_truncation: float = 0.7,
                 max_seeds: int = 64, max_frames: int = 120, frame_batch: int = 8,
                 max_image_bytes: int = MAX_UPLOAD_BYTES, max_image_pixels: int = MAX_UPLOAD_PIXELS,
                 encoder_family: str | None = None, budget: RenderBudget | None = None):
        self.catalog = catalog
        self.boundaries = boundaries
        self.cache = cache
        self.inference = inference
        self.metrics = metrics or EditorMetrics()
        self.default_truncation = default_truncation
        self.max_seeds = max_seeds
        self.max_frames = max_frames
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.encoder_family = encoder_family or catalog.bases[catalog.default].family
        self.budget = budget or RenderBudget(chunk_seconds=4.0, max_chunk=frame_batch, max_message_bytes=32 << 20)

    # -- helpers ----------------------------------------------------------------------------
    def _psi(self, truncation: float, field_name: str) -> float:
        if truncation == 0:
            return self.default_truncation
        if not math.isfinite(truncation) or not 0 < truncation <= 1:
            raise InvalidInputError(field_name, f"must be in (0, 1] (0 = default {self.default_truncation}), "
                                                f"got {truncation}")
        return float(truncation)

    def _render(self, generator: ResolvedGenerator, tenant: str, ws: np.ndarray, fmt: str) -> list[RenderedImage]:
        """All of ws [B, L, D] rendered, in chunks sized by the budget."""
        return [image for chunk in self._render_chunks(generator, tenant, ws, fmt) for image in chunk]

    def _render_chunks(self, generator: ResolvedGenerator, tenant: str, ws: np.ndarray, fmt: str
                       ) -> Iterator[list[RenderedImage]]:
        """ws [B, L, D] → images, one TorchServe call per chunk; the chunk size is re-read before each
        call (it follows the measured cost), and no chunk is sent to a caller that is gone."""
        key, done = generator.base.id, 0
        while done < len(ws):
            if done:
                self.budget.before_chunk(done, len(ws))
            chunk = ws[done:done + self.budget.chunk_size(key, fmt)]  # [b, L, D]
            started = time.perf_counter()
            with self.metrics.stage("inference.synthesize"):
                response = self.inference.synthesize(generator.id, tenant, chunk, fmt)
            if response.handler_ms is not None:
                self.metrics.observe_stage("inference.handler", response.handler_ms / 1e3)
            self.budget.observe(key, len(chunk), time.perf_counter() - started,
                                [len(img) for img in response.images], fmt)
            done += len(chunk)
            yield [RenderedImage(img, response.format, response.size, response.size) for img in response.images]

    def warm_up(self) -> None:
        """One image per base generator: TorchServe's workers load their models, and the budget
        learns each generator's cost before the first request."""
        for base in self.catalog.bases.values():
            self._render(ResolvedGenerator(base.id, BASE, base), "", base.latents_from_seeds([0], 1.0), "png")

    def _check_ws(self, ws: np.ndarray, base: BaseGenerator, field_name: str) -> np.ndarray:
        expected = (base.n_latent, base.style_dim)
        if ws.ndim == 2:
            ws = ws[None]
        if ws.ndim != 3 or ws.shape[0] != 1 or tuple(ws.shape[1:]) != expected:
            raise InvalidInputError(field_name, f"expected shape [1, {expected[0]}, {expected[1]}] or "
                                                f"[{expected[0]}, {expected[1]}], got {list(ws.shape)}")
        if not np.isfinite(ws).all():
            raise InvalidInputError(field_name, "contains NaN or infinite values")
        return ws.astype(np.float32, copy=False)

    def resolve_latent(self, tenant: str, generator: ResolvedGenerator, source: LatentSource,
                       field_name: str = "latent") -> np.ndarray:
        """W+ [1, L, D] from an id, a seed or inline values."""
        given = [x is not None for x in (source.latent_id, source.seed, source.inline)]
        if sum(given) != 1:
            raise InvalidInputError(field_name, "set exactly one of latent_id, seed, inline")
        if source.latent_id is not None:
            with self.metrics.stage("cache.get"):
                family, ws = self.cache.get(tenant, source.latent_id, f"{field_name}.latent_id")
            if family != generator.family:
                raise InvalidInputError(f"{field_name}.latent_id", f"belongs to generator family {family!r}, "
                                                                   f"not {generator.family!r}")
            return self._check_ws(ws, generator.base, f"{field_name}.latent_id")
        if source.seed is not None:
            if not 0 <= source.seed < 2**32:
                raise InvalidInputError(f"{field_name}.seed", f"must be in [0, 2^32), got {source.seed}")
            psi = self._psi(source.truncation, f"{field_name}.truncation")
            with self.metrics.stage("mapping"):
                return generator.base.latents_from_seeds([source.seed], psi)
        return self._check_ws(np.asarray(source.inline), generator.base, f"{field_name}.inline")

    def build_edits(self, family: str, steps: Sequence[Step], n_latent: int) -> EditPlan:
        from faceedit.editing import Edit, resolve_layers

        if len(steps) > MAX_STEPS:
            raise TooLargeError("edits", f"{len(steps)} steps exceeds the limit of {MAX_STEPS}")
        plan = EditPlan()
        boundaries = self.boundaries.attributes(family)
        for i, step in enumerate(steps):
            prefix = f"edits[{i}]"
            if len(step.conditions) > MAX_CONDITIONS:
                raise TooLargeError(f"{prefix}.conditions", f"more than {MAX_CONDITIONS}")
            entry = self.boundaries.get(family, step.attribute, f"{prefix}.attribute", step.conditions, step.space)
            conditions = []
            if not entry.conditioned_on:  # no precomputed variant: project at run time
                for j, name in enumerate(step.conditions):
                    where = f"{prefix}.conditions[{j}]"
                    if name == step.attribute:
                        raise InvalidInputError(where, "an attribute cannot be conditioned on itself")
                    self.boundaries.get(family, name, where)  # unknown names: NOT_FOUND with the list
                    if entry.space not in boundaries.spaces(name):
                        raise InvalidInputError(where, f"{name[:100]!r} has no {entry.space.upper()}-space boundary "
                                                       f"to condition the {entry.space.upper()}-space "
                                                       f"{step.attribute[:100]!r} on")
                    conditions.append(boundaries.get(name, entry.space).direction)
            if not math.isfinite(step.strength):
                raise InvalidInputError(f"{prefix}.strength", "is NaN or infinite")
            try:
                if entry.space == "z":
                    if step.layers:
                        raise InvalidInputError("layers", "a Z-space boundary moves z, which has no layers")
                    plan.z.append(Edit(entry.direction, float(step.strength), conditions=conditions))
                    plan.z_fields.append(f"{prefix}.attribute")
                else:
                    layers = resolve_layers(step.layers or entry.layers, n_latent, field="layers")
                    plan.w.append(Edit(entry.direction, float(step.strength), layers=layers, conditions=conditions))
                if conditions:  # projected now: a degenerate set is this step's error, not a bare "conditions" later
                    (plan.z if entry.space == "z" else plan.w)[-1].resolved_direction()
            except InvalidInputError as exc:
                raise _prefixed(exc, prefix) from None
        return plan

    def _latents_with_z_edits(self, generator: ResolvedGenerator, source: LatentSource, plan: EditPlan,
                              ts: np.ndarray | None = None) -> np.ndarray:
        """W+ [1, L, D] (or [F, L, D] along ts) from the seed's z moved along the plan's Z boundaries, then
        mapped and truncated as InterfaceGAN edits Z: only a seed latent has a z to move."""
        from faceedit.editing import apply_edits
        from faceedit.sampling import z_from_seeds

        if source.seed is None:
            raise InvalidInputError(plan.z_fields[0], "is a Z-space boundary (InterfaceGAN): it edits seed latents "
                                                      "only; edit this latent with a W-space boundary")
        z = z_from_seeds([source.seed], generator.base.style_dim)[:, None]  # [1, 1, D]
        psi = self._psi(source.truncation, "latent.truncation")
        if ts is None:
            moved = apply_edits(z, plan.z)  # [1, 1, D]
        else:
            scaled = [dataclasses.replace(e, strength=e.strength * torch.from_numpy(ts).float()) for e in plan.z]
            moved = apply_edits(z.expand(len(ts), -1, -1), scaled)  # [F, 1, D]
        with self.metrics.stage("mapping"):
            return generator.base.latents_from_z(moved[:, 0], psi)  # [F, L, D]

    # -- RPCs -------------------------------------------------------------------------------
    def generate(self, tenant: str, generator_id: str, seeds: Sequence[int], truncation: float = 0.0,
                 image_format: str = "png") -> list[FaceResult]:
        generator = self.catalog.resolve(tenant, generator_id)
        fmt = _choice(image_format, IMAGE_FORMATS, "format")
        if not seeds:
            raise InvalidInputError("seeds", "give at least one seed")
        if len(seeds) > self.max_seeds:
            raise TooLargeError("seeds", f"{len(seeds)} seeds exceeds the limit of {self.max_seeds}")
        bad = [s for s in seeds if not 0 <= s < 2**32]
        if bad:
            raise InvalidInputError("seeds", f"seeds must be in [0, 2^32), got {bad[:3]}")
        psi = self._psi(truncation, "truncation")
        self.budget.check_fits(generator.base.id, len(seeds), fmt, "seeds", one_reply=True)
        with self.metrics.stage("mapping"):
            ws = generator.base.latents_from_seeds(list(seeds), psi)  # [B, L, D]
        images = self._render(generator, tenant, ws, fmt)
        with self.metrics.stage("cache.put"):
            latents = [self.cache.put(tenant, generator.family, ws[i:i + 1]) for i in range(len(seeds))]
        return [FaceResult(int(s), img, lat) for s, img, lat in zip(seeds, images, latents)]

    def invert(self, tenant: str, image: bytes, align: bool = False, generator_id: str = "",
               image_format: str = "png", return_aligned: bool = False) -> InvertResult:
        generator = self.catalog.resolve(tenant, generator_id)
        fmt = _choice(image_format, IMAGE_FORMATS, "format")
        if generator.family != self.encoder_family:
            raise InvalidInputError("generator_id", f"the encoder inverts into family {self.encoder_family!r}; "
                                                    f"{generator.id!r} is of family {generator.family!r}")
        with self.metrics.stage("validate.image"):
            decode_upload(image, "image.data", self.max_image_bytes, self.max_image_pixels)
        with self.metrics.stage("inference.invert"):
            inverted = self.inference.invert(image, align=align, return_aligned=return_aligned)
        ws = self._check_ws(inverted.ws, generator.base, "encoder output")
        reconstruction = self._render(generator, tenant, ws, fmt)[0]
        with self.metrics.stage("cache.put"):
            latent = self.cache.put(tenant, generator.family, ws)
        aligned = None
        if return_aligned and inverted.aligned is not None:
            aligned = RenderedImage(inverted.aligned, "png", inverted.size, inverted.size)
        return InvertResult(latent, reconstruction, aligned)

    def edit(self, tenant: str, generator_id: str, source: LatentSource, steps: Sequence[Step],
             image_format: str = "png") -> EditResult:
        generator = self.catalog.resolve(tenant, generator_id)
        fmt = _choice(image_format, IMAGE_FORMATS, "format")
        ws = self.resolve_latent(tenant, generator, source)
        plan = self.build_edits(generator.family, steps, generator.base.n_latent)
        if plan.z:
            ws = self._latents_with_z_edits(generator, source, plan)
        if plan.w:
            from faceedit.editing import apply_edits

            with self.metrics.stage("edit"):
                ws = apply_edits(torch.from_numpy(ws), plan.w).numpy()  # [1, L, D]
        image = self._render(generator, tenant, ws, fmt)[0]
        with self.metrics.stage("cache.put"):
            latent = self.cache.put(tenant, generator.family, ws)
        return EditResult(image, latent)

    def animate(self, tenant: str, generator_id: str, source: LatentSource, steps: Sequence[Step],
                frames: int = 0, start: float = 0.0, end: float = 0.0, image_format: str = "png",
                animation: str = "", skip_frames: bool = False, frame_duration_ms: int = 0,
                ) -> Iterator[Frame | RenderedImage]:
        """Validates everything first (errors before the first frame), then yields frames and,
        when `animation` is gif/webp, one encoded animation last."""
        from faceedit.editing import edit_path

        generator = self.catalog.resolve(tenant, generator_id)
        fmt = _choice(image_format, IMAGE_FORMATS, "frame_format")
        animation = (animation or "").lower()
        if animation and animation not in ANIMATION_FORMATS:
            raise InvalidInputError("animation", f"must be one of {list(ANIMATION_FORMATS)}, got {animation!r}")
        if skip_frames and not animation:
            raise InvalidInputError("skip_frames", "needs an animation format, or nothing would be sent")
        n = frames or 16
        if not 2 <= n <= self.max_frames:
            raise InvalidInputError("frames", f"must be in [2, {self.max_frames}], got {n}")
        if not (math.isfinite(start) and math.isfinite(end)) or max(abs(start), abs(end)) > 10:
            raise InvalidInputError("start", f"start and end must be finite with |t| <= 10, got {start}, {end}")
        if start == 0 and end == 0:
            end = 1.0
        duration = frame_duration_ms or 80
        if not 10 <= duration <= 10_000:
            raise InvalidInputError("frame_duration_ms", f"must be in [10, 10000], got {duration}")
        if not steps:
            raise InvalidInputError("edits", "an animation needs at least one attribute step")
        # Frames stream one message each; a GIF/WebP is checked for size once encoded.
        self.budget.check_fits(generator.base.id, n, fmt, "frames", one_reply=False)
        ws = self.resolve_latent(tenant, generator, source)
        plan = self.build_edits(generator.family, steps, generator.base.n_latent)
        ts = np.linspace(start, end, n)
        path = np.repeat(ws, n, axis=0)  # [F, L, D]
        if plan.z:
            path = self._latents_with_z_edits(generator, source, plan, ts)
        if plan.w:
            with self.metrics.stage("edit"):
                # Step edits are additive, so the W path is the unedited path plus each frame's offset.
                offsets = edit_path(torch.zeros_like(torch.from_numpy(ws)), plan.w, n, start, end)[:, 0].numpy()
                path = path + offsets
        return self._frames(generator, tenant, path, ts, fmt, animation, skip_frames, duration)

    def _frames(self, generator: ResolvedGenerator, tenant: str, path: np.ndarray, ts: np.ndarray, fmt: str,
                animation: str, skip_frames: bool, duration: int) -> Iterator[Frame | RenderedImage]:
        encoded: list[bytes] = []
        # Animations are encoded from lossless frames whatever the stream's frame format is.
        render_fmt = "png" if animation and skip_frames else fmt
        index = 0
        for chunk in self._render_chunks(generator, tenant, path, render_fmt):
            for image in chunk:
                if animation:
                    encoded.append(image.data)
                if not skip_frames:
                    yield Frame(index, float(ts[index]), image)
                index += 1
        if animation:
            with self.metrics.stage("encode.animation"):
                result = encode_animation(encoded, animation, duration)
            if len(result.data) > self.budget.max_message_bytes:
                raise TooLargeError("frames", f"the {animation.upper()} of {len(encoded)} frames is "
                                              f"{len(result.data) / 1e6:.1f} MB, over the reply limit of "
                                              f"{self.budget.max_message_bytes / 1e6:.0f} MB; ask for fewer "
                                              "frames or stream them")
            yield result

    def list_generators(self, tenant: str) -> list[GeneratorSummary]:
        return self.catalog.summaries(tenant)

    def list_attributes(self, tenant: str, generator_id: str = "") -> tuple[str, list[AttributeSummary]]:
        from faceedit.editing import layer_groups

        generator = self.catalog.resolve(tenant, generator_id)
        groups = {tuple(r): name for name, r in layer_groups(generator.base.n_latent).items()}
        boundaries = self.boundaries.attributes(generator.family)
        out = []
        for entry in boundaries.entries:
            if entry.conditioned_on:
                continue  # listed as a variant of its attribute
            layers = "" if entry.layers is None else groups.get(entry.layers, ",".join(map(str, entry.layers)))
            variants = tuple("+".join(v.conditioned_on) for v in boundaries.variants(entry.name, entry.space))
            out.append(AttributeSummary(entry.name, entry.accuracy, entry.recommended[0], entry.recommended[1], layers,
                                        entry.description, Path(entry.source).name, entry.format, entry.space,
                                        variants))
        return generator.family, out


# -- adaptation ------------------------------------------------------------------------------------

def _check_job_name(job_id: str) -> None:
    """The API calls a job's id its `name`: errors say so (the job store's own checks say job_id)."""
    if not job_id:
        raise InvalidInputError("name", "is required")
    if len(job_id) > protocol.MAX_ID_LENGTH:
        raise InvalidInputError("name", f"longer than {protocol.MAX_ID_LENGTH} characters")


class TaskQueue:
    """Sends `faceedit.adapt(job_id)` to the worker's queue and reads the queue's depth."""

    def __init__(self, broker_url: str, queue: str = "gpu", task_name: str = "faceedit.adapt"):
        from celery import Celery

        self.app = Celery("faceedit-editor", broker=broker_url)
        # Fail fast when the broker is down: the RPC answers UNAVAILABLE and the client retries.
        self.app.conf.broker_connection_timeout = 3
        self.app.conf.broker_connection_retry_on_startup = False
        self.queue = queue
        self.task_name = task_name
        self.broker_url = broker_url

    def submit(self, job_id: str) -> None:
        try:
            self.app.send_task(self.task_name, args=[job_id], queue=self.queue, retry=False)
        except Exception as exc:  # kombu raises OperationalError and socket errors alike
            raise UnavailableError("task broker", type(exc).__name__) from None

    def depth(self, client: "redis.Redis") -> int:
        return int(client.llen(self.queue))


class AdaptationCore:
    """Create, read, list and cancel DIFA jobs; delete adapted generators. Tenant-scoped throughout."""

    def __init__(self, catalog: GeneratorCatalog, jobs: JobStore, index: GeneratorIndex, store: ArtifactStore,
                 queue: TaskQueue | Any, max_image_bytes: int = MAX_UPLOAD_BYTES, max_image_pixels: int = MAX_UPLOAD_PIXELS):
        self.catalog = catalog
        self.jobs = jobs
        self.index = index
        self.store = store
        self.queue = queue
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels

    def create(self, tenant: str, base_generator_id: str, image: bytes, idempotency_key: str,
               display_name: str = "", options: Mapping[str, Any] | None = None) -> tuple[AdaptationJob, bool]:
        if not idempotency_key:
            raise InvalidInputError("idempotency_key", "is required (reuse it when retrying)")
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidInputError("idempotency_key", f"longer than {MAX_IDEMPOTENCY_KEY} characters")
        if len(display_name) > 200:
            raise InvalidInputError("display_name", "longer than 200 characters")
        base = self.catalog.resolve(tenant, base_generator_id, "base_generator_id")
        if base.kind != BASE:
            raise InvalidInputError("base_generator_id", f"{base.id!r} is an adapted generator; adapt a base one")
        params = self._params(options or {})
        _, fmt = decode_upload(image, "style_image.data", self.max_image_bytes, self.max_image_pixels)
        # Content-addressed: a retried upload writes the same key again, harmlessly.
        digest = hashlib.sha256(image).hexdigest()
        tenant_seg = "t" + hashlib.sha256(tenant.encode()).hexdigest()[:24]
        key = f"targets/{tenant_seg}/{digest}.{fmt}"
        self.store.put(key, image)
        with redis_errors():
            job, created = self.jobs.create(tenant, base.id, key, params, idempotency_key=idempotency_key,
                                            display_name=display_name)
        if created or job.state == jobstates.QUEUED:
            # A retry of a create whose task may never have reached the broker re-sends it; the
            # worker's lease and state machine turn a duplicate delivery into a no-op.
            self.queue.submit(job.id)
        return self._view(job), created

    @staticmethod
    def _params(options: Mapping[str, Any]) -> dict[str, Any]:
        """API options → the worker's fine-tuning parameters (faceedit.adaptation FinetuneConfig names)."""
        params: dict[str, Any] = {}
        steps = int(options.get("steps", 0) or 0)
        if steps:
            if not 1 <= steps <= 10_000:
                raise InvalidInputError("options.steps", f"must be in [1, 10000], got {steps}")
            params["iterations"] = steps
        lr = float(options.get("learning_rate", 0.0) or 0.0)
        if lr:
            if not (math.isfinite(lr) and 0 < lr <= 1):
                raise InvalidInputError("options.learning_rate", f"must be in (0, 1], got {lr}")
            params["lr"] = lr
        return params

    def _view(self, job: Job) -> AdaptationJob:
        generator = None
        if job.state == jobstates.SUCCEEDED and job.result_generator_id:
            try:
                generator = _summary(self.catalog.resolve(job.tenant, job.result_generator_id))
            except (NotFoundError, PreconditionError):
                generator = None  # deleted since
        return AdaptationJob(job, generator)

    def get(self, tenant: str, job_id: str) -> AdaptationJob:
        _check_job_name(job_id)
        with redis_errors():
            return self._view(self.jobs.get(job_id, tenant))

    def list(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[AdaptationJob], str]:
        size = page_size or 50
        if not 1 <= size <= 200:
            raise InvalidInputError("page_size", f"must be in [1, 200], got {page_size}")
        # Checked as text before it becomes a number or reaches Redis (which refuses offsets >= 2^63).
        if page_token and not (len(page_token) <= len(str(MAX_LISTED_JOBS)) and page_token.isascii()
                               and page_token.isdigit() and int(page_token) <= MAX_LISTED_JOBS):
            raise InvalidInputError("page_token", "is not a token from a previous response")
        offset = int(page_token) if page_token else 0
        with redis_errors():
            jobs = self.jobs.list(tenant, limit=offset + size + 1)
        page = jobs[offset:offset + size]
        token = str(offset + size) if len(jobs) > offset + size else ""
        return [self._view(j) for j in page], token

    def cancel(self, tenant: str, job_id: str) -> AdaptationJob:
        _check_job_name(job_id)
        with redis_errors():
            return self._view(self.jobs.request_cancel(job_id, tenant))

    def delete_generator(self, tenant: str, generator_id: str) -> None:
        if not generator_id:
            raise InvalidInputError("generator_id", "is required")
        if generator_id in self.catalog.bases:
            raise PreconditionError(f"{generator_id!r} is a base generator; only adapted generators can be deleted")
        with redis_errors():
            record = self.index.get(generator_id, tenant)
            self.index.delete(generator_id, tenant)
            if record.job_id:
                try:
                    self.jobs.generator_deleted(record.job_id, generator_id)
                except NotFoundError:
                    pass  # the job record has expired or was never kept
