"""Training on real radiographs (the bundled sample, assets/sample/kermany): a tiny run whose loss
falls, its checkpoint reloaded by the product's Predictor, an exact --resume, the patient-wise
split, duplicate dropping and the CSV manifest.

The tiny run is trained once per session (``train_tiny_run``, cached on disk under pytest's base
temp folder) and shared with tests/test_evaluate_compare.py. It runs in float32 so that its
numbers are exactly reproducible (the resume test compares weights bit for bit); the bfloat16
product path is trained by tests/test_ddp.py.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.model.device import plain_policy
from engine.inference.predictor import Predictor
from engine.inputs.sources import iter_inputs
from training import data as ds
from training import train

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample" / "kermany"

# 12 images, one per patient: val-fraction 0.34 puts 3 patients of each class in validation, 6
# images train. One full batch per epoch, no augmentation, no warm-up and no label smoothing make
# the training loss a deterministic function of the weights, so "it falls" is not luck.
TINY_ARGS = ["--data-dir", str(SAMPLE), "--image-size", "64", "--epochs", "2", "--batch-size", "8",
             "--val-fraction", "0.34", "--no-augment", "--lr", "3e-3", "--warmup-epochs", "0",
             "--label-smoothing", "0", "--weight-decay", "0", "--ema", "0.9", "--patience", "10",
             "--precision", "float32", "--seed", "0", "--name", "tiny"]
TIMING_KEYS = {"train_images_per_s", "train_seconds"}


@contextmanager
def single_thread():
    """Tiny models run fastest on one thread; two threads spin against any other busy process."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def tiny_args(out: Path, *extra: str):
    return train.get_args_parser().parse_args([*TINY_ARGS, "--out", str(out), *extra])


def train_tiny_run(base: Path) -> Path:
    """The shared tiny run: trained on the first call of the session, reused afterwards."""
    run = Path(base) / "tiny_run"
    done = run / ".complete"
    if not done.is_file():
        shutil.rmtree(run, ignore_errors=True)
        with single_thread():
            train.main(tiny_args(run))
        done.touch()
    return run


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.getbasetemp())


def test_sample_is_there():
    files = ds.index_folder(SAMPLE)
    assert {s.label for s in files} == {0, 1} and len(files) >= 8, "assets/sample/kermany is incomplete"


# ------------------------------------------------------------------ the tiny run

