"""Face alignment in the FFHQ recipe: 68 landmarks -> an oriented square crop that maps back to the photo."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from faceedit.errors import FaceEditError, InvalidInputError, NoFaceFound

__all__ = [
    "AlignedFace",
    "LandmarkDetector",
    "DlibLandmarkDetector",
    "align_face",
    "align_from_landmarks",
    "MIN_SIZE",
    "MAX_SIZE",
]

# Coordinate convention used throughout (the one PIL's transforms use): x right, y down, in pixels,
# pixel (i, j) covers [i, i+1) x [j, j+1), so the centre of the top-left pixel is (0.5, 0.5).

MIN_SIZE = 16
MAX_SIZE = 4096

# 68-point (iBUG 300-W) indices.
_LEFT_EYE = slice(36, 42)  # the subject's right eye, on the left of the photo
_RIGHT_EYE = slice(42, 48)
_MOUTH_LEFT = 48
_MOUTH_RIGHT = 54

_INSTALL_HINT = (
    "face detection needs dlib and its 68-point landmark model: pip install 'faceedit[align]'. "
    "Note: that model is trained on iBUG 300-W, whose licence forbids commercial use; "
    "pass your own `detector=` to align_face to avoid it."
)


def _rot90(v: np.ndarray) -> np.ndarray:
    """Rotate a 2-vector by +90 degrees in image coordinates (y down): (1, 0) -> (0, 1)."""
    return np.array([-v[1], v[0]], dtype=np.float64)


@dataclass
class AlignedFace:
    """An aligned square crop of one face plus what is needed to map it back into the photo."""

    # RGB, size x size.
    image: Image.Image
    # [68, 2] float, photo coordinates.
    landmarks: np.ndarray
    # [4, 2] photo coordinates of the crop's corners: top-left, bottom-left, bottom-right, top-right.
    quad: np.ndarray
    # (width, height) of the photo it came from.
    photo_size: tuple[int, int]
    # Other faces' landmark boxes (left, top, right, bottom) in photo pixels, largest first.
    others: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.image.width

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Crop -> photo as `photo = origin + matrix @ crop`.

        Read off the quad and the crop's size each time, so replacing `image` by a resized crop
        keeps the mapping right for that crop.
        """
        q = np.asarray(self.quad, dtype=np.float64)
        n = float(self.size)
        matrix = np.stack([(q[3] - q[0]) / n, (q[1] - q[0]) / n], axis=1)  # columns: crop x-axis, crop y-axis
        return matrix, q[0]

    def to_photo(self, points: Any) -> np.ndarray:
        """Map crop coordinates [..., 2] to photo coordinates."""
        matrix, origin = self._affine()
        p = np.asarray(points, dtype=np.float64)
        return p @ matrix.T + origin

    def to_crop(self, points: Any) -> np.ndarray:
        """Map photo coordinates [..., 2] to crop coordinates."""
        matrix, origin = self._affine()
        p = np.asarray(points, dtype=np.float64)
        return (p - origin) @ np.linalg.inv(matrix).T


@runtime_checkable
class LandmarkDetector(Protocol):
    """Finds faces: one [68, 2] float array per face, iBUG 68-point order, in the convention above."""

    def detect(self, image: np.ndarray) -> list[np.ndarray]:  # image: [H, W, 3] uint8 RGB
        ...


# Loading the 68-point model takes ~0.4 s and ~100 MB: do it once per process, whoever asks first.
_DLIB_LOCK = threading.Lock()
_DLIB_CACHE: dict[str, Any] = {}


def _import_dlib() -> Any:
    try:
        import dlib  # noqa: PLC0415 - optional dependency, imported only when alignment by dlib is used
    except ImportError as e:
        raise FaceEditError(f"dlib is not installed; {_INSTALL_HINT}") from e
    return dlib


def _default_predictor_path() -> Path:
    """Location of shape_predictor_68_face_landmarks.dat from the face_recognition_models package."""
    try:
        import face_recognition_models  # noqa: PLC0415

        return Path(face_recognition_models.pose_predictor_model_location())
    except ImportError:
        # face_recognition_models 0.3.0 imports pkg_resources, which setuptools >= 81 no longer
        # ships; the data files are still there, so find the package without importing it.
        pass
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceEditError(f"face_recognition_models is not installed; {_INSTALL_HINT}")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    return package_dir / "models" / "shape_predictor_68_face_landmarks.dat"


