"""DICOM through pydicom: the first frame of a radiograph as float32 gray in [0, 1], white = dense.

The grayscale pipeline follows PS3.4 N.2 in the order pydicom's ``pixels/processing.py`` documents:

1. decode the pixel data with a plugin chosen per transfer syntax (``PLUGINS`` below);
2. modality LUT: Modality LUT Sequence or Rescale Slope/Intercept (``apply_modality_lut``);
3. VOI: the VOI LUT Sequence when there is one, else Window Center/Width (the preference of
   ``apply_voi_lut``), else the min..max of the modality values; the VOI output range maps to [0, 1];
4. MONOCHROME1 is inverted last, so the result always follows MONOCHROME2 (white = dense).

RGB, YBR (converted to RGB by pydicom) and PALETTE COLOR images become gray by BT.601 luminance.
Multi-frame files give their first frame and a warning. Nothing identifying goes into warnings or
error messages: files are named by the name the caller gave, and identifiers travel only in
:class:`~engine.image.PatientIdentifiers`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from typing import Any, Optional

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.pixels.processing import apply_windowing

from engine.inputs import limits
from engine.decode import native
from engine.decode.integrity import check_jpeg_dct, flat_tail_warning
from engine.decode.sniff import check_declared_size, j2k_declared_size, parse_jpeg_header
from engine.decode.vocabulary import defined_term
from engine.model.population import age_band, age_in_years, header_warnings
from engine.errors import (CorruptImageError, ImageReadError, ImageTooLargeError, MissingPixelDataError,
                           UnsupportedFormatError)
from engine.image import DecodedImage, PatientIdentifiers, StudyMetadata
from engine.settings import settings

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "TORAX", "TÓRAX", "LUNG", "PECHO", "POUMON", "BRUST")

# Pixel-data plugins to try, in order, per transfer syntax: all permissively licensed. Naming them
# keeps the choice explicit: pydicom's default order puts GDCM first everywhere, and would pick
# pylibjpeg-libjpeg (GPLv3) if it were installed. A later plugin is tried when an earlier one fails.
# GDCM is tried only where it is the sole decoder (JPEG Lossless) or where the preferred
# plugin is not installed (GDCM_IF_MISSING): on corrupt streams it can abort or crash the whole
# process instead of raising, so it is not a fallback for data another decoder has just refused.
_J2K = ("pylibjpeg", "pillow")   # pylibjpeg-openjpeg (MIT), then Pillow's OpenJPEG
PLUGINS: dict[str, tuple[str, ...]] = {
    uid.JPEGBaseline8Bit: ("pillow",),           # libjpeg-turbo, as OpenCV reads .jpg files
    uid.JPEGExtended12Bit: ("pillow",),          # 8-bit only: 12-bit is refused (see _check_codestream)
    uid.JPEGLossless: ("gdcm",),                 # process 14: only GDCM, besides GPL libjpeg
    uid.JPEGLosslessSV1: ("gdcm",),
    uid.JPEGLSLossless: ("pyjpegls",),
    uid.JPEGLSNearLossless: ("pyjpegls",),
    uid.JPEG2000Lossless: _J2K,
    uid.JPEG2000: _J2K,
    uid.HTJ2KLossless: ("pylibjpeg",),
    uid.HTJ2KLosslessRPCL: ("pylibjpeg",),
    uid.HTJ2K: ("pylibjpeg",),
    uid.RLELossless: ("pylibjpeg", "pydicom"),   # pylibjpeg-rle (fast), then pydicom's own
}
GDCM_IF_MISSING = frozenset({uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLSLossless,
                             uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless})
_JPEG_FAMILY = frozenset({uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
                          uid.JPEGLSLossless, uid.JPEGLSNearLossless})
_J2K_FAMILY = frozenset({uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL,
                         uid.HTJ2K})
_INSTALL = {
    uid.JPEGBaseline8Bit: "pillow", uid.JPEGExtended12Bit: "pillow",
    uid.JPEGLossless: "python-gdcm", uid.JPEGLosslessSV1: "python-gdcm",
    uid.JPEGLSLossless: "pyjpegls", uid.JPEGLSNearLossless: "pyjpegls",
    uid.JPEG2000Lossless: "pylibjpeg pylibjpeg-openjpeg", uid.JPEG2000: "pylibjpeg pylibjpeg-openjpeg",
    uid.HTJ2KLossless: "pylibjpeg pylibjpeg-openjpeg", uid.HTJ2KLosslessRPCL: "pylibjpeg pylibjpeg-openjpeg",
    uid.HTJ2K: "pylibjpeg pylibjpeg-openjpeg", uid.RLELossless: "pylibjpeg pylibjpeg-rle",
}
_CODEC_LABELS = {
    uid.JPEGBaseline8Bit: "JPEG Baseline", uid.JPEGExtended12Bit: "JPEG Extended",
    uid.JPEGLossless: "JPEG Lossless", uid.JPEGLosslessSV1: "JPEG Lossless",
    uid.JPEGLSLossless: "JPEG-LS", uid.JPEGLSNearLossless: "JPEG-LS",
    uid.JPEG2000Lossless: "JPEG 2000", uid.JPEG2000: "JPEG 2000", uid.HTJ2KLossless: "HTJ2K",
    uid.HTJ2KLosslessRPCL: "HTJ2K", uid.HTJ2K: "HTJ2K", uid.RLELossless: "RLE",
}
_PLUGIN_LABELS = {"pillow": "Pillow", "gdcm": "GDCM", "pyjpegls": "CharLS", "pydicom": "pydicom",
                  "pylibjpeg": "pylibjpeg"}
# Set only by the isolation tests, to prove that a decoder which really aborts costs one file:
# skips the header-against-stream checks that would otherwise refuse such a file first.
_SKIP_STREAM_CHECKS = settings().unsafe_skip_stream_checks
# Not decoding failures: never turned into an ImageReadError.
FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)
_CAUTION = "the model was trained on chest radiographs; treat the probability with caution"


def read_dicom(data: bytes, name: str) -> DecodedImage:
    """Decode DICOM bytes; raise an :class:`ImageReadError` subclass naming ``name`` on failure."""
    ds = _parse(data, name)
    identifiers = _identifiers(ds)
    try:
        image = _decode(ds, name, identifiers)
    except ImageReadError as err:
        reason = _scrub(err.reason, identifiers)
        if reason == err.reason:
            raise
        raise type(err)(name, reason) from None
    except MemoryError:
        raise ImageTooLargeError(name, "not enough memory to decode the DICOM pixel data") from None
    except BaseException as exc:  # anything pydicom/numpy/plugins raise on malformed content
        if isinstance(exc, FATAL):
            raise
        reason = f"the DICOM data could not be decoded ({_describe(exc, identifiers)})"
        raise CorruptImageError(name, reason) from None
    warnings = tuple(_scrub(w, identifiers) for w in image.warnings)
    return image if warnings == image.warnings else replace(image, warnings=warnings)


def _parse(data: bytes, name: str) -> Dataset:
    # force=True reads files without the 128-byte preamble and "DICM" prefix, and bare datasets.
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except BaseException as exc:
        if isinstance(exc, FATAL):
            raise
        # The message is not quoted: at this point nothing tells what in it might identify the patient.
        raise CorruptImageError(name, f"the DICOM header could not be parsed ({type(exc).__name__})") from None


def _decode(ds: Dataset, name: str, identifiers: PatientIdentifiers) -> DecodedImage:
    if "PixelData" not in ds:
        raise MissingPixelDataError(name, _no_pixels_reason(ds))
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or columns is None:
        raise CorruptImageError(name, "Rows (0028,0010) or Columns (0028,0011) is missing from the DICOM header")
    check_declared_size(name, columns, rows, "DICOM header (Columns x Rows)")
    frames = max(_int(ds, "NumberOfFrames") or 1, 1)
    tsyntax = _transfer_syntax(ds, name, frames)
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    if tsyntax.is_encapsulated:
        if not _SKIP_STREAM_CHECKS:
            _check_codestream(ds, tsyntax, name, rows, columns, frames)
    else:
        _check_native_length(ds, name, rows, columns, frames, photometric)

    arr, decoded_photometric, plugin = _decode_first_frame(ds, tsyntax, name)
    if arr.shape[0] * (arr.shape[1] if arr.ndim > 1 else 1) > limits.MAX_PIXELS:
        raise ImageTooLargeError(name, f"the decoded frame is {arr.shape} pixels, over the "
                                       f"{limits.MAX_PIXELS // 1_000_000}-megapixel limit")
    band = age_band(age_in_years(_text(ds, "PatientAge"), _text(ds, "PatientBirthDate"), _text(ds, "StudyDate")))
    view = defined_term("ViewPosition", _text(ds, "ViewPosition"))
    # The age is checked against the model's population by the predictor (engine.model.population), which
    # knows the card; the decoder warns about what is true of any model: the view.
    warnings = _content_warnings(ds) + header_warnings(None, view)
    if frames > 1:
        warnings.append(f"multi-frame DICOM ({frames} frames): only the first frame was read")
    pixels, values = _to_gray(arr, ds, decoded_photometric or photometric, name, warnings)
    if tsyntax.is_encapsulated:
        fill = flat_tail_warning(pixels)
        if fill:
            warnings.append(fill)

    meta = StudyMetadata(
        format="dicom",
        modality=defined_term("Modality", _text(ds, "Modality")),
        body_part=defined_term("BodyPartExamined", _text(ds, "BodyPartExamined")),
        view_position=view,
        age_band=band,
        study_key=_study_key(ds),
        study_date=_text(ds, "StudyDate"),
        manufacturer=_text(ds, "Manufacturer"),
        pixel_spacing=_pixel_spacing(ds),
        photometric_interpretation=photometric or None,
        window_center=_number(ds, "WindowCenter"),
        window_width=_number(ds, "WindowWidth"),
        bits_stored=_int(ds, "BitsStored"),
        transfer_syntax=tsyntax.name,
        rows=rows,
        columns=columns,
        number_of_frames=frames,
        sop_class=_uid_name(ds, "SOPClassUID"),
        decoder=plugin,
    )
    return DecodedImage(name=name, pixels=pixels, metadata=meta, identifiers=identifiers,
                        warnings=tuple(warnings), modality_values=values)


# --------------------------------------------------------------------------------------------
# Pixel data

def _no_pixels_reason(ds: Dataset) -> str:
    sop = _uid_name(ds, "SOPClassUID")
    if "Rows" in ds or "Columns" in ds or (sop and "Image Storage" in sop):
        return (f"the DICOM header describes an image ({sop or 'Rows/Columns'}) but there is no Pixel Data "
                "(7FE0,0010): the file is probably truncated")
    if sop:
        return f"no Pixel Data (7FE0,0010): this DICOM object ({sop}) holds no image"
    return "no Pixel Data (7FE0,0010): this DICOM file holds no image, or is truncated"


def _transfer_syntax(ds: Dataset, name: str, frames: int) -> uid.UID:
    """The file's Transfer Syntax UID; for a bare dataset (no file meta) inferred and set."""
    file_meta = getattr(ds, "file_meta", None)
    value = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if value:
        return uid.UID(str(value))
    elem = ds["PixelData"]
    if elem.is_undefined_length:  # encapsulated (compressed) pixel data: guess from the codestream
        tsyntax = _guess_compressed_syntax(ds.PixelData, frames)
        if tsyntax is None:
            raise CorruptImageError(name, "the pixel data is compressed but the file has no Transfer Syntax "
                                          "UID (0002,0010) and the codec is not recognisable")
    else:
        implicit, little = ds.original_encoding
        if implicit:
            tsyntax = uid.ImplicitVRLittleEndian
        elif little is False:
            tsyntax = uid.ExplicitVRBigEndian
        else:
            tsyntax = uid.ExplicitVRLittleEndian
    if file_meta is None:
        ds.file_meta = file_meta = FileMetaDataset()
    file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _guess_compressed_syntax(pixel_data: bytes, frames: int) -> Optional[uid.UID]:
    try:
        first = get_frame(pixel_data, 0, number_of_frames=frames)
    except Exception:
        return None
    if first[:2] == b"\xff\xd8":
        try:
            marker = parse_jpeg_header(first).marker
        except ValueError:
            return None
        return {0xC0: uid.JPEGBaseline8Bit, 0xC1: uid.JPEGExtended12Bit, 0xC3: uid.JPEGLossless,
                0xF7: uid.JPEGLSLossless}.get(marker)
    if first[:4] == b"\xff\x4f\xff\x51" or first[4:12] == b"jP  \r\n\x87\n":
        return uid.JPEG2000
    segments = int.from_bytes(first[:4], "little")
    if len(first) >= 64 and 1 <= segments <= 15 and int.from_bytes(first[4:8], "little") == 64:
        return uid.RLELossless
    return None


