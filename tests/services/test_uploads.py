"""The one upload decoder (services/common/uploads.py) the editor, the encoder handler and the worker share."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from faceedit.errors import InvalidInputError
from services.common.errors import TooLargeError
from services.common.uploads import MAX_UPLOAD_PIXELS, center_square, decode_upload


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
