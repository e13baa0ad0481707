"""Uploaded files go to disk as they arrive, not into the server's memory.

Streamlit's upload endpoint hands each uploaded file, whole, to the runtime's uploaded-file manager,
and its default manager (``MemoryUploadedFileManager``) keeps every file's bytes in memory until the
browser session ends: a 1,000-file upload of full-size DICOMs piles up as gigabytes in the server
before the page script even runs. ``install`` turns the runtime's one manager into a
:class:`SpoolingUploadedFileManager`: each file is written to a spool folder the moment its request
arrives, and the manager keeps only its name and size, so the server holds at most the files whose
requests are in flight. The page reads a file back from disk (``open_upload``) to put it in the
worklist store, then removes it from the spool (``renew_uploader`` in ``dashboard.state``).

Streamlit has no public setting for this, so ``install`` changes the class of the runtime's manager
object (the upload route and the script runner share that one object). It does so only when the
manager is exactly Streamlit's in-memory one, and ``is_spooling`` tells the pages (and the tests)
whether it took; if a Streamlit release changes the manager, uploads still work, held in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.uploaded_file_manager import UploadedFileRec

_install_lock = threading.Lock()


@dataclass(frozen=True)
class SpooledFile:
    """Where one uploaded file's bytes are on disk, and how many there are."""

    path: Path
    size: int

    def read(self) -> bytes:
        return self.path.read_bytes()


class SpoolingUploadedFileManager(MemoryUploadedFileManager):
    """Streamlit's in-memory manager, but each file's bytes are written to ``spool_root`` on arrival.

    The records Streamlit keeps (and the widget returns) carry no bytes (``UploadedFile.size`` is 0);
    :meth:`spooled` gives the file on disk. Removing a file, or a session ending, deletes it."""

    spool_root: Path
    _spooled: dict[tuple[str, str], SpooledFile]

    def _start_spooling(self, spool_root: Path) -> None:
        spool_root.mkdir(parents=True, exist_ok=True)
        os.chmod(spool_root, 0o700)
        self.spool_root = spool_root
        self._spooled = {}

    def _session_dir(self, session_id: str) -> Path:
        return self.spool_root / _safe(session_id)

    def add_file(self, session_id: str, file: UploadedFileRec) -> None:
        folder = self._session_dir(session_id)
        folder.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
        with os.fdopen(fd, "wb") as out:
            out.write(file.data)
        path = folder / _safe(file.file_id)
        os.replace(tmp, path)
        size = len(file.data)
        super().add_file(session_id, UploadedFileRec(file.file_id, file.name, file.type, b""))
        with self._lock:
            self._spooled[(session_id, file.file_id)] = SpooledFile(path, size)

    def spooled(self, session_id: str, file_id: str) -> Optional[SpooledFile]:
        with self._lock:
            return self._spooled.get((session_id, file_id))

    def remove_file(self, session_id: str, file_id: str) -> None:
        super().remove_file(session_id, file_id)
        with self._lock:
            gone = self._spooled.pop((session_id, file_id), None)
        if gone is not None:
            gone.path.unlink(missing_ok=True)

    def remove_session_files(self, session_id: str) -> None:
        super().remove_session_files(session_id)
        with self._lock:
            for key in [k for k in self._spooled if k[0] == session_id]:
                del self._spooled[key]
        shutil.rmtree(self._session_dir(session_id), ignore_errors=True)


def _safe(name: str) -> str:
    """A path component from an id Streamlit made (a UUID); anything else is replaced."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "_"


def _runtime_manager():
    from streamlit.runtime import Runtime
    return Runtime.instance().uploaded_file_mgr if Runtime.exists() else None


def install(store_root: Path) -> bool:
    """Make the running server spool uploads under ``store_root/spool/<pid>`` (idempotent).

    Spool folders left by servers that are no longer running are removed. Returns whether uploads
    are spooled to disk."""
    with _install_lock:
        manager = _runtime_manager()
        if isinstance(manager, SpoolingUploadedFileManager):
            return True
        if type(manager) is not MemoryUploadedFileManager:
            return False
        root = Path(store_root) / "spool"
        _remove_orphans(root)
        manager.__class__ = SpoolingUploadedFileManager
        manager._start_spooling(root / str(os.getpid()))
        return True


def is_spooling() -> bool:
    return isinstance(_runtime_manager(), SpoolingUploadedFileManager)


def _remove_orphans(root: Path) -> None:
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name.isdigit() and not _alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


def reader(uploaded) -> tuple[int, Callable[[], bytes]]:
    """(size, read) for one of this session's widget files: from the spool when it is there, else
    from the widget's bytes."""
    session_id = _session_id()
    manager = _runtime_manager()
    if isinstance(manager, SpoolingUploadedFileManager):
        spooled = manager.spooled(session_id, uploaded.file_id)
        if spooled is not None:
            return spooled.size, spooled.read
    return uploaded.size, uploaded.getvalue


def remove(file_ids) -> None:
    """Drop this session's files from the runtime's manager (and the spool): their bytes are in the
    store now. Streamlit would keep them until the browser session ends."""
    session_id = _session_id()
    manager = _runtime_manager()
    if isinstance(manager, MemoryUploadedFileManager):
        for file_id in file_ids:
            manager.remove_file(session_id=session_id, file_id=file_id)