def _check_codestream(ds: Dataset, tsyntax: uid.UID, name: str, rows: int, columns: int, frames: int) -> None:
    """Check the first frame's JPEG / JPEG 2000 header against the DICOM header before a codec sees it.

    Decoders allocate what the codestream declares, not Rows x Columns, so a mismatch would bypass
    the size guard; and some (GDCM) crash the process on a broken marker structure, or (pyjpegls)
    spend seconds on a truncated stream, where a check here refuses in microseconds.
    """
    if tsyntax not in _JPEG_FAMILY and tsyntax not in _J2K_FAMILY:
        return
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception as exc:
        raise CorruptImageError(
            name, f"the encapsulated Pixel Data (7FE0,0010) is malformed ({_last_line(exc)})") from None
    codec = "JPEG-LS" if "JPEG-LS" in tsyntax.name else "JPEG 2000" if tsyntax in _J2K_FAMILY else "JPEG"
    header = None
    try:
        if tsyntax in _JPEG_FAMILY:
            header = parse_jpeg_header(frame, strict=True)
            if b"\xff\xd9" not in frame[-16:]:   # EOI, then at most some padding
                raise ValueError("no end-of-image marker: the stream is truncated")
            width, height, components = header.width, header.height, header.components
        else:
            (width, height), components = j2k_declared_size(frame), None
    except ValueError as exc:
        raise CorruptImageError(name, f"the {codec} stream of the first frame is corrupt ({exc})") from None
    if header is not None and header.marker in (0xC0, 0xC1, 0xC2) and header.precision > 8:
        raise UnsupportedFormatError(
            name, f"{header.precision}-bit lossy JPEG (Extended, process 4) is not supported: GDCM "
                  "through pydicom refuses it and the only pydicom plugin that decodes it, "
                  "pylibjpeg-libjpeg, is GPLv3-licensed and not used by this product")
    if (width, height) != (columns, rows):
        raise CorruptImageError(name, f"the {codec} stream is {width} x {height} pixels but Columns x Rows "
                                      f"(0028,0011/0010) say {columns} x {rows}")
    samples = _int(ds, "SamplesPerPixel") or 1
    if components is not None and components != samples:
        raise CorruptImageError(name, f"the {codec} stream has {components} components but Samples per "
                                      f"Pixel (0028,0002) is {samples}")
    if header is not None:
        _check_bits(ds, name, codec, header.precision)
        if header.marker in (0xC0, 0xC1, 0xC2):   # 8-bit DCT: libjpeg-turbo in strict mode proves damage
            check_jpeg_dct(frame, name, f"{_CODEC_LABELS.get(tsyntax, codec)}")


