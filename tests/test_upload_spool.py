"""Uploaded files spooled to disk as they arrive (dashboard.upload_spool), on Streamlit's own manager."""

from __future__ import annotations

from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.uploaded_file_manager import UploadedFileRec

from dashboard import upload_spool
from helpers import DICOMS


def spooling_manager(tmp_path):
    manager = MemoryUploadedFileManager("/_stcore/upload_file")
    manager.__class__ = upload_spool.SpoolingUploadedFileManager      # what install() does to the runtime's
    manager._start_spooling(tmp_path / "spool" / "1")
    return manager


def test_bytes_go_to_disk_and_the_kept_record_holds_none(tmp_path):
    manager = spooling_manager(tmp_path)
    data = DICOMS[0].read_bytes()
    manager.add_file("session-a", UploadedFileRec("f1", "chest.dcm", "application/dicom", data))
    manager.add_file("session-b", UploadedFileRec("f1", "other.dcm", "application/dicom", b"other"))

    [rec] = manager.get_files("session-a", ["f1"])
    assert rec.name == "chest.dcm" and rec.data == b""               # nothing held in memory
    spooled = manager.spooled("session-a", "f1")
    assert spooled.size == len(data) and spooled.read() == data      # the user's bytes, unchanged
    assert manager.spooled("session-b", "f1").read() == b"other"     # sessions apart, same file id
    assert not list(spooled.path.parent.glob(".part-*"))             # written whole, then renamed

    manager.remove_file("session-a", "f1")
    assert not spooled.path.exists() and manager.get_files("session-a", ["f1"]) == []
    manager.remove_session_files("session-b")
    assert not (tmp_path / "spool" / "1" / "session-b").exists()


def test_install_needs_a_running_server_and_reader_falls_back(tmp_path):
    # No Streamlit server in this process: nothing to install, and a widget file is read as it is.
    assert upload_spool.install(tmp_path) is False and not upload_spool.is_spooling()

    class WidgetFile:
        file_id, size = "x", 3

        def getvalue(self):
            return b"abc"

    size, read = upload_spool.reader(WidgetFile())
    assert size == 3 and read() == b"abc"


def test_spool_folders_of_stopped_servers_are_removed(tmp_path):
    dead = tmp_path / "spool" / "999999999"
    dead.mkdir(parents=True)
    (dead / "left-over").write_bytes(b"x")
    upload_spool._remove_orphans(tmp_path / "spool")
    assert not dead.exists()
