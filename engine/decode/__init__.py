"""Read a radiograph from bytes or a path, whatever its extension says.

``read_image`` sniffs the content (DICOM preamble or tags, JPEG and PNG signatures) and hands it to
the DICOM reader (pydicom, :mod:`engine.decode.dicom`) or the raster reader (OpenCV,
:mod:`engine.decode.raster`); the extension is never trusted. It returns a :class:`DecodedImage` or
raises an :class:`ImageReadError` subclass whose message names the file and the problem: empty,
unsupported format, corrupt, missing pixel data, or too large (declared sizes are checked before
anything is decoded). No other exception escapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from engine.decode.raster import read_raster
from engine.decode.sniff import sniff_format
from engine.errors import (CorruptImageError, EmptyFileError, ImageReadError, ImageTooLargeError,
                           UnsupportedFormatError)
from engine.image import DecodedImage

Source = Union[bytes, bytearray, memoryview, str, Path]


def read_bytes(source: Source, name: Optional[str] = None) -> tuple[bytes, str]:
    """Return the file's bytes and the name used in messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    from engine.inputs.sources import read_file       # one reader (and one size limit) for every file
    path = Path(source)
    label = name or str(path)
    return read_file(path, label), label


def read_image(source: Source, name: Optional[str] = None) -> DecodedImage:
    """Decode DICOM, JPEG or PNG content into grayscale float32 pixels in [0, 1]."""
    data, label = read_bytes(source, name)
    if not data:
        raise EmptyFileError(label, "the file is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt not in ("dicom", "jpeg", "png"):
        raise UnsupportedFormatError(label, f"not a DICOM, JPEG or PNG image ({fmt})")
    try:
        if fmt == "dicom":
            from engine.decode.dicom import read_dicom  # pydicom is imported only when needed
            image = read_dicom(data, label)
        else:
            image = read_raster(data, label, fmt)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageTooLargeError(label, "not enough memory to decode the image") from None
    except BaseException as exc:  # a decoder's own exception (even a Rust panic) must not escape
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise CorruptImageError(label, f"the {fmt.upper()} data could not be decoded "
                                       f"({type(exc).__name__})") from None
    pixels = image.pixels
    if pixels.size and float(pixels.min()) == float(pixels.max()):
        # A uniform frame holds no radiograph (zero-filled data, a failed export): a confident score on
        # it would be noise, so it is refused rather than scored.
        raise CorruptImageError(label, "every pixel has the same value: the image is blank, nothing to score")
    return image


__all__ = ["read_image", "read_bytes", "sniff_format", "Source"]
