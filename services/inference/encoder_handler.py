"""TorchServe handler: an encoded photo → W+ latents from the e4e/pSp encoder, face alignment optional."""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image

from faceedit.errors import FaceEditError, InvalidInputError, NoFaceFound, NotFoundError
from faceedit.images import from_pil
from faceedit.models import Encoder, load_encoder
from services.common import protocol
from services.common.models import load_model_config
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

    def initialize(self, context: Any) -> None:
        config = support.InferenceConfig.load(getattr(context, "model_yaml_config", None))
        support.set_torch_threads(config.torch_threads)
        self.device = support.worker_device(context, config.device)
        self.aligned_size = config.aligned_size
        models = load_model_config(config.models or None)
        path = models.encoder()
        if path is None:
            raise InvalidInputError("encoder", f"family {models.encoder_family!r} of {models.source} names no encoder; "
                                               "add one or serve the generator only (FACEEDIT_TS_MODELS=generator)")
        self.encoder = load_encoder(path, device=self.device)
        log.warning("encoder ready: input %d px, %d styles", self.encoder.config.input_size,
                    self.encoder.config.n_styles)

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        assert self.encoder is not None
        size = self.encoder.config.input_size
        responses: list[bytes | None] = [None] * len(data)
        crops: list[tuple[int, Image.Image, bool]] = []
        for i, row in enumerate(data):
            try:
                request = protocol.decode_invert_request(support.request_body(row))
                photo, _ = decode_upload(request.image, "image")
                # The crop the caller gets back (to paste an edit into its photo) is kept at up to
                # aligned_size; the encoder sees it resized to its own input size.
                side = min(self.aligned_size, min(photo.size))
                crop = self._align(photo, side) if request.align else center_square(photo, side)
                crops.append((i, crop, request.return_aligned))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error body
                responses[i] = self._error(exc)
        if crops:
            try:
                with torch.inference_mode():
                    inputs = [c.resize((size, size), Image.LANCZOS) if c.size != (size, size) else c
                              for _, c, _ in crops]
                    batch = from_pil(inputs).to(self.device)  # [N, 3, size, size]
                    ws = self.encoder.encode(batch).cpu()  # [N, n_styles, D]
                for k, (i, crop, return_aligned) in enumerate(crops):
                    aligned = support.encode_image(crop, "png") if return_aligned else None
                    responses[i] = protocol.encode_invert_response(ws[k:k + 1].numpy(), aligned, crop.width)
            except Exception as exc:  # noqa: BLE001
                for i, _, _ in crops:
                    responses[i] = self._error(exc)
        return [r if r is not None else self._error(RuntimeError("no response")) for r in responses]

    def _error(self, exc: BaseException) -> bytes:
        if not isinstance(exc, (InvalidInputError, NotFoundError)):
            log.exception("encode failed", exc_info=exc)
        return protocol.encode_error(exc)

    def _align(self, photo: Image.Image, size: int) -> Image.Image:
        from faceedit.align import DlibLandmarkDetector, align_face

        try:
            if self.detector is None:
                self.detector = DlibLandmarkDetector()  # loads dlib's models once per worker
            return align_face(photo, size, detector=self.detector).image
        except NoFaceFound as exc:
            raise InvalidInputError("image", str(exc)) from None
        except FaceEditError as exc:  # dlib or its model missing: the deployment's problem, not the caller's
            raise protocol.InferenceError(protocol.FAILED_PRECONDITION, f"alignment unavailable: {exc}") from None
