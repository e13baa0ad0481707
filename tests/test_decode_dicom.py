"""DICOM decoding: real files from assets/sample, and variants written from real pixels (dicom_factory)."""

from __future__ import annotations

import copy
import io

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.encaps import get_frame

from engine.decode import dicom as dicom_reader
from engine.decode import read_image
from engine.errors import (CorruptImageError, ImageReadError, ImageTooLargeError, MissingPixelDataError,
                           UnsupportedFormatError)

MONO1_J2K = "cr_chest_pa_mono1_j2k.dcm"
MONO2_JPEG = "cr_chest_pa_mono2_jpeg_baseline.dcm"


def decode(ds_or_bytes, name: str = "variant.dcm"):
    data = ds_or_bytes if isinstance(ds_or_bytes, bytes) else _bytes(ds_or_bytes)
    return read_image(data, name=name)


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def minmax(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window, output in [0, 1] (independent of pydicom)."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def lung_vs_mediastinum(pixels: np.ndarray) -> tuple[float, float]:
    """Mean of the central band (spine, mediastinum) and of the two lung bands, mid-height."""
    h, w = pixels.shape
    band = pixels[int(h * 0.3):int(h * 0.6)]
    centre = band[:, int(w * 0.45):int(w * 0.55)].mean()
    lungs = max(band[:, int(w * 0.2):int(w * 0.35)].mean(), band[:, int(w * 0.65):int(w * 0.8)].mean())
    return float(centre), float(lungs)


# ------------------------------------------------------------------------------------------------
# Real files

@pytest.mark.parametrize("filename, shape, photometric, syntax, plugin", [
    (MONO1_J2K, (1955, 1841), "MONOCHROME1", "JPEG 2000 Image Compression", "pylibjpeg"),
    (MONO2_JPEG, (1024, 1024), "MONOCHROME2", "JPEG Baseline (Process 1)", "pillow"),
])
def test_real_dicom_decodes_with_lungs_dark(real_dicoms, filename, shape, photometric, syntax, plugin):
    image = read_image(real_dicoms[filename])
    assert image.pixels.dtype == np.float32 and image.shape == shape
    assert 0.0 <= image.pixels.min() < 0.2 and 0.8 < image.pixels.max() <= 1.0
    meta = image.metadata
    assert (meta.format, meta.modality, meta.body_part, meta.view_position) == ("dicom", "CR", "CHEST", "PA")
    assert (meta.photometric_interpretation, meta.transfer_syntax, meta.decoder) == (photometric, syntax, plugin)
    assert content_warnings(image) == []     # the adult patients' population warning aside (test_population.py)
    # White = dense after decoding (MONOCHROME1 inverted): the mediastinum is brighter than the lungs.
    centre, lungs = lung_vs_mediastinum(image.pixels)
    assert centre > lungs + 0.1


def test_real_monochrome1_is_inverted(real_dicoms):
    ds = pydicom.dcmread(real_dicoms[MONO1_J2K])
    as_mono2 = copy.deepcopy(ds)
    as_mono2.PhotometricInterpretation = "MONOCHROME2"
    inverted = read_image(real_dicoms[MONO1_J2K]).pixels
    plain = decode(as_mono2, "relabelled.dcm").pixels
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-6)
    assert read_image(real_dicoms[MONO1_J2K]).metadata.window_width == 30000.0


