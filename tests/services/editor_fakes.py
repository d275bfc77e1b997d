"""In-process stand-ins for the editor's dependencies: a model server running tiny models, a task queue."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from faceedit.editing import BoundarySet, DirectionEntry
from faceedit.errors import NotFoundError
from faceedit.images import from_pil, to_pil
from faceedit.models import load_encoder, load_generator
from services.common import protocol
from services.common.photos import Placement
from services.common.uploads import center_square, decode_upload

from factories import face_landmarks


def fake_placement(photo_size: tuple[int, int]) -> Placement:
    """Where a fake alignment puts the face: the photo's centre square, with face-shaped landmarks in it."""
    width, height = photo_size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    quad = np.array([[left, top], [left, top + side], [left + side, top + side], [left + side, top]])
    return Placement(quad, face_landmarks(left, top, side), (width, height))


class FakeInference:
    """Same interface as TorchServeInference, running the tiny generator and encoder in this process.
    It goes through the wire protocol's encode/decode, so shape and NaN checks behave like the real one."""

    def __init__(self, generator_path: Path, encoder_path: Path | None = None, generator_id: str = "demo"):
        self.generator = load_generator(generator_path).eval()
        self.encoder = load_encoder(encoder_path).eval() if encoder_path else None
        self.generator_id = generator_id
        self.calls: list[tuple[str, str, tuple[int, ...]]] = []  # (generator id, tenant, ws shape)
        self.healthy = True
        self.adapted: dict[tuple[str, str], float] = {}  # (id, tenant) → brightness shift, a fake "adapted" model
        self.inverted: list[protocol.InvertRequest] = []

    def synthesize(self, generator_id: str, tenant: str, ws: np.ndarray, image_format: str = "png",
                   style_offset: protocol.StyleOffset | None = None, while_waiting=None):
        body = protocol.encode_generate_request(generator_id, ws, image_format=image_format, tenant=tenant,
                                                style_offset=style_offset)
        request = protocol.decode_generate_request(body)
        self.calls.append((generator_id, tenant, tuple(request.ws.shape)))
        if while_waiting is not None:  # the request is "sent": the caller's overlapping work runs now
            while_waiting()
        shift = 0.0
        if generator_id != self.generator_id:
            if (generator_id, tenant) not in self.adapted:
                raise NotFoundError("generator", generator_id)
            shift = self.adapted[(generator_id, tenant)]
        with torch.inference_mode():
            ws = torch.from_numpy(request.ws.copy())
            if request.style_offset is not None:  # as the real handler does it
                from services.inference.generator_handler import styled_synthesis

                strengths = torch.from_numpy(request.style_offset.strengths.copy())
                images = styled_synthesis(self.generator, ws, request.style_offset, strengths, "const") + shift
            else:
                images = self.generator.synthesis(ws) + shift  # [B, 3, H, W]
        encoded = []
        for image in to_pil(images):
            out = io.BytesIO()
            image.save(out, format=image_format.upper())
            encoded.append(out.getvalue())
        body = protocol.encode_generate_response(encoded, image_format, self.generator.config.size)
        return protocol.decode_generate_response(body)

    def invert(self, image: bytes, align: bool = False, return_aligned: bool = False, mode: str = "encoder"):
        request = protocol.decode_invert_request(protocol.encode_invert_request(image, align, return_aligned, mode))
        self.inverted.append(request)
        pil, _ = decode_upload(image, "image")  # upright, as the encoder handler decodes it
        crop, placement = center_square(pil, min(pil.size)), None
        if align:  # "aligned": the centre square, with a face-shaped ring of landmarks inside it
            placement = fake_placement(pil.size)
        with torch.inference_mode():
            ws = self.encoder(from_pil([crop], size=self.encoder.config.input_size)).numpy()  # [1, L, D]
        aligned = None
        if return_aligned:
            out = io.BytesIO()
            crop.save(out, format="PNG")
            aligned = out.getvalue()
        return protocol.decode_invert_response(
            protocol.encode_invert_response(ws, aligned, crop.width, placement))

    def ping(self) -> bool:
        return self.healthy

    def close(self) -> None:
        pass


class FakeQueue:
    """Records submitted job ids instead of talking to a broker; can pretend the broker is down."""

    def __init__(self):
        self.submitted: list[str] = []
        self.down = False

    def submit(self, job_id: str) -> None:
        from services.common.errors import UnavailableError

        if self.down:
            raise UnavailableError("task broker", "down (test)")
        self.submitted.append(job_id)


def png_bytes(size: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def boundary_set(normals: dict[str, torch.Tensor], accuracy: float | None = 0.9,
                 recommended: tuple[float, float] = (-3.0, 3.0), layers: dict[str, tuple[int, ...]] | None = None,
                 space: str = "w") -> BoundarySet:
    """A boundary set of unit W (or Z) directions, as the editor gets it from load_boundary_set."""
    return BoundarySet(DirectionEntry(name, d / d.norm(), space, f"{name}.safetensors", "faceedit", accuracy,
                                      recommended, (layers or {}).get(name), description=f"{name} boundary")
                       for name, d in normals.items())


def write_models_file(path: Path, models: dict[str, Path], generator_id: str = "demo",
                      boundaries: Path | None = None) -> Path:
    """A model configuration (services/common/models.py) serving the tiny models under `generator_id`."""
    family = {"encoder": str(models["encoder"])}
    if boundaries is not None:
        family["boundaries"] = [{"path": str(boundaries)}]
    config = {"generators": {generator_id: {"checkpoint": str(models["generator"])}},
              "families": {generator_id: family}, "clips": [str(models["clip"])]}
    path.write_text(yaml.safe_dump(config))
    return path