def _check_bits(ds: Dataset, name: str, codec: str, precision: int) -> None:
    """Bits Allocated / Bits Stored against the stream's sample precision (before any codec runs).

    A JPEG-family stream decodes to 8- or 16-bit samples; GDCM aborts the process when the header
    says 32 bits allocated, and a precision wider than the allocation cannot be stored.
    """
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    if allocated not in (8, 16):
        raise CorruptImageError(name, f"Bits Allocated (0028,0100) is {allocated}, but a {codec} stream "
                                      "decodes to 8 or 16 bits: the header does not match the pixel data")
    if precision > allocated:
        raise CorruptImageError(name, f"the {codec} stream has {precision}-bit samples but Bits Allocated "
                                      f"(0028,0100) is {allocated}: the header does not match the pixel data")
    if stored is not None and not 1 <= stored <= allocated:
        raise CorruptImageError(name, f"Bits Stored (0028,0101) is {stored} with Bits Allocated {allocated}: "
                                      "impossible")


def _check_native_length(ds: Dataset, name: str, rows: int, columns: int, frames: int,
                         photometric: str) -> None:
    """Refuse uncompressed pixel data shorter than Rows x Columns x samples x bits x frames."""
    bits = _int(ds, "BitsAllocated")
    if not bits:
        raise CorruptImageError(name, "Bits Allocated (0028,0100) is missing from the DICOM header")
    samples = 2 if photometric == "YBR_FULL_422" else (_int(ds, "SamplesPerPixel") or 1)
    expected = (rows * columns * samples * bits * frames + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise CorruptImageError(
            name, f"Pixel Data (7FE0,0010) has {actual:,} bytes but the header promises {expected:,} "
                  f"({frames} x {rows} x {columns} x {samples} samples x {bits} bits): "
                  "the file is truncated or its header is wrong")


def _decode_first_frame(ds: Dataset, tsyntax: uid.UID, name: str) -> tuple[np.ndarray, str, str]:
    """Return the first frame, its photometric interpretation after decoding, and the plugin used."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedFormatError(
            name, f"the transfer syntax {tsyntax.name} ({tsyntax}) is not supported") from None
    if not tsyntax.is_encapsulated:
        arr, info = decoder.as_array(ds, index=0)
        return arr, str(info.get("photometric_interpretation", "")), "pydicom"

    available = decoder.available_plugins
    plugins = [p for p in PLUGINS.get(tsyntax, ()) if p in available]
    if not plugins and tsyntax in GDCM_IF_MISSING and "gdcm" in available:
        plugins = ["gdcm"]
    if not plugins:
        raise UnsupportedFormatError(
            name, f"{tsyntax.name} pixel data needs a decoder that is not installed "
                  f"(pip install {_INSTALL.get(tsyntax, 'python-gdcm')})")
    failures: list[str] = []
    for plugin in plugins:
        native.entering(f"the {_CODEC_LABELS.get(tsyntax, tsyntax.name)} decoder "
                        f"({_PLUGIN_LABELS.get(plugin, plugin)})")
        try:
            arr, info = decoder.as_array(ds, index=0, decoding_plugin=plugin)
        except BaseException as exc:  # Rust plugins (pylibjpeg-rle) panic with a BaseException
            if isinstance(exc, FATAL):
                raise
            reason = _last_line(exc)
            failures.append(reason if reason.startswith(f"{plugin}:") else f"{plugin}: {reason}")
            continue
        return arr, str(info.get("photometric_interpretation", "")), plugin
    raise CorruptImageError(
        name, f"the {tsyntax.name} pixel data could not be decoded (corrupt or truncated); "
              f"tried {'; '.join(failures)}")


# --------------------------------------------------------------------------------------------
# Grayscale

def _to_gray(arr: np.ndarray, ds: Dataset, photometric: str, name: str, warnings: list[str]
             ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Gray in [0, 1] (white = dense) and, for MONOCHROME images, the modality-LUT values."""
    values = None
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise CorruptImageError(name, f"a {photometric} frame decoded to shape {arr.shape}, not 2-D")
        values = apply_modality_lut(arr, ds)
        out = _voi_to_unit(values, ds, warnings)
        if photometric == "MONOCHROME1":
            out = 1.0 - out
    elif photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        out = _luminance(rgb) / np.iinfo(rgb.dtype).max
    elif arr.ndim == 3 and arr.shape[-1] == 3:  # RGB, or YBR_FULL/YBR_FULL_422 converted by pydicom
        bits = _int(ds, "BitsStored") or 8 * arr.dtype.itemsize
        out = _luminance(arr) / float(2 ** bits - 1)
    else:
        raise UnsupportedFormatError(
            name, f"Photometric Interpretation (0028,0004) '{photometric}' (decoded shape {arr.shape}) "
                  "is not supported")
    return np.clip(out, 0.0, 1.0).astype(np.float32), (None if values is None else np.asarray(values, np.float32))


def _voi_to_unit(values: np.ndarray, ds: Dataset, warnings: list[str]) -> np.ndarray:
    """Apply the VOI LUT or window (or min..max) and map its output range to [0, 1]."""
    lut = _voi_lut_item(ds)
    if lut is not None:
        first, table = lut
        # Rounded (rescaled values may be float), clipped to the LUT's input range, looked up.
        index = np.clip(np.rint(values) - first, 0, len(table) - 1).astype(np.int64)
        y = table[index]
        lo, hi = table[0], table[-1]      # the LUT's own output range, not its declared bit depth
        if lo == hi:
            lo, hi = table.min(), table.max()
    elif _number(ds, "WindowCenter") is not None and _number(ds, "WindowWidth") is not None:
        try:
            y = apply_windowing(values, ds, 0)
            # The window's output range (pydicom's y_min..y_max), whatever the LUT function:
            with np.errstate(all="ignore"):
                lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, 0)
        except Exception as exc:
            warnings.append(f"Window Center/Width (0028,1050/1051) not usable ({_last_line(exc)}): "
                            "the full pixel range was used instead")
            y, lo, hi = values.astype(np.float64), float(np.min(values)), float(np.max(values))
    else:
        y, lo, hi = values.astype(np.float64), float(np.min(values)), float(np.max(values))
    if not np.isfinite(lo) or not np.isfinite(hi) or lo == hi:
        warnings.append("every pixel has the same value: the image is blank")
        return np.zeros(values.shape, dtype=np.float64)
    return (y - lo) / (hi - lo)


