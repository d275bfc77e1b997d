"""Generate, invert, edit and animate: the editor's request logic over the catalog, boundaries, cache and TorchServe."""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from faceedit.errors import InvalidInputError
from services.common import protocol
from services.common.errors import PreconditionError, TooLargeError, UnavailableError
from services.common.latent_cache import LatentCache, StoredLatent
from services.common.latents import check_latents
from services.common.photos import PhotoStore, StoredPhoto, expires_at, owned_by_generator
from services.common.protocol import StyleOffset
from services.common.uploads import MAX_KEPT_PHOTO_BYTES, decode_upload, without_metadata
from services.editor.boundaries import BoundaryRegistry
from services.editor.budget import RenderBudget
from services.editor.catalog import BaseGenerator, GeneratorCatalog, ResolvedGenerator
from services.editor.config import EditorConfig
from services.editor.inference import Inference
from services.editor.metrics import EditorMetrics
from services.editor.text_edits import TextEdits, text_step
from services.editor.values import (
    ANIMATION_FORMATS,
    BASE,
    IMAGE_FORMATS,
    MAX_CONDITIONS,
    MAX_STEPS,
    AttributeSummary,
    EditPlan,
    Frame,
    GeneratorSummary,
    InvertResult,
    LatentSource,
    Rendered,
    RenderedImage,
    Step,
)


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


# An animation pasted back decodes, blends and encodes the whole photo per frame: frames x photo pixels
# are bounded (64 Mpx: 4 frames of a 16 Mpx photo, 64 of a 1 Mpx one).
MAX_PASTED_PIXELS = 64 * 1024 * 1024


# -- the editor ---------------------------------------------------------------------------------


