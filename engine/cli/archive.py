"""Score an archive on a Ray cluster (Ray Data batch inference), resumably.

    python -m engine.archive SOURCE [SOURCE ...] --out DIR [--address ADDRESS] [--checkpoint DIR]
                             [--threshold T] [--heatmaps] [--csv] [--include-identifiers] [--anonymise-names]
                             [--workers N] [--batch-size B] [--backend auto|torch|onnx|onnx-int8]

SOURCE: a folder (recursive), a ZIP archive, a manifest CSV of paths (a ``path`` column, or the
first column; relative paths are relative to the manifest), or a glob (``'scans/**/*.dcm'``,
quoted). Without ``--address`` a local Ray instance is started for the run; with it the command
joins an existing cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379``
on the others, every node with this project installed and the SOURCE paths mounted at the same
place). Files are decoded and scored in Ray actors (``--workers``, one predictor each, loaded once
per actor, on the backend the device policy picks on that node); rows go back to this driver, which
writes them as they arrive.

``DIR`` gets ``parts/`` (one Parquet file per scored batch, written atomically),
``predictions.parquet`` (every input exactly once, the columns of ``engine.predict``'s CSV; patient
identifiers only with ``--include-identifiers``), ``predictions.csv`` with ``--csv``,
``heatmaps/`` with ``--heatmaps`` and ``summary.json`` (counts, seconds, throughput). With
``--anonymise-names`` the outputs name each file ``file-<hash>`` (as ``engine.predict`` does);
``parts/``, the run's resumable state, keeps the names: delete it once the run is complete.

Resumable and idempotent: a rerun reads ``parts/``; a file whose name and SHA-256 already have a
row from the same model weights is not scored again (it is read and hashed, not decoded), so a
run killed half-way (driver or worker) scores only what is missing; a file whose content changed
is scored again and its newest row wins. The flag column is computed from the stored probability
at the threshold of the run that writes ``predictions.parquet``. Errors are rows, as in the CLI.
"""

from __future__ import annotations

import argparse
import glob as globmod
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from engine.inference.backends import CHOICES as BACKEND_CHOICES
from engine.model.checkpoint import DEFAULT_MODEL_DIR
from engine.errors import CheckpointError
from engine.worklist.csvsafe import IDENTIFIER_COLUMNS, RESULT_COLUMNS as CSV_COLUMNS, anonymous_name
from engine.evaluation.metrics import flagged as flag_rule
from engine.inputs import arguments

log = logging.getLogger(__name__)

PART_EXTRA = ["model_sha256", "run_id", "order"]
_GLOB_MAGIC = set("*?[")


# ------------------------------------------------------------------------------------------------
# What to score: units (a file or a ZIP each), listed on the driver without reading any bytes

@dataclass(frozen=True)
class Unit:
    label: str            # the relative name (a ZIP's members are "label/member")
    path: str = ""        # absolute path to read ('' when listing failed)
    error: str = ""       # why it cannot be listed (a row as is)


def _walk(root: Path, prefix: str = "") -> Iterator[Unit]:
    """Files under ``root`` as :func:`engine.inputs.sources.list_folder` lists them, as units."""
    from engine.inputs.sources import list_folder
    found, problems = list_folder(root)
    for rel, reason in problems:
        yield Unit(prefix + rel, error=f"{prefix + rel}: {reason}")
    for rel, path in found:
        yield Unit(prefix + rel, str(path.resolve()))


def _is_manifest(path: Path) -> bool:
    return path.suffix.lower() == ".csv" and path.is_file()


def _manifest_paths(path: Path) -> list[Path]:
    import csv
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    col = header.index("path") if "path" in header else 0
    body = rows[1:] if "path" in header or not Path(rows[0][0]).suffix else rows
    paths = [Path(r[col].strip()) for r in body if len(r) > col and r[col].strip()]
    return [p if p.is_absolute() else (path.parent / p) for p in paths]


