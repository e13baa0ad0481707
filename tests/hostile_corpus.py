"""A hostile-input corpus, written for the tests from real files: one generator per class of attack.

Every class the hostile-input issue names is here, built from the real sample radiographs:

* a JPEG Lossless DICOM whose header says Bits Allocated 32 (GDCM aborts the process on it);
* ZIP archives with one corrupt member: a bad CRC, a broken deflate stream, Deflate64 (method 9);
* compressed streams cut short with an end-of-image marker appended, and entropy-corrupted streams;
* JPEG 2000 DICOMs of 6000 x 6000 zeros (a few KB each, 36 megapixels decoded);
* a sparse multi-GB file (stat says 3 GB, the disk holds nothing);
* a ZIP of many entries sharing one large deflate stream (512 KB on disk, 20 GB expanded);
* a DICOM whose Body Part Examined and folder name hold a patient's name.

Nothing here is a mock: each is a real file that the real decoders and archive readers see.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid
from pydicom.encaps import encapsulate, get_frame

import dicom_factory as dcm
from helpers import DICOMS, JPEGS

JPEG_BASELINE_DICOM = next(p for p in DICOMS if "jpeg_baseline" in p.name)
PATIENT = "MUSTERMANN^ERIKA"          # a made-up patient name that must never reach an output


def gray12(index: int = 0) -> np.ndarray:
    """A real radiograph (a sample JPEG) widened to 12 bits."""
    from engine.decode import read_image
    pixels = read_image(JPEGS[index]).pixels
    return dcm.widen((pixels * 255).astype(np.uint8), 12, False)


def jpeg_lossless(index: int = 0) -> bytes:
    """A valid JPEG Lossless (process 14 SV1) DICOM made by GDCM from a real radiograph."""
    return dcm.to_bytes(dcm.jpeg_lossless(dcm.dataset(gray12(index), bits_stored=12)))


def lossless_bits_allocated_32(index: int = 0) -> bytes:
    """One header field changed in a valid JPEG Lossless file: GDCM aborts (SIGABRT) on it."""
    ds = pydicom.dcmread(io.BytesIO(jpeg_lossless(index)), force=True)
    ds.BitsAllocated = 32
    return _save(ds)


def truncated_with_eoi(data: bytes, keep: float) -> bytes:
    """The first frame cut to ``keep`` of its length, then an end-of-image marker appended."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: int(len(frame) * keep)] + b"\xff\xd9"])
    return _save(ds)


def truncated_jpeg_file(data: bytes, keep: float) -> bytes:
    """A plain JPEG file cut short, with an end-of-image marker appended."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def entropy_corrupted(data: bytes, seed: int = 0, flips: int = 12) -> bytes:
    """Random bytes overwritten inside the entropy-coded data of the first frame (markers kept)."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    rng = np.random.default_rng(seed)
    start = frame.find(b"\xff\xda") + 64           # past the scan header
    for pos in rng.integers(start, len(frame) - 64, flips):
        value = int(rng.integers(0, 255))
        if frame[pos - 1] != 0xFF and value != 0xFF:
            frame[pos] = value
    ds.PixelData = encapsulate([bytes(frame)])
    return _save(ds)


def j2k_zeros(side: int = 6000, patch: bool = False) -> bytes:
    """A JPEG 2000 Lossless DICOM of side x side zeros: about a kilobyte, 36 megapixels decoded.

    With ``patch`` a 64 x 64 square of 4095 in one corner keeps it from being blank (so it is scored).
    """
    pixels = np.zeros((side, side), np.uint16)
    if patch:
        pixels[:64, :64] = 4095
    ds = dcm.dataset(pixels, bits_stored=12)
    return dcm.to_bytes(dcm.compressed(ds, uid.JPEG2000Lossless))


def identifying_dicom(name: str = PATIENT) -> bytes:
    """A real JPEG Baseline DICOM whose free-text Body Part Examined holds a patient's name."""
    ds = pydicom.dcmread(JPEG_BASELINE_DICOM, force=True)
    ds.BodyPartExamined = name
    ds.ViewPosition = name.split("^")[0]
    ds.PatientName = ""
    return _save(ds)


def _save(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# ZIP archives

def zip_with_bad_member(good: dict[str, bytes], bad_name: str, kind: str) -> bytes:
    """An archive of ``good`` members plus one broken ``bad_name``: "crc", "deflate" or "deflate64"."""
    payload = JPEGS[0].read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in good.items():
            zf.writestr(name, data, compress_type=zipfile.ZIP_STORED)
        method = zipfile.ZIP_STORED if kind == "crc" else zipfile.ZIP_DEFLATED
        zf.writestr(bad_name, payload, compress_type=method)
    raw = bytearray(buf.getvalue())
    local = raw.rfind(b"PK\x03\x04")                     # the bad member is written last
    central = raw.rfind(b"PK\x01\x02")
    name_len, extra_len = struct.unpack("<HH", raw[local + 26:local + 30])
    data_at = local + 30 + name_len + extra_len
    if kind == "crc":
        raw[data_at + 500] ^= 0xFF                        # stored bytes changed: CRC-32 mismatch
    elif kind == "deflate":
        for k in range(40, 60):
            raw[data_at + k] = 0xFF                        # deflate block codes destroyed
    elif kind == "deflate64":
        struct.pack_into("<H", raw, local + 8, 9)          # compression method 9 = Deflate64
        struct.pack_into("<H", raw, central + 10, 9)
    else:
        raise ValueError(kind)
    return bytes(raw)


def zip_shared_stream(entries: int = 40, expanded_mb: int = 500) -> bytes:
    """``entries`` central-directory entries that all point at one deflate stream of zeros.

    512 KB on disk for 500 MB of zeros; every entry claims the whole stream, so a reader that trusts
    the directory inflates ``entries x expanded_mb`` MB.
    """
    size = expanded_mb * 1024 * 1024
    chunk = bytes(1024 * 1024)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts, crc = [], 0
    for _ in range(expanded_mb):
        parts.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    parts.append(comp.flush())
    stream = b"".join(parts)
    name0 = b"0.dcm"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(stream), size, len(name0), 0)
    body = local + name0 + stream
    central = b""
    for i in range(entries):
        name = f"{i}.dcm".encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(stream), size,
                               len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, len(central), len(body), 0)
    return body + central + end


def sparse_file(path: Path, size: int) -> Path:
    """A file whose size is ``size`` bytes by stat() but which holds no data on disk."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path
