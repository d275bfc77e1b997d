"""Tests for faceedit.align: FFHQ-style alignment from synthetic landmarks, paste-back, and the dlib path."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from faceedit.align import (
    AlignedFace,
    DlibLandmarkDetector,
    LandmarkDetector,
    align_face,
    align_from_landmarks,
)
from faceedit.errors import FaceEditError, InvalidInputError, NoFaceFound

# Synthetic face in its own frame (y down): eye centres at (+-EYE/2, 0), mouth corners at (+-MOUTH/2, DROP).
EYE, MOUTH, DROP = 60.0, 50.0, 66.0
# FFHQ recipe for that face: half-side of the quad = max(2*EYE, 1.8*DROP); centre 0.1*DROP below the eyes.
HALF = max(2 * EYE, 1.8 * DROP)


def _ring(centre: tuple[float, float], rx: float, ry: float, n: int, start: float = 0.0) -> np.ndarray:
    t = start + np.arange(n) * 2 * np.pi / n
    return np.stack([centre[0] + rx * np.cos(t), centre[1] + ry * np.sin(t)], axis=1)


def synthetic_face(
    centre: tuple[float, float] = (200.0, 200.0), angle_deg: float = 0.0, scale: float = 1.0
) -> np.ndarray:
    """68 landmarks in iBUG order: eyes at centre +- scale*(EYE/2, 0), rotated by angle_deg about `centre`."""
    pts = np.zeros((68, 2))
    # jaw (only its extent matters here)
    pts[0:17] = np.stack([np.linspace(-75, 75, 17), 20 + 90 * np.sin(np.linspace(0, np.pi, 17))], axis=1)
    pts[17:22] = np.stack([np.linspace(-55, -15, 5), np.full(5, -25)], axis=1)  # brows
    pts[22:27] = np.stack([np.linspace(15, 55, 5), np.full(5, -25)], axis=1)
    pts[27:36] = np.stack([np.zeros(9), np.linspace(5, 40, 9)], axis=1)  # nose
    pts[36:42] = _ring((-EYE / 2, 0), 12, 5, 6)  # a symmetric hexagon: its mean is the centre
    pts[42:48] = _ring((EYE / 2, 0), 12, 5, 6)
    mouth = _ring((0, DROP), MOUTH / 2, 8, 12, start=np.pi)  # index 0 -> left corner, 6 -> right corner
    pts[48:60] = mouth
    pts[60:68] = _ring((0, DROP), MOUTH / 3, 4, 8, start=np.pi)
    assert np.allclose(pts[48], (-MOUTH / 2, DROP)) and np.allclose(pts[54], (MOUTH / 2, DROP))
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return pts * scale @ rot.T + np.asarray(centre)


def expected_eyes_in_crop(size: int) -> np.ndarray:
    """Canonical crop positions of the two eye centres, from the recipe (independent of rotation/scale)."""
    k = size / (2 * HALF)  # crop pixels per face-frame unit
    y = size / 2 - 0.1 * DROP * k
    return np.array([[size / 2 - EYE / 2 * k, y], [size / 2 + EYE / 2 * k, y]])


def eye_centres(lm: np.ndarray) -> np.ndarray:
    return np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)])


class FakeDetector:
    """Pluggable detector returning fixed landmark sets and recording what it was given."""

    def __init__(self, faces: list[np.ndarray]):
        self.faces = faces
        self.seen: list[tuple[tuple[int, ...], np.dtype]] = []

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        self.seen.append((image.shape, image.dtype))
        return [f.copy() for f in self.faces]


def smooth_photo(w: int = 400, h: int = 400) -> Image.Image:
    """A smooth but non-constant photo, so resampling errors show up without texture aliasing dominating."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 80 * np.sin(xx / 37.0) * np.cos(yy / 29.0)
    g = 60 + 150 * xx / w
    b = 60 + 150 * yy / h
    return Image.fromarray(np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8))


def marked_photo(lm: np.ndarray, radius: float) -> Image.Image:
    """Grey photo with an anti-aliased red disc on the left eye centre and a blue one on the right."""
    yy, xx = np.mgrid[0:400, 0:400].astype(np.float64) + 0.5  # pixel centres
    px = np.full((400, 400, 3), 90.0)
    for (cx, cy), colour in zip(eye_centres(lm), [(255, 0, 0), (0, 0, 255)]):
        cover = np.clip(radius + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1)[..., None]
        px = px * (1 - cover) + np.array(colour, dtype=float) * cover
    return Image.fromarray(np.round(px).astype(np.uint8))