class DlibLandmarkDetector:
    """dlib's HOG frontal-face detector + 68-point shape predictor (model from face_recognition_models)."""

    def __init__(self, upsample: int = 1, predictor_path: str | Path | None = None):
        # upsample=1 also finds faces ~40-80 px wide; it cost ~3x upsample=0 on a 640x400 photo.
        if not isinstance(upsample, int) or isinstance(upsample, bool) or not 0 <= upsample <= 3:
            raise InvalidInputError("upsample", f"must be an int in 0..3, got {upsample!r}")
        self.upsample = upsample
        self.predictor_path = Path(predictor_path) if predictor_path is not None else None

    def _models(self) -> tuple[Any, Any]:
        dlib = _import_dlib()
        path = self.predictor_path or _default_predictor_path()
        key = str(path)
        with _DLIB_LOCK:
            if "detector" not in _DLIB_CACHE:
                _DLIB_CACHE["detector"] = dlib.get_frontal_face_detector()
            if key not in _DLIB_CACHE:
                if not path.is_file():
                    raise FaceEditError(f"68-point landmark model not found at {path}; {_INSTALL_HINT}")
                _DLIB_CACHE[key] = dlib.shape_predictor(str(path))
            return _DLIB_CACHE["detector"], _DLIB_CACHE[key]

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        arr = np.ascontiguousarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise InvalidInputError("image", f"expected [H, W, 3] uint8, got {arr.shape} {arr.dtype}")
        detector, predictor = self._models()
        faces = []
        for rect in detector(arr, self.upsample):
            shape = predictor(arr, rect)
            # dlib reports integer pixel indices; +0.5 moves them to pixel centres in our convention.
            faces.append(np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64) + 0.5)
        return faces


