"""Uploaded images: one decoder and one set of limits for the editor, the encoder handler and the worker."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from faceedit.errors import InvalidInputError
from services.common.errors import TooLargeError

# What a caller may upload (a photo to invert, a style image to adapt to). The editor checks at the
# edge with these (its settings may lower them); the handler and the worker check again with the same
# numbers, since bytes reach them from a queue or another process.
MAX_UPLOAD_BYTES = 16 << 20
MAX_UPLOAD_PIXELS = 4096 * 4096

_MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",)}
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def image_format_of(data: bytes) -> str | None:
    """'png', 'jpeg' or 'webp' from the magic bytes, else None."""
    for fmt, magics in _MAGIC.items():
        if data.startswith(magics):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check_upload_bytes(data: bytes, field: str, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """Size and format from the bytes alone (no decoding): the image's format."""
    if not data:
        raise InvalidInputError(field, "is empty")
    if len(data) > max_bytes:
        raise TooLargeError(field, f"{len(data)} bytes exceeds the limit of {max_bytes}")
    fmt = image_format_of(data)
    if fmt is None:
        raise InvalidInputError(field, "is not a PNG, JPEG or WebP image")
    return fmt


def decode_upload(data: bytes, field: str, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[Image.Image, str]:
    """Reject oversize, unknown, corrupt and decompression-bomb images before anything else sees them;
    the decoded RGB image and its format. The pixel count is read from the header, before the pixels."""
    fmt = check_upload_bytes(data, field, max_bytes)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # PIL refuses a header that claims over ~179 Mpx at all
        raise TooLargeError(field, f"declares too many pixels (the limit is {max_pixels})") from None
    except _DECODE_ERRORS:
        raise InvalidInputError(field, f"cannot be decoded as {fmt.upper()} (corrupt or truncated)") from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooLargeError(field, f"{width}x{height} pixels exceeds the limit of {max_pixels}")
    try:
        image.load()  # a truncated or corrupt file fails here
        return image.convert("RGB"), fmt
    except (*_DECODE_ERRORS, Image.DecompressionBombError):
        raise InvalidInputError(field, f"cannot be decoded as {fmt.upper()} (corrupt or truncated)") from None


def center_square(image: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, then resize to size×size: a photo that was not aligned keeps its
    proportions instead of being squashed."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
