"""Typed errors. Every message names the file and the problem, so a batch can report it per file."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for errors the engine reports to users."""


class ImageReadError(EngineError, ValueError):
    """A file could not be read as a radiograph. ``str(err)`` is ``"<file>: <reason>"``."""

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = filename
        self.reason = reason
        super().__init__(f"{filename}: {reason}")


class EmptyFileError(ImageReadError):
    """The file has no bytes."""


class UnsupportedFormatError(ImageReadError):
    """The content is not DICOM, JPEG or PNG (text, HTML, another format)."""


class CorruptImageError(ImageReadError):
    """The file claims a known format but its content cannot be decoded."""


class MissingPixelDataError(ImageReadError):
    """A DICOM file without image pixels (a structured report, a truncated file, ...)."""


class ImageTooLargeError(ImageReadError):
    """Declared dimensions beyond the safety limit (decompression-bomb guard) or too many bytes."""


class CheckpointError(EngineError):
    """A checkpoint folder is missing, incomplete, or does not match its declared architecture."""
