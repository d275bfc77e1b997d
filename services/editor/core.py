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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from faceedit.errors import FaceEditError, InvalidInputError, NotFoundError
from services.common import jobs as jobstates
from services.common.artifacts import ArtifactStore
from services.common.jobs import Job, JobStore
from services.common.registry import GeneratorIndex, GeneratorRecord
from services.editor.errors import PreconditionError, TooLargeError, UnavailableError
from services.editor.inference import Inference
from services.editor.metrics import EditorMetrics
from services.inference import protocol

if TYPE_CHECKING:
    import redis

    from faceedit.models import Generator

log = logging.getLogger("faceedit.editor")

IMAGE_FORMATS = ("png", "jpeg", "webp")
ANIMATION_FORMATS = ("gif", "webp")
BASE, ADAPTED = "base", "adapted"
MAX_IDEMPOTENCY_KEY = jobstates.MAX_IDEMPOTENCY_KEY
MAX_STEPS = 16  # attribute steps per request
MAX_CONDITIONS = 8


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
    accuracy: float
    recommended_min: float
    recommended_max: float
    default_layers: str
    description: str


@dataclass(frozen=True)
class AdaptationJob:
    job: Job
    generator: GeneratorSummary | None  # set once the job succeeded and the generator still exists
    display_name: str = ""


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

    @classmethod
    def from_generator(cls, generator_id: str, generator: "Generator", sha256: str = "") -> "BaseGenerator":
        generator.eval()
        w_avg = generator.w_avg.detach().clone()
        return cls(generator_id, generator.style, w_avg, generator.config.size, generator.n_latent,
                   generator.style_dim, sha256)

    @classmethod
    def load(cls, generator_id: str, path: str | Path) -> "BaseGenerator":
        from faceedit.checkpoints import sha256_file
        from faceedit.models import load_generator

        return cls.from_generator(generator_id, load_generator(path), sha256_file(path))

    def latents_from_seeds(self, seeds: Sequence[int], psi: float) -> np.ndarray:
        """Seeds → W+ [B, n_latent, style_dim]: the same z per seed as faceedit.sampling."""
        from faceedit.sampling import z_from_seeds

        z = z_from_seeds(seeds, self.style_dim)  # [B, D]
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
        return self.base.id


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
                            display_name=g.id if g.record is None else (g.record.job_id or g.id),
                            created=0.0 if g.record is None else g.record.created)


# -- boundaries -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BoundaryEntry:
    name: str
    direction: torch.Tensor  # [D] unit normal (or [n_latent, D])
    accuracy: float
    recommended: tuple[float, float]
    layers: tuple[int, ...] | None  # recorded W+ rows; None = all
    description: str = ""


class BoundaryRegistry:
    """Attribute boundaries per generator family (an adapted generator edits with its base's)."""

    def __init__(self, families: Mapping[str, Mapping[str, BoundaryEntry]] | None = None):
        self.families: dict[str, dict[str, BoundaryEntry]] = {f: dict(b) for f, b in (families or {}).items()}

    @staticmethod
    def read_files(paths: Mapping[str, str | Path], base: BaseGenerator, strict: bool = True
                   ) -> dict[str, BoundaryEntry]:
        """Boundary safetensors + JSON sidecars for one family, checked against its latent space.
        strict=False skips (and logs) a file that does not fit instead of failing the whole family."""
        from faceedit.editing import check_direction, check_generator_match, load_boundary_file

        entries = {}
        for name, path in sorted(paths.items()):
            try:
                normal, meta = load_boundary_file(path)
                check_direction(normal, base.n_latent, base.style_dim, field=f"boundary {name}")
                check_generator_match(meta, base.sha256, field=f"boundary {name}")
            except FaceEditError as exc:
                if strict:
                    raise
                log.error(json.dumps({"event": "boundary skipped", "family": base.id, "attribute": name,
                                      "error": str(exc)}))
                continue
            low, high = meta.get("recommended_strength", [-3.0, 3.0])
            layers = meta.get("layers")
            accuracy = meta.get("accuracy", meta.get("validation_accuracy", 0.0))
            entries[name] = BoundaryEntry(name, normal, float(accuracy or 0.0), (float(low), float(high)),
                                          tuple(int(i) for i in layers) if layers else None,
                                          str(meta.get("description", "")))
        return entries

    @classmethod
    def read_dir(cls, folder: str | Path, base: BaseGenerator, strict: bool = True) -> dict[str, BoundaryEntry]:
        return cls.read_files({p.stem: p for p in Path(folder).glob("*.safetensors")}, base, strict)

    def add_family(self, family: str, entries: Mapping[str, BoundaryEntry]) -> None:
        self.families[family] = dict(entries)

    def attributes(self, family: str) -> dict[str, BoundaryEntry]:
        return self.families.get(family, {})

    def get(self, family: str, name: str, field_name: str) -> BoundaryEntry:
        entry = self.families.get(family, {}).get(name)
        if entry is None:
            raise NotFoundError("attribute", name, f"{field_name}; known: {sorted(self.attributes(family))}")
        return entry


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