def test_training_loss_falls(tiny_run):
    rows = read_rows(tiny_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
    assert np.isfinite([first, last]).all()
    # Epoch 1's loss is that of the initial weights (one full batch), epoch 2's after one AdamW
    # step on that batch: ~0.73 -> ~0.38 on this sample. Demand a clear drop, not noise.
    assert last < 0.8 * first, f"training loss did not fall: {first:.4f} -> {last:.4f}"


def test_best_checkpoint_has_card_threshold_and_validation(tiny_run):
    best = tiny_run / "best"
    assert (best / "model.safetensors").is_file()
    card = json.loads((best / "model_card.json").read_text())
    thr = card["decision_threshold"]
    assert 0.0 <= thr["value"] <= 1.0
    assert "sensitivity>=0.97" in thr["rule"] and "validation" in thr["rule"]
    split = json.loads((tiny_run / "split.json").read_text())
    val = card["validation"]
    assert val["n"] == len(split["val"]) == 6 and val["n_positive"] == 3
    assert val["threshold"] == thr["value"]
    assert sum(map(sum, val["confusion_matrix"])) == val["n"]
    for key in ("auc", "sensitivity", "specificity", "ece", "auc_ci_95"):
        assert key in val
    assert card["training"]["world_size"] == 1 and card["training"]["epochs_run"] == 2
    assert card["input"]["image_size"] == 64 and card["name"] == "tiny"

    preds = read_predictions(best / "val_predictions.csv")
    assert [p["file"] for p in preds] == [Path(s["path"]).name for s in split["val"]]
    assert [int(p["label"]) for p in preds] == [s["label"] for s in split["val"]]
    assert all(0.0 <= float(p["probability"]) <= 1.0 for p in preds)
    for name in ("last/model.safetensors", "resume.safetensors", "training_curves.png"):
        assert (tiny_run / name).is_file(), name


def test_predictor_reloads_the_checkpoint_and_predicts_the_sample(tiny_run):
    best = tiny_run / "best"
    with single_thread():
        # Same precision as the run: the product's predictor must reproduce validation exactly.
        exact = {Path(p.name).name: p for p in
                 Predictor.from_checkpoint(best, policy=plain_policy()).predict_stream(iter_inputs([SAMPLE]))}
        product = list(Predictor.from_checkpoint(best).predict_stream(iter_inputs([SAMPLE])))
    n_files = len(ds.index_folder(SAMPLE))
    assert len(exact) == len(product) == n_files
    assert all(p.ok and 0.0 <= p.probability <= 1.0 for p in [*exact.values(), *product])
    for row in read_predictions(best / "val_predictions.csv"):
        assert exact[row["file"]].probability == pytest.approx(float(row["probability"]), abs=2e-3), row["file"]


def test_resume_continues_exactly(tiny_run, tmp_path, monkeypatch):
    """Stop a 2-epoch run right after epoch 1's resume state is saved, resume it, and get the
    uninterrupted run's numbers and weights, bit for bit."""
    class Interrupted(Exception):
        pass

    real_save = train.save_state

    def save_then_crash(state, path):
        real_save(state, path)
        raise Interrupted

    out = tmp_path / "resumed"
    monkeypatch.setattr(train, "save_state", save_then_crash)
    with single_thread(), pytest.raises(Interrupted):
        train.main(tiny_args(out))
    monkeypatch.setattr(train, "save_state", real_save)
    assert [r["epoch"] for r in read_rows(out)] == [1]
    assert not (out / "last").exists()

    with single_thread():
        train.main(tiny_args(out, "--resume", str(out)))

    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
    assert strip(read_rows(out)) == strip(read_rows(tiny_run))
    for name in ("last/model.safetensors", "best/model.safetensors", "resume.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(tiny_run / name))
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs after resume"
    for folder in ("best", "last"):
        va = json.loads((out / folder / "model_card.json").read_text())["validation"]
        vb = json.loads((tiny_run / folder / "model_card.json").read_text())["validation"]
        assert va == vb


def test_plain_kernels_train_the_same_numbers(tiny_run, tmp_path):
    """--plain-kernels runs every module as written; the fused training kernels (CBAM as one node,
    GEMM weight gradients, taken here: layer3 and layer4 maps are small at 64 px) must give the same
    run up to float32 rounding."""
    out = tmp_path / "plain"
    with single_thread():
        train.main(tiny_args(out, "--plain-kernels"))
    plain, fused = read_rows(out), read_rows(tiny_run)
    assert [r["epoch"] for r in plain] == [r["epoch"] for r in fused]
    for p, f in zip(plain, fused):
        for key in ("train_loss", "val_loss", "val_auc"):
            assert p[key] == pytest.approx(f[key], rel=1e-4, abs=1e-5), key
    a, b = load_file(str(out / "last/model.safetensors")), load_file(str(tiny_run / "last/model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4, msg=k)


def test_init_from_starts_from_a_checkpoints_weights_and_says_so(tiny_run, tmp_path):
    """--init-from fine-tunes: the run starts from the checkpoint's weights (with lr 0 and no EMA they
    come out unchanged, BatchNorm statistics aside), the card names the weights it started from, and a
    checkpoint of another preprocessing is refused, naming the difference."""
    from engine.inference.backends.artefacts import weights_sha256
    start = tiny_run / "best"
    out = tmp_path / "fine"
    with single_thread():
        train.main(tiny_args(out, "--init-from", str(start), "--epochs", "1", "--lr", "0", "--ema", "0"))
    a, b = load_file(str(out / "last/model.safetensors")), load_file(str(start / "model.safetensors"))
    convs = [k for k in a if k.endswith(".weight") and a[k].dim() == 4]
    assert convs
    for k in convs:
        torch.testing.assert_close(a[k].float(), b[k].float(), msg=k)
    card = json.loads((out / "last/model_card.json").read_text())
    assert card["training"]["init_from"] == {"name": "tiny", "version": card["training"]["init_from"]["version"],
                                             "weights_sha256": weights_sha256(start)}
    with pytest.raises(SystemExit, match="image_size 64 \\(the run: 96\\)"):
        train.main(tiny_args(tmp_path / "other", "--init-from", str(start), "--image-size", "96"))


def test_qat_writes_a_gated_int8_graph_into_the_checkpoint(tiny_run, tmp_path):
    """training.qat end to end on the tiny checkpoint: the graph, its report (figures per gate set, the
    simulated figures, the weights it belongs to) and the card's record; the product takes the graph
    exactly when the report passed."""
    import shutil

    from engine.inference.backends import artefacts, int8
    from training import qat
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "best", ckpt)
    with single_thread():
        code = qat.main(["--checkpoint", str(ckpt), "--data-dir", str(SAMPLE), "--images", "6",
                         "--calibration", "4", "--epochs", "1", "--batch", "2"])
    report = json.loads((ckpt / artefacts.INT8_REPORT).read_text())
    assert code == (0 if report["passed"] else 1)
    assert (ckpt / artefacts.INT8_FILE).is_file() and report["weights_sha256"] == artefacts.weights_sha256(ckpt)
    assert report["graph_sha256"] == artefacts.file_sha256(ckpt / artefacts.INT8_FILE)
    validation = report["sets"]["validation"]
    assert validation["n"] == len(json.loads((tiny_run / "split.json").read_text())["val"])
    assert set(report["training"]["simulated_gate"]) == {"validation"}
    card = json.loads((ckpt / "model_card.json").read_text())
    assert card["int8"]["passed"] == report["passed"] and card["int8"]["graph_sha256"] == report["graph_sha256"]
    assert int8.ready(ckpt) == report["passed"]


def test_an_int8_graph_of_chosen_convolutions_is_gated_into_the_checkpoint(tiny_run, tmp_path):
    """engine.inference.backends.int8 --convs (the route benchmarks/int8_sensitivity.py chooses for):
    the named convolutions in INT8 and no other, the gate on every image, the card's record; an unknown
    name is refused naming it."""
    import shutil

    import onnx

    from engine.inference.backends import artefacts, int8
    from engine.model.checkpoint import read_card
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "best", ckpt)
    fp32 = artefacts.onnx_path(ckpt, read_card(ckpt))
    convs = [w for _, w in int8.conv_nodes(fp32) if ".attn." not in f".{w}"]
    chosen = convs[-2:]
    with single_thread():
        code = int8.main(["--checkpoint", str(ckpt), "--data-dir", str(SAMPLE), "--convs", ",".join(chosen)])
    report = json.loads((ckpt / artefacts.INT8_REPORT).read_text())
    assert code == (0 if report["passed"] else 1) and report["int8_convolutions"] == chosen
    assert report["sets"]["validation"]["n"] == len(json.loads((tiny_run / "split.json").read_text())["val"])
    graph = onnx.load(str(ckpt / artefacts.INT8_FILE)).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    in_int8 = {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantised}
    assert in_int8 == {name for name, w in int8.conv_nodes(fp32) if w in chosen}
    assert json.loads((ckpt / "model_card.json").read_text())["int8"]["passed"] == report["passed"]
    assert int8.ready(ckpt) == report["passed"]
    with pytest.raises(SystemExit, match="no convolution with weights nonsense.weight"):
        int8.main(["--checkpoint", str(ckpt), "--data-dir", str(SAMPLE), "--convs", "nonsense.weight"])


# ------------------------------------------------------------------ patient-wise split

def test_patient_ids_from_real_file_names():
    pid = ds.patient_id_from_name
    assert pid("person154_virus_305.jpeg") == pid("person154_bacteria_306.jpeg") == "p-person154"
    assert pid("person1308_bacteria_3290.jpeg") != pid("person130_bacteria_3290.jpeg")
    # NORMAL2-IM-0654 and IM-0654 share a number space: possibly one patient, kept together
    assert pid("NORMAL2-IM-0654-0001.jpeg") == pid("IM-0654-0002.jpeg") == "n-im0654"
    assert pid("IM-0115-0001.jpeg") != pid("IM-0117-0001.jpeg")
    assert pid("scan.png") == "f-scan"


def _check_split(samples, train_s, val_s):
    assert sorted(map(str, (s.path for s in train_s + val_s))) == sorted(str(s.path) for s in samples)
    assert not {s.path for s in train_s} & {s.path for s in val_s}
    both = {s.patient_id for s in train_s} & {s.patient_id for s in val_s}
    assert not both, f"patients on both sides: {sorted(both)}"


def test_patient_split_on_real_names_keeps_each_patient_on_one_side():
    """The sample's real names plus further images of the same patients, named the Kermany way."""
    real = ds.index_folder(SAMPLE)
    extra = []
    for s in real:
        stem = s.path.stem
        if s.label == 1:  # personN_kind_M -> more images of person N
            person, kind, _ = stem.split("_")
            names = [f"{person}_{kind}_{9000 + i}.jpeg" for i in range(3)]
        else:  # [NORMAL2-]IM-XXXX-YYYY -> other images of patient XXXX, with and without the prefix
            number = stem.split("IM-")[1].split("-")[0]
            names = [f"IM-{number}-0002.jpeg", f"NORMAL2-IM-{number}-0003.jpeg"]
        extra += [ds.Sample(s.path.parent / n, s.label, ds.patient_id_from_name(n)) for n in names]
    samples = real + extra
    assert len({s.patient_id for s in samples}) == len(real)
    for seed in range(10):
        for fraction in (0.15, 0.34, 0.5):
            train_s, val_s = ds.patient_split(samples, fraction, seed)
            _check_split(samples, train_s, val_s)
            assert {s.label for s in val_s} == {0, 1}


def test_patient_split_property_random_datasets():
    rng = random.Random(1234)
    for trial in range(300):
        samples = []
        for p in range(rng.randint(1, 25)):
            label = rng.random() < 0.7
            for i in range(rng.randint(1, 6)):
                # now and then a patient with both labels (majority decides its stratum)
                y = int(label) if rng.random() > 0.1 else int(not label)
                samples.append(ds.Sample(Path(f"/data/{p}_{i}.jpeg"), y, f"pat{p}"))
        fraction, seed = rng.choice([0.0, 0.1, 0.15, 0.3, 0.5, 0.9, 1.0]), rng.randint(0, 10 ** 6)
        train_s, val_s = ds.patient_split(samples, fraction, seed)
        _check_split(samples, train_s, val_s)
        assert (train_s, val_s) == ds.patient_split(samples, fraction, seed)   # deterministic
        if fraction == 0.0:
            assert not val_s
        # per stratum, validation reaches its share without overshooting by a whole patient
        by_patient: dict[str, list] = {}
        for s in samples:
            by_patient.setdefault(s.patient_id, []).append(s)
        val_ids = {s.patient_id for s in val_s}
        for label in (0, 1):
            ids = [p for p, ss in by_patient.items() if round(sum(x.label for x in ss) / len(ss)) == label]
            total = sum(len(by_patient[p]) for p in ids)
            in_val = sum(len(by_patient[p]) for p in ids if p in val_ids)
            biggest = max((len(by_patient[p]) for p in ids), default=0)
            assert in_val >= min(fraction * total, total) - 1e-9
            assert in_val < fraction * total + biggest or in_val == 0


def test_the_runs_split_never_shares_a_patient(tiny_run):
    split = json.loads((tiny_run / "split.json").read_text())
    train_p = {r["patient"] for r in split["train"]}
    val_p = {r["patient"] for r in split["val"]}
    assert train_p and val_p and not train_p & val_p


# ------------------------------------------------------------------ duplicates and manifests

def _copy_sample(dst: Path) -> Path:
    shutil.copytree(SAMPLE, dst)
    return dst


def test_byte_identical_files_are_dropped(tmp_path):
    data = _copy_sample(tmp_path / "data")
    original = data / "NORMAL" / "IM-0115-0001.jpeg"
    twin = data / "NORMAL" / "IM-0115-0001-0002.jpeg"           # same bytes, another name
    near = data / "NORMAL" / "IM-0115-0001-0003.jpeg"           # one byte more: a different file
    shutil.copyfile(original, twin)
    near.write_bytes(original.read_bytes() + b"\0")
    samples = ds.index_folder(data)
    kept, dropped = ds.drop_duplicates(samples)
    assert dropped == [(twin, original)] or dropped == [(original, twin)]
    assert len(kept) == len(samples) - 1 and near in {s.path for s in kept}

    args = train.get_args_parser().parse_args(["--data-dir", str(data), "--out", str(tmp_path / "run"),
                                               "--val-fraction", "0.34"])
    train_s, val_s, summary = train.prepare_data(args)
    assert summary["duplicates_dropped"] == 1
    assert len(train_s) + len(val_s) == len(samples) - 1
    assert len({s.path for s in train_s + val_s} & {twin, original}) == 1


def _write_manifest(path: Path, rows: list[dict], header=("path", "label", "patient_id")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def test_manifest_csv_input(tmp_path):
    images = _copy_sample(tmp_path / "images")
    files = sorted(images.rglob("*.jpeg"))
    label_words = {"NORMAL": ["normal", "0", "Negative"], "PNEUMONIA": ["PNEUMONIA", "1", "positive"]}
    rows = []
    for i, f in enumerate(files):
        words = label_words[f.parent.name]
        rows.append({"path": os.path.relpath(f, tmp_path / "lists"), "label": words[i % 3],
                     # two normal files declared to be one patient: they must stay together
                     "patient_id": "shared" if f.name in (files[0].name, files[1].name) else "",
                     # pneumonia rows drawn three times as often (the weight column is optional per row)
                     "weight": "3" if f.parent.name == "PNEUMONIA" else ("" if i % 2 else "1")})
    (tmp_path / "lists").mkdir()
    manifest = _write_manifest(tmp_path / "lists" / "manifest.csv", rows, ("path", "label", "patient_id", "weight"))

    samples = ds.index_dataset(manifest)
    assert [s.path for s in samples] == [f.resolve() for f in files]
    assert [s.label for s in samples] == [int(f.parent.name == "PNEUMONIA") for f in files]
    assert {s.split for s in samples} == {"manifest"}
    assert samples[0].patient_id == samples[1].patient_id == "shared"
    assert samples[2].patient_id == ds.patient_id_from_name(files[2].name)
    assert [s.weight for s in samples] == [3.0 if f.parent.name == "PNEUMONIA" else 1.0 for f in files]

    # the training CLI takes the manifest as --data-dir and trains on it
    out = tmp_path / "run"
    with single_thread():
        best = train.main(train.get_args_parser().parse_args(
            [*TINY_ARGS, "--data-dir", str(manifest), "--out", str(out), "--epochs", "1", "--sampler", "weighted"]))
    split = json.loads((out / "split.json").read_text())
    sides = [{r["path"] for r in split[k]} for k in ("train", "val")]
    shared = {str(samples[0].path), str(samples[1].path)}
    assert shared <= sides[0] or shared <= sides[1]
    assert json.loads((best / "model_card.json").read_text())["training"]["data_dir"] == str(manifest)

    bad = _write_manifest(tmp_path / "bad.csv", [{"path": "x.jpeg", "label": "maybe"}])
    with pytest.raises(ValueError, match=r"line 2.*'maybe'"):
        ds.index_dataset(bad)
    no_label = _write_manifest(tmp_path / "nolabel.csv", [{"path": "x.jpeg"}], header=("path",))
    with pytest.raises(ValueError, match="label"):
        ds.index_dataset(no_label)


def test_split_seed_shares_the_split_while_seed_changes_the_weights(tmp_path):
    # Ensemble members: one patient-wise split (--split-seed) and different initialisation and data
    # order (--seed). The default split seed is --seed, so older runs keep their split.
    args = lambda *extra: train.get_args_parser().parse_args([*TINY_ARGS, "--out", "x", *extra])
    ref = train.prepare_data(args("--seed", "0"))
    same = train.prepare_data(args("--seed", "5", "--split-seed", "0"))
    assert [s.path for s in same[1]] == [s.path for s in ref[1]]
    assert [s.path for s in same[0]] == [s.path for s in ref[0]]
    assert train.prepare_data(args("--seed", "5"))[2]["split_rule"].endswith("seed=5")
    assert "split_seed" in train.RESUME_MUST_MATCH

    out = tmp_path / "member"
    with single_thread():
        train.main(tiny_args(out, "--epochs", "1", "--seed", "3", "--split-seed", "0"))
    card = json.loads((out / "best" / "model_card.json").read_text())
    assert card["training"]["seed"] == 3 and card["training"]["split_seed"] == 0
    split = json.loads((out / "split.json").read_text())
    assert sorted(r["path"] for r in split["val"]) == sorted(str(s.path) for s in ref[1])
    with pytest.raises(SystemExit, match="split-seed"):
        train.main(tiny_args(out, "--epochs", "1", "--seed", "3", "--split-seed", "1", "--resume", str(out)))


def test_ood_rebuilds_the_split_from_the_split_seed():
    from training.ood import split_from_card
    ref = train.prepare_data(train.get_args_parser().parse_args([*TINY_ARGS, "--out", "x"]))
    card = {"split_seed": 0, "seed": 3, "val_fraction": 0.34, "pooled_splits": ["train", "val"]}
    _, val = split_from_card(card, str(SAMPLE))
    assert sorted(str(s.path) for s in val) == sorted(str(s.path) for s in ref[1])
