"""The one upload decoder (services/common/uploads.py) the editor, the encoder handler and the worker share."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from faceedit.errors import InvalidInputError
from services.common.errors import TooLargeError
from services.common.uploads import MAX_UPLOAD_PIXELS, center_square, decode_upload, without_metadata


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_good_image_decodes_to_rgb_with_its_format(fmt):
    image, found = decode_upload(encoded(Image.new("L", (40, 30), 128), fmt), "image.data")
    assert found == fmt.lower() and image.mode == "RGB" and image.size == (40, 30)


@pytest.mark.parametrize("data, error, problem", [
    (b"", InvalidInputError, "is empty"),
    (b"GIF89a" + b"\0" * 64, InvalidInputError, "is not a PNG, JPEG or WebP"),
    (encoded(Image.new("RGB", (32, 32)))[:60], InvalidInputError, "cannot be decoded as PNG"),
    (encoded(Image.new("1", (8000, 6000))), TooLargeError, "pixels exceeds the limit"),  # 48 Mpx in a few KB
])
def test_bad_uploads_are_typed_and_name_the_field(data, error, problem):
    with pytest.raises(error) as info:
        decode_upload(data, "style_image.data")
    assert info.value.field == "style_image.data" and problem in info.value.problem


def test_limits_are_checked_before_decoding():
    with pytest.raises(TooLargeError, match="bytes exceeds the limit of 100"):
        decode_upload(encoded(Image.new("RGB", (64, 64), (9, 9, 9))), "image", max_bytes=100)
    assert MAX_UPLOAD_PIXELS == 4096 * 4096


def test_center_square_keeps_proportions():
    wide = Image.new("RGB", (300, 100), (0, 0, 0))
    wide.paste((255, 255, 255), (100, 0, 200, 100))  # the middle third is white
    square = center_square(wide, 50)
    assert square.size == (50, 50) and square.getextrema() == ((255, 255),) * 3


GPS_IFD, ORIENTATION, MAKE = 0x8825, 0x0112, 0x010F


def phone_photo(fmt: str = "JPEG", orientation: int = 6) -> tuple[bytes, np.ndarray]:
    """A photo as a phone writes it: the sensor's pixels (wider than high) with EXIF saying "turn 90°
    clockwise", the camera and where it was taken; and the pixels a viewer shows (upright)."""
    rng = np.random.default_rng(0)
    sensor = np.kron(rng.integers(0, 256, (6, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 80 x 48, blocky
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "PhoneCo"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 24.0)})
    out = io.BytesIO()
    options = {"quality": 95, "comment": b"holiday"} if fmt == "JPEG" else {}
    Image.fromarray(sensor).save(out, format=fmt, exif=exif.tobytes(), **options)
    shown = np.rot90(sensor, k=-1) if orientation == 6 else sensor  # EXIF 6: rotate 90° clockwise to view
    return out.getvalue(), shown


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_upload_is_decoded_upright_as_a_viewer_shows_it(fmt):
    data, shown = phone_photo(fmt)
    image, _ = decode_upload(data, "image.data")
    assert image.size == (48, 80)  # turned: higher than wide
    error = np.abs(np.asarray(image, np.int16) - shown)
    assert error.max() == 0 if fmt == "PNG" else error.mean() < 15  # lossy: compression error (~7.5); turned wrong: ~77


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_kept_photo_has_the_same_upright_pixels_and_no_metadata(fmt):
    data, _ = phone_photo(fmt)
    upright, found = decode_upload(data, "image.data")
    kept = without_metadata(data, found, upright)
    again, kept_format = decode_upload(kept, "photo")
    assert kept_format == found
    assert np.array_equal(np.asarray(again), np.asarray(upright))  # lossless: the same picture, upright
    with Image.open(io.BytesIO(kept)) as image:
        exif = image.getexif()
        assert MAKE not in exif and not exif.get_ifd(GPS_IFD)  # no camera, no position
        assert "comment" not in image.info
        assert set(exif) <= {ORIENTATION}
    assert b"PhoneCo" not in kept and b"holiday" not in kept


def test_a_kept_jpeg_keeps_its_compressed_data_and_drops_pictures_appended_after_its_end():
    data, _ = phone_photo("JPEG", orientation=1)
    appended = data + encoded(Image.new("RGB", (16, 16), (200, 0, 0)), "JPEG")  # e.g. a gain map or depth map
    kept = without_metadata(appended, "jpeg", decode_upload(appended, "image.data")[0])
    start = data.index(b"\xff\xda")  # the scan (start of scan to end of image) is copied byte for byte
    assert kept.endswith(data[start:]) and len(kept) < len(data)
    assert Image.open(io.BytesIO(kept)).getexif() == {}


def test_a_jpeg_that_ends_inside_a_scan_is_refused_when_kept():
    data, _ = phone_photo("JPEG", orientation=1)
    with pytest.raises(InvalidInputError, match="well-formed JPEG"):
        without_metadata(data[:-2], "jpeg", Image.new("RGB", (1, 1)))


def _exif_with_one_tag(tag: int, typ: int, value: bytes) -> bytes:
    """A big-endian EXIF block with one IFD0 entry of TIFF type `typ`, value stored after the IFD."""
    import struct

    ifd = struct.pack(">HHHII", 1, tag, typ, 1, 26) + struct.pack(">I", 0)  # one entry, its value at offset 26
    return b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd + value


def test_an_orientation_written_as_a_rational_is_honoured_and_kept():
    import struct

    sensor = np.zeros((48, 80, 3), np.uint8)
    sensor[:, :40] = 255
    out = io.BytesIO()
    Image.fromarray(sensor).save(out, format="JPEG", exif=_exif_with_one_tag(ORIENTATION, 5, struct.pack(">II", 6, 1)))
    upright, fmt = decode_upload(out.getvalue(), "image.data")
    assert upright.size == (48, 80)
    again, _ = decode_upload(without_metadata(out.getvalue(), fmt, upright), "photo")
    assert np.array_equal(np.asarray(again), np.asarray(upright))


def test_an_exif_block_pil_cannot_read_leaves_the_photo_as_stored(monkeypatch):
    import struct

    data, _ = phone_photo("JPEG")

    def broken(self):
        raise struct.error("unpack requires a buffer of 4 bytes")  # what PIL raises on some corrupt EXIF

    monkeypatch.setattr(Image.Image, "getexif", broken)
    image, fmt = decode_upload(data, "image.data")
    assert image.size == (80, 48)  # not turned: the orientation cannot be read
    kept = without_metadata(data, fmt, image)
    assert b"PhoneCo" not in kept


def test_stray_bytes_between_jpeg_segments_are_skipped_as_libjpeg_does():
    data, _ = phone_photo("JPEG", orientation=1)
    app0_end = 4 + int.from_bytes(data[4:6], "big")  # SOI, then the JFIF segment
    damaged = data[:app0_end] + b"\x00junk" + data[app0_end:]
    image, fmt = decode_upload(damaged, "image.data")
    kept = without_metadata(damaged, fmt, image)
    assert np.array_equal(np.asarray(decode_upload(kept, "photo")[0]), np.asarray(image))
