"""Detect a file's format from its first bytes, not its name."""

from __future__ import annotations


def sniff_format(data: bytes) -> str:
    """Return "dicom", "jpeg", "png", or a short description of what the content looks like."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if _looks_like_bare_dicom(data):
        return "dicom"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "HTML text"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "XML/SVG text"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "a ZIP archive"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF, which is not supported"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF, which is not supported"
    try:
        data[:1024].decode("utf-8")
        return "plain text"
    except UnicodeDecodeError:
        return "unrecognised binary content"


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
