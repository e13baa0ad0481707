"""One study record from input to store: the predictor's Result is what the store keeps and what the
worklist row shows, for a real DICOM, a real JPEG and a file that cannot be decoded."""

from __future__ import annotations

from engine.inference.predictor import Predictor
from engine.inputs.sources import InputItem, iter_inputs
from engine.worklist.ingest import ingest, score_files
from engine.worklist.store import Store
from helpers import DICOMS, JPEGS, SHIPPED_MODEL


def test_the_predictors_result_is_the_stored_record_and_the_worklist_rows(tmp_path):
    predictor = Predictor.from_checkpoint(SHIPPED_MODEL)
    broken = InputItem("broken.dcm", lambda: b"DICM" * 40)
    items = [*iter_inputs([str(DICOMS[0]), str(JPEGS[0])]), broken]

    direct = {p.name: p for p in predictor.predict_stream(items, batch_size=4)}
    assert direct["broken.dcm"].message.startswith("broken.dcm: ")           # the message names the file
    assert not direct["broken.dcm"].result.message.startswith("broken.dcm")  # the kept record does not

    store = Store(tmp_path / "store")
    _, worklist = store.create_worklist("reader")
    assert ingest(store, worklist, items) == 3
    seen = {}
    pending = {row.sha256: row.name for row in store.studies(worklist, "model-key")}
    assert score_files(store, pending, predictor, "model-key",
                       on_prediction=lambda sha, pred: seen.__setitem__(pred.name, (sha, pred))) == 3
    rows = {row.name: row for row in store.studies(worklist, "model-key")}
    assert set(rows) == set(direct) == set(seen)
    for name, (sha, pred) in seen.items():
        assert store.result(sha, "model-key") == pred.result          # the very record, metadata included
        assert rows[name].result == pred.result
        assert rows[name].message == pred.message                     # the row names the file as the CSV does
        assert pred.result.status == direct[name].result.status
    assert rows["broken.dcm"].status == "error" and rows["broken.dcm"].probability is None
    dicom = rows[DICOMS[0].name]
    assert dicom.ok and dicom.result.metadata.format == "dicom" and dicom.result.metadata.modality
