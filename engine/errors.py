"""The one error tree. Every error the engine reports to a user is an :class:`EngineError`, whose
message names the file (or the setting, the folder, the peer) and the problem, so that a batch can report
it per file and a page can show ``str(err)`` as it is. Callers catch ``EngineError``, not ``Exception``.

    EngineError
    ├── ImageReadError (Empty, UnsupportedFormat, CorruptImage, MissingPixelData, ImageTooLarge)
    ├── CheckpointError          a checkpoint folder or its card is wrong
    ├── PathNotAllowed           a typed path outside the configured roots
    ├── ProfileError             a site profile cannot be fitted, saved, found or trusted
    ├── StoreError               a store operation that cannot be done
    │   ├── StoreDamaged         the store's database is missing, empty or corrupt
    │   └── DecisionExists       (engine.worklist.store) a second decision without "change"
    ├── NotDicomError            not a DICOM image a result can be filed under
    └── PacsError                a PACS could not be reached, or refused
        └── PacsUnreachable      no answer at all (down, unreachable, association refused)
"""

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


class PathNotAllowed(EngineError):
    """A typed path is outside the configured roots, or does not exist (one message for both)."""


class ProfileError(EngineError, ValueError):
    """A profile that cannot be fitted, saved, found or trusted (the message says why)."""


class StoreError(EngineError, ValueError):
    """A store operation that cannot be done (the message says why)."""


class StoreDamaged(StoreError):
    """The store's database is missing beside its files, empty, or corrupt: nothing is opened, so that a
    damaged store never shows as an empty worklist. The message names the file and what to do."""


class NotDicomError(EngineError, ValueError):
    """The input is not a DICOM image with the UIDs a result can be filed under."""


class PacsError(EngineError, RuntimeError):
    """A PACS could not be reached, or refused (the message says which; never an identifier)."""


class ResultNotWritable(PacsError):
    """A scored DICOM source whose header values cannot be copied into a valid result object (a UID
    that is not a UID, control characters or undecodable bytes in an identity attribute): no result
    is written for it rather than one whose identity no longer matches the source's."""


class PacsUnreachable(PacsError):
    """The PACS did not answer (down, unreachable, association refused): nothing it was sent was refused."""
