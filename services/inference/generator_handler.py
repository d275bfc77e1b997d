"""TorchServe handler: W+ latents + generator id → encoded images;
base generators from the model config, adapted by id."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np
import redis
import torch

from faceedit.errors import InvalidInputError, NotFoundError
from faceedit.images import to_pil
from faceedit.models import Generator, load_generator
from faceedit.models.precision import autocast_dtype
from services.common import protocol
from services.common.artifacts import open_artifact_store
from services.common.latents import check_latents
from services.common.models import load_model_config
from services.common.registry import GeneratorIndex, load_adapted_generator
from services.inference.handler_support import (
    LRU,
    InferenceConfig,
    encode_image,
    quiet_per_request_logs,
    request_body,
    set_torch_threads,
    worker_device,
)

log = logging.getLogger(__name__)


def check_style_layers(generator: Generator, offset: protocol.StyleOffset) -> None:
    layers = generator.style_layers()
    if any(j >= len(layers) or layers[j][0].in_ch != w for j, w in zip(offset.layers, offset.widths)):
        raise InvalidInputError("style_offset.layers", "do not match this generator's StyleSpace (its relevance "
                                                       "was computed for another generator)")


def styled_synthesis(generator: Generator, ws: torch.Tensor, offset: protocol.StyleOffset, strengths: torch.Tensor,
                     noise_mode: str, precision: str = "fp32") -> torch.Tensor:
    """ws [b, L, D] rendered from their styles moved by strengths[b] x the offset's direction."""
    styles = generator.styles(ws)
    direction = torch.from_numpy(offset.direction.copy()).to(ws.device)
    start = 0
    for j, width in zip(offset.layers, offset.widths):
        styles[j] = styles[j] + strengths[:, None] * direction[start:start + width]  # [b, width]
        start += width
    return generator.synthesis_from_styles(styles, noise_mode=noise_mode, precision=precision)