class EditorCore:
    """Generate, invert, edit and animate, over an Inference client, a catalog and a latent cache."""

    def __init__(self, catalog: GeneratorCatalog, boundaries: BoundaryRegistry, cache: LatentCache,
                 inference: Inference, config: EditorConfig | None = None, metrics: EditorMetrics | None = None,
                 encoder_family: str | None = None, budget: RenderBudget | None = None,
                 photos: PhotoStore | None = None, text_edits: TextEdits | None = None):
        config = config or EditorConfig()
        self.photos = photos  # None: no paste-back (Invert keeps no photo)
        self.text_edits = text_edits  # None: no text steps
        self.catalog = catalog
        self.boundaries = boundaries
        self.cache = cache
        self.inference = inference
        self.metrics = metrics or EditorMetrics()
        self.default_truncation = config.default_truncation
        self.max_seeds = config.max_seeds
        self.max_frames = config.max_frames
        self.max_image_bytes = config.max_image_bytes
        self.max_image_pixels = config.max_image_pixels
        self.encoder_family = encoder_family or catalog.bases[catalog.default].family
        self.budget = budget or RenderBudget(config.chunk_seconds, config.frame_batch, config.max_message_bytes)

    # -- helpers ----------------------------------------------------------------------------
    def _psi(self, truncation: float, field_name: str) -> float:
        if truncation == 0:
            return self.default_truncation
        if not math.isfinite(truncation) or not 0 < truncation <= 1:
            raise InvalidInputError(field_name, f"must be in (0, 1] (0 = default {self.default_truncation}), "
                                                f"got {truncation}")
        return float(truncation)

    def _render(self, generator: ResolvedGenerator, tenant: str, ws: np.ndarray, fmt: str,
                style_offset: StyleOffset | None = None,
                while_waiting: Callable[[], None] | None = None) -> list[RenderedImage]:
        """All of ws [B, L, D] rendered, in chunks sized by the budget."""
        return [image for chunk in self._render_chunks(generator, tenant, ws, fmt, style_offset, while_waiting)
                for image in chunk]

    def _render_chunks(self, generator: ResolvedGenerator, tenant: str, ws: np.ndarray, fmt: str,
                       style_offset: StyleOffset | None = None,
                       while_waiting: Callable[[], None] | None = None) -> Iterator[list[RenderedImage]]:
        """ws [B, L, D] → images, one TorchServe call per chunk; the chunk size is re-read before each
        call (it follows the measured cost), and no chunk is sent to a caller that is gone.
        `while_waiting` runs during the first call (Inference.synthesize)."""
        key, done = generator.base.id, 0
        while done < len(ws):
            if done:
                self.budget.before_chunk(done, len(ws))
            chunk = ws[done:done + self.budget.chunk_size(key, fmt)]  # [b, L, D]
            offset = None if style_offset is None else dataclasses.replace(
                style_offset, strengths=style_offset.strengths[done:done + len(chunk)])
            started = time.perf_counter()
            with self.metrics.stage("inference.synthesize"):
                response = self.inference.synthesize(generator.id, tenant, chunk, fmt, offset,
                                                     while_waiting if not done else None)
            if response.handler_ms is not None:
                self.metrics.observe_stage("inference.handler", response.handler_ms / 1e3)
            self.budget.observe(key, len(chunk), time.perf_counter() - started,
                                [len(img) for img in response.images], fmt)
            done += len(chunk)
            yield [RenderedImage(img, response.format, response.size, response.size) for img in response.images]

    def warm_up(self) -> None:
        """One image per base generator: TorchServe's workers load their models, and the budget
        learns each generator's cost before the first request; the text-edit CLIP is loaded too."""
        for base in self.catalog.bases.values():
            self._render(ResolvedGenerator(base.id, BASE, base), "", base.latents_from_seeds([0], 1.0), "png")
        if self.text_edits is not None:
            self.text_edits.warm_up()

    def _check_ws(self, ws: np.ndarray, base: BaseGenerator, field_name: str) -> np.ndarray:
        """One latent, [1, L, D] or [L, D], of this generator's sizes → [1, L, D] float32."""
        if ws.ndim == 2:
            ws = ws[None]
        if ws.ndim == 3 and ws.shape[0] != 1:
            raise InvalidInputError(field_name, f"expected one latent, [1, {base.n_latent}, {base.style_dim}] or "
                                                f"[{base.n_latent}, {base.style_dim}], got {list(ws.shape)}")
        return check_latents(ws, field_name, base.n_latent, base.style_dim)

    def resolve_latent(self, tenant: str, generator: ResolvedGenerator, source: LatentSource,
                       field_name: str = "latent") -> np.ndarray:
        """W+ [1, L, D] from an id, a seed or inline values."""
        return self._resolve(tenant, generator, source, field_name)[0]

    def _resolve(self, tenant: str, generator: ResolvedGenerator, source: LatentSource,
                 field_name: str = "latent") -> tuple[np.ndarray, str]:
        """(W+ [1, L, D], the id of the photo kept with a cached latent or "")."""
        given = [x is not None for x in (source.latent_id, source.seed, source.inline)]
        if sum(given) != 1:
            raise InvalidInputError(field_name, "set exactly one of latent_id, seed, inline")
        if source.latent_id is not None:
            with self.metrics.stage("cache.get"):
                entry = self.cache.entry(tenant, source.latent_id, f"{field_name}.latent_id")
            if entry.family != generator.family:
                raise InvalidInputError(f"{field_name}.latent_id", f"belongs to generator family {entry.family!r}, "
                                                                   f"not {generator.family!r}")
            return self._check_ws(entry.ws, generator.base, f"{field_name}.latent_id"), entry.photo_id
        if source.seed is not None:
            if not 0 <= source.seed < 2**32:
                raise InvalidInputError(f"{field_name}.seed", f"must be in [0, 2^32), got {source.seed}")
            psi = self._psi(source.truncation, f"{field_name}.truncation")
            with self.metrics.stage("mapping"):
                return generator.base.latents_from_seeds([source.seed], psi), ""
        return self._check_ws(np.asarray(source.inline), generator.base, f"{field_name}.inline"), ""

    def build_edits(self, family: str, steps: Sequence[Step], n_latent: int) -> EditPlan:
        from faceedit.editing import Edit, resolve_layers

        if len(steps) > MAX_STEPS:
            raise TooLargeError("edits", f"{len(steps)} steps exceeds the limit of {MAX_STEPS}")
        plan = EditPlan()
        boundaries = self.boundaries.attributes(family)
        for i, step in enumerate(steps):
            prefix = f"edits[{i}]"
            if step.text:
                if step.attribute:
                    raise InvalidInputError(f"{prefix}.text", "set either attribute or text, not both")
                if step.conditions or step.layers or step.space:
                    raise InvalidInputError(f"{prefix}.text", "a text step takes no conditions, layers or space")
                plan.text.append(text_step(step.text, step.strength, step.neutral, step.threshold, prefix))
                continue
            if step.neutral or step.threshold:
                raise InvalidInputError(f"{prefix}.{'neutral' if step.neutral else 'threshold'}",
                                        "is for text steps (set text instead of attribute)")
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
                 image_format: str = "png") -> list[Rendered]:
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
        return [Rendered(img, lat) for img, lat in zip(images, latents)]

    def invert(self, tenant: str, image: bytes, align: bool = False, generator_id: str = "",
               image_format: str = "png", return_aligned: bool = False, mode: str = "encoder") -> InvertResult:
        generator = self.catalog.resolve(tenant, generator_id)
        fmt = _choice(image_format, IMAGE_FORMATS, "format")
        mode = _choice(mode, protocol.INVERSION_MODES, "mode")
        if generator.family != self.encoder_family:
            raise InvalidInputError("generator_id", f"the encoder inverts into family {self.encoder_family!r}; "
                                                    f"{generator.id!r} is of family {generator.family!r}")
        with self.metrics.stage("validate.image"):
            upright, upload_format = decode_upload(image, "image.data", self.max_image_bytes, self.max_image_pixels)
        keep_photo = align and self.photos is not None
        if keep_photo:  # what is kept never holds where, when or with what the photo was taken
            with self.metrics.stage("photos.strip"):
                kept = without_metadata(image, upload_format, upright)
        del upright
        with self.metrics.stage("inference.invert"):
            # An aligned photo is kept for paste-back: that needs the crop and where it lies in the photo.
            inverted = self.inference.invert(image, align=align, return_aligned=return_aligned or keep_photo, mode=mode)
        ws = self._check_ws(inverted.ws, generator.base, "encoder output")
        reconstruction = self._render(generator, tenant, ws, fmt)[0]
        photo_id = ""
        if keep_photo:
            if inverted.aligned is None or inverted.placement is None:
                raise UnavailableError("model server", "its encoder returned no placement for an aligned photo")
            with self.metrics.stage("photos.put"):
                photo_id = self.photos.put(tenant, kept, inverted.aligned, inverted.placement, self.cache.ttl_s)
        try:
            with self.metrics.stage("cache.put"):
                latent = self.cache.put(tenant, generator.family, ws, photo_id, expires_at(photo_id))
        except Exception:
            if photo_id:  # no latent points at it: the caller could never delete it
                self.photos.delete([photo_id])
            raise
        aligned = None
        if return_aligned and inverted.aligned is not None:
            aligned = RenderedImage(inverted.aligned, "png", inverted.size, inverted.size)
        return InvertResult(latent, reconstruction, aligned)

    def edit(self, tenant: str, generator_id: str, source: LatentSource, steps: Sequence[Step],
             image_format: str = "png", paste_back: bool = False) -> Rendered:
        generator = self.catalog.resolve(tenant, generator_id)
        fmt = _choice(image_format, IMAGE_FORMATS, "format")
        ws, photo_id = self._resolve(tenant, generator, source)
        plan = self.build_edits(generator.family, steps, generator.base.n_latent)
        photo = self._photo(tenant, photo_id) if paste_back else None
        if plan.z:
            ws = self._latents_with_z_edits(generator, source, plan)
        if plan.w:
            from faceedit.editing import apply_edits

            with self.metrics.stage("edit"):
                ws = apply_edits(torch.from_numpy(ws), plan.w).numpy()  # [1, L, D]
        offset = self._text_offset(generator, plan, np.ones(1))
        stored: list[StoredLatent] = []

        def store() -> None:
            # While TorchServe synthesises: the edited latent does not depend on the image. It keeps the
            # photo, so a chain of edits can still be pasted back.
            with self.metrics.stage("cache.put"):
                stored.append(self.cache.put(tenant, generator.family, ws, photo_id, expires_at(photo_id)))

        if photo is None:
            image = self._render(generator, tenant, ws, fmt, offset, while_waiting=store)[0]
        else:  # rendered lossless, pasted, then encoded as asked
            crop = self._render(generator, tenant, ws, "png", offset, while_waiting=store)[0]
            image = self._paste(self._paste_target(photo), crop, fmt)
        if not stored:  # an Inference that had nothing to wait for
            store()
        return Rendered(image, stored[0])

    def _text_offset(self, generator: ResolvedGenerator, plan: EditPlan, strengths: np.ndarray
                     ) -> StyleOffset | None:
        """The plan's text steps as one StyleSpace offset (StyleCLIP), scaled per latent by `strengths` [B].
        The latent returned stays the unedited-by-text W+: a text edit lives in StyleSpace, not in W+."""
        if not plan.text:
            return None
        if self.text_edits is None:
            raise PreconditionError("text edits are not available: this editor has no CLIP configured")
        with self.metrics.stage("text.direction"):
            return self.text_edits.offset(generator.base.id, plan.text, strengths)

    def _photo(self, tenant: str, photo_id: str) -> StoredPhoto:
        """The photo kept with the source latent, for paste-back: a latent from Invert(align=true), an edit of one,
        or a tuning job's pivot."""
        if self.photos is None:
            raise PreconditionError("paste_back is not available: this editor keeps no photos")
        if not photo_id:
            raise InvalidInputError("paste_back", "needs a latent_id from Invert(align=true) (or an edit of one, or a "
                                                  "tuning job's pivot): this latent has no photo to paste into")
        with self.metrics.stage("photos.get"):
            return self.photos.get(tenant, photo_id)

    def _paste_target(self, photo: StoredPhoto) -> tuple[Image.Image, Any]:
        """The decoded photo and its aligned face, once per request (an animation pastes every frame)."""
        picture, _ = decode_upload(photo.image, "photo", MAX_KEPT_PHOTO_BYTES, self.max_image_pixels, photo.upright)
        return picture, photo.aligned_face()

    def _paste(self, target: tuple[Image.Image, Any], crop: RenderedImage, fmt: str) -> RenderedImage:
        """The edited crop blended back into the whole photo (faceedit.blending: soft face mask)."""
        from faceedit.blending import paste_back

        with self.metrics.stage("paste_back"):
            edited = Image.open(io.BytesIO(crop.data)).convert("RGB")
            pasted = paste_back(target[0], edited, target[1])
            out = io.BytesIO()
            pasted.save(out, format=fmt.upper(), **({"quality": 92} if fmt != "png" else {}))
        if out.tell() > self.budget.max_message_bytes:
            raise TooLargeError("paste_back", f"the {fmt.upper()} of the whole {pasted.width}x{pasted.height} photo is "
                                              f"{out.tell() / 1e6:.1f} MB, over the reply limit of "
                                              f"{self.budget.max_message_bytes / 1e6:.0f} MB; ask for JPEG")
        return RenderedImage(out.getvalue(), fmt, pasted.width, pasted.height)

    def delete_latent(self, tenant: str, latent_id: str) -> None:
        """Removes the latent now, and the photo kept with it (which every edit of it shared)."""
        entry = self.cache.delete(tenant, latent_id, "latent_id")
        if entry.photo_id and self.photos is not None and not owned_by_generator(entry.photo_id):
            self.photos.delete([entry.photo_id])

    def animate(self, tenant: str, generator_id: str, source: LatentSource, steps: Sequence[Step],
                frames: int = 0, start: float = 0.0, end: float = 0.0, image_format: str = "png",
                animation: str = "", skip_frames: bool = False, frame_duration_ms: int = 0,
                paste_back: bool = False) -> Iterator[Frame | RenderedImage]:
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
        ws, photo_id = self._resolve(tenant, generator, source)
        plan = self.build_edits(generator.family, steps, generator.base.n_latent)
        photo = self._photo(tenant, photo_id) if paste_back else None
        if photo is not None:
            width, height = photo.placement.photo_size
            if n * width * height > MAX_PASTED_PIXELS:
                raise TooLargeError("paste_back", f"{n} frames of the whole {width}x{height} photo exceed the limit of "
                                                  f"{MAX_PASTED_PIXELS / 1e6:.0f} Mpx per animation; ask for at most "
                                                  f"{max(1, MAX_PASTED_PIXELS // (width * height))} frames")
        ts = np.linspace(start, end, n)
        path = np.repeat(ws, n, axis=0)  # [F, L, D]
        if plan.z:
            path = self._latents_with_z_edits(generator, source, plan, ts)
        if plan.w:
            with self.metrics.stage("edit"):
                # Step edits are additive, so the W path is the unedited path plus each frame's offset.
                offsets = edit_path(torch.zeros_like(torch.from_numpy(ws)), plan.w, n, start, end)[:, 0].numpy()
                path = path + offsets
        offset = self._text_offset(generator, plan, ts)  # frame f moves t_f of the text steps' strengths
        return self._frames(generator, tenant, path, ts, fmt, animation, skip_frames, duration, photo, offset)

    def _frames(self, generator: ResolvedGenerator, tenant: str, path: np.ndarray, ts: np.ndarray, fmt: str,
                animation: str, skip_frames: bool, duration: int, photo: StoredPhoto | None = None,
                style_offset: StyleOffset | None = None) -> Iterator[Frame | RenderedImage]:
        encoded: list[bytes] = []
        # Animations are encoded from lossless frames whatever the stream's frame format is.
        render_fmt = "png" if (animation and skip_frames) or photo is not None else fmt
        frame_fmt = "png" if animation and skip_frames else fmt
        index = 0
        target = self._paste_target(photo) if photo is not None else None
        for chunk in self._render_chunks(generator, tenant, path, render_fmt, style_offset):
            for image in chunk:
                if target is not None:
                    image = self._paste(target, image, frame_fmt)
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

    def list_attributes(self, tenant: str, generator_id: str = "") -> tuple[str, list[AttributeSummary], bool]:
        """(the generator's family, its attributes, whether it takes text edits now)."""
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
        text_edits = self.text_edits is not None and self.text_edits.available(generator.base.id)
        return generator.family, out, text_edits


# -- adaptation ------------------------------------------------------------------------------------