def centroid(weights: np.ndarray) -> np.ndarray:
    """Weighted centroid in align's convention (pixel centres at +0.5)."""
    yy, xx = np.mgrid[0 : weights.shape[0], 0 : weights.shape[1]]
    w = np.clip(weights, 0, None)
    return np.array([(w * (xx + 0.5)).sum(), (w * (yy + 0.5)).sum()]) / w.sum()


# --- alignment geometry -------------------------------------------------------------------------


def test_fake_detector_satisfies_protocol() -> None:
    assert isinstance(FakeDetector([]), LandmarkDetector)
    assert isinstance(DlibLandmarkDetector(), LandmarkDetector)


@pytest.mark.parametrize("size", [64, 256])
def test_crop_is_size_square_rgb(size: int) -> None:
    lm = synthetic_face(angle_deg=20)
    det = FakeDetector([lm])
    photo = smooth_photo(400, 300).convert("L")  # a grey photo is converted, not rejected
    out = align_face(photo, size=size, detector=det)
    assert isinstance(out, AlignedFace)
    assert out.image.size == (size, size) and out.image.mode == "RGB"
    assert out.photo_size == (400, 300)
    assert out.quad.shape == (4, 2) and out.landmarks.shape == (68, 2)
    np.testing.assert_allclose(out.landmarks, lm)
    assert out.others == []
    assert det.seen == [((300, 400, 3), np.dtype(np.uint8))]


@pytest.mark.parametrize("angle", [0.0, 20.0, -35.0])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.5])
def test_eyes_land_at_canonical_positions(angle: float, scale: float) -> None:
    size = 128
    lm = synthetic_face(angle_deg=angle, scale=scale)
    out = align_from_landmarks(smooth_photo(), lm, size)
    eyes = out.to_crop(eye_centres(lm))
    np.testing.assert_allclose(eyes, expected_eyes_in_crop(size), atol=1e-6)
    # The stated invariants, independently of the formula above: level and mirror-symmetric.
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6
    assert abs((eyes[0, 0] + eyes[1, 0]) / 2 - size / 2) < 1e-6
    # The quad is a square of side 2*HALF*scale, rotated by the face's angle.
    sides = np.linalg.norm(np.roll(out.quad, -1, axis=0) - out.quad, axis=1)
    np.testing.assert_allclose(sides, 2 * HALF * scale, rtol=1e-9)
    top = out.quad[3] - out.quad[0]
    assert np.isclose(np.degrees(np.arctan2(top[1], top[0])), angle, atol=1e-6)


@pytest.mark.parametrize(
    "size,scale",
    # photo px per crop px: 0.94 (upsample), 1.5 (Lanczos), 3.75 and 5 (integer reduce first)
    [(256, 1.0), (160, 1.0), (64, 1.0), (96, 2.0)],
)
def test_crop_pixels_follow_the_mapping(size: int, scale: float) -> None:
    """The warped image itself (not just to_crop) puts the eye markers at the canonical positions."""
    lm = synthetic_face(angle_deg=20, scale=scale)
    out = align_from_landmarks(marked_photo(lm, radius=6 * scale), lm, size)
    px = np.asarray(out.image).astype(np.float64)
    # Differences against green cancel bicubic ringing around the other disc (grey background: 0).
    red = px[..., 0] - px[..., 1]
    blue = px[..., 2] - px[..., 1]
    found = np.stack([centroid(red), centroid(blue)])
    np.testing.assert_allclose(found, expected_eyes_in_crop(size), atol=0.1)  # measured ~0.02


def test_round_trip_and_corners() -> None:
    lm = synthetic_face(angle_deg=20, scale=1.3)
    out = align_from_landmarks(smooth_photo(), lm, 200)
    rng = np.random.default_rng(0)
    p = rng.uniform(-50, 250, size=(100, 2))
    np.testing.assert_allclose(out.to_crop(out.to_photo(p)), p, atol=1e-9)
    np.testing.assert_allclose(out.to_photo(out.to_crop(p)), p, atol=1e-9)
    corners = np.array([[0, 0], [0, 200], [200, 200], [200, 0]], dtype=float)
    np.testing.assert_allclose(out.to_photo(corners), out.quad, atol=1e-9)
    assert out.to_photo([100.0, 100.0]).shape == (2,)  # single points work too


