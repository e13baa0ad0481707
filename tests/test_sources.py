"""engine.inputs.sources: folders, ZIP archives read in memory, hostile member names, uploads."""

import os


from engine.inputs.sources import items_from_uploads, iter_inputs, iter_zip
from helpers import JPEGS, tree, zip_bytes


def test_folders_are_walked_recursively_sorted_without_hidden_files(tmp_path):
    for rel in ["b.jpeg", "a/z.jpeg", "a/c/d.dcm", ".hidden.jpeg", "a/.DS_Store", "Thumbs.db", "a/._x.jpeg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    items = list(iter_inputs([tmp_path]))
    assert [i.name for i in items] == ["a/c/d.dcm", "a/z.jpeg", "b.jpeg"]   # relative to the folder given
    assert [i.read() for i in items] == [b"a/c/d.dcm", b"a/z.jpeg", b"b.jpeg"]


def test_files_in_hidden_folders_are_skipped(tmp_path):
    for rel in ["a.jpeg", ".ipynb_checkpoints/a-checkpoint.jpeg", "x/.git/b.jpeg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [i.name for i in iter_inputs([tmp_path])] == ["a.jpeg"]


def test_missing_path_is_one_error_item(tmp_path):
    (item,) = iter_inputs([tmp_path / "nope.jpeg"])
    assert item.error == "nope.jpeg: no such file or folder"


def test_zip_members_are_read_in_memory_with_safe_labels(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)   # where ../../evil.jpeg would land if anything were extracted
    archive = tmp_path / "in.zip"
    members = {"x/one.jpeg": JPEGS[0].read_bytes(), "../../evil.jpeg": b"evil", "/abs/root.jpeg": b"root",
               "dir/": b"", "__MACOSX/._one.jpeg": b"litter"}
    archive.write_bytes(zip_bytes(members))
    before = tree(tmp_path)
    items = list(iter_inputs([archive]))
    assert [i.name for i in items] == ["in.zip/x/one.jpeg", "in.zip/evil.jpeg", "in.zip/abs/root.jpeg"]
    assert [i.read() for i in items] == [members["x/one.jpeg"], b"evil", b"root"]
    assert not any(".." in i.name.replace(str(tmp_path), "") for i in items)
    assert tree(tmp_path) == before and os.listdir(work) == []


def test_corrupt_zip_is_one_error_item(tmp_path):
    good = zip_bytes({"a.jpeg": b"a", "b.jpeg": b"b"})
    (tmp_path / "garbage.zip").write_bytes(b"not a zip at all")
    (tmp_path / "truncated.zip").write_bytes(good[: len(good) // 2])
    for name in ("garbage.zip", "truncated.zip"):
        (item,) = iter_inputs([tmp_path / name])
        assert item.name == name
        assert "not a readable ZIP" in item.error and name in item.error


def test_zip_is_recognised_by_content_whatever_its_name(tmp_path):
    (tmp_path / "scan.jpeg").write_bytes(zip_bytes({"inner.jpeg": b"x"}))
    assert [i.name for i in iter_inputs([tmp_path / "scan.jpeg"])] == ["scan.jpeg/inner.jpeg"]


def test_uploads_expand_zip_bytes():
    data = zip_bytes({"p/one.jpeg": b"1", "two.jpeg": b"2"})
    items = list(items_from_uploads([("batch.zip", data), ("three.jpeg", b"3"), ("bad.zip", b"PK\x03\x04junk")]))
    assert [i.name for i in items] == ["batch.zip/p/one.jpeg", "batch.zip/two.jpeg", "three.jpeg", "bad.zip"]
    assert [i.read() for i in items[:3]] == [b"1", b"2", b"3"]
    assert items[3].error and not items[0].error


def test_iter_zip_accepts_bytes_and_paths(tmp_path):
    data = zip_bytes({"a.jpeg": b"a"})
    (tmp_path / "z.zip").write_bytes(data)
    assert [i.read() for i in iter_zip(data, "z.zip")] == [i.read() for i in iter_zip(tmp_path / "z.zip", "z.zip")]
