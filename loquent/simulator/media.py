"""Content for media attached to simulated messages.

The simulator never fetches the URLs it is given (it runs offline); it makes up small content of
a plausible type instead: text for ``.txt``, a vCard for ``.vcf``, otherwise a 1x1 PNG.
"""

from __future__ import annotations

import struct
import zlib
from urllib.parse import urlsplit


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def tiny_png(rgb: tuple[int, int, int] = (242, 92, 84)) -> bytes:
    """A valid 1x1 RGB PNG."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes([0, *rgb]))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def synthesize(url: str) -> tuple[str, bytes]:
    """``(content_type, content)`` standing in for the media at ``url``."""
    name = urlsplit(url).path.rsplit("/", 1)[-1].lower()
    extension = name.rsplit(".", 1)[-1] if "." in name else ""
    if extension == "txt":
        return "text/plain", f"Simulated media for {url}\n".encode()
    if extension == "vcf":
        card = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Simulated Contact\r\nEND:VCARD\r\n"
        return "text/vcard", card.encode()
    return "image/png", tiny_png()
