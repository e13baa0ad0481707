"""Turn paths (files, folders, ZIP archives) and uploads into named inputs, read lazily.

Every input yields exactly one :class:`InputItem`, and every failure to list or read one (a folder
that cannot be opened, a file that vanished, a ZIP member with a bad CRC, a broken deflate stream,
an unsupported compression method, a size over the limits) is an item whose ``error`` or whose
``read()`` says which input and what went wrong, as an :class:`~engine.errors.ImageReadError`.
Nothing is dropped silently and nothing else escapes.

Names are relative: a file given directly is named by its base name, a file found in a folder by
its path inside that folder, a ZIP member by ``archive.zip/member``; so the folder a user typed (often
a patient's name) never reaches a CSV. ZIP member names are only labels, never paths to write to
(``../../x`` is shown as ``archive.zip/x``).

Limits (:mod:`engine.inputs.limits`) are checked before bytes are read: a file's size by ``stat``, a
member's by the archive's directory, and again while streaming, so a forged directory cannot make
us read more. Per archive, overlapping members (a ZIP-bomb pattern: many entries sharing one
stream), a member claiming more than ``MAX_MEMBER_RATIO`` times its stored size, and the total
expanded bytes are refused before any inflating.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Optional, Union

from engine.inputs import limits
from engine.errors import ImageReadError, ImageTooLargeError

SKIP_NAMES = {".DS_Store", "Thumbs.db", "DICOMDIR"}
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class InputItem:
    """One input: a display name and a way to get its bytes (or an error found while listing).

    ``read()`` raises :class:`~engine.errors.ImageReadError` naming the input on any failure.
    """

    name: str
    read: Callable[[], bytes]
    error: str = ""
    sha256: str = ""        # when already known (a file from the store's cache): not hashed again


def error_item(name: str, reason: str) -> InputItem:
    return InputItem(name, _refuse(name, reason), error=f"{name}: {reason}")


def _refuse(name: str, reason: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise ImageReadError(name, reason)
    return read


def is_hidden(name: str) -> bool:
    base = PurePosixPath(name.replace("\\", "/")).name
    return base.startswith(".") or base in SKIP_NAMES or "__MACOSX" in name


def is_zip_bytes(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


# ------------------------------------------------------------------------------------------------
# Files and folders

def iter_inputs(paths: Iterable[Union[str, Path]]) -> Iterator[InputItem]:
    """Files as given, folders recursively (sorted), ZIP archives member by member."""
    for raw in paths:
        path = Path(raw)
        label = safe_name(path.name or str(path))
        try:
            st = path.stat()
        except FileNotFoundError:
            yield error_item(label, "no such file or folder")
            continue
        except OSError as exc:
            yield error_item(label, f"cannot be opened ({exc.strerror or exc})")
            continue
        if path.is_dir():
            yield from _walk(path)
        else:
            yield from file_items(path, label, st.st_size)


def safe_name(name: str) -> str:
    """A file name as every output can write it: bytes that are not UTF-8 (kept by Python as surrogate
    escapes) become ``\\xNN``, so a CSV, a log line or a database row never fails on them."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def list_folder(root: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """The one folder listing (CLI, dashboard folder fields, archive): every non-hidden file under
    ``root`` as (relative name, path), sorted, and the folders that could not be read as (name, reason).
    Names are :func:`safe_name`\'d; nothing is opened here (a FIFO cannot block the listing)."""
    problems: list[tuple[str, str]] = []

    def onerror(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        rel = where.relative_to(root).as_posix() if where != root else root.name or str(root)
        problems.append((safe_name(rel + "/" if where != root else rel),
                         f"folder cannot be read ({exc.strerror or exc}): its files were not scored"))

    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root, onerror=onerror):
        rel_folder = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found += [(safe_name((rel_folder / f).as_posix()), Path(folder) / f) for f in files if not is_hidden(f)]
    return sorted(found), problems