def _voi_lut_item(ds: Dataset) -> Optional[tuple[int, np.ndarray]]:
    """First value mapped and the table of the first VOI LUT Sequence item, or None.

    The lookup is done here rather than by pydicom's ``apply_voi``: pydicom 3.0 holds the LUT index in
    the LUT's output type, so an 8-bit LUT with more than 256 entries (common: 4096 x 8 bits) wraps.
    """
    seq = _get(ds, "VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if "LUTDescriptor" not in item or "LUTData" not in item or len(item.LUTDescriptor) != 3:
        return None
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):   # OW: raw words in the dataset's byte order
        order = ">" if ds.original_encoding[1] is False else "<"
        packed = bits == 8 and len(data) in (entries, entries + 1)   # 8-bit entries, two per word
        if packed:
            table = np.frombuffer(data, dtype="u1")
        else:
            table = np.frombuffer(data[: len(data) // 2 * 2], dtype=f"{order}u2")
    else:
        table = np.asarray(data if isinstance(data, (list, MultiValue)) else [data])
    table = table[:entries].astype(np.float64)
    return (first, table) if len(table) else None


def _luminance(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


# --------------------------------------------------------------------------------------------
# Metadata, identifiers, warnings

def _content_warnings(ds: Dataset) -> list[str]:
    warnings = []
    modality = (_text(ds, "Modality") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        shown = defined_term("Modality", modality) or "(a value that is not a DICOM modality)"
        warnings.append(f"Modality {shown} is not a radiograph (CR/DX/DR): {_CAUTION}")
    body_part = _text(ds, "BodyPartExamined")
    if body_part and not any(word in body_part.upper() for word in CHEST_WORDS):
        shown = defined_term("BodyPartExamined", body_part) or "a free-text value (not quoted)"
        warnings.append(f"Body Part Examined is {shown}, not chest: {_CAUTION}")
    return warnings


def _study_key(ds: Dataset) -> Optional[str]:
    """16 hex digits of a hash of Study Instance UID: enough to group one study's images, and no UID
    (UIDs can be traced back to a patient) leaves the file."""
    uid_text = _text(ds, "StudyInstanceUID")
    return hashlib.sha256(uid_text.encode("ascii", "replace")).hexdigest()[:16] if uid_text else None


def _identifiers(ds: Dataset) -> PatientIdentifiers:
    return PatientIdentifiers(
        patient_name=_text(ds, "PatientName"),
        patient_id=_text(ds, "PatientID"),
        birth_date=_text(ds, "PatientBirthDate"),
        accession_number=_text(ds, "AccessionNumber"),
        institution=_text(ds, "InstitutionName"),
    )


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # a malformed value that pydicom cannot convert
        return None


def _text(ds: Dataset, keyword: str) -> Optional[str]:
    value = _get(ds, keyword)
    if value is None:
        return None
    try:
        if isinstance(value, MultiValue):
            value = "\\".join(str(v) for v in value)
        text = str(value).strip(" \x00")
    except Exception:  # e.g. a person name in a character set that cannot be decoded
        return None
    return text or None


def _number(ds: Dataset, keyword: str) -> Optional[float]:
    value = _get(ds, keyword)
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    try:
        number = float(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and np.isfinite(number) else None


def _int(ds: Dataset, keyword: str) -> Optional[int]:
    number = _number(ds, keyword)
    return int(number) if number is not None else None


def _pixel_spacing(ds: Dataset) -> Optional[tuple[float, float]]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _get(ds, keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def _uid_name(ds: Dataset, keyword: str) -> Optional[str]:
    value = _text(ds, keyword)
    return uid.UID(value).name if value else None


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _describe(exc: BaseException, identifiers: PatientIdentifiers) -> str:
    """``Type: last line`` of an exception, with any patient identifier value blanked out."""
    return _scrub(f"{type(exc).__name__}: {_last_line(exc)}", identifiers)


def _scrub(text: str, identifiers: PatientIdentifiers) -> str:
    """Blank out any patient identifier (or name component) that a message happens to quote."""
    for value in identifiers.as_dict().values():
        for token in sorted({value, *value.replace("=", "^").split("^")}, key=len, reverse=True):
            if len(token.strip()) >= 3:
                text = text.replace(token.strip(), "<redacted>")
    return text
