"""Compare evaluations side by side: one row per ``python -m training.evaluate`` output folder.

    python -m training.compare evals/resnet18_cbam evals/resnet18 ... --out comparison.csv [--html roc.html]

Reads each folder's ``metrics.json`` and ``model_card.json``, prints an aligned table (model,
architecture, pretrained or scratch, CBAM, parameters, AUC [95% CI], AP, sensitivity,
specificity, F1, accuracy, threshold, n), writes every column to the CSV and, with ``--html``,
overlays the ROC curves (from each folder's ``predictions.csv``) in one offline HTML page.
Exit codes: 0 done, 2 a folder is not an evaluation output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from engine.worklist.csvsafe import write_rows
from engine.evaluation.paired import paired_tests

CSV_COLUMNS = ("evaluation", "model", "architecture", "version", "training", "cbam", "parameters",
               "split", "n", "n_positive", "n_negative", "auc", "auc_ci_low", "auc_ci_high",
               "average_precision", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy",
               "ece", "threshold", "folder")


class CompareError(ValueError):
    """A folder that is not an evaluation output; the message names the folder and the file."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="EVAL_DIR", help="output folders of training.evaluate")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--html", help="also write the overlaid ROC curves to this HTML file")
    return p


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CompareError(f"{path} is not readable JSON ({exc})") from None


def _num(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_row(folder: str | Path) -> dict:
    """One comparison row from an evaluation folder (model_card.json optional)."""
    path = Path(folder)
    if not path.is_dir():
        raise CompareError(f"'{path}' is not a folder (expected an output folder of python -m training.evaluate)")
    mfile = path / "metrics.json"
    if not mfile.is_file():
        raise CompareError(f"'{path}' has no metrics.json: not an output folder of python -m training.evaluate")
    m = _read_json(mfile)
    if not isinstance(m, dict) or "auc" not in m:
        raise CompareError(f"{mfile} does not hold evaluation metrics (no 'auc' key)")
    card = _read_json(path / "model_card.json") if (path / "model_card.json").is_file() else {}
    training = card.get("training") if isinstance(card.get("training"), dict) else {}
    arch = str(m.get("architecture") or card.get("architecture") or "")
    pretrained = training.get("pretrained")
    ci = m.get("auc_ci_95") or [None, None]
    row = {
        "evaluation": path.name,
        "model": m.get("model_name") or card.get("name") or arch,
        "architecture": arch,
        "version": m.get("model_version") or card.get("version") or "",
        "training": "pretrained" if pretrained is True else "scratch" if pretrained is False else "",
        "cbam": "yes" if "cbam" in arch.lower() else "no",
        "parameters": m.get("parameters"),
        "split": m.get("split") or "",
        "auc_ci_low": _num(ci[0]), "auc_ci_high": _num(ci[1]),
        "folder": str(path),
    }
    for k in ("n", "n_positive", "n_negative"):
        row[k] = m.get(k)
    for k in ("auc", "average_precision", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy",
              "ece", "threshold"):
        row[k] = _num(m.get(k))
    return row


def _f3(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


def _params(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


TABLE = (  # header, cell, right-aligned
    ("model", lambda r: str(r["model"]), False),
    ("architecture", lambda r: r["architecture"], False),
    ("weights", lambda r: r["training"] or "?", False),
    ("CBAM", lambda r: r["cbam"], False),
    ("params", lambda r: _params(r["parameters"]), True),
    ("AUC [95% CI]", lambda r: f"{_f3(r['auc'])} [{_f3(r['auc_ci_low'])}, {_f3(r['auc_ci_high'])}]", True),
    ("AP", lambda r: _f3(r["average_precision"]), True),
    ("sens", lambda r: _f3(r["sensitivity"]), True),
    ("spec", lambda r: _f3(r["specificity"]), True),
    ("F1", lambda r: _f3(r["f1"]), True),
    ("acc", lambda r: _f3(r["accuracy"]), True),
    ("threshold", lambda r: _f3(r["threshold"]), True),
    ("n", lambda r: "?" if r["n"] is None else str(r["n"]), True),
    ("evaluation", lambda r: r["evaluation"], False),
)


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned)."""
    cells = [[fn(r) for _, fn, _ in TABLE] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(TABLE)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if right else v.ljust(w)
                         for v, w, (_, _, right) in zip(values, widths, TABLE)).rstrip()

    out = [line([h for h, _, _ in TABLE]), "  ".join("-" * w for w in widths)]
    return "\n".join(out + [line(c) for c in cells])


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        write_rows(f, CSV_COLUMNS, ({k: r.get(k) for k in CSV_COLUMNS} for r in rows))
    return path


def write_roc_html(rows: Sequence[dict], path: str | Path) -> tuple[Path, list[str]]:
    """Overlaid ROC curves from each folder's predictions.csv; returns (file, skipped folders)."""
    import pandas as pd
    from training import figures as F

    sets, skipped = [], []
    labels_seen: dict[str, int] = {}
    for r in rows:
        pfile = Path(r["folder"]) / "predictions.csv"
        try:
            df = pd.read_csv(pfile)
            labels, scores = df["label"].to_numpy(np.int64), df["probability"].to_numpy(np.float64)
        except (OSError, KeyError, ValueError, pd.errors.ParserError) as exc:
            skipped.append(f"{r['folder']}: no usable predictions.csv ({exc})")
            continue
        name = f"{r['model']} · {r['evaluation']}"
        labels_seen[name] = labels_seen.get(name, 0) + 1
        if labels_seen[name] > 1:
            name += f" ({labels_seen[name]})"
        sets.append(F.ScoredSet.of(name, labels, scores, r["threshold"]))
    fig = F.roc_figure(sets, title="ROC curves (markers: each model's operating threshold)")
    return F.write_html(fig, path), skipped


def format_paired(tests: Sequence[dict]) -> str:
    lines = ["Paired AUC differences (DeLong), same files:"]
    for t in tests:
        lo, hi = t["ci_95"]
        lines.append(f"  {t['a']} - {t['b']}: {t['difference']:+.4f} (95% CI {lo:+.4f} to {hi:+.4f}), "
                     f"z {t['z']:.2f}, p {t['p']:.3g}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict]:
    rows = [load_row(f) for f in args.folders]
    print(format_table(rows))
    tests = paired_tests(args.folders)
    if tests:
        print("\n" + format_paired(tests))
    out = write_csv(rows, args.out)
    print(f"\n{len(rows)} evaluation(s) written to {out}")
    if args.html:
        html, skipped = write_roc_html(rows, args.html)
        for s in skipped:
            print(f"warning: ROC left out for {s}", file=sys.stderr)
        print(f"ROC curves: {html}")
    return rows


def cli(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