def not_a_regular_file(path: Path) -> str:
    """Why ``path`` must not be opened ('' for a regular file): FIFOs, sockets and devices are refused
    by type, from ``stat``, before anything could block on them."""
    import stat as st_mod
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if st_mod.S_ISREG(mode):
        return ""
    kind = ("a named pipe (FIFO)" if st_mod.S_ISFIFO(mode) else "a socket" if st_mod.S_ISSOCK(mode) else
            "a device" if st_mod.S_ISCHR(mode) or st_mod.S_ISBLK(mode) else "a folder" if st_mod.S_ISDIR(mode)
            else "not a regular file")
    return f"is {kind}, not a file (not read)"


def _walk(root: Path) -> Iterator[InputItem]:
    """Every non-hidden file under ``root``, sorted; an unreadable folder is an error item."""
    found, problems = list_folder(root)
    for rel, reason in problems:
        yield error_item(rel, reason)
    for rel, path in found:
        try:
            size = path.stat().st_size
        except OSError as exc:
            yield error_item(rel, f"cannot be read ({exc.strerror or exc})")
            continue
        yield from file_items(path, rel, size)


def file_items(path: Path, label: str, size: int) -> Iterator[InputItem]:
    """The inputs of one listed file: itself, a ZIP's members, or one error item (never opened when it
    is not a regular file, or is over the size limit)."""
    label = safe_name(label)
    refusal = not_a_regular_file(path)
    if refusal:
        yield error_item(label, refusal)
    elif path.suffix.lower() == ".zip" or _starts_like_zip(path):
        yield from iter_zip(path, label)
    elif size > limits.MAX_FILE_BYTES:
        yield error_item(label, f"{limits.fmt_mb(size)} is over the {limits.fmt_mb(limits.MAX_FILE_BYTES)} "
                                "limit for one file (not read)")
    else:
        yield InputItem(label, lambda: read_file(path, label))


def read_file(path: Path, label: str) -> bytes:
    """The file's bytes, never more than the limit (a file may grow after it was listed)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limits.MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ImageReadError(label, "file not found (moved or deleted after it was listed?)") from None
    except IsADirectoryError:
        raise ImageReadError(label, "is a folder, not a file") from None
    except OSError as exc:
        raise ImageReadError(label, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > limits.MAX_FILE_BYTES:
        raise ImageTooLargeError(label, f"over the {limits.fmt_mb(limits.MAX_FILE_BYTES)} limit for one file")
    return data


def _starts_like_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return is_zip_bytes(f.read(4))
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# ZIP archives

def _zip_member_label(archive: str, member: str) -> str:
    parts = [p for p in PurePosixPath(member.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return f"{archive}/{'/'.join(parts) or '(unnamed)'}"


class _ArchiveBudget:
    """Bytes expanded so far from one archive, against MAX_ARCHIVE_EXPANDED_BYTES."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, n: int, name: str) -> None:
        self.used += n
        if self.used > limits.MAX_ARCHIVE_EXPANDED_BYTES:
            raise ImageTooLargeError(name, "the archive expands past the "
                                           f"{limits.fmt_mb(limits.MAX_ARCHIVE_EXPANDED_BYTES)} limit for one "
                                           "archive: this member and the rest were not read")