class GeneratorHandler:
    """One instance per TorchServe worker. `handle` answers every request of a dynamic batch:
    requests are grouped by (generator, noise mode) so each group is one synthesis call, and a
    failure is reported in that request's own body, never as a failed batch."""

    def __init__(self) -> None:
        self.config: InferenceConfig | None = None
        self.bases: dict[str, Generator] = {}
        self.index: GeneratorIndex | None = None
        self.adapted: LRU[Generator] | None = None
        self.device = torch.device("cpu")

    def initialize(self, context: Any) -> None:
        self.config = InferenceConfig.load(getattr(context, "model_yaml_config", None))
        set_torch_threads(self.config.torch_threads)
        quiet_per_request_logs()
        self.device = worker_device(context, self.config.device)
        autocast_dtype(self.config.precision, self.device)  # an impossible precision fails the start, named
        # Every base generator of the one model configuration, under the ids the editor uses.
        models = load_model_config(self.config.models or None)
        self.bases = {gid: load_generator(spec.checkpoint, device=self.device)
                      for gid, spec in models.generators.items()}
        self.adapted = LRU(self.config.lru_size)
        if self.config.redis_url:
            store = open_artifact_store(self.config.artifact_store_url)
            self.index = GeneratorIndex(redis.Redis.from_url(self.config.redis_url), store,
                                        self.config.redis_namespace)
        for gid, g in self.bases.items():
            log.warning("generator %r ready: %d px, n_latent %d, style_dim %d, %d images per call; adapted "
                        "generators %s", gid, g.config.size, g.n_latent, g.style_dim,
                        self.config.images_per_call(g.config.size), "on" if self.index else "off")

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        started = time.perf_counter()
        responses: list[bytes | None] = [None] * len(data)
        resolved: dict[tuple[str, str], Generator | Exception] = {}
        # Keyed by the generator object, so every tenant's base-generator requests share one call.
        groups: dict[tuple[int, str, int], list[tuple[int, protocol.GenerateRequest]]] = defaultdict(list)
        generators: dict[int, Generator] = {}
        for i, row in enumerate(data):
            try:
                request = protocol.decode_generate_request(request_body(row))
                key = (request.generator_id, request.tenant)
                if key not in resolved:
                    try:
                        resolved[key] = self._resolve(*key)
                    except Exception as exc:  # noqa: BLE001 - reported to each request that named it
                        resolved[key] = exc
                generator = resolved[key]
                if isinstance(generator, Exception):
                    raise generator
                check_latents(request.ws, "ws", generator.n_latent, generator.style_dim)
                if request.style_offset is not None:
                    check_style_layers(generator, request.style_offset)
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error body
                responses[i] = self._error(exc)
                continue
            generators[id(generator)] = generator
            # A StyleSpace edit is its own call; plain requests share one per generator and noise mode.
            groups[(id(generator), request.noise_mode, -1 if request.style_offset is None else i)].append((i, request))
        for (generator_key, noise_mode, _), members in groups.items():
            try:
                for i, body in self._synthesize(generators[generator_key], noise_mode, members, started):
                    responses[i] = body
            except Exception as exc:  # noqa: BLE001
                for i, _ in members:
                    responses[i] = self._error(exc)
        return [r if r is not None else self._error(RuntimeError("no response")) for r in responses]

    def _error(self, exc: BaseException) -> bytes:
        if not isinstance(exc, (InvalidInputError, NotFoundError, protocol.InferenceError)):
            log.exception("generate failed", exc_info=exc)
        return protocol.encode_error(exc)

    def _resolve(self, generator_id: str, tenant: str) -> Generator:
        assert self.config is not None and self.adapted is not None
        if generator_id in self.bases:
            return self.bases[generator_id]
        if self.index is None:
            raise NotFoundError("generator", generator_id)
        # Looked up on every batch: the tenant check is per request, and a deleted generator must
        # stop being served even while its weights sit in this worker's cache.
        try:
            record = self.index.get(generator_id, tenant)
        except redis.RedisError:
            raise protocol.InferenceError(protocol.UNAVAILABLE, "the generator index (Redis) is unreachable") from None
        base = self.bases.get(record.base_generator)
        if base is None:
            raise protocol.InferenceError(protocol.FAILED_PRECONDITION,
                                          f"generator {generator_id!r} is adapted from {record.base_generator!r}; "
                                          f"this model serves {sorted(self.bases)}")
        return self.adapted.get_or_load((record.id, record.sha256),
                                        lambda: load_adapted_generator(self.index.store, record, base))

    def _synthesize(self, generator: Generator, noise_mode: str, members: list[tuple[int, protocol.GenerateRequest]],
                    started: float) -> list[tuple[int, bytes]]:
        """Each member's reply; `started` (perf_counter) is when handle() began, for the handler time it reports."""
        assert self.config is not None
        ws = torch.from_numpy(np.concatenate([r.ws for _, r in members])).to(self.device)
        offset = members[0][1].style_offset  # one member when set (see handle)
        per_call = self.config.images_per_call(generator.config.size)
        with torch.inference_mode():  # a dynamic batch split to stay within the memory budget
            if offset is None:
                images = torch.cat([generator.synthesis(chunk, noise_mode=noise_mode,
                                                        precision=self.config.precision).cpu()
                                    for chunk in ws.split(per_call)])
            else:
                strengths = torch.from_numpy(offset.strengths.copy()).to(self.device)
                images = torch.cat([styled_synthesis(generator, ws[k:k + per_call], offset, strengths[k:k + per_call],
                                                     noise_mode, self.config.precision).cpu()
                                    for k in range(0, len(ws), per_call)])
        pil = to_pil(images)
        out, start = [], 0
        for i, request in members:
            count = request.ws.shape[0]
            encoded = [encode_image(img, request.image_format) for img in pil[start:start + count]]
            out.append((i, protocol.encode_generate_response(encoded, request.image_format, generator.config.size,
                                                             handler_ms=(time.perf_counter() - started) * 1e3)))
            start += count
        return out
