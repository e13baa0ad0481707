"""Detect a file's format from its first bytes, not its name, and read declared image sizes.

The size readers look only at the PNG ``IHDR`` chunk and the JPEG frame header (``SOFn``), so a
decompression bomb (a few bytes declaring 100,000 x 100,000 pixels) is refused before any decoder
allocates memory for it. :func:`check_declared_size` is shared with the DICOM reader (Rows x Columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.errors import CorruptImageError, ImageTooLargeError

MAX_PIXELS = 100_000_000  # about 10,000 x 10,000; larger declared sizes are refused before decoding
MAX_SIDE = 30_000         # no radiograph detector is wider than this; beyond it is a bomb or garbage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# JPEG start-of-frame markers (ITU T.81 table B.1): C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                          0xCF, 0xF7})  # F7 = SOF55, JPEG-LS (ITU T.87)
_STANDALONE_MARKERS = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7


@dataclass(frozen=True)
class DeclaredSize:
    """What an image header promises, read without decoding."""

    width: int
    height: int
    bit_depth: int          # bits per sample: PNG bit depth, JPEG sample precision
    kind: str = ""          # PNG colour type ("gray", "rgb", "palette", "gray+alpha", "rgba") or
    #                         JPEG frame marker ("SOF0" baseline, "SOF3" lossless, "SOF55" JPEG-LS...)

    @property
    def has_alpha(self) -> bool:
        return self.kind in ("gray+alpha", "rgba")


def sniff_format(data: bytes) -> str:
    """Return "dicom", "jpeg", "png", or a short description of what the content looks like."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if _looks_like_bare_dicom(data):
        return "dicom"
    return _describe_other(data)


def _describe_other(data: bytes) -> str:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()   # a UTF-8 BOM, then blanks
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "HTML text"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "XML/SVG text"
    if data[:4] == b"%PDF":
        return "a PDF document"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "a ZIP archive"
    if data[:2] == b"\x1f\x8b":
        return "a gzip archive"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF, which is not supported"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF, which is not supported"
    if data[:2] == b"BM":
        return "BMP, which is not supported"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP, which is not supported"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF, which is not supported"
    if data[:4] == b"\xff\x4f\xff\x51" or data[4:12] == b"jP  \r\n\x87\n":
        return "a bare JPEG 2000 file, which is not supported (JPEG 2000 inside DICOM is)"
    if _is_text(data[:1024]):
        return "plain text"
    return "unrecognised binary content"


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3   # only a multi-byte character cut at the end


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM file written without the 128-byte preamble starts with a group 0x0002 or 0x0008 tag."""
    if len(data) < 8:
        return False
    group = int.from_bytes(data[0:2], "little")
    element = int.from_bytes(data[2:4], "little")
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    vr = data[4:6]
    explicit = vr.isalpha() and vr.isupper()
    implicit_len = int.from_bytes(data[4:8], "little")
    return explicit or implicit_len < 1 << 16


# --------------------------------------------------------------------------------------------
# Declared sizes (decompression-bomb guard)

_PNG_COLOUR_TYPES = {0: "gray", 2: "rgb", 3: "palette", 4: "gray+alpha", 6: "rgba"}


def png_declared_size(data: bytes, name: str) -> DeclaredSize:
    """Width, height, bit depth and colour type from the PNG ``IHDR`` chunk (always the first)."""
    if len(data) < 33 or data[12:16] != b"IHDR" or int.from_bytes(data[8:12], "big") != 13:
        raise CorruptImageError(name, "the PNG header (IHDR chunk) is missing or truncated")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    kind = _PNG_COLOUR_TYPES.get(data[25])
    if kind is None:
        raise CorruptImageError(name, f"the PNG header declares an invalid colour type {data[25]}")
    return DeclaredSize(width=width, height=height, bit_depth=data[24], kind=kind)


def jpeg_declared_size(data: bytes, name: str) -> DeclaredSize:
    """Width, height and precision from the first JPEG frame header (``SOFn``), skipping APPn/EXIF."""
    marker, offset = find_jpeg_frame_header(data)
    if marker is None:
        raise CorruptImageError(name, "the JPEG data has no frame header (SOF marker): corrupt or truncated")
    precision = data[offset + 2]
    height = int.from_bytes(data[offset + 3:offset + 5], "big")
    width = int.from_bytes(data[offset + 5:offset + 7], "big")
    label = "SOF55" if marker == 0xF7 else f"SOF{marker - 0xC0}"
    return DeclaredSize(width=width, height=height, bit_depth=precision, kind=label)


def find_jpeg_frame_header(data: bytes) -> tuple[Optional[int], int]:
    """Return the SOF marker byte and the offset of its segment length, or ``(None, -1)``.

    Walks marker segments from SOI; stops at the first frame header, or at SOS/EOI/garbage.
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return None, -1
    i = 2
    while i < n:
        if data[i] != 0xFF:
            return None, -1
        while i < n and data[i] == 0xFF:   # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA) or i + 2 > n:   # EOI or SOS before any frame header
            break
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            break
        if marker in _SOF_MARKERS:
            return (marker, i) if i + 7 <= n else (None, -1)
        i += length
    return None, -1


def check_declared_size(name: str, width: int, height: int, where: str) -> None:
    """Refuse zero or bomb-sized declared dimensions before anything is allocated."""
    if width <= 0 or height <= 0:
        raise CorruptImageError(name, f"the {where} declares an empty image ({width} x {height} pixels)")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            name,
            f"the {where} declares {width} x {height} pixels ({width * height / 1e6:,.1f} megapixels); "
            f"the limit is {MAX_PIXELS // 1_000_000} megapixels and {MAX_SIDE:,} pixels a side "
            "(refused before decoding, as a decompression-bomb guard)")
