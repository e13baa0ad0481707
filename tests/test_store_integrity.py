"""The store knows when it is damaged (issue 20, row 8): a missing, empty or corrupt database beside its
files stops start-up with a message naming the file and what to do; backup and an explicit new store."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import pytest

from engine.errors import EngineError, StoreDamaged
from engine.worklist.store import Store
from helpers import JPEGS, ROOT


@pytest.fixture
def filled(tmp_path):
    """A store with a worklist, a real image and a decision on it."""
    store = Store(tmp_path / "store")
    _, wl = store.create_worklist("Dr A. Reader")
    sha = store.put_file(JPEGS[0].read_bytes())
    sid = store.add_study(wl, JPEGS[0].name, sha)
    store.record_decision(sid, reviewer="Dr A. Reader", decision="agree", probability=0.9, threshold=0.5, model="m")
    return store


def test_an_empty_database_is_refused_naming_the_file_never_opened_as_an_empty_worklist(filled):
    filled.db_path.write_bytes(b"")
    with pytest.raises(StoreDamaged) as err:
        Store(filled.root)
    assert str(filled.db_path) in str(err.value) and "is empty (0 bytes)" in str(err.value)
    assert "engine.cli.store" in str(err.value)                       # says what to do
    assert filled.db_path.stat().st_size == 0                         # and touched nothing


def test_a_half_truncated_database_is_refused_naming_the_file(filled):
    with sqlite3.connect(filled.db_path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = filled.db_path.read_bytes()
    filled.db_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreDamaged, match=str(filled.db_path)):
        Store(filled.root)


def test_a_missing_database_beside_cached_files_is_refused(filled):
    filled.db_path.unlink()
    for suffix in ("-wal", "-shm"):
        (filled.root / f"store.sqlite3{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreDamaged, match="is missing, while .*files holds cached files"):
        Store(filled.root)


def test_a_new_empty_folder_is_simply_a_new_store(tmp_path):
    assert Store(tmp_path / "fresh").db_path.exists()


def test_store_errors_are_engine_errors():
    assert issubclass(StoreDamaged, EngineError)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "engine.cli.store", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_backup_restores_and_new_starts_over_explicitly(filled, tmp_path):
    backup = tmp_path / "backup.sqlite3"
    done = _cli("backup", "--store", str(filled.root), str(backup))
    assert done.returncode == 0, done.stderr
    filled.db_path.write_bytes(b"")                                   # the accident
    check = _cli("check", "--store", str(filled.root))
    assert check.returncode == 1 and "is empty (0 bytes)" in check.stderr
    for suffix in ("-wal", "-shm"):
        (filled.root / f"store.sqlite3{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, filled.db_path)                               # restore: the decision is back
    restored = Store(filled.root)
    with sqlite3.connect(restored.db_path) as con:
        assert con.execute("SELECT decision, reviewer FROM decisions").fetchall() == [("agree", "Dr A. Reader")]
    filled.db_path.write_bytes(b"")
    new = _cli("new", "--store", str(filled.root))
    assert new.returncode == 0 and "kept as" in new.stdout
    assert list(filled.root.glob("store.sqlite3.damaged-*"))          # the damaged file is kept
    assert Store(filled.root).db_path.stat().st_size > 0               # and an empty store opens
