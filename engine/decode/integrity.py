"""Corrupt pixels are refused or warned, never silently scored.

Decoders differ in what they do with a damaged stream: OpenJPEG, CharLS and the RLE decoders raise,
but libjpeg-family decoders (Pillow, OpenCV, GDCM's lossless JPEG) print a warning and fill the rest
of the image with grey. Three checks close that gap:

* :func:`check_jpeg_dct` decodes an 8-bit DCT JPEG a second time with libjpeg-turbo in strict mode
  (simplejpeg), which turns libjpeg's "corrupt data" warnings into errors: proof of damage.
* :func:`classify_codec_output` reads what a native codec printed on stderr while it ran (captured
  by the decoding worker): libjpeg's corruption warnings are proof of damage; any other output is a
  reason for caution, carried as a warning.
* :func:`flat_tail_warning` looks at decoded pixels for the signature of a decoder's fill: one value
  from part-way along a row to the very end of the image. Likely damage, not proof: a warning.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

from engine.errors import CorruptImageError

# libjpeg's (and GDCM's bundled IJG code's) warnings that mean the entropy-coded data is damaged, and
# a Rust decoder's panic (pylibjpeg-rle reads past its buffer on a damaged RLE segment).
_DAMAGE = re.compile(r"Corrupt JPEG data|Premature end of (JPEG|data)|Bogus (Huffman|marker|DQT|DHT|DRI)|"
                     r"Invalid SOS|Huffman code|Inconsistent progression|JPEG datastream contains no image|"
                     r"[Tt]runcat|[Cc]orrupt|panicked at|index out of bounds", re.IGNORECASE)
_MAX_QUOTE = 120


def check_jpeg_dct(stream: bytes, name: str, what: str = "JPEG") -> None:
    """Refuse an 8-bit baseline/progressive JPEG stream that libjpeg-turbo finds damaged."""
    import simplejpeg
    try:
        simplejpeg.decode_jpeg(stream, colorspace="GRAY", strict=True)
    except ValueError as exc:
        text = _first_line(str(exc))
        if "Unsupported" in text or "not supported" in text or "precision" in text.lower():
            return   # 12-bit or arithmetic coding: not a damage verdict (other checks apply)
        raise CorruptImageError(name, f"the {what} stream is damaged or truncated (libjpeg-turbo: {text}); "
                                      "refused rather than scored on wrong pixels") from None


def classify_codec_output(output: str, name: str, decoder: str) -> Optional[str]:
    """Raise on a codec's corruption warning; return a caution for other codec output, else None."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return None
    damage = next((line for line in lines if _DAMAGE.search(line)), None)
    if damage is not None:
        raise CorruptImageError(name, f"{decoder} reported damaged data ({_first_line(damage)}); "
                                      "refused rather than scored on wrong pixels")
    return f"{decoder} printed a warning while decoding ({_first_line(lines[0])}): the pixels may be damaged"


def flat_tail_warning(pixels: np.ndarray, min_fraction: float = 0.02) -> Optional[str]:
    """A warning when the image ends in one flat value that starts part-way along a row.

    A decoder that runs out of data fills the remaining blocks with one value in raster order, so
    the fill starts at a block boundary (a multiple of 8 pixels) in the middle of a row. A collimation border is also flat
    and is the image's darkest or brightest value, so it passes.
    """
    if pixels.ndim != 2 or pixels.size < 64:
        return None
    flat = pixels.ravel()
    last = flat[-1]
    differs = np.flatnonzero(flat != last)
    start = int(differs[-1]) + 1 if differs.size else 0
    run = flat.size - start
    if run < min_fraction * flat.size or start == 0:
        return None
    column = start % pixels.shape[1]
    if column % 8:          # block codecs fill whole 8x8 (or 16x16) blocks: a fill starts on a block edge
        return None
    if last <= flat.min() or last >= flat.max():   # black or white: a border, not a decoder's grey
        return None
    mid_row = column != 0
    return (f"the last {100.0 * run / flat.size:.0f}% of the image is one flat value starting "
            f"{'part-way along a row' if mid_row else 'at a row'}: the compressed data may be truncated")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:_MAX_QUOTE]
