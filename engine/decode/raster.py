"""JPEG and PNG through OpenCV: 8/16-bit, gray/RGB/RGBA/palette, EXIF orientation, bomb guard.

The declared size is read from the PNG ``IHDR`` chunk or the JPEG ``SOFn`` header first, and
bomb-sized images are refused before OpenCV allocates anything. Colour and palette images are
converted to gray by OpenCV's decoder, which also applies the EXIF orientation tag.

8-bit images come out as exactly ``cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255``:
the Kermany training JPEGs were read that way, so inference must read them the same way.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.decode import native
from engine.decode.integrity import check_jpeg_dct, flat_tail_warning
from engine.decode.sniff import (MAX_PIXELS, MAX_SIDE, check_declared_size, jpeg_declared_size,
                                 png_declared_size)
from engine.errors import CorruptImageError
from engine.image import DecodedImage, StudyMetadata

__all__ = ["read_raster", "MAX_PIXELS", "MAX_SIDE"]


def read_raster(data: bytes, name: str, fmt: str) -> DecodedImage:
    """Decode JPEG or PNG bytes into grayscale float32 in [0, 1] (white = bright in the file)."""
    size = png_declared_size(data, name) if fmt == "png" else jpeg_declared_size(data, name)
    check_declared_size(name, size.width, size.height, f"{fmt.upper()} header")

    if fmt == "jpeg" and size.kind in ("SOF0", "SOF1", "SOF2") and size.bit_depth == 8:
        check_jpeg_dct(data, name)   # OpenCV fills a truncated stream with grey and says nothing
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_GRAYSCALE converts colour and palette images and applies the EXIF orientation;
    # IMREAD_ANYDEPTH (only for deeper images) keeps 16-bit PNG samples instead of cutting them to 8.
    flags = cv2.IMREAD_GRAYSCALE | (cv2.IMREAD_ANYDEPTH if size.bit_depth > 8 else 0)
    native.entering(f"the {fmt.upper()} decoder (OpenCV)")
    img = _imdecode(buf, flags, name, fmt)
    if img.ndim != 2:
        raise CorruptImageError(name, f"the {fmt.upper()} decoder returned {img.shape}, not a 2-D image")

    scale = float(2 ** size.bit_depth - 1) if img.dtype == np.uint16 else 255.0
    pixels = img.astype(np.float32) / scale
    warnings: list[str] = []
    fill = flat_tail_warning(pixels) if fmt == "jpeg" else None
    if fill:
        warnings.append(fill)
    if size.has_alpha:
        pixels = _composite_on_black(buf, pixels, name, warnings)

    meta = StudyMetadata(format=fmt, rows=pixels.shape[0], columns=pixels.shape[1],
                         bits_stored=size.bit_depth if img.dtype == np.uint16 else 8)
    return DecodedImage(name=name, pixels=pixels, metadata=meta, warnings=tuple(warnings))


def _imdecode(buf: np.ndarray, flags: int, name: str, fmt: str) -> np.ndarray:
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CorruptImageError(name, f"the {fmt.upper()} data could not be decoded ({detail})") from None
    if img is None or img.size == 0:
        raise CorruptImageError(name, f"the {fmt.upper()} data could not be decoded (corrupt or truncated)")
    return img


def _composite_on_black(buf: np.ndarray, pixels: np.ndarray, name: str, warnings: list[str]) -> np.ndarray:
    """Scale gray by alpha (transparent = black = air) when a PNG has any non-opaque pixel.

    OpenCV's grayscale decoding drops the alpha channel, so the colour hidden under transparent
    pixels would show. ``IMREAD_UNCHANGED`` keeps alpha but not the EXIF orientation: if the two
    decodes disagree in shape (a rotated PNG with transparency, very rare) alpha is ignored.
    """
    raw = _imdecode(buf, cv2.IMREAD_UNCHANGED, name, "png")
    if raw.ndim != 3 or raw.shape[2] not in (2, 4):
        return pixels
    alpha = raw[..., -1]
    opaque = np.iinfo(alpha.dtype).max
    if alpha.min() == opaque:
        return pixels
    if alpha.shape != pixels.shape:
        warnings.append("the PNG has transparent pixels and an EXIF orientation: transparency was ignored")
        return pixels
    warnings.append("the PNG has transparent pixels: they were composited onto black")
    return pixels * (alpha.astype(np.float32) / opaque)
