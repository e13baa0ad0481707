"""Every CSV the product writes: one formula guard, one writer, and the results row.

The CLI (``engine.predict``), the archive (``engine.archive``) and the dashboard's worklist export
write their results rows with :func:`result_row` (the same columns, the same cell formats, the one
flag rule) and every CSV, results or not (review decisions, per-file evaluation results), goes out
through :func:`write_rows` or :func:`frame_csv`, which defuse spreadsheet formulas in every cell.
"""

from __future__ import annotations

import csv
import hashlib
import io
from typing import IO, Callable, Iterable, Mapping, Optional, Sequence

from engine.evaluation.metrics import flagged as flag_rule

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# New columns go at the end, so that readers that take columns by position keep working.
PROBABILITY_DECIMALS = 6    # 1e-6 is below any threshold step a reader sets; 17 digits or 1.2e-05 read as noise
RESULT_COLUMNS = ["file", "status", "message", "probability", "flagged", "threshold", "model",
                  "warnings", "modality", "view_position", "sha256", "operating_point"]
IDENTIFIER_COLUMNS = ["patient_name", "patient_id", "birth_date", "accession_number", "institution"]


def csv_safe(value: object) -> object:
    """Defuse spreadsheet formulas in text (a cell starting with = + - @ is shown as text)."""
    if isinstance(value, str) and value[:1] in _FORMULA_STARTS:
        return "'" + value
    return value


def anonymous_name(name: str) -> str:
    """A stable stand-in for a file name that may hold a patient's name (``file-`` + 16 hex digits)."""
    return "file-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def result_row(*, file: str, status: str, message: str, probability: Optional[float], threshold: float,
               model: str, warnings: Sequence[str] = (), modality: str = "", view_position: str = "",
               sha256: str = "", identifiers: Optional[Mapping[str, object]] = None,
               operating_point: str = "") -> dict[str, str]:
    """One results row as written: the probability in fixed decimals (:data:`PROBABILITY_DECIMALS`, never
    scientific notation) and flagged "yes"/"no" (decided on the unrounded probability) when
    ``status`` is "ok", both empty otherwise; identifier columns only when ``identifiers`` is given."""
    ok = status == "ok" and probability is not None
    row = {"file": file, "status": status, "message": message,
           "probability": f"{float(probability):.{PROBABILITY_DECIMALS}f}" if ok else "",
           "flagged": ("yes" if flag_rule(float(probability), threshold) else "no") if ok else "",
           "threshold": repr(float(threshold)), "operating_point": operating_point, "model": model, "warnings": " | ".join(warnings),
           "modality": modality or "", "view_position": view_position or "", "sha256": sha256 or ""}
    if identifiers is not None:
        row.update({k: str(identifiers.get(k) or "") for k in IDENTIFIER_COLUMNS})
    return row


def row_writer(f: IO[str], columns: Sequence[str]) -> Callable[[Mapping[str, object]], None]:
    """Write the header to an open text file; return the function that writes one row, every cell
    guarded and None written empty. A row with a column not in ``columns`` is an error, never
    dropped in silence."""
    writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    return lambda row: writer.writerow({k: "" if v is None else csv_safe(v) for k, v in row.items()})


def write_rows(f: IO[str], columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> int:
    """Header and every row (see :func:`row_writer`); returns the number of rows."""
    write = row_writer(f, columns)
    n = 0
    for row in rows:
        write(row)
        n += 1
    return n


def rows_csv(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """:func:`write_rows` into a string (a download)."""
    buf = io.StringIO()
    write_rows(buf, columns, rows)
    return buf.getvalue()


def frame_csv(frame, float_format: str = f"%.{PROBABILITY_DECIMALS}f") -> str:
    """A pandas DataFrame as CSV text, every text cell guarded (the index is not written); floats in the
    results rows' fixed decimals (never scientific notation)."""
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype == object or str(out[c].dtype) in ("string", "str"):
            out[c] = out[c].map(csv_safe)
    return out.to_csv(index=False, lineterminator="\n", float_format=float_format)