def test_face_near_the_border_is_padded_not_black() -> None:
    lm = synthetic_face(centre=(40.0, 60.0), angle_deg=10)  # quad runs well past the top-left corner
    photo = Image.new("RGB", (400, 400), (200, 150, 100))
    out = align_from_landmarks(photo, lm, 64)
    assert out.quad.min() < 0
    px = np.asarray(out.image).astype(int)
    assert np.abs(px - [200, 150, 100]).max() <= 1  # mirrored content, no fill colour wedges


def test_several_faces_largest_chosen_others_listed() -> None:
    small = synthetic_face(centre=(80.0, 80.0), scale=0.4)
    big = synthetic_face(centre=(250.0, 250.0), angle_deg=-10, scale=1.1)
    medium = synthetic_face(centre=(330.0, 70.0), scale=0.6)
    out = align_face(smooth_photo(), size=64, detector=FakeDetector([small, big, medium]))
    np.testing.assert_allclose(out.landmarks, big)
    assert len(out.others) == 2
    # Largest first; each box encloses that face's landmarks.
    for box, lm in zip(out.others, [medium, small]):
        x0, y0, x1, y1 = box
        assert all(isinstance(v, int) for v in box)
        assert x0 <= lm[:, 0].min() and lm[:, 0].max() <= x1
        assert y0 <= lm[:, 1].min() and lm[:, 1].max() <= y1
        assert x1 - x0 <= np.ptp(lm[:, 0]) + 2 and y1 - y0 <= np.ptp(lm[:, 1]) + 2


def test_no_face_raises_with_image_size() -> None:
    with pytest.raises(NoFaceFound, match="400x300"):
        align_face(smooth_photo(400, 300), size=64, detector=FakeDetector([]))


@pytest.mark.parametrize("size", [8, 15, 4097, 1.5, "256", True, None])
def test_bad_size_rejected(size: object) -> None:
    with pytest.raises(InvalidInputError) as e:
        align_face(smooth_photo(), size=size, detector=FakeDetector([synthetic_face()]))  # type: ignore
    assert e.value.field == "size"


def test_bad_image_and_landmarks_rejected() -> None:
    with pytest.raises(InvalidInputError) as e:
        align_face(np.zeros((10, 10, 3), np.uint8), size=64, detector=FakeDetector([]))  # type: ignore
    assert e.value.field == "image"
    with pytest.raises(InvalidInputError) as e:
        align_from_landmarks(smooth_photo(), np.zeros((5, 2)), 64)
    assert e.value.field == "landmarks"
    with pytest.raises(InvalidInputError) as e:
        align_from_landmarks(smooth_photo(), np.full((68, 2), 7.0), 64)  # all points coincide
    assert e.value.field == "landmarks"
    with pytest.raises(InvalidInputError) as e:  # a broken detector is reported, not crashed on
        align_face(smooth_photo(), size=64, detector=FakeDetector([np.full((68, 2), np.nan)]))
    assert e.value.field == "landmarks"


# --- dlib -----------------------------------------------------------------------------------------

HAVE_DLIB = importlib.util.find_spec("dlib") is not None
HAVE_MODELS = importlib.util.find_spec("face_recognition_models") is not None


def test_missing_dlib_names_the_extra_and_the_licence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(FaceEditError) as e:
        DlibLandmarkDetector().detect(np.zeros((32, 32, 3), np.uint8))
    msg = str(e.value)
    assert "pip install 'faceedit[align]'" in msg and "300-W" in msg and "commercial" in msg


def test_align_face_defaults_to_dlib_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(FaceEditError, match="faceedit\\[align\\]"):
        align_face(smooth_photo(), size=64)


needs_dlib = pytest.mark.skipif(
    not (HAVE_DLIB and HAVE_MODELS),
    reason="dlib / face_recognition_models not installed (pip install 'faceedit[align]')",
)
BACKGROUND = (70, 90, 120)