def _common_parent(paths: Sequence[Path]) -> Optional[Path]:
    try:
        return Path(os.path.commonpath([str(p.resolve().parent) for p in paths])) if paths else None
    except ValueError:
        return None


def _named_files(paths: Sequence[Path]) -> Iterator[Unit]:
    """Files from a manifest or a glob, named relative to their common folder (names stay unique)."""
    root = _common_parent(paths)
    for p in paths:
        label = p.resolve().relative_to(root).as_posix() if root else p.name
        if p.is_dir():
            yield from _walk(p, prefix=label.rstrip("/") + "/")
        elif p.exists():
            yield Unit(label, str(p.resolve()))
        else:
            yield Unit(label, error=f"{label}: no such file or folder")


def list_units(sources: Sequence[str]) -> list[Unit]:
    """Every SOURCE as units, in order; a name is listed once."""
    units: list[Unit] = []
    for raw in sources:
        path = Path(raw)
        if _GLOB_MAGIC & set(raw) and not path.exists():
            matches = sorted(Path(m) for m in globmod.glob(raw, recursive=True))
            units += list(_named_files(matches)) if matches else [Unit(raw, error=f"{raw}: nothing matches")]
        elif path.is_dir():
            units += list(_walk(path))
        elif _is_manifest(path):
            units += list(_named_files(_manifest_paths(path)))
        elif path.exists():
            units.append(Unit(path.name, str(path.resolve())))
        else:
            units.append(Unit(path.name or raw, error=f"{path.name or raw}: no such file or folder"))
    seen, unique = set(), []
    for u in units:
        if u.label not in seen:
            seen.add(u.label)
            unique.append(u)
    return unique


# ------------------------------------------------------------------------------------------------
# The actor: one predictor per actor, loaded once

class ArchiveScorer:
    """Ray Data callable class: a batch of units in, result rows out (and, asked, heatmap PNGs)."""

    def __init__(self, checkpoint: str, backend: Optional[str], threads: int, heatmaps: bool,
                 include_identifiers: bool, batch_size: int) -> None:
        if threads:                     # the actor's share of the node's cores, whichever backend runs
            os.environ.setdefault("CXR_ORT_THREADS", str(threads))
            os.environ.setdefault("CXR_OV_THREADS", str(threads))
        from engine.gc_pause import paused_gc
        with paused_gc(freeze=True):   # the actor's model and libraries live as long as it does
            from engine.inference.predictor import Predictor
            self.predictor = Predictor.from_checkpoint(checkpoint, backend=backend)
            if threads and self.predictor.runner.name == "torch":
                import torch
                torch.set_num_threads(threads)
            card = self.predictor.card
            self.model_label = card.label
            self.explainer = self.predictor.load_explainer() if heatmaps else None
        self.include_identifiers = include_identifiers
        self.batch_size = batch_size

    def _items(self, batch: dict, skipped: list, seq: dict) -> Iterator:
        """Input items of the batch's units; a file already scored with the same bytes is skipped."""
        from engine.errors import ImageReadError
        from engine.inputs.sources import InputItem, error_item, file_items
        for label, path, done_json in zip(batch["label"], batch["path"], batch["done"]):
            done = json.loads(done_json) if done_json else {}
            try:
                size = os.stat(path).st_size
            except OSError as exc:
                seq[label] = 0
                yield error_item(label, f"cannot be read ({exc.strerror or exc})")
                continue
            for k, item in enumerate(file_items(Path(path), label, size)):
                seq[item.name] = k
                if item.error:
                    yield item
                    continue
                try:
                    data = item.read()
                except ImageReadError as exc:
                    yield InputItem(item.name, _raiser(exc))
                    continue
                if done.get(item.name) == hashlib.sha256(data).hexdigest():
                    skipped.append(item.name)
                    continue
                yield InputItem(item.name, lambda data=data: data)

    def columns(self) -> list[str]:
        base = [c for c in CSV_COLUMNS if c not in ("flagged", "threshold", "operating_point")]
        return base + (IDENTIFIER_COLUMNS if self.include_identifiers else []) + ["seq", "heatmap_png", "skipped"]

    def __call__(self, batch: dict):
        import pandas as pd

        from engine.cli.predict import prediction_row
        skipped: list[str] = []
        seq: dict[str, int] = {}
        rows, pending = [], []
        keep = self.explainer is not None
        for pred in self.predictor.predict_stream(self._items(batch, skipped, seq), batch_size=self.batch_size,
                                                  keep_images=keep):
            row = prediction_row(pred, 0.5, self.model_label, include_identifiers=self.include_identifiers)
            row.update(probability=pred.probability if pred.ok else None, seq=seq.get(pred.name, 0),
                       heatmap_png=b"", skipped=0)
            rows.append(row)
            if keep and pred.image is not None:
                pending.append((len(rows) - 1, pred))
        if pending:
            from engine.inference.heatmap_files import explain_predictions, heatmap_png
            maps = explain_predictions(self.explainer, [p for _, p in pending])
            for (i, pred), heat in zip(pending, maps):
                rows[i]["heatmap_png"] = heatmap_png(pred.image.pixels, heat)
        if skipped:   # one marker row carries the count of files already scored
            rows.append({"file": None, "skipped": len(skipped), "heatmap_png": b""})
        return pd.DataFrame(rows, columns=self.columns())