def check_upload(data: bytes, max_bytes: int, max_pixels: int, field_name: str = "image.data") -> tuple[str, int, int]:
    """Reject oversize, unknown, corrupt and decompression-bomb images before they go anywhere.
    Decoding is not running a network: the editor may look at pixels, TorchServe does the models."""
    if not data:
        raise InvalidInputError(field_name, "is empty")
    if len(data) > max_bytes:
        raise TooLargeError(field_name, f"{len(data)} bytes exceeds the limit of {max_bytes}")
    fmt = protocol.image_format_of(data)
    if fmt is None:
        raise InvalidInputError(field_name, "is not a PNG, JPEG or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise TooLargeError(field_name, f"{width}x{height} pixels exceeds the limit of {max_pixels}")
            image.load()  # a truncated or corrupt file fails here
    except FaceEditError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InvalidInputError(field_name, f"cannot be decoded as {fmt.upper()} (corrupt or truncated)") from None
    return fmt, width, height


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
                 max_image_bytes: int = 16 << 20, max_image_pixels: int = 4096 * 4096,
                 encoder_family: str | None = None):
        self.catalog = catalog
        self.boundaries = boundaries
        self.cache = cache
        self.inference = inference
        self.metrics = metrics or EditorMetrics()
        self.default_truncation = default_truncation
        self.max_seeds = max_seeds
        self.max_frames = max_frames
        self.frame_batch = frame_batch
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.encoder_family = encoder_family or catalog.default

    # -- helpers ----------------------------------------------------------------------------
    def _psi(self, truncation: float, field_name: str) -> float:
        if truncation == 0:
            return self.default_truncation
        if not math.isfinite(truncation) or not 0 < truncation <= 1:
            raise InvalidInputError(field_name, f"must be in (0, 1] (0 = default {self.default_truncation}), "
                                                f"got {truncation}")
        return float(truncation)

    def _render(self, generator: ResolvedGenerator, tenant: str, ws: np.ndarray, fmt: str) -> list[RenderedImage]:
        with self.metrics.stage("inference.synthesize"):
            response = self.inference.synthesize(generator.id, tenant, ws, fmt)
        return [RenderedImage(img, response.format, response.size, response.size) for img in response.images]

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

    def build_edits(self, family: str, steps: Sequence[Step], n_latent: int) -> list:
        from faceedit.editing import Edit, resolve_layers

        if len(steps) > MAX_STEPS:
            raise TooLargeError("edits", f"{len(steps)} steps exceeds the limit of {MAX_STEPS}")
        edits = []
        for i, step in enumerate(steps):
            prefix = f"edits[{i}]"
            entry = self.boundaries.get(family, step.attribute, f"{prefix}.attribute")
            if len(step.conditions) > MAX_CONDITIONS:
                raise TooLargeError(f"{prefix}.conditions", f"more than {MAX_CONDITIONS}")
            conditions = []
            for j, name in enumerate(step.conditions):
                if name == step.attribute:
                    raise InvalidInputError(f"{prefix}.conditions[{j}]", "an attribute cannot be conditioned on itself")
                conditions.append(self.boundaries.get(family, name, f"{prefix}.conditions[{j}]").direction)
            if not math.isfinite(step.strength):
                raise InvalidInputError(f"{prefix}.strength", "is NaN or infinite")
            try:
                layers = resolve_layers(step.layers or entry.layers, n_latent, field="layers")
                edits.append(Edit(entry.direction, float(step.strength), layers=layers, conditions=conditions))
            except InvalidInputError as exc:
                raise _prefixed(exc, prefix) from None
        return edits

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
            check_upload(image, self.max_image_bytes, self.max_image_pixels)
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
        edits = self.build_edits(generator.family, steps, generator.base.n_latent)
        if edits:
            from faceedit.editing import apply_edits

            with self.metrics.stage("edit"):
                ws = apply_edits(torch.from_numpy(ws), edits).numpy()  # [1, L, D]
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
        ws = self.resolve_latent(tenant, generator, source)
        edits = self.build_edits(generator.family, steps, generator.base.n_latent)
        with self.metrics.stage("edit"):
            path = edit_path(torch.from_numpy(ws), edits, n, start, end)[:, 0].numpy()  # [F, L, D]
        ts = np.linspace(start, end, n)
        return self._frames(generator, tenant, path, ts, fmt, animation, skip_frames, duration)

    def _frames(self, generator: ResolvedGenerator, tenant: str, path: np.ndarray, ts: np.ndarray, fmt: str,
                animation: str, skip_frames: bool, duration: int) -> Iterator[Frame | RenderedImage]:
        encoded: list[bytes] = []
        # Animations are encoded from lossless frames whatever the stream's frame format is.
        render_fmt = "png" if animation and skip_frames else fmt
        for first in range(0, len(path), self.frame_batch):
            chunk = path[first:first + self.frame_batch]  # [b, L, D]
            for k, image in enumerate(self._render(generator, tenant, chunk, render_fmt)):
                if animation:
                    encoded.append(image.data)
                if not skip_frames:
                    yield Frame(first + k, float(ts[first + k]), image)
        if animation:
            with self.metrics.stage("encode.animation"):
                yield encode_animation(encoded, animation, duration)

    def list_generators(self, tenant: str) -> list[GeneratorSummary]:
        return self.catalog.summaries(tenant)

    def list_attributes(self, tenant: str, generator_id: str = "") -> tuple[str, list[AttributeSummary]]:
        from faceedit.editing import layer_groups

        generator = self.catalog.resolve(tenant, generator_id)
        groups = {tuple(r): name for name, r in layer_groups(generator.base.n_latent).items()}
        out = []
        for name, entry in sorted(self.boundaries.attributes(generator.family).items()):
            layers = "" if entry.layers is None else groups.get(entry.layers, ",".join(map(str, entry.layers)))
            out.append(AttributeSummary(name, entry.accuracy, entry.recommended[0], entry.recommended[1], layers,
                                        entry.description))
        return generator.family, out