def iter_zip(data_or_path: Union[bytes, Path], label: str) -> Iterator[InputItem]:
    """Members of an archive (nested folders included, directories and OS litter skipped)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        yield error_item(label, f"not a readable ZIP archive ({_zip_reason(exc)})")
        return
    overlapping = _overlapping(infos)
    declared = 0
    budget = _ArchiveBudget()
    for info in infos:
        if info.is_dir() or is_hidden(info.filename):
            continue
        name = _zip_member_label(label, info.filename)
        reason = _member_refusal(info, overlapping)
        if reason is None:
            declared += info.file_size
            if declared > limits.MAX_ARCHIVE_EXPANDED_BYTES:
                reason = (f"the archive's members expand past the "
                          f"{limits.fmt_mb(limits.MAX_ARCHIVE_EXPANDED_BYTES)} limit for one archive (not read)")
        if reason is not None:
            yield error_item(name, reason)
            continue
        yield InputItem(name, lambda zf=zf, info=info, name=name: _read_member(zf, info, name, budget))


def _member_refusal(info: zipfile.ZipInfo, overlapping: set[int]) -> Optional[str]:
    if info.flag_bits & 0x1:
        return "encrypted ZIP member (not read)"
    if id(info) in overlapping:
        return ("its data overlaps another member's (a ZIP-bomb pattern: many entries sharing one "
                "compressed stream); not read")
    if info.file_size > limits.MAX_FILE_BYTES:
        return (f"{limits.fmt_mb(info.file_size)} is over the {limits.fmt_mb(limits.MAX_FILE_BYTES)} "
                "limit for one file (not read)")
    if (info.file_size > limits.RATIO_CHECK_FROM_BYTES
            and info.file_size > limits.MAX_MEMBER_RATIO * max(info.compress_size, 1)):
        return (f"expands {info.file_size / max(info.compress_size, 1):,.0f} times its stored size "
                f"(limit {limits.MAX_MEMBER_RATIO}x: a ZIP-bomb pattern); not read")
    return None


def _overlapping(infos: list[zipfile.ZipInfo]) -> set[int]:
    """Members whose stored data starts inside an earlier member's (ids of their ZipInfo).

    The end of each member is underestimated (its local extra field is not counted), so a
    well-formed archive is never flagged.
    """
    spans = sorted(((i.header_offset, 30 + len(i.orig_filename.encode("utf-8", "replace")) + i.compress_size, i)
                    for i in infos if not i.is_dir()), key=lambda t: t[0])
    flagged: set[int] = set()
    end = -1
    for start, length, info in spans:
        if start < end:
            flagged.add(id(info))
        end = max(end, start + length)
    return flagged


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, budget: _ArchiveBudget) -> bytes:
    """Stream one member, never more than the one-file limit, turning every failure into one message."""
    chunks: list[bytes] = []
    total = 0
    try:
        with zf.open(info) as member:
            while True:
                chunk = member.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > limits.MAX_FILE_BYTES:
                    raise ImageTooLargeError(name, "expands past the "
                                                   f"{limits.fmt_mb(limits.MAX_FILE_BYTES)} limit for one file "
                                                   "(its ZIP directory understated its size)")
                budget.take(len(chunk), name)
                chunks.append(chunk)
    except ImageReadError:
        raise
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError, RuntimeError,
            ValueError, KeyError) as exc:
        raise ImageReadError(name, f"this ZIP member cannot be read ({_zip_reason(exc)})") from None
    return b"".join(chunks)


def _zip_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, zlib.error):
        return f"broken deflate stream: {text}" if text else "broken deflate stream"
    if isinstance(exc, NotImplementedError):
        return f"unsupported compression method: {text}" if text else "unsupported compression method"
    if isinstance(exc, zipfile.BadZipFile) and "CRC" in text:
        return "bad CRC-32: the member's data is corrupt"
    if isinstance(exc, EOFError):
        return "the archive ends before this member's data does (truncated)"
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def items_from_uploads(uploads: Iterable[tuple[str, bytes]]) -> Iterator[InputItem]:
    """In-memory uploads (name, bytes); ZIP uploads are expanded into their members."""
    for name, data in uploads:
        if is_zip_bytes(data):
            yield from iter_zip(data, name)
        elif len(data) > limits.MAX_FILE_BYTES:
            yield error_item(name, f"{limits.fmt_mb(len(data))} is over the "
                                   f"{limits.fmt_mb(limits.MAX_FILE_BYTES)} limit for one file")
        else:
            yield InputItem(name, lambda data=data: data)
