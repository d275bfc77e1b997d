"""TorchServe handler: an encoded photo → W+ latents from the e4e/pSp encoder, face alignment optional."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from PIL import Image

from faceedit.align import AlignedFace
from faceedit.errors import FaceEditError, InvalidInputError, NoFaceFound, NotFoundError
from faceedit.images import from_pil
from faceedit.inversion import Distance
from faceedit.models import Encoder, Generator, load_encoder, load_generator
from services.common import protocol
from services.common.models import ModelConfig, load_model_config
from services.common.photos import Placement
from services.common.uploads import center_square, decode_upload
from services.inference import handler_support as support

log = logging.getLogger(__name__)

class EncoderHandler:
    """Decodes and (optionally) aligns each photo on its own, then encodes the whole batch in one call;
    a photo that cannot be used gets its own error body and the others still get latents."""

    def __init__(self) -> None:
        self.encoder: Encoder | None = None
        self.detector: Any = None
        self.device = torch.device("cpu")
        self.aligned_size = 1024
        self.optimize_steps = 200
        self.optimize_max_s = 60.0
        self.models: ModelConfig | None = None
        self._optimizer: tuple[Generator, Distance | None] | None = None  # loaded on the first OPTIMIZE

    def initialize(self, context: Any) -> None:
        config = support.InferenceConfig.load(getattr(context, "model_yaml_config", None))
        support.set_torch_threads(config.torch_threads)
        support.quiet_per_request_logs()
        self.device = support.worker_device(context, config.device)
        self.aligned_size = config.aligned_size
        self.optimize_steps = config.optimize_steps
        self.optimize_max_s = config.optimize_max_s
        self.models = models = load_model_config(config.models or None)
        path = models.encoder()
        if path is None:
            raise InvalidInputError("encoder", f"family {models.encoder_family!r} of {models.source} names no encoder; "
                                               "add one or serve the generator only (FACEEDIT_TS_MODELS=generator)")
        self.encoder = load_encoder(path, device=self.device)
        log.warning("encoder ready: input %d px, %d styles", self.encoder.config.input_size,
                    self.encoder.config.n_styles)

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        assert self.encoder is not None
        started = time.perf_counter()
        size = self.encoder.config.input_size
        responses: list[bytes | None] = [None] * len(data)
        crops: list[tuple[int, Image.Image, bool, Placement | None]] = []
        requests: dict[int, protocol.InvertRequest] = {}
        for i, row in enumerate(data):
            try:
                request = protocol.decode_invert_request(support.request_body(row))
                requests[i] = request
                photo, _ = decode_upload(request.image, "image")
                # The crop the caller gets back (to paste an edit into its photo) is kept at up to
                # aligned_size; the encoder sees it resized to its own input size.
                side = min(self.aligned_size, min(photo.size))
                placement = None
                if request.align:
                    face = self._align(photo, side)
                    crop, placement = face.image, Placement(face.quad, face.landmarks, face.photo_size)
                else:
                    crop = center_square(photo, side)
                crops.append((i, crop, request.return_aligned, placement))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error body
                responses[i] = self._error(exc)
        if crops:
            try:
                with torch.inference_mode():
                    inputs = [c.resize((size, size), Image.LANCZOS) if c.size != (size, size) else c
                              for _, c, _, _ in crops]
                    batch = from_pil(inputs).to(self.device)  # [N, 3, size, size]
                    ws = self.encoder.encode(batch).cpu()  # [N, n_styles, D]
                ws = ws.clone()  # out of inference mode: OPTIMIZE writes its refined codes into it
                for k, (i, crop, return_aligned, placement) in enumerate(crops):
                    try:
                        if requests[i].mode == "optimize":
                            # Each caller's budget runs from this batch's start, not after the ones before it.
                            budget = min(requests[i].budget_s or self.optimize_max_s, self.optimize_max_s)
                            left = budget - (time.perf_counter() - started)
                            if left > 0:
                                ws[k:k + 1] = self._optimize(crop, ws[k:k + 1], left)
                        aligned = support.encode_image(crop, "png") if return_aligned else None
                        responses[i] = protocol.encode_invert_response(ws[k:k + 1].numpy(), aligned, crop.width,
                                                                       placement)
                    except Exception as exc:  # noqa: BLE001 - one request's failure is its own
                        responses[i] = self._error(exc)
            except Exception as exc:  # noqa: BLE001
                for i, _, _, _ in crops:
                    responses[i] = self._error(exc)
        return [r if r is not None else self._error(RuntimeError("no response")) for r in responses]

    def _optimize(self, crop: Image.Image, start: torch.Tensor, budget_s: float | None) -> torch.Tensor:
        """The encoder's code [1, L, D] refined against the crop (W+ optimisation), within `budget_s`."""
        from faceedit.inversion import InversionConfig, invert, scorer_distance

        assert self.models is not None
        if self._optimizer is None:  # the family's generator and perceptual net, once per worker
            family = self.models.families[self.models.encoder_family]
            spec = next(g for g in self.models.generators.values() if g.family == family.name)
            perceptual = scorer_distance(family.perceptual, self.device) if family.perceptual else None
            self._optimizer = (load_generator(spec.checkpoint, device=self.device).eval(), perceptual)
        generator, perceptual = self._optimizer
        target = from_pil([crop.resize((generator.config.size,) * 2, Image.LANCZOS)]).to(self.device)
        config = InversionConfig(optimize_steps=self.optimize_steps)
        result = invert(target, generator, None, "optimize", config, perceptual, time_limit_s=budget_s,
                        start=start.clone().to(self.device))
        return result.ws.cpu()

    def _error(self, exc: BaseException) -> bytes:
        if not isinstance(exc, (InvalidInputError, NotFoundError)):
            log.exception("encode failed", exc_info=exc)
        return protocol.encode_error(exc)

    def _align(self, photo: Image.Image, size: int) -> AlignedFace:
        from faceedit.align import DlibLandmarkDetector, align_face

        try:
            if self.detector is None:
                self.detector = DlibLandmarkDetector()  # loads dlib's models once per worker
            return align_face(photo, size, detector=self.detector)
        except NoFaceFound as exc:
            raise InvalidInputError("image", str(exc)) from None
        except FaceEditError as exc:  # dlib or its model missing: the deployment's problem, not the caller's
            raise protocol.InferenceError(protocol.FAILED_PRECONDITION, f"alignment unavailable: {exc}") from None