def drawn_face(width: int = 400) -> Image.Image:
    """A flat cartoon face (oval, hair, brows, eyes with near-black pupils, nose, mouth), lightly blurred.

    dlib's HOG detector finds it and places plausible landmarks (eye centres within ~10 px of the
    drawn ones at 400 px), which gives an offline end-to-end check without shipping a photo.
    """
    img = Image.new("RGB", (width, width), BACKGROUND)
    d = ImageDraw.Draw(img)
    s = width / 400

    def oval(box: tuple[float, float, float, float], fill: tuple[int, int, int]) -> None:
        d.ellipse([v * s for v in box], fill=fill)

    skin = (225, 180, 150)
    oval((95, 50, 305, 360), skin)
    d.rectangle([170 * s, 330 * s, 230 * s, 400 * s], fill=(215, 170, 140))  # neck
    oval((60, 20, 340, 150), (60, 40, 30))  # hair
    oval((100, 90, 300, 200), skin)  # forehead under the hair line
    for cx in (155, 245):
        brow = [(cx - 35, 165), (cx, 155), (cx + 35, 165), (cx + 35, 172), (cx - 35, 170)]
        d.polygon([(x * s, y * s) for x, y in brow], fill=(70, 45, 35))
        oval((cx - 28, 185, cx + 28, 210), (250, 250, 250))  # eye white
        oval((cx - 11, 186, cx + 11, 209), (60, 40, 30))  # iris
        oval((cx - 5, 192, cx + 5, 203), (10, 10, 10))  # pupil: the only near-black pixels
    nose = [(200, 205), (180, 265), (200, 275), (220, 265)]
    d.polygon([(x * s, y * s) for x, y in nose], fill=(200, 150, 125))
    oval((180, 262, 220, 280), (170, 120, 100))
    d.chord([160 * s, 285 * s, 240 * s, 325 * s], 0, 180, fill=(160, 70, 70))  # mouth
    d.line([160 * s, 305 * s, 240 * s, 305 * s], fill=(110, 40, 40), width=max(1, round(3 * s)))
    return img.filter(ImageFilter.GaussianBlur(2 * s))


@needs_dlib
def test_dlib_finds_no_face_in_blank_grey() -> None:
    with pytest.raises(NoFaceFound, match="320x240"):
        grey = Image.new("RGB", (320, 240), (128, 128, 128))
        align_face(grey, size=64, detector=DlibLandmarkDetector(upsample=0))


@needs_dlib
@pytest.mark.parametrize("angle", [20.0, -20.0])
def test_dlib_aligns_a_rotated_drawn_face(angle: float) -> None:
    photo = drawn_face(400).rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=BACKGROUND)
    before = np.argwhere(np.asarray(photo).max(axis=-1) < 35)  # pupil pixels, (row, col)
    left, right = before[before[:, 1] < 200], before[before[:, 1] >= 200]
    assert abs(left[:, 0].mean() - right[:, 0].mean()) > 25  # the photo's eye line really is tilted

    out = align_face(photo, size=256)  # default detector: dlib
    assert out.image.size == (256, 256) and out.others == []
    dark = np.argwhere(np.asarray(out.image).max(axis=-1) < 35)
    left, right = dark[dark[:, 1] < 128], dark[dark[:, 1] >= 128]
    assert len(left) > 10 and len(right) > 10
    # Measured: pupils level within 2 px, their midpoint within 1 px of the centre line.
    assert abs(left[:, 0].mean() - right[:, 0].mean()) < 3
    assert abs((left[:, 1].mean() + right[:, 1].mean()) / 2 + 0.5 - 128) < 3


@needs_dlib
def test_dlib_two_faces_largest_aligned_other_listed() -> None:
    photo = Image.new("RGB", (640, 400), BACKGROUND)
    photo.paste(drawn_face(400), (0, 0))
    photo.paste(drawn_face(200), (420, 100))
    out = align_face(photo, size=64, detector=DlibLandmarkDetector())
    assert out.landmarks[:, 0].max() < 400  # the big face
    assert len(out.others) == 1
    x0, y0, x1, y1 = out.others[0]
    assert 420 <= x0 < x1 <= 620 and 100 <= y0 < y1 <= 300