def _check_size(size: Any) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool):
        raise InvalidInputError("size", f"must be an int, got {type(size).__name__}")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise InvalidInputError("size", f"must be in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    return int(size)


def _check_image(image: Any, name: str = "image") -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InvalidInputError(name, f"must be a PIL.Image.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise InvalidInputError(name, f"is empty ({image.width}x{image.height})")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_landmarks(landmarks: Any) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise InvalidInputError("landmarks", f"must have shape (68, 2), got {lm.shape}")
    if not np.all(np.isfinite(lm)):
        raise InvalidInputError("landmarks", "contain NaN or infinite values")
    return lm


def _quad_from_landmarks(lm: np.ndarray) -> np.ndarray:
    """The FFHQ crop square: centred a little below the eyes, oriented by the eye line and eye-mouth axis."""
    eye_left = lm[_LEFT_EYE].mean(axis=0)
    eye_right = lm[_RIGHT_EYE].mean(axis=0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[_MOUTH_LEFT] + lm[_MOUTH_RIGHT]) / 2
    eye_to_mouth = mouth_avg - eye_avg

    # Blend both axes into the crop's x direction so that neither a tilted eye line nor a tilted
    # mouth dominates the orientation.
    x = eye_to_eye - _rot90(eye_to_mouth)
    norm = float(np.hypot(*x))
    scale = max(float(np.hypot(*eye_to_eye)) * 2.0, float(np.hypot(*eye_to_mouth)) * 1.8)
    if norm < 1e-6 or scale < 1e-6:
        raise InvalidInputError("landmarks", "are degenerate (eyes and mouth coincide)")
    x = x / norm * scale
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices start..stop-1 folded into 0..length-1 by mirror reflection (edge pixel not repeated)."""
    idx = np.arange(start, stop)
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    idx = np.mod(idx, period)
    return np.where(idx < length, idx, period - idx)


def _warp(
    image: Image.Image, out_size: tuple[int, int], data: tuple[float, ...], resample: Image.Resampling
) -> Image.Image:
    """PIL affine warp (data maps output -> input coords) done in float and rounded.

    PIL truncates instead of rounding when it interpolates 8-bit images in `transform`, which
    darkens every warp by ~0.5 level on average; a crop pasted back (two warps) came out ~1 level
    darker. Warping each channel in mode "F" and rounding here removes that bias.
    """
    bands = [
        np.asarray(band.convert("F").transform(out_size, Image.Transform.AFFINE, data, resample=resample))
        for band in image.split()
    ]
    arr = np.clip(np.rint(np.stack(bands, axis=-1)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def align_from_landmarks(
    image: Image.Image,
    landmarks: Any,
    size: int = 1024,
    others: list[tuple[int, int, int, int]] | None = None,
) -> AlignedFace:
    """Crop `image` to the FFHQ-style square given one face's 68 landmarks (photo coordinates)."""
    size = _check_size(size)
    rgb = _check_image(image)
    lm = _check_landmarks(landmarks)
    quad = _quad_from_landmarks(lm)

    probe = AlignedFace(Image.new("RGB", (size, size)), lm, quad, rgb.size)
    matrix, origin = probe._affine()
    scale = float(np.hypot(*matrix[:, 0]))  # photo pixels per crop pixel

    # 1) Big faces: box-average by an integer factor first, so the final resampling never shrinks by
    #    2x or more (bicubic alone would alias).
    work = rgb
    k = int(np.floor(scale))
    if k >= 2:
        work = work.reduce(k)
        matrix, origin, scale = matrix / k, origin / k, scale / k

    # 2) Cut out the quad's bounding box (with margin for the filters), mirroring the photo where
    #    the quad runs past its edges so the crop has no black wedges.
    corners = quad / k if k >= 2 else quad
    margin = 3.0 * max(scale, 1.0)
    x0, y0 = np.floor(corners.min(axis=0) - margin).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0) + margin).astype(int)
    arr = np.asarray(work)
    xs = _reflect_indices(x0, x1, arr.shape[1])
    ys = _reflect_indices(y0, y1, arr.shape[0])
    region = Image.fromarray(np.ascontiguousarray(arr[np.ix_(ys, xs)]))
    origin = origin - np.array([x0, y0], dtype=np.float64)

    # 3) Remaining shrink (factor in [1, 2)) by Lanczos, so the rotation below is at ~unit scale.
    if scale > 1.0:
        new_w = max(1, round(region.width / scale))
        new_h = max(1, round(region.height / scale))
        sx, sy = new_w / region.width, new_h / region.height
        region = region.resize((new_w, new_h), Image.Resampling.LANCZOS)
        d = np.diag([sx, sy])
        matrix, origin = d @ matrix, d @ origin

    # 4) Rotate/translate into the size x size crop. PIL's AFFINE data maps output -> input coords.
    data = (matrix[0, 0], matrix[0, 1], origin[0], matrix[1, 0], matrix[1, 1], origin[1])
    crop = _warp(region, (size, size), data, Image.Resampling.BICUBIC)
    return AlignedFace(crop, lm, quad, rgb.size, list(others or []))


def _bbox(lm: np.ndarray) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(lm.min(axis=0)).astype(int)
    x1, y1 = np.ceil(lm.max(axis=0)).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


def _bbox_area(lm: np.ndarray) -> float:
    w, h = lm.max(axis=0) - lm.min(axis=0)
    return float(w * h)


def align_face(image: Image.Image, size: int = 1024, detector: LandmarkDetector | None = None) -> AlignedFace:
    """Detect faces, align the largest one to a size x size crop; other faces are listed in `.others`."""
    size = _check_size(size)
    rgb = _check_image(image)
    if detector is None:
        detector = DlibLandmarkDetector()
    faces = [_check_landmarks(f) for f in detector.detect(np.asarray(rgb))]
    if not faces:
        raise NoFaceFound(
            f"no face found in the {rgb.width}x{rgb.height} image; the default detector needs a "
            "roughly frontal face at least ~40 px wide (try a larger or less cropped photo)"
        )
    faces.sort(key=_bbox_area, reverse=True)
    others = [_bbox(f) for f in faces[1:]]
    return align_from_landmarks(rgb, faces[0], size, others=others)