# -- adaptation ------------------------------------------------------------------------------------

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
                 queue: TaskQueue | Any, max_image_bytes: int = 16 << 20, max_image_pixels: int = 4096 * 4096):
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
        fmt, _, _ = check_upload(image, self.max_image_bytes, self.max_image_pixels, "style_image.data")
        # Content-addressed: a retried upload writes the same key again, harmlessly.
        digest = hashlib.sha256(image).hexdigest()
        tenant_seg = "t" + hashlib.sha256(tenant.encode()).hexdigest()[:24]
        key = f"targets/{tenant_seg}/{digest}.{fmt}"
        self.store.put(key, image)
        with redis_errors():
            job, created = self.jobs.create(tenant, base.id, key, params, idempotency_key=idempotency_key)
        if created and display_name:
            with redis_errors():
                self.jobs.client.set(self._display_key(job.id), display_name)
        if created or job.state == jobstates.QUEUED:
            # A retry of a create whose task may never have reached the broker re-sends it; the
            # worker's lease and state machine turn a duplicate delivery into a no-op.
            self.queue.submit(job.id)
        return self._view(job), created

    def _display_key(self, job_id: str) -> str:
        # The job record's params go to the fine-tuner verbatim, so the label lives beside it.
        return f"{self.jobs.ns}:job-display:{job_id}"

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

    def display_name(self, job_id: str) -> str:
        with redis_errors():
            raw = self.jobs.client.get(self._display_key(job_id))
        return raw.decode() if raw else ""

    def _view(self, job: Job) -> AdaptationJob:
        generator = None
        if job.state == jobstates.SUCCEEDED and job.result_generator_id:
            try:
                generator = _summary(self.catalog.resolve(job.tenant, job.result_generator_id))
            except (NotFoundError, PreconditionError):
                generator = None  # deleted since
        return AdaptationJob(job, generator, self.display_name(job.id))

    def get(self, tenant: str, job_id: str) -> AdaptationJob:
        if not job_id:
            raise InvalidInputError("name", "is required")
        with redis_errors():
            return self._view(self.jobs.get(job_id, tenant))

    def list(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[AdaptationJob], str]:
        size = page_size or 50
        if not 1 <= size <= 200:
            raise InvalidInputError("page_size", f"must be in [1, 200], got {page_size}")
        try:
            offset = int(page_token) if page_token else 0
            if offset < 0:
                raise ValueError
        except ValueError:
            raise InvalidInputError("page_token", "is not a token from a previous response") from None
        with redis_errors():
            jobs = self.jobs.list(tenant, limit=offset + size + 1)
        page = jobs[offset:offset + size]
        token = str(offset + size) if len(jobs) > offset + size else ""
        return [self._view(j) for j in page], token

    def cancel(self, tenant: str, job_id: str) -> AdaptationJob:
        if not job_id:
            raise InvalidInputError("name", "is required")
        with redis_errors():
            return self._view(self.jobs.request_cancel(job_id, tenant))

    def delete_generator(self, tenant: str, generator_id: str) -> None:
        if not generator_id:
            raise InvalidInputError("generator_id", "is required")
        if generator_id in self.catalog.bases:
            raise PreconditionError(f"{generator_id!r} is a base generator; only adapted generators can be deleted")
        with redis_errors():
            self.index.delete(generator_id, tenant)
