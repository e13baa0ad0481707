"""Detect a file's format from its first bytes, not its name, and read declared image sizes.

The size readers look only at the PNG ``IHDR`` chunk, the JPEG frame header (``SOFn``) and the
JPEG 2000 ``SIZ`` segment, so a decompression bomb (a few bytes declaring 100,000 x 100,000 pixels)
is refused before any decoder allocates memory for it. :func:`check_declared_size` is shared with
the DICOM reader (Rows x Columns), which also checks compressed fragments with
``parse_jpeg_header(strict=True)`` before a codec sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.errors import CorruptImageError, ImageTooLargeError

from engine.inputs.limits import MAX_PIXELS, MAX_SIDE  # declared sizes beyond these are refused before decoding

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
    try:
        header = parse_jpeg_header(data)
    except ValueError as exc:
        raise CorruptImageError(name, f"the JPEG header is corrupt or truncated ({exc})") from None
    return DeclaredSize(width=header.width, height=header.height, bit_depth=header.precision,
                        kind=header.process)


@dataclass(frozen=True)
class JpegHeader:
    """The frame header (SOFn) of a JPEG or JPEG-LS stream."""

    marker: int
    precision: int
    height: int
    width: int
    components: int

    @property
    def process(self) -> str:
        return "SOF55 (JPEG-LS)" if self.marker == 0xF7 else f"SOF{self.marker - 0xC0}"


def parse_jpeg_header(data: bytes, *, strict: bool = False) -> JpegHeader:
    """Walk the marker segments after SOI and return the frame header; raise ValueError if broken.

    Lenient (default, for .jpg files): extraneous bytes between segments are skipped as libjpeg
    does, and the walk stops at the frame header. Strict (for DICOM fragments, before the codec
    sees them): every segment must follow the previous one, Huffman tables must be consistent, and
    a scan header (SOS) must follow the frame header. Some decoders (GDCM) crash the process on
    exactly these defects instead of raising.
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise ValueError("no start-of-image marker")
    header: Optional[JpegHeader] = None
    i = 2
    while i < n:
        if data[i] != 0xFF:
            if strict:
                raise ValueError(f"expected a marker at byte {i}, found 0x{data[i]:02X}")
            i = data.find(b"\xff", i)   # libjpeg: "extraneous bytes before marker"
            if i < 0:
                break
        while i < n and data[i] == 0xFF:   # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker == 0x00 or marker == 0xD9:
            raise ValueError(f"unexpected marker 0xFF{marker:02X} before the image data")
        if i + 2 > n:
            break
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2 or i + length > n:
            raise ValueError(f"marker 0xFF{marker:02X} at byte {i - 2} has an invalid length {length}")
        segment = data[i + 2:i + length]
        if marker in _SOF_MARKERS:
            if header is not None:
                raise ValueError("two frame headers")
            header = _frame_header(marker, segment)
            if not strict:
                return header
        elif marker == 0xC4 and strict:
            _check_huffman_tables(segment)
        elif marker == 0xDA:
            if header is None:
                raise ValueError("scan header (SOS) before any frame header (SOF)")
            return header
        i += length
    if header is None:
        raise ValueError("no frame header (SOF marker)")
    raise ValueError("no scan header (SOS marker)")


def _frame_header(marker: int, segment: bytes) -> JpegHeader:
    if len(segment) < 6:
        raise ValueError("frame header too short")
    precision, components = segment[0], segment[5]
    if not 2 <= precision <= 16:
        raise ValueError(f"sample precision {precision} bits is impossible")
    if not 1 <= components <= 4 or len(segment) < 6 + 3 * components:
        raise ValueError(f"frame header declares {components} components")
    return JpegHeader(marker=marker, precision=precision, height=int.from_bytes(segment[1:3], "big"),
                      width=int.from_bytes(segment[3:5], "big"), components=components)


def _check_huffman_tables(segment: bytes) -> None:
    pos = 0
    while pos < len(segment):
        if pos + 17 > len(segment) or segment[pos] & 0x0F > 3 or segment[pos] >> 4 > 1:
            raise ValueError("malformed Huffman table (DHT)")
        counts = segment[pos + 1:pos + 17]
        total = sum(counts)
        # At most 2^k codes of length k (Kraft); 256 symbols at most; the values must fit.
        if total > 256 or any(c > 2 ** (k + 1) for k, c in enumerate(counts)) or pos + 17 + total > len(segment):
            raise ValueError("malformed Huffman table (DHT)")
        pos += 17 + total


def j2k_declared_size(data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG 2000 codestream's SIZ segment (also inside a JP2 wrapper)."""
    start = 0
    if data[4:12] == b"jP  \r\n\x87\n":   # JP2 file: find the contiguous codestream box
        start = data.find(b"jp2c")
        start = start + 4 if start >= 0 else -1
    if start < 0 or data[start:start + 4] != b"\xff\x4f\xff\x51" or len(data) < start + 24:
        raise ValueError("no JPEG 2000 codestream header (SOC, SIZ)")
    siz = data[start + 6:start + 24]   # Rsiz(2) Xsiz(4) Ysiz(4) XOsiz(4) YOsiz(4)
    xsiz, ysiz = int.from_bytes(siz[2:6], "big"), int.from_bytes(siz[6:10], "big")
    xo, yo = int.from_bytes(siz[10:14], "big"), int.from_bytes(siz[14:18], "big")
    if xo >= xsiz or yo >= ysiz:
        raise ValueError("impossible image size in the SIZ segment")
    return xsiz - xo, ysiz - yo


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
