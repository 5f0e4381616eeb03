"""Reading an image file a technician hands the vision tools: its size from the header first, so a small file that
claims a huge picture is refused before anything decodes it (a 631-byte JPEG claiming 32000x32000 took 6 GB)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

MAX_DECODE_PIXELS = 50_000_000
"""The largest image the commissioning tools decode (an 8K frame is 33 MP). OpenCV's own default is 2^30
pixels: a 631-byte JPEG whose header claims 32000x32000 would make it allocate 3-6 GB."""


def limit_decoding() -> None:
    """OpenCV's limit for the formats whose size :func:`header_size` cannot read. OpenCV reads
    ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when cv2 is imported: call this before anything imports it."""
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_DECODE_PIXELS))


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as a JPEG, PNG, GIF, BMP or WebP header claims them, without decoding; None for
    another format or a header cut short."""
    try:
        if data[:2] == b"\xff\xd8":  # JPEG: the first SOFn segment holds the frame size
            i = 2
            while i + 4 <= len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                    continue
                if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
                    i += 2
                    continue
                if marker in (0xD9, 0xDA):  # end, or scan data before any frame header
                    return None
                (length,) = struct.unpack_from(">H", data, i + 2)
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack_from(">HH", data, i + 5)
                    return w, h
                if length < 2:
                    return None
                i += 2 + length
            return None
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack_from(">II", data, 16)
            return w, h
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack_from("<HH", data, 6)
            return w, h
        if data[:2] == b"BM":
            (dib,) = struct.unpack_from("<I", data, 14)
            if dib == 12:
                w, h = struct.unpack_from("<HH", data, 18)
                return w, h
            w, h = struct.unpack_from("<ii", data, 18)
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return (w, h) if len(data) >= 30 else None
            if chunk == b"VP8 ":
                w, h = struct.unpack_from("<HH", data, 26)
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                (bits,) = struct.unpack_from("<I", data, 21)
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    except struct.error:  # cut short
        return None
    return None


def decode_image(data: bytes) -> tuple[Any, str | None]:
    """An image file's bytes decoded as OpenCV would (IMREAD_UNCHANGED): (array, None), or (None, why not).
    A header claiming more than MAX_DECODE_PIXELS is refused before anything is allocated."""
    limit_decoding()
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_DECODE_PIXELS:
        return None, (f"the image claims {size[0]}x{size[1]} pixels, more than the {MAX_DECODE_PIXELS // 1_000_000} "
                      "MP these tools decode")
    import cv2
    import numpy as np

    try:
        frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    except cv2.error as exc:  # OpenCV's own limit, or a decoder refusing the file
        return None, f"OpenCV cannot decode it: {str(exc).strip().splitlines()[-1][:200]}"
    if frame is None:
        return None, "not an image OpenCV can decode"
    return frame, None


def read_image(path: Path) -> tuple[Any, str | None]:
    """:func:`decode_image` of a file; (None, why) if it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    return decode_image(data)
