"""Every input one row, whatever the file system holds (issue 20, rows 6 and 7): FIFOs, sockets and
devices are refused by type before they are opened; names that are not UTF-8 are written escaped."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import pytest

from engine.inputs.sources import iter_inputs, safe_name
from helpers import NORMAL, PNEUMONIA, ROOT, SHIPPED_MODEL

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="FIFOs and byte names as Linux has them")


@pytest.fixture
def hostile_folder(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.jpeg").write_bytes(NORMAL[0].read_bytes())
    os.mkfifo(folder / "pipe.dcm")                                   # would block open() for ever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.dcm"))
    os.symlink("/dev/zero", folder / "zero.dcm")                     # a device behind a symlink
    raw = os.fsencode(folder) + b"/caf\xe9-\xff.jpeg"                # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as f:
        f.write(PNEUMONIA[0].read_bytes())
    yield folder
    sock.close()


def test_the_listing_refuses_special_files_by_type_without_opening_them(hostile_folder):
    items = {i.name: i for i in iter_inputs([hostile_folder])}
    assert set(items) == {"a.jpeg", "pipe.dcm", "sock.dcm", "zero.dcm", "caf\\xe9-\\xff.jpeg"}
    assert "named pipe (FIFO)" in items["pipe.dcm"].error
    assert "a socket" in items["sock.dcm"].error and "a device" in items["zero.dcm"].error
    assert not items["a.jpeg"].error and not items["caf\\xe9-\\xff.jpeg"].error
    assert items["caf\\xe9-\\xff.jpeg"].read() == PNEUMONIA[0].read_bytes()   # the real file behind the name


def test_safe_name_keeps_utf8_and_escapes_other_bytes():
    assert safe_name("Müller/a.dcm") == "Müller/a.dcm"
    assert safe_name(os.fsdecode(b"caf\xe9.dcm")) == "caf\\xe9.dcm"


def test_predict_writes_every_row_of_a_hostile_folder(hostile_folder, tmp_path):
    out = tmp_path / "r.csv"
    done = subprocess.run([sys.executable, "-m", "engine.predict", str(hostile_folder), "--out", str(out),
                           "--checkpoint", str(SHIPPED_MODEL), "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(out, newline="", encoding="utf-8") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"a.jpeg", "pipe.dcm", "sock.dcm", "zero.dcm", "caf\\xe9-\\xff.jpeg"}
    assert rows["a.jpeg"]["status"] == rows["caf\\xe9-\\xff.jpeg"]["status"] == "ok"
    assert all(rows[n]["status"] == "error" for n in ("pipe.dcm", "sock.dcm", "zero.dcm"))
