"""JPEG and PNG decoding, format sniffing and refusals (real sample images from assets/sample)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

import engine.decode as decode_module
from engine.decode import read_image, sniff_format
from engine.errors import (CorruptImageError, EmptyFileError, ImageReadError, ImageTooLargeError,
                           UnsupportedFormatError)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG written by OpenCV: uint8/uint16, gray (H, W) or BGR/BGRA (H, W, 3|4)."""
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG declaring width x height 8-bit gray pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b""))


def jpeg_header_only(width: int, height: int) -> bytes:
    """SOI, APP0, a baseline SOF0 declaring width x height, then EOI: a few dozen bytes."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if OpenCV is asked to decode anything."""
    def must_not_decode(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(cv2, "imdecode", must_not_decode)


# ------------------------------------------------------------------------------------------------
# The training images: exactly what the model is trained on

def test_kermany_jpegs_decode_exactly_as_training_reads_them(kermany_jpegs):
    for path in kermany_jpegs:
        data = path.read_bytes()
        image = read_image(path)
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        assert image.pixels.dtype == np.float32 and image.shape == (224, 224)
        np.testing.assert_array_equal(image.pixels, expected)
        assert image.metadata.format == "jpeg" and image.warnings == ()


def test_jpeg_without_extension_or_with_a_wrong_one_is_detected(kermany_jpegs, tmp_path):
    data = kermany_jpegs[0].read_bytes()
    bare = tmp_path / "image"
    bare.write_bytes(data)
    expected = read_image(kermany_jpegs[0]).pixels
    for source, name in ((bare, None), (str(bare), None), (data, "scan.png"), (data, "scan.dcm")):
        image = read_image(source, name=name)
        assert image.metadata.format == "jpeg"
        np.testing.assert_array_equal(image.pixels, expected)
    assert read_image(bare).name == str(bare)


# ------------------------------------------------------------------------------------------------
# PNG variants and orientation

def test_16_bit_png_keeps_its_depth(xray):
    deep = (xray.astype(np.uint16) * 257 + np.arange(xray.size, dtype=np.uint16).reshape(xray.shape) % 200)
    image = read_image(png_bytes(deep), name="deep.png")
    np.testing.assert_array_equal(image.pixels, deep.astype(np.float32) / 65535)
    assert image.metadata.bits_stored == 16


def test_8_bit_gray_png_is_exact(xray):
    np.testing.assert_array_equal(read_image(png_bytes(xray), "gray.png").pixels, xray.astype(np.float32) / 255)


def test_rgb_and_opaque_rgba_png_match_gray(xray):
    bgr = np.repeat(xray[..., None], 3, axis=2)
    bgra = np.concatenate([bgr, np.full_like(xray, 255)[..., None]], axis=2)
    for pixels in (bgr, bgra):
        image = read_image(png_bytes(pixels), "colour.png")
        np.testing.assert_array_equal(image.pixels, xray.astype(np.float32) / 255)
        assert image.warnings == ()


def test_transparent_rgba_png_is_composited_onto_black(xray):
    bgra = np.concatenate([np.repeat(xray[..., None], 3, axis=2), np.full_like(xray, 255)[..., None]], axis=2)
    bgra[:, :100, 3] = 0      # left part fully transparent
    bgra[:, 100:120, 3] = 128  # a half-transparent band
    image = read_image(png_bytes(bgra), "cutout.png")
    assert np.all(image.pixels[:, :100] == 0)
    np.testing.assert_allclose(image.pixels[:, 100:120], xray[:, 100:120] / 255 * 128 / 255, atol=1e-6)
    np.testing.assert_array_equal(image.pixels[:, 120:], xray[:, 120:].astype(np.float32) / 255)
    assert any("transparent" in w for w in image.warnings)


def test_palette_png_decodes_to_gray(xray):
    data = pil_bytes(Image.fromarray(xray).convert("P"), "PNG")
    assert data[25] == 3   # IHDR colour type 3: palette
    np.testing.assert_allclose(read_image(data, "palette.png").pixels, xray / 255, atol=1e-5)


@pytest.mark.parametrize("orientation, turn", [(6, -1), (8, 1), (3, 2)])   # np.rot90 turns (CCW)
def test_exif_orientation_is_applied(xray_wide, orientation, turn):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_bytes(Image.fromarray(xray_wide), "JPEG", quality=95, exif=exif.tobytes())
    image = read_image(data, "phone.jpg")
    expected = np.rot90(xray_wide, k=turn)
    assert image.shape == expected.shape
    assert np.abs(image.pixels - expected / 255).mean() < 0.01   # JPEG-lossy, but rotated the right way


# ------------------------------------------------------------------------------------------------
# Decompression bombs: refused from the header, before anything is decoded

def test_bomb_png_is_refused_before_decoding(no_decoding):
    data = png_header_only(100_000, 100_000)
    assert len(data) < 200
    with pytest.raises(ImageTooLargeError, match=r"^bomb\.png: .*100000 x 100000"):
        read_image(data, name="bomb.png")


def test_bomb_jpeg_is_refused_before_decoding(no_decoding):
    with pytest.raises(ImageTooLargeError, match=r"^bomb\.jpg: .*65000 x 65000"):
        read_image(jpeg_header_only(65_000, 65_000), name="bomb.jpg")


def test_a_side_over_the_limit_is_refused_even_with_few_pixels(no_decoding):
    with pytest.raises(ImageTooLargeError, match=r"^strip\.png: .*40000 x 8"):
        read_image(png_header_only(40_000, 8), name="strip.png")


def test_jpeg_bomb_behind_a_large_exif_segment_is_found(no_decoding):
    app1 = b"\xff\xe1" + struct.pack(">H", 60_002) + b"Exif\x00\x00" + bytes(59_994)
    data = jpeg_header_only(60_000, 60_000)
    with pytest.raises(ImageTooLargeError):
        read_image(data[:2] + app1 + data[2:], name="exif-bomb.jpg")


# ------------------------------------------------------------------------------------------------
# Refusals: typed errors naming the file

def test_empty_file_is_refused(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"empty\.jpg: .*empty"):
        read_image(empty)


@pytest.mark.parametrize("content, name, what", [
    (b"patient notes: follow-up in two weeks\n", "notes.jpg", "plain text"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "download.png", "HTML"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "report.dcm", "PDF"),
    (b"GIF89a\x01\x00\x01\x00\x00\x00\x00", "scan.jpeg", "GIF"),
    (bytes(range(7, 250)), "blob.png", "unrecognised"),
])
def test_not_an_image_is_refused_with_what_it_looks_like(content, name, what):
    pattern = rf"^{name.replace('.', '[.]')}: not a DICOM, JPEG or PNG.*{what}"
    with pytest.raises(UnsupportedFormatError, match=pattern):
        read_image(content, name=name)


def test_truncated_jpeg_and_png_are_refused(kermany_jpegs, xray):
    jpeg = kermany_jpegs[0].read_bytes()
    png = png_bytes(xray)
    for data, name in ((jpeg[: len(jpeg) // 2], "half.jpg"), (png[: len(png) // 2], "half.png"),
                       (jpeg[:20], "stub.jpg"), (png[:20], "stub.png")):
        with pytest.raises(CorruptImageError, match=rf"^{name.replace('.', '[.]')}: "):
            read_image(data, name=name)


def test_jpeg_with_garbage_after_the_header_is_refused(kermany_jpegs):
    jpeg = kermany_jpegs[0].read_bytes()
    sos = jpeg.index(b"\xff\xda")
    garbage = jpeg[:sos] + bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8))
    with pytest.raises(CorruptImageError, match=r"^garbage\.jpg: "):
        read_image(garbage, name="garbage.jpg")


def test_missing_file_and_folder_are_typed_errors(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_a_decoder_exception_never_escapes(monkeypatch, xray):
    def broken(*args, **kwargs):
        raise RuntimeError("libpng exploded")

    monkeypatch.setattr(decode_module, "read_raster", broken)
    with pytest.raises(CorruptImageError, match=r"^x\.png: .*RuntimeError"):
        read_image(png_bytes(xray), name="x.png")


# ------------------------------------------------------------------------------------------------
# Sniffing

@pytest.mark.parametrize("data, expected", [
    (b"\xff\xd8\xff\xe0" + bytes(20), "jpeg"),
    (b"\x89PNG\r\n\x1a\n" + bytes(20), "png"),
    (bytes(128) + b"DICM" + bytes(20), "dicom"),
    (b"\x02\x00\x00\x00UL\x04\x00" + bytes(20), "dicom"),   # no preamble: starts at (0002,0000)
    (b"\x08\x00\x05\x00\x0a\x00\x00\x00" + bytes(20), "dicom"),   # bare implicit VR dataset
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP, which is not supported"),
    (b"\xef\xbb\xbf<html><body>x</body></html>", "HTML text"),
])
def test_sniff_format(data, expected):
    assert sniff_format(data) == expected