def test_real_jpeg_baseline_matches_opencv_decode_of_the_same_stream(real_dicoms):
    ds = pydicom.dcmread(real_dicoms[MONO2_JPEG])
    stream = get_frame(ds.PixelData, 0, number_of_frames=1)
    opencv = cv2.imdecode(np.frombuffer(stream, np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_allclose(read_image(real_dicoms[MONO2_JPEG]).pixels, minmax(opencv), atol=1e-6)


def test_real_identifiers_kept_apart(real_dicoms):
    image = read_image(real_dicoms[MONO1_J2K])
    ids = image.identifiers.as_dict()
    assert ids["patient_name"] == "CompressedSamples^RG1" and ids["patient_id"] == "9RG1"
    assert not set(ids.values()) & {str(v) for v in image.metadata.as_dict().values()}


# ------------------------------------------------------------------------------------------------
# Grayscale pipeline: MONOCHROME1/2, bit depths, rescale, window, VOI LUT

def test_monochrome1_and_monochrome2_give_the_same_pixels(dcm, xray):
    mono2 = decode(dcm.dataset(xray, photometric="MONOCHROME2"))
    mono1 = decode(dcm.dataset(255 - xray, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)
    np.testing.assert_allclose(mono2.pixels, minmax(xray), atol=1e-6)  # no window: min..max


def test_monochrome1_and_monochrome2_with_window_give_the_same_pixels(dcm, xray):
    stored = dcm.widen(xray, 12, signed=False)
    mono2 = decode(dcm.dataset(stored, bits_stored=12, WindowCenter=1800, WindowWidth=2400))
    mono1 = decode(dcm.dataset((4095 - stored).astype(np.uint16), photometric="MONOCHROME1", bits_stored=12,
                               WindowCenter=4095 - 1800 + 1, WindowWidth=2400))
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)
    np.testing.assert_allclose(mono2.pixels, window(stored, 1800, 2400), atol=1e-6)


BIT_DEPTHS = [(12, False), (12, True), (16, False), (16, True)]


@pytest.mark.parametrize("bits, signed", BIT_DEPTHS, ids=["u12", "s12", "u16", "s16"])
def test_bit_depths_with_rescale_then_window(dcm, xray, bits, signed):
    stored = dcm.widen(xray, bits, signed)
    slope, intercept = 0.5, -1000.0
    values = stored.astype(np.float64) * slope + intercept       # modality LUT first
    center, width = float(np.percentile(values, 40)), float(np.ptp(values) / 2)
    ds = dcm.dataset(stored, bits_stored=bits, RescaleSlope=slope, RescaleIntercept=intercept,
                     WindowCenter=center, WindowWidth=width)
    image = decode(ds)
    np.testing.assert_allclose(image.pixels, window(values, center, width), atol=1e-6)
    assert image.metadata.bits_stored == bits and image.metadata.window_center == pytest.approx(center)


@pytest.mark.parametrize("bits, signed", BIT_DEPTHS, ids=["u12", "s12", "u16", "s16"])
def test_bit_depths_without_window_use_min_max(dcm, xray, bits, signed):
    stored = dcm.widen(xray, bits, signed)
    ds = dcm.dataset(stored, bits_stored=bits, RescaleSlope=2.0, RescaleIntercept=-1024)
    np.testing.assert_allclose(decode(ds).pixels, minmax(stored), atol=1e-6)


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence_is_preferred_over_window(dcm, xray, vr):
    stored = dcm.widen(xray, 12, signed=False)
    table = np.rint(4095 * (np.arange(4096) / 4095.0) ** 0.5).astype(np.int64)   # a gamma curve
    ds = dcm.dataset(stored, bits_stored=12, WindowCenter=100, WindowWidth=50)   # a window to ignore
    ds.VOILUTSequence = [dcm.voi_lut(4096, 0, 16, table, vr=vr)]
    np.testing.assert_allclose(decode(ds).pixels, table[stored] / 4095.0, atol=1e-6)


def test_voi_lut_clips_inputs_and_handles_8_bit_tables_over_256_entries(dcm, xray):
    # pydicom 3.0's apply_voi would wrap these indices (held as uint8): the reader does its own lookup.
    stored = dcm.widen(xray, 12, signed=False)
    first, entries = 1000, 2000
    table = np.linspace(0, 255, entries).round().astype(np.int64)
    ds = dcm.dataset(stored, bits_stored=12)
    ds.VOILUTSequence = [dcm.voi_lut(entries, first, 8, table)]
    expected = table[np.clip(stored.astype(np.int64) - first, 0, entries - 1)] / 255.0
    np.testing.assert_allclose(decode(ds).pixels, expected, atol=1e-6)


def test_invalid_window_width_falls_back_to_min_max_with_a_warning(dcm, xray):
    image = decode(dcm.dataset(xray, WindowCenter=128, WindowWidth=0), "zero-width.dcm")
    np.testing.assert_allclose(image.pixels, minmax(xray), atol=1e-6)
    assert any("Window" in w for w in image.warnings)


# ------------------------------------------------------------------------------------------------
# Compressed transfer syntaxes

def _lossless(dcm, ds, syntax):
    if syntax == uid.JPEGLosslessSV1:
        return dcm.jpeg_lossless(ds, selection_value_1=True)
    if syntax == uid.JPEGLossless:
        return dcm.jpeg_lossless(ds, selection_value_1=False)
    return dcm.compressed(ds, syntax)


LOSSLESS = [  # syntax, plugin expected to decode it
    (uid.JPEGLosslessSV1, "gdcm"),
    (uid.JPEGLossless, "gdcm"),
    (uid.JPEGLSLossless, "pyjpegls"),
    (uid.JPEG2000Lossless, "pylibjpeg"),
    (uid.RLELossless, "pylibjpeg"),
]


@pytest.mark.parametrize("syntax, plugin", LOSSLESS, ids=[s.name.split(",")[0] for s, _ in LOSSLESS])
@pytest.mark.parametrize("bits, signed", [(8, False), (12, False), (16, True)], ids=["u8", "u12", "s16"])
def test_lossless_syntax_decodes_exactly_to_the_uncompressed_pixels(dcm, xray, syntax, plugin, bits, signed):
    stored = xray if bits == 8 else dcm.widen(xray, bits, signed)
    plain = dcm.dataset(stored, bits_stored=bits, RescaleSlope=1, RescaleIntercept=0)
    packed = _lossless(dcm, plain, syntax)
    assert packed.file_meta.TransferSyntaxUID == syntax
    image = decode(packed)
    np.testing.assert_array_equal(image.pixels, decode(plain).pixels)
    assert image.metadata.transfer_syntax == syntax.name and image.metadata.decoder == plugin


def test_jpeg_baseline_from_opencv_is_within_tolerance(dcm, xray):
    ds, stream = dcm.jpeg_baseline(xray, quality=90)
    image = decode(ds)
    opencv = cv2.imdecode(np.frombuffer(stream, np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_allclose(image.pixels, minmax(opencv), atol=1e-6)   # Pillow == OpenCV here
    error = np.abs(image.pixels - minmax(xray))                         # lossy vs the source
    assert error.mean() < 0.01 and error.max() < 0.1
    assert image.metadata.decoder == "pillow"


@pytest.mark.parametrize("syntax, options, mean_tol, max_tol", [
    (uid.JPEG2000, {"j2k_cr": [10]}, 0.01, 0.1),
    (uid.JPEGLSNearLossless, {"jls_error": 2}, 0.01, 3 / 253),   # |error| <= 2 levels, 253 = range
], ids=["JPEG2000-lossy", "JPEG-LS-near-lossless"])
def test_lossy_syntax_is_within_tolerance(dcm, xray, syntax, options, mean_tol, max_tol):
    plain = dcm.dataset(xray)
    error = np.abs(decode(dcm.compressed(plain, syntax, **options)).pixels - decode(plain).pixels)
    assert error.mean() < mean_tol and error.max() <= max_tol


# ------------------------------------------------------------------------------------------------
# Colour, multi-frame, preamble, names

def test_rgb_secondary_capture_becomes_gray(dcm, xray):
    gray_rgb = np.repeat(xray[..., None], 3, axis=2)
    image = decode(dcm.dataset(gray_rgb, photometric="RGB", modality="OT",
                               sop_class=uid.SecondaryCaptureImageStorage))
    np.testing.assert_allclose(image.pixels, xray / 255.0, atol=1e-6)
    assert image.metadata.sop_class == "Secondary Capture Image Storage"


def _colour(xray):
    return np.stack([xray, np.clip(xray.astype(int) + 20, 0, 255), xray // 2], axis=-1).astype(np.uint8)


def _luminance(rgb):
    rgb = rgb.astype(np.float64)
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0


def test_ybr_full_and_colour_jpeg_become_gray(dcm, xray):
    rgb = _colour(xray)
    ybr = decode(dcm.ybr_full(rgb)).pixels
    assert np.abs(ybr - _luminance(rgb)).max() < 0.01          # YBR -> RGB rounding
    colour_jpeg, _ = dcm.jpeg_baseline(rgb, quality=95)
    error = np.abs(decode(colour_jpeg).pixels - _luminance(rgb))
    assert error.mean() < 0.01 and error.max() < 0.1          # lossy, chroma subsampled


@pytest.mark.parametrize("syntax", [uid.ExplicitVRLittleEndian, uid.RLELossless], ids=["native", "RLE"])
def test_multi_frame_gives_the_first_frame_and_a_warning(dcm, xray, syntax):
    frames = np.stack([xray, xray[::-1], np.zeros_like(xray)])
    ds = dcm.dataset(frames)
    if syntax != uid.ExplicitVRLittleEndian:
        ds = dcm.compressed(ds, syntax)
    image = decode(ds)
    np.testing.assert_allclose(image.pixels, minmax(xray), atol=1e-6)
    assert image.metadata.number_of_frames == 3
    assert any("3 frames" in w and "first frame" in w for w in image.warnings)


def test_files_without_preamble_or_file_meta_decode(dcm, xray):
    ds = dcm.dataset(xray)
    expected = decode(ds).pixels
    no_preamble = read_image(dcm.without_preamble(ds), name="no-preamble.dcm")
    bare = read_image(dcm.bare_dataset(ds), name="bare.dcm")
    np.testing.assert_array_equal(no_preamble.pixels, expected)
    np.testing.assert_array_equal(bare.pixels, expected)
    assert bare.metadata.transfer_syntax == "Implicit VR Little Endian"


def test_dicom_named_jpg_is_detected_by_content(dcm, xray, tmp_path):
    path = tmp_path / "chest.jpg"
    path.write_bytes(_bytes(dcm.dataset(xray)))
    image = read_image(path)
    assert image.metadata.format == "dicom" and image.name == str(path)


# ------------------------------------------------------------------------------------------------
# Warnings about content

def test_ct_slice_is_decoded_with_a_warning(dcm, xray):
    hu = dcm.widen(xray, 12, signed=True)
    ds = dcm.dataset(hu, bits_stored=12, modality="CT", body_part="HEAD", sop_class=uid.CTImageStorage,
                     RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    image = decode(ds, "slice.dcm")
    assert image.shape == xray.shape
    assert any("Modality CT is not a radiograph (CR/DX/DR)" in w for w in image.warnings)
    assert any("Body Part Examined is HEAD" in w for w in image.warnings)


@pytest.mark.parametrize("modality, body_part, expected", [
    ("DX", "CHEST", 0), ("CR", "THORAX", 0), ("DX", None, 0), ("MG", "BREAST", 2), ("DX", "ABDOMEN", 1),
])
def test_modality_and_body_part_warnings(dcm, xray, modality, body_part, expected):
    assert len(content_warnings(decode(dcm.dataset(xray, modality=modality, body_part=body_part)))) == expected


def content_warnings(image) -> list[str]:
    """Warnings about the content, without the out-of-population age warning (the factory's patient
    is an adult; see test_population.py)."""
    return [w for w in image.warnings if not w.startswith("outside the training population")]


# ------------------------------------------------------------------------------------------------
# Identifiers

def test_identifiers_only_in_patient_identifiers(dcm, xray):
    image = decode(dcm.dataset(xray, modality="CT"), "study.dcm")   # CT: to have a warning too
    assert image.identifiers.as_dict() == {
        "patient_name": "Doe^Jane", "patient_id": "MRN-0042-7731", "birth_date": "19700214",
        "accession_number": "ACC-889911", "institution": "Saint Example Hospital"}
    shown = " ".join(str(v) for v in image.metadata.as_dict().values()) + " ".join(image.warnings)
    for value in dcm.IDENTIFIERS.values():
        assert value not in shown
    assert {"modality", "body_part", "view_position", "study_date", "manufacturer", "pixel_spacing",
            "photometric_interpretation", "bits_stored", "transfer_syntax", "rows", "columns"} \
        <= set(image.metadata.as_dict())


def test_error_messages_do_not_quote_identifiers(dcm, xray, monkeypatch):
    def leaky(*args, **kwargs):
        raise ValueError("cannot decode frame of Doe^Jane, ID MRN-0042-7731")

    monkeypatch.setattr(dicom_reader, "_decode_first_frame", leaky)
    with pytest.raises(CorruptImageError) as err:
        decode(dcm.dataset(xray), "leak.dcm")
    message = str(err.value)
    assert message.startswith("leak.dcm: ") and "Doe" not in message and "MRN-0042-7731" not in message


# ------------------------------------------------------------------------------------------------
# Refusals: each a typed error naming the file

def test_no_pixel_data_is_refused(dcm, xray):
    with pytest.raises(MissingPixelDataError, match=r"^report\.dcm: .*Pixel Data \(7FE0,0010\)"):
        decode(dcm.without_pixel_data(dcm.dataset(xray)), "report.dcm")


def test_pixel_data_shorter_than_the_header_promises_is_refused(dcm, xray):
    with pytest.raises(CorruptImageError, match=r"^short\.dcm: .*header promises"):
        decode(dcm.with_short_pixel_data(dcm.dataset(xray)), "short.dcm")


def test_file_cut_in_the_middle_is_refused(dcm, xray):
    data = _bytes(dcm.dataset(dcm.widen(xray, 12, signed=False), bits_stored=12))
    with pytest.raises(ImageReadError, match=r"^cut\.dcm: "):
        read_image(data[: len(data) - 1000], name="cut.dcm")
    with pytest.raises(MissingPixelDataError, match=r"^cut\.dcm: .*truncated"):
        read_image(data[:600], name="cut.dcm")


GARBAGE = [uid.JPEGBaseline8Bit, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless]


@pytest.mark.parametrize("syntax", GARBAGE, ids=[s.name.split(" (")[0].split(",")[0] for s in GARBAGE])
def test_garbage_compressed_fragment_is_refused(dcm, xray, syntax):
    with pytest.raises(CorruptImageError, match=r"^garbage\.dcm: .*corrupt"):
        decode(dcm.garbage_fragment(dcm.dataset(xray), syntax), "garbage.dcm")


def test_truncated_compressed_stream_is_refused_before_decoding(dcm, xray, monkeypatch):
    monkeypatch.setattr(dicom_reader, "_decode_first_frame", _must_not_decode)
    packed = dcm.compressed(dcm.dataset(xray), uid.JPEGLSLossless)
    stream = get_frame(packed.PixelData, 0, number_of_frames=1)
    cut = dcm.encapsulated(packed, [stream[: len(stream) // 2]], uid.JPEGLSLossless)
    with pytest.raises(CorruptImageError, match=r"^cut\.dcm: .*JPEG-LS .*truncated"):
        decode(cut, "cut.dcm")


@pytest.mark.parametrize("syntax", [uid.JPEG2000Lossless, uid.JPEGLSLossless], ids=["JPEG2000", "JPEG-LS"])
def test_codestream_larger_than_rows_and_columns_is_refused(dcm, xray, syntax, monkeypatch):
    monkeypatch.setattr(dicom_reader, "_decode_first_frame", _must_not_decode)
    packed = dcm.compressed(dcm.dataset(xray), syntax)
    packed.Rows, packed.Columns = 112, 112   # the stream still declares 224 x 224
    with pytest.raises(CorruptImageError, match=r"^small\.dcm: .*224 x 224 pixels but .* 112 x 112"):
        decode(packed, "small.dcm")


def _must_not_decode(*args, **kwargs):
    raise AssertionError("the pixel-data decoder was called")


@pytest.mark.filterwarnings("ignore:The decoded RLE segment:UserWarning")
def test_corrupt_rle_segments_never_escape_as_raw_exceptions(dcm, xray):
    # Some of these make pylibjpeg-rle panic (a Rust panic is a BaseException, not an Exception);
    # pydicom's own RLE decoder is then tried. Each file is decoded or refused, never a raw error.
    packed = dcm.compressed(dcm.dataset(dcm.widen(xray, 12, signed=False), bits_stored=12), uid.RLELossless)
    stream = get_frame(packed.PixelData, 0, number_of_frames=1)
    rng = np.random.default_rng(3)
    for _ in range(8):
        scrambled = bytearray(stream)
        for i in rng.integers(200, len(stream), 10):
            scrambled[i] = int(rng.integers(0, 256))
        try:
            decode(dcm.encapsulated(packed, [bytes(scrambled)], uid.RLELossless), "rle.dcm")
        except ImageReadError as err:
            assert str(err).startswith("rle.dcm: ")


def test_a_plugin_panic_becomes_a_typed_error(dcm, xray, monkeypatch):
    class PanicException(BaseException):   # what pyo3 raises when Rust code panics
        pass

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(dicom_reader, "get_decoder", lambda syntax: type("D", (), {
        "available_plugins": ("pylibjpeg", "pydicom"), "as_array": staticmethod(panic)})())
    with pytest.raises(CorruptImageError, match=r"^panic\.dcm: .*pylibjpeg: index out of bounds"):
        decode(dcm.compressed(dcm.dataset(xray), uid.RLELossless), "panic.dcm")


def test_huge_declared_rows_and_columns_are_refused_before_decoding(dcm, xray, monkeypatch):
    monkeypatch.setattr(dicom_reader, "_decode_first_frame", _must_not_decode)
    ds = dcm.compressed(dcm.dataset(xray), uid.RLELossless)
    ds.Rows, ds.Columns = 60000, 60000
    with pytest.raises(ImageTooLargeError, match=r"^bomb\.dcm: .*60000 x 60000"):
        decode(ds, "bomb.dcm")


def test_12_bit_lossy_jpeg_is_refused_as_unsupported(dcm, xray, monkeypatch):
    # No permissively licensed plugin decodes 12-bit JPEG Extended (see engine/decode/dicom.py).
    monkeypatch.setattr(dicom_reader, "_decode_first_frame", _must_not_decode)
    ds, stream = dcm.jpeg_baseline(xray)
    sof = stream.index(b"\xff\xc0")
    stream = stream[:sof] + b"\xff\xc1" + stream[sof + 2:sof + 4] + b"\x0c" + stream[sof + 5:]  # SOF1, 12 bits
    ds = dcm.encapsulated(ds, [stream], uid.JPEGExtended12Bit, BitsStored=12, BitsAllocated=16, HighBit=11)
    with pytest.raises(UnsupportedFormatError, match=r"^ext12\.dcm: 12-bit lossy JPEG .* GPLv3"):
        decode(ds, "ext12.dcm")


def test_blank_image_is_refused_not_scored(dcm, xray):
    with pytest.raises(CorruptImageError, match="blank.dcm: every pixel has the same value: the image is blank"):
        decode(dcm.dataset(np.full((64, 48), 7, np.uint8)), "blank.dcm")
    with pytest.raises(CorruptImageError, match="blank.png: every pixel has the same value"):
        read_image(cv2.imencode(".png", np.zeros((64, 48), np.uint8))[1].tobytes(), "blank.png")


def test_unsupported_transfer_syntax_is_refused(dcm, xray):
    ds = dcm.encapsulated(dcm.dataset(xray), [b"\x00\x00\x01\xb3" + bytes(100)], uid.MPEG2MPML)
    with pytest.raises(UnsupportedFormatError, match=r"^video\.dcm: .*MPEG2"):
        decode(ds, "video.dcm")


def test_missing_plugin_says_what_to_install(dcm, xray, monkeypatch):
    monkeypatch.setitem(dicom_reader.PLUGINS, uid.RLELossless, ("not-installed",))
    with pytest.raises(UnsupportedFormatError, match=r"^rle\.dcm: .*pip install pylibjpeg pylibjpeg-rle"):
        decode(dcm.compressed(dcm.dataset(xray), uid.RLELossless), "rle.dcm")


def test_unparseable_dicom_is_a_typed_error():
    junk = bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(40)
    with pytest.raises(ImageReadError, match=r"^junk\.dcm: "):
        read_image(junk, name="junk.dcm")
