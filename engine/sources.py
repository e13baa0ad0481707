"""Turn command-line paths (files, folders, ZIP archives) into named inputs read lazily.

ZIP members are read in memory; their names are only labels, never paths to write to, so a
member called ``../../x`` cannot escape anything (it is shown as ``archive.zip/x``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Union

MAX_MEMBER_BYTES = 512 * 1024 * 1024   # a single archive member larger than this is refused
SKIP_NAMES = {".DS_Store", "Thumbs.db", "DICOMDIR"}


@dataclass(frozen=True)
class InputItem:
    """One input: a display name and a way to get its bytes (or an error found while listing)."""

    name: str
    read: Callable[[], bytes]
    error: str = ""


def _zip_member_label(archive: str, member: str) -> str:
    parts = [p for p in PurePosixPath(member.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return f"{archive}/{'/'.join(parts) or '(unnamed)'}"


def _is_hidden(name: str) -> bool:
    base = PurePosixPath(name.replace("\\", "/")).name
    return base.startswith(".") or base in SKIP_NAMES or "__MACOSX" in name


def iter_zip(data_or_path: Union[bytes, Path], label: str) -> Iterator[InputItem]:
    """Members of an archive (nested folders included, directories and OS litter skipped)."""
    import io
    try:
        zf = zipfile.ZipFile(io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield InputItem(label, lambda: b"", error=f"{label}: not a readable ZIP archive ({exc})")
        return
    for info in zf.infolist():
        if info.is_dir() or _is_hidden(info.filename):
            continue
        name = _zip_member_label(label, info.filename)
        if info.file_size > MAX_MEMBER_BYTES:
            yield InputItem(name, lambda: b"", error=f"{name}: {info.file_size:,} bytes is over the "
                                                     f"{MAX_MEMBER_BYTES:,}-byte limit for one file")
            continue
        if info.flag_bits & 0x1:
            yield InputItem(name, lambda: b"", error=f"{name}: encrypted ZIP member")
            continue
        yield InputItem(name, lambda zf=zf, info=info: zf.read(info))


def is_zip_bytes(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def iter_inputs(paths: Iterable[Union[str, Path]]) -> Iterator[InputItem]:
    """Files as given, folders recursively (sorted), ZIP archives member by member."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(_is_hidden(part) for part in p.relative_to(path).parts))
            for f in files:
                yield from _file_items(f, str(f))
        elif path.is_file():
            yield from _file_items(path, str(path))
        else:
            yield InputItem(str(path), lambda: b"", error=f"{path}: no such file or folder")


def _file_items(path: Path, label: str) -> Iterator[InputItem]:
    if path.suffix.lower() == ".zip" or _starts_like_zip(path):
        yield from iter_zip(path, label)
    else:
        yield InputItem(label, path.read_bytes)


def _starts_like_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return is_zip_bytes(f.read(4))
    except OSError:
        return False


def items_from_uploads(uploads: Iterable[tuple[str, bytes]]) -> Iterator[InputItem]:
    """In-memory uploads (name, bytes); ZIP uploads are expanded into their members."""
    for name, data in uploads:
        if is_zip_bytes(data):
            yield from iter_zip(data, name)
        else:
            yield InputItem(name, lambda data=data: data)
