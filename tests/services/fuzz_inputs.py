"""Malformed images for the fuzz campaign (tests/services/fuzz_cases.py): bombs, lies in headers, truncations."""

from __future__ import annotations

import io
import random
import struct
import zlib

import grpc
from PIL import Image, PngImagePlugin

from editor_fakes import png_bytes

S = grpc.StatusCode


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims width x height (RGB, 8 bit) over whatever IDAT follows."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _encoded(fmt: str, size: int = 32, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.effect_noise((size, size), 64).convert(mode).save(out, format=fmt)
    return out.getvalue()


def _text_bomb() -> bytes:
    """A tiny PNG with a zTXt chunk that inflates to 20 MB (PIL's text limit is 1 MB)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (20 << 20), zip=True)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


class Inputs:
    """Payloads built once: valid images, broken ones, bombs."""

    def __init__(self) -> None:
        self.png = png_bytes(32)
        self.jpeg = _encoded("JPEG")
        self.webp = _encoded("WEBP")
        png = self.png
        self.bad_images: dict[str, tuple[bytes, frozenset | None]] = {
            "empty": (b"", None),
            "one byte": (b"\x89", None),
            "png signature only": (png[:8], None),
            "gif": (b"GIF89a" + bytes(32), None),
            "text": (b"hello, world", None),
            "header claims 100000x100000": (_png_claiming(100_000, 100_000), frozenset({S.RESOURCE_EXHAUSTED})),
            "header claims 2^31 x 1": (_png_claiming(2**31, 1), None),
            "header claims 0x0": (_png_claiming(0, 0), None),
            # 75 MB of pixels deflated to ~75 kB: refused from the header, before anything is inflated.
            "zlib bomb 5000x5000": (_png_claiming(5000, 5000, zlib.compress(bytes(5000 * 15001), 6)),
                                    frozenset({S.RESOURCE_EXHAUSTED})),
            # 64x64, but its IDAT inflates to 64 MB: a decoder must stop at the rows the header declares.
            "zlib bomb 64x64": (_png_claiming(64, 64, zlib.compress(bytes(64 << 20), 6)), None),
            # Under the pixel limit, but the stream stops short: decoding fails, typed.
            "2048x2048 with 1 kB of IDAT": (_png_claiming(2048, 2048, zlib.compress(bytes(1 << 20))[:1024]), None),
            "ztxt bomb": (_text_bomb(), None),
            "png bad crc": (png[:-9] + bytes(4) + png[-5:], None),
            "png truncated in IDAT": (png[:len(png) // 2], None),
            "jpeg truncated": (self.jpeg[:len(self.jpeg) // 3], None),
            "jpeg soi only": (b"\xff\xd8\xff", None),
            "jpeg zeroed middle": (self.jpeg[:100] + bytes(200) + self.jpeg[300:], None),
            "webp truncated": (self.webp[:30], None),
            "webp header only": (b"RIFF\x00\x00\x00\x00WEBP", None),
            "riff lies about its size": (b"RIFF\xff\xff\xff\xffWEBPVP8 \xff\xff\xff\xff" + bytes(16), None),
            # Over max_image_bytes (16 MiB) and under the channel's 32 MiB: the editor's own limit answers.
            "17 MiB": (b"\x89PNG\r\n\x1a\n" + bytes(17 << 20), frozenset({S.RESOURCE_EXHAUSTED})),
        }

    def corrupted(self, rng: random.Random) -> bytes:
        """A valid PNG/JPEG/WebP with a few bytes after its magic flipped, or cut short."""
        data = bytearray(rng.choice((self.png, self.jpeg, self.webp)))
        if rng.random() < 0.3:
            return bytes(data[:rng.randrange(12, len(data))])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(12, len(data))] = rng.randrange(256)
        return bytes(data)