def _raiser(exc: Exception):
    def read() -> bytes:
        raise exc
    return read


# ------------------------------------------------------------------------------------------------
# The driver: parts in, one table out

def _read_parts(parts: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    tables = []
    for f in sorted(parts.glob("*.parquet")):
        try:
            tables.append(pq.read_table(f))
        except Exception as exc:   # a part is renamed into place whole; anything else is not ours
            log.warning("ignoring unreadable part %s (%s)", f, exc)
    return pa.concat_tables(tables, promote_options="default") if tables else None


def done_by_label(parts: Path, model_sha: str) -> dict[str, str]:
    """label -> SHA-256 of the newest row scored by these weights (errors before reading excluded)."""
    table = _read_parts(parts)
    if table is None:
        return {}
    done: dict[str, tuple[str, str]] = {}
    for row in table.select(["file", "sha256", "model_sha256", "run_id", "status", "message"]).to_pylist():
        if row["model_sha256"] != model_sha or not row["sha256"]:
            continue
        if row["file"] not in done or row["run_id"] >= done[row["file"]][1]:
            done[row["file"]] = (row["sha256"], row["run_id"])
    return {k: v[0] for k, v in done.items()}


def _write_part(parts: Path, rows: list[dict], columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    if not rows:
        return
    schema = pa.schema([(c, pa.float64() if c in ("probability", "order") else pa.string()) for c in columns])
    table = pa.Table.from_pylist(rows, schema=schema)
    parts.mkdir(parents=True, exist_ok=True)
    final = parts / f"part-{rows[0]['run_id']}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = final.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, final)


def consolidate(out: Path, order: dict[str, float], threshold: float, *, include_identifiers: bool,
                point_name: str = "card",
                csv_too: bool, anonymise_names: bool = False) -> dict:
    """Newest row per file, in listing order, flagged at ``threshold``: predictions.parquet (+ CSV).
    ``anonymise_names``: each file name (and its mention in the message) becomes ``file-<hash>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = _read_parts(out / "parts")
    rows = table.to_pylist() if table is not None else []
    newest: dict[str, dict] = {}
    for r in rows:
        if r["file"] not in newest or r["run_id"] >= newest[r["file"]]["run_id"]:
            newest[r["file"]] = r
    def position(r: dict) -> tuple:
        unit = _unit_of(r["file"], order)   # today's listing decides; a member keeps its place in its ZIP
        frac = (r["order"] or 0.0) % 1.0
        return (order[unit] + frac if unit in order else len(order), r["file"])
    ordered = sorted(newest.values(), key=position)
    columns = CSV_COLUMNS + (IDENTIFIER_COLUMNS if include_identifiers else [])
    final = []
    for r in ordered:
        ok = r["status"] == "ok"
        if anonymise_names:
            label = anonymous_name(r["file"])
            r = {**r, "file": label, "message": (r.get("message") or "").replace(r["file"], label)}
        final.append({**{c: r.get(c) or "" for c in columns},
                      "probability": r["probability"] if ok else None,
                      "flagged": flag_rule(r["probability"], threshold) if ok else None, "threshold": threshold,
                      "operating_point": point_name})
    types = {"probability": pa.float64(), "flagged": pa.bool_(), "threshold": pa.float64()}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in columns])
    tmp = out / "predictions.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(final, schema=schema), tmp)
    os.replace(tmp, out / "predictions.parquet")
    if csv_too:
        from engine.worklist.csvsafe import result_row, write_rows
        with open(out / "predictions.csv.tmp", "w", newline="") as f:
            write_rows(f, columns, (result_row(
                file=r["file"], status=r["status"], message=r["message"] or "", probability=r["probability"],
                threshold=threshold, model=r["model"] or "", warnings=[r["warnings"]] if r["warnings"] else [],
                modality=r["modality"] or "", view_position=r["view_position"] or "", sha256=r["sha256"] or "",
                identifiers=r if include_identifiers else None, operating_point=point_name) for r in final))
        os.replace(out / "predictions.csv.tmp", out / "predictions.csv")
    return {"rows": len(final), "ok": sum(r["status"] == "ok" for r in final),
            "errors": sum(r["status"] == "error" for r in final),
            "flagged": sum(bool(r["flagged"]) for r in final)}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.archive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folders, ZIPs, manifest CSVs or globs")
    p.add_argument("--out", required=True, help="output folder (parts, predictions.parquet, summary.json)")
    p.add_argument("--address", help="a running Ray cluster to join (default: start a local one)")
    p.add_argument("--checkpoint", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--threshold", type=arguments.threshold, help="decision threshold (default: the model card's)")
    p.add_argument("--heatmaps", action="store_true", help="write DIR/heatmaps/NAME_<sha>.png (original | Grad-CAM)")
    p.add_argument("--csv", action="store_true", help="also write predictions.csv")
    p.add_argument("--include-identifiers", action="store_true", help="add patient identifier columns")
    p.add_argument("--anonymise-names", "--anonymize-names", dest="anonymise_names", action="store_true",
                   help="write file-<hash> instead of each file name in predictions.* and heatmaps/ (file "
                        "names often hold patients' names; parts/, the run's resumable state, keeps them)")
    p.add_argument("--workers", type=int, default=0, help="scoring actors (default: 1 per 2 CPUs of the cluster)")
    p.add_argument("--cpus-per-worker", type=float, default=0, help="CPUs reserved per actor (default: all / workers)")
    p.add_argument("--batch-size", type=int, default=32, help="units per actor call (and network batch)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _usage_error(args: argparse.Namespace) -> Optional[str]:
    """The first usage error (exit code 2), or None."""
    if args.batch_size < 1 or args.workers < 0:
        return "--batch-size must be at least 1 and --workers at least 0"
    return None


@dataclass
class _Run:
    """One run of the command: where it writes, under which model, and what it found to score."""

    out: Path
    model_sha: str
    run_id: str
    part_columns: list[str]
    units: list[Unit]
    order: dict[str, int]                # unit label -> its place in today's listing
    done: dict[str, str]                 # label -> SHA-256 already scored by these weights

    @property
    def parts(self) -> Path:
        return self.out / "parts"

    @property
    def listing_errors(self) -> list[Unit]:
        return [u for u in self.units if u.error]

    @property
    def todo(self) -> list[Unit]:
        return [u for u in self.units if not u.error]


def _start_run(args: argparse.Namespace, model_sha: str) -> _Run:
    """List the sources, read what earlier runs scored, and write the listing errors as rows."""
    out = Path(args.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
    columns = CSV_COLUMNS + (IDENTIFIER_COLUMNS if args.include_identifiers else [])
    part_columns = [c for c in columns if c not in ("flagged", "threshold", "operating_point")] + PART_EXTRA
    units = list_units(args.sources)
    order = {u.label: i for i, u in enumerate(units)}
    run = _Run(out, model_sha, run_id, part_columns, units, order, done_by_label(out / "parts", model_sha))
    _write_part(run.parts, [{"file": u.label, "status": "error", "message": u.error, "probability": None,
                             "model": "", "warnings": "", "modality": "", "view_position": "", "sha256": "",
                             "model_sha256": model_sha, "run_id": run_id, "order": order[u.label]}
                            for u in run.listing_errors], part_columns)
    return run


@dataclass(frozen=True)
class _Cluster:
    """The Ray cluster joined (or started) and how the scoring actors share it."""

    cpus: int
    workers: int
    cpus_per_worker: float
    threads: int


def _start_ray(args: argparse.Namespace) -> _Cluster:
    """Join ``--address`` (or start a local Ray), quietly; size the actor pool to its CPUs."""
    import ray
    if args.address:
        ray.init(address=args.address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = args.workers or max(1, cpus // 2)
    cpus_per_worker = args.cpus_per_worker or max(1.0, cpus / workers)
    return _Cluster(cpus, workers, cpus_per_worker, max(1, int(cpus_per_worker)))


def _done_json(done: dict[str, str], unit: Unit) -> str:
    """The already-scored files of one unit (itself, or a ZIP's members) as JSON ('' when none)."""
    prefix = unit.label + "/"
    mine = {k: v for k, v in done.items() if k == unit.label or k.startswith(prefix)}
    return json.dumps(mine) if mine else ""


def _scored_batches(args: argparse.Namespace, cluster: _Cluster, items: list[dict]) -> Iterator:
    """The actors' result batches (pandas), as they arrive."""
    import ray
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // args.batch_size + 1, 10_000)))
    ds = ds.map_batches(ArchiveScorer, batch_size=args.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=cluster.workers), num_cpus=cluster.cpus_per_worker,
                        fn_constructor_kwargs={"checkpoint": str(Path(args.checkpoint).resolve()),
                                               "backend": args.backend, "threads": cluster.threads,
                                               "heatmaps": args.heatmaps,
                                               "include_identifiers": args.include_identifiers,
                                               "batch_size": args.batch_size})
    return ds.iter_batches(batch_size=None, batch_format="pandas", prefetch_batches=0)


def _part_rows(args: argparse.Namespace, run: _Run, batch, counts: dict[str, int], heat_dir: Path) -> list[dict]:
    """One result batch as part rows (counted; heatmap PNGs written); the skipped-files marker counted."""
    rows = []
    for rec in batch.to_dict("records"):
        if rec["file"] is None or rec["file"] != rec["file"]:   # the skipped-files marker
            counts["skipped"] += int(rec["skipped"] or 0)
            continue
        row = {c: rec.get(c) for c in run.part_columns if c in rec}
        prob = rec["probability"]
        row["probability"] = None if prob is None or prob != prob else float(prob)
        unit = _unit_of(row["file"], run.order)
        row.update(model_sha256=run.model_sha, run_id=run.run_id,
                   order=run.order.get(unit, len(run.order)) + float(rec.get("seq") or 0) * 1e-7)
        rows.append(row)
        counts["scored" if row["status"] == "ok" else "errors"] += 1
        png = rec.get("heatmap_png")
        if args.heatmaps and png:
            _write_png(heat_dir, anonymous_name(row["file"]) if args.anonymise_names else row["file"],
                       row["sha256"], png)
    return rows


def _score(args: argparse.Namespace, run: _Run, cluster: _Cluster) -> tuple[dict[str, int], float]:
    """Score what is not done yet, a part per result batch; this run's counts and scoring seconds."""
    from tqdm import tqdm
    todo = run.todo
    items = [{"label": u.label, "path": u.path, "done": _done_json(run.done, u)} for u in todo]
    counts = {"scored": 0, "skipped": 0, "errors": len(run.listing_errors)}
    heat_dir = run.out / "heatmaps"
    if args.heatmaps:
        heat_dir.mkdir(parents=True, exist_ok=True)
    has_zip = any(u.path.lower().endswith(".zip") for u in todo)   # members are counted as they come
    bar = tqdm(total=None if has_zip else len(run.units), unit="file", file=sys.stderr, disable=args.quiet,
               desc="archive", initial=len(run.listing_errors))
    t_score = time.perf_counter()
    if items:
        for batch in _scored_batches(args, cluster, items):
            _write_part(run.parts, _part_rows(args, run, batch, counts, heat_dir), run.part_columns)
            bar.update(counts["scored"] + counts["skipped"] + counts["errors"] - bar.n)
    bar.close()
    return counts, time.perf_counter() - t_score


def _summary(result: dict, counts: dict[str, int], cluster: _Cluster, run: _Run, threshold: float,
             seconds: float, t0: float) -> dict:
    """What ``summary.json`` holds: the consolidated counts, this run's, the cluster and the speed."""
    import ray
    return {**result, "this_run": counts, "workers": cluster.workers, "cpus_per_worker": cluster.cpus_per_worker,
            "cluster_cpus": cluster.cpus, "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "scoring_seconds": round(seconds, 2), "total_seconds": round(time.perf_counter() - t0, 2),
            "images_per_s": round(counts["scored"] / seconds, 2) if seconds > 0 and counts["scored"] else None,
            "threshold": threshold, "model_sha256": run.model_sha, "run_id": run.run_id}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; the exit code: 0 done, 2 usage error, 3 the model cannot be loaded."""
    args = get_args_parser().parse_args(argv)
    error = _usage_error(args)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from engine.inference.backends.artefacts import weights_sha256
    from engine.model.checkpoint import read_card
    try:
        card = read_card(args.checkpoint)
        model_sha = weights_sha256(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 3
    threshold = card.threshold if args.threshold is None else args.threshold
    t0 = time.perf_counter()
    run = _start_run(args, model_sha)
    cluster = _start_ray(args)
    counts, seconds = _score(args, run, cluster)
    result = consolidate(run.out, run.order, threshold, include_identifiers=args.include_identifiers,
                         csv_too=args.csv, point_name="card" if args.threshold is None else "given threshold",
                         anonymise_names=args.anonymise_names)
    (run.out / "summary.json").write_text(
        json.dumps(_summary(result, counts, cluster, run, threshold, seconds, t0), indent=2) + "\n")
    import ray
    ray.shutdown()
    print(f"{result['rows']} files: {result['ok']} read ({result['flagged']} flagged at threshold {threshold:.3f}), "
          f"{result['errors']} refused; this run scored {counts['scored']}, skipped {counts['skipped']} already "
          f"scored, in {seconds:.1f} s with {cluster.workers} worker(s). Results: {run.out / 'predictions.parquet'}",
          file=sys.stderr)
    return 0

def _unit_of(name: str, order: dict[str, int]) -> str:
    """The listed unit a row belongs to (a ZIP member's archive), for ordering."""
    if name in order:
        return name
    for i in range(len(name)):
        if name[i] == "/" and name[:i] in order:
            return name[:i]
    return name


def _write_png(folder: Path, name: str, sha: str, png: bytes) -> None:
    import re
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[-120:] or "image"
    path = folder / f"{stem}_{sha[:12]}.png"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
