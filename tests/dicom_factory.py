"""Write DICOM variants with pydicom from real sample pixels, for the decoder tests.

Every helper returns a new :class:`~pydicom.dataset.Dataset` or the bytes of a DICOM file. Pixels
come from the real sample radiographs in ``assets/sample`` (see tests/conftest.py); the variants are
what real archives hold: MONOCHROME1, 12/16-bit signed and unsigned with rescale, VOI LUT, windows,
each compressed transfer syntax, multi-frame, missing preamble, missing or broken pixel data.
"""

from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from pydicom import dcmread, dcmwrite, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space

# Identifiers written into every dataset: the tests check they never leak into metadata or messages.
IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-0042-7731",
    "PatientBirthDate": "19700214",
    "AccessionNumber": "ACC-889911",
    "InstitutionName": "Saint Example Hospital",
}


def widen(gray8: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Spread 8-bit gray over the full range of ``bits_stored`` bits (uint16/int16, or uint8/int8)."""
    top = 2 ** bits_stored - 1
    values = np.rint(gray8.astype(np.float64) * top / 255.0).astype(np.int64)
    if signed:
        values -= 2 ** (bits_stored - 1)
    dtype = {(False, True): np.uint8, (True, True): np.int8,
             (False, False): np.uint16, (True, False): np.int16}[(signed, bits_stored <= 8)]
    return values.astype(dtype)


def dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: Optional[int] = None,
            modality: str = "DX", body_part: Optional[str] = "CHEST",
            sop_class: str = uid.DigitalXRayImageStorageForPresentation, **elements: Any) -> Dataset:
    """A minimal, valid uncompressed image dataset holding ``pixels`` plus optional elements.

    ``pixels`` is (rows, cols), (frames, rows, cols) or (rows, cols, 3); its dtype fixes Bits Allocated
    and Pixel Representation. ``elements`` are set as keywords, e.g. ``RescaleSlope=0.5``.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.ViewPosition = "PA"
    ds.StudyDate = "20240131"
    ds.Manufacturer = "Test Factory"
    ds.PixelSpacing = [0.139, 0.139]
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.set_pixel_data(pixels, photometric, bits_stored or 8 * pixels.dtype.itemsize)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """The DICOM file (preamble, "DICM", file meta, dataset)."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def without_preamble(ds: Dataset) -> bytes:
    """File meta and dataset, but no 128-byte preamble or "DICM" prefix (as some PACS exports)."""
    data = to_bytes(ds)
    assert data[128:132] == b"DICM"
    return data[132:]


def bare_dataset(ds: Dataset) -> bytes:
    """No preamble and no file meta at all: an implicit VR little endian dataset (old ACR-NEMA style)."""
    ds = copy.deepcopy(ds)
    del ds.file_meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def compressed(ds: Dataset, syntax: str, **options: Any) -> Dataset:
    """A copy compressed by pydicom's encoders: RLE Lossless, JPEG-LS (pyjpegls), JPEG 2000 (openjpeg)."""
    ds = copy.deepcopy(ds)
    ds.compress(syntax, **options)
    return ds


def jpeg_lossless(ds: Dataset, *, selection_value_1: bool = True) -> Dataset:
    """A copy compressed with JPEG Lossless process 14 (SV1 by default) by GDCM.

    pydicom has no JPEG Lossless encoder; GDCM's ImageChangeTransferSyntax has, but reads and writes
    files, so this goes through a temporary folder.
    """
    import gdcm

    target = (gdcm.TransferSyntax.JPEGLosslessProcess14_1 if selection_value_1
              else gdcm.TransferSyntax.JPEGLosslessProcess14)
    with tempfile.TemporaryDirectory() as folder:
        src, dst = str(Path(folder) / "in.dcm"), str(Path(folder) / "out.dcm")
        dcmwrite(src, ds, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        if not reader.Read():
            raise RuntimeError("GDCM could not read the uncompressed file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(target))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("GDCM could not compress to JPEG Lossless")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write the JPEG Lossless file")
        return dcmread(dst)


def encapsulated(ds: Dataset, frames: list[bytes], syntax: str, **elements: Any) -> Dataset:
    """A copy whose Pixel Data is replaced by the given encoded frames under ``syntax``."""
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def jpeg_baseline(pixels: np.ndarray, quality: int = 95, **kwargs: Any) -> tuple[Dataset, bytes]:
    """A JPEG Baseline DICOM from an OpenCV-encoded JPEG; returns the dataset and the JPEG stream.

    Gray (rows, cols) uint8 gives MONOCHROME2; RGB (rows, cols, 3) gives YBR_FULL_422, as libjpeg
    writes colour JPEGs (YCbCr, chroma subsampled).
    """
    ok, stream = cv2.imencode(".jpg", pixels if pixels.ndim == 2 else pixels[..., ::-1],
                              [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    photometric = "MONOCHROME2" if pixels.ndim == 2 else "YBR_FULL_422"
    ds = dataset(pixels, photometric="MONOCHROME2" if pixels.ndim == 2 else "RGB", **kwargs)
    ds = encapsulated(ds, [stream.tobytes()], uid.JPEGBaseline8Bit, PhotometricInterpretation=photometric,
                      LossyImageCompression="01")
    return ds, stream.tobytes()


def ybr_full(rgb: np.ndarray, **kwargs: Any) -> Dataset:
    """Uncompressed YBR_FULL colour (as some secondary captures are stored)."""
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    return dataset(ybr, photometric="YBR_FULL", **kwargs)


def voi_lut(entries: int, first_mapped: int, bits: int, table: np.ndarray, vr: str = "US") -> Dataset:
    """One VOI LUT Sequence item (LUT Descriptor and LUT Data, the data as US values or OW words)."""
    item = Dataset()
    item.LUTDescriptor = [entries, first_mapped, bits]
    item["LUTDescriptor"].VR = "US"
    item.LUTData = [int(v) for v in table] if vr == "US" else np.asarray(table, "<u2").tobytes()
    item["LUTData"].VR = vr
    item.LUTExplanation = "test gamma"
    return item


def without_pixel_data(ds: Dataset) -> Dataset:
    ds = copy.deepcopy(ds)
    del ds.PixelData
    return ds


def with_short_pixel_data(ds: Dataset, keep: float = 0.5) -> Dataset:
    """Pixel Data shorter than Rows x Columns promise (the element's length is consistent)."""
    ds = copy.deepcopy(ds)
    data = ds.PixelData
    cut = int(len(data) * keep) // 2 * 2
    ds.PixelData = data[:cut]
    return ds


def garbage_fragment(ds: Dataset, syntax: str, seed: int = 0) -> Dataset:
    """Encapsulated Pixel Data under ``syntax`` whose one fragment is random bytes after a valid-looking start."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    start = {uid.JPEGBaseline8Bit: b"\xff\xd8\xff\xe0", uid.JPEGLosslessSV1: b"\xff\xd8\xff\xc3",
             uid.JPEG2000Lossless: b"\xff\x4f\xff\x51", uid.JPEGLSLossless: b"\xff\xd8\xff\xf7"}.get(syntax, b"")
    return encapsulated(ds, [start + noise], syntax)
