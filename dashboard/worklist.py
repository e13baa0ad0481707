"""The triage worklist as a DataFrame: built once per batch, re-flagged cheaply per threshold.

Flag rule (as everywhere in the product): a study is flagged when ``probability >= threshold``.
Unreadable and refused files stay in the list, after the scored studies, with their reason.
Patient identifiers are kept in their own columns and leave this module only through
:func:`export_csv` with ``include_identifiers=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from engine.worklist.store import StudyRow
from engine.worklist import csvsafe
from engine.evaluation import metrics as M

IDENTIFIER_COLUMNS = tuple(csvsafe.IDENTIFIER_COLUMNS)
BASE_COLUMNS = ("thumbnail", "file", "probability", "status", "reason", "warnings", "review", "audit", "study_date",
                "age_band", "modality", "view_position", "body_part", "format", "study", "sha256")
DISPLAY_COLUMNS = ("thumbnail", "file", "probability", "flag", "review", "audit", "reason", "warnings", "study_date",
                   "age_band", "modality", "view_position")
AUDIT_TEXT = "audit"     # an unflagged study drawn into the audit sample (engine.monitoring.audit): to review
WORKLIST_EXPORT_COLUMNS = ("review", "reviewer", "decided_at_utc", "study_date", "age_band", "body_part",
                           "format")   # after the results columns
VIEWS = ("All", "Flagged", "Not flagged", "Unreadable")
FLAG_TEXT = {True: "FLAGGED", False: "not flagged"}
# a 1x1 transparent PNG: an unreadable file's thumbnail cell stays empty instead of saying "None"
BLANK_THUMBNAIL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk"
                   "YAAAAAYAAjCB0C8AAAAASUVORK5CYII=")
UNREADABLE_TEXT = "unreadable"


@dataclass(frozen=True)
class Counts:
    flagged: int
    not_flagged: int
    unreadable: int

    @property
    def total(self) -> int:
        return self.flagged + self.not_flagged + self.unreadable


def build_worklist(records: Iterable[StudyRow]) -> pd.DataFrame:
    """One row per file, scored studies by descending probability, then unreadable files. Identifier
    columns are empty: ``with_identifiers`` fills them when an export asks."""
    rows = []
    for order, r in enumerate(records):
        md = r.metadata
        rows.append({
            "thumbnail": r.thumbnail or BLANK_THUMBNAIL,
            "file": r.name,
            "probability": r.probability if r.ok else np.nan,
            "status": r.status,
            "reason": r.message,
            "warnings": " | ".join(r.warnings),
            "review": r.review_status,
            "audit": AUDIT_TEXT if r.audit else "",
            "study_date": _date(md.study_date),
            "age_band": md.age_band or "",
            "study": md.study_key or "",
            "modality": md.modality or "",
            "view_position": md.view_position or "",
            "body_part": md.body_part or "",
            "format": md.format or "",
            "sha256": r.sha256,
            **{c: "" for c in IDENTIFIER_COLUMNS},
            "_order": order,
        })
    df = pd.DataFrame(rows, columns=[*BASE_COLUMNS, *IDENTIFIER_COLUMNS, "_order"])
    df["probability"] = df["probability"].astype(float)
    df["_readable"] = df["status"].eq("ok")
    df = df.sort_values(["_readable", "probability", "_order"], ascending=[False, False, True],
                        na_position="last", kind="mergesort").reset_index(drop=True)
    return df.drop(columns=["_order"])


def _date(value) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as given (or empty)."""
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


OUT_OF_POPULATION = "outside the training population: "


def short_warning(text: str) -> str:
    """A warning in a few words for a table cell or a one-line notice: its first clause, without the
    parenthesis that details it ("outside the training population: the patient is an adult (18 or
    older); the model was trained on ..." -> "out of population: the patient is an adult"). The full
    text stays in the CSV, the Review page's notice tooltip and the study's history panel."""
    text = str(text).strip()
    lead = ""
    if text.startswith(OUT_OF_POPULATION):
        lead, text = "out of population: ", text[len(OUT_OF_POPULATION):]
    else:
        head, sep, rest = text.partition(": ")
        text = head if sep and len(head) >= 12 else text
    text = re.sub(r"\s*\([^()]*\)", "", text.split(";", 1)[0])
    return lead + text.strip()


def short_warnings(joined: str) -> str:
    """Every warning of a " | "-joined cell in its short form (see :func:`short_warning`)."""
    return " | ".join(short_warning(w) for w in str(joined or "").split(" | ") if w.strip())


def with_identifiers(df: pd.DataFrame, lookup) -> pd.DataFrame:
    """The worklist with its identifier columns filled from ``lookup(sha256) -> PatientIdentifiers``
    (the store keeps them apart; they are read only for an export that asks for them)."""
    out = df.copy()
    for i, sha in enumerate(out["sha256"]):
        ids = lookup(sha) if sha else None
        for c in IDENTIFIER_COLUMNS:
            out.at[i, c] = (getattr(ids, c) or "") if ids is not None else ""
    return out


def flags(df: pd.DataFrame, threshold: float) -> np.ndarray:
    """Boolean per row: readable and ``probability >= threshold``."""
    prob = df["probability"].to_numpy()
    with np.errstate(invalid="ignore"):
        return df["_readable"].to_numpy() & M.flagged(prob, threshold)


def counts(df: pd.DataFrame, threshold: float) -> Counts:
    flagged = int(flags(df, threshold).sum())
    readable = int(df["_readable"].sum())
    return Counts(flagged, readable - flagged, len(df) - readable)


def flag_column(df: pd.DataFrame, threshold: float) -> np.ndarray:
    return np.where(~df["_readable"].to_numpy(), UNREADABLE_TEXT,
                    np.where(flags(df, threshold), FLAG_TEXT[True], FLAG_TEXT[False]))


def by_study(df: pd.DataFrame) -> pd.DataFrame:
    """One row per study (DICOM images sharing a Study Instance UID): the row of its most probable
    image, named "<file> (+N images)"; review "unreviewed" until every image has a decision. Files
    without a study (JPEG, PNG, unreadable) stay one row each. Order: as in ``df``."""
    keyed = df["study"].ne("") & df["_readable"]
    if not keyed.any():
        return df
    firsts = ~df.loc[keyed, "study"].duplicated()                  # df is sorted: the first is the top image
    size = df.loc[keyed].groupby("study")["file"].transform("size")
    reviewed = df.loc[keyed].groupby("study")["review"].transform(lambda r: r.iloc[0] if r.ne("unreviewed").all()
                                                                    else "unreviewed")
    top = df.loc[keyed].assign(review=reviewed)
    top["file"] = [f"{f} (+{n - 1} images)" if n > 1 else f for f, n in zip(top["file"], size)]
    keep = pd.concat([top[firsts.to_numpy()], df.loc[~keyed]])
    return keep.loc[sorted(keep.index)].reset_index(drop=True)


def view(df: pd.DataFrame, threshold: float, show: str = "All", thumbnails: bool = True,
         studies: bool = False) -> pd.DataFrame:
    """The rows and columns the worklist table shows at ``threshold`` (no identifiers); with
    ``studies``, one row per DICOM study (see :func:`by_study`)."""
    if show not in VIEWS:
        raise ValueError(f"show must be one of {', '.join(VIEWS)}, got {show!r}")
    if studies:
        df = by_study(df)
    cols = [c for c in DISPLAY_COLUMNS if c != "flag" and (thumbnails or c != "thumbnail")]
    out = df[cols + ["sha256"]].copy()
    out.insert(cols.index("probability") + 1, "flag", flag_column(df, threshold))
    # A warning is visible in the row itself, next to the flag, however narrow the Warnings column is.
    out.insert(cols.index("probability") + 2, "warn", ["⚠" if w else "" for w in df["warnings"].fillna("")])
    out["warnings"] = [short_warnings(w) for w in out["warnings"].fillna("")]   # in full: the CSV, Review
    out["details"] = [" · ".join(v for v in row if v) for row in
                      out[["modality", "view_position", "age_band", "study_date"]].fillna("").itertuples(index=False)]
    if show == "Flagged":
        out = out[out["flag"] == FLAG_TEXT[True]]
    elif show == "Not flagged":
        out = out[out["flag"] == FLAG_TEXT[False]]
    elif show == "Unreadable":
        out = out[out["flag"] == UNREADABLE_TEXT]
    return out


GRID_COLUMNS = ("thumbnail", "file", "probability", "flag", "warn", "review", "audit", "reason", "details",
                "warnings")
OPTIONAL_COLUMNS = ("warn", "audit", "reason", "details", "warnings")     # shown only when a row fills them


def grid_columns(table: pd.DataFrame) -> list[str]:
    """The columns the worklist grid shows for a :func:`view`: the study's header fields in one "details"
    cell, and the optional columns only when a row has something in them (an upload with nothing
    unreadable has no "Unreadable because" column), so that the grid fits the screen."""
    return [c for c in GRID_COLUMNS if c in table.columns
            and (c not in OPTIONAL_COLUMNS or table[c].fillna("").astype(str).ne("").any())]


def unreadable(df: pd.DataFrame) -> pd.DataFrame:
    """File and reason of every file that could not be scored."""
    return df.loc[~df["_readable"], ["file", "status", "reason"]].reset_index(drop=True)


def flagged_shas(df: pd.DataFrame, threshold: float) -> list[str]:
    """Content hashes of the flagged studies, highest probability first, without repeats."""
    return list(dict.fromkeys(df.loc[flags(df, threshold), "sha256"]))


def readable_shas(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df.loc[df["_readable"], "sha256"]))




def _as_utc(iso: str, fmt: str) -> str:
    from datetime import datetime, timezone
    try:
        return datetime.fromisoformat(str(iso)).astimezone(timezone.utc).strftime(fmt)
    except ValueError:
        return str(iso)


def utc_time(iso: str) -> str:
    """A stored time (ISO 8601 with its offset) in UTC, as every page shows it: "2026-12-04 06:30 UTC"
    (the store keeps UTC)."""
    return _as_utc(iso, "%Y-%m-%d %H:%M UTC")


def decisions_by_sha(decisions: Iterable[dict]) -> dict[str, tuple[str, str]]:
    """The decision in force on each study (``Store.worklist_decisions``): its file's SHA-256 ->
    (reviewer, time in UTC as ISO 8601 with a Z), as the worklist export writes them."""
    return {d["sha256"]: (d["reviewer"] or "", _as_utc(d["time"], "%Y-%m-%dT%H:%M:%SZ")) for d in decisions}


def export_csv(df: pd.DataFrame, threshold: float, model: str, include_identifiers: bool = False,
               operating_point: str = "", decisions: Optional[dict[str, tuple[str, str]]] = None) -> str:
    """The worklist as CSV: the results row the CLI and the archive write (``engine.worklist.csvsafe.result_row``:
    same columns, formats, flag rule and yes/no flags; "message" says why a file has no probability),
    then the worklist's own columns: the review, who decided and when
    (``decisions``: see :func:`decisions_by_sha`; UTC, as the column says); identifier columns only when
    ``include_identifiers`` (fill them first with :func:`with_identifiers`)."""
    columns = [*csvsafe.RESULT_COLUMNS, *WORKLIST_EXPORT_COLUMNS,
               *(IDENTIFIER_COLUMNS if include_identifiers else ())]
    decided = decisions or {}
    rows = []
    for r in df.to_dict("records"):
        probability = None if pd.isna(r["probability"]) else float(r["probability"])
        row = csvsafe.result_row(
            file=r["file"], status=r["status"], message=r["reason"],
            probability=probability, threshold=threshold,
            model=model, warnings=[r["warnings"]] if r["warnings"] else [], modality=r["modality"],
            view_position=r["view_position"], sha256=r["sha256"],
            identifiers={c: r[c] for c in IDENTIFIER_COLUMNS} if include_identifiers else None,
            operating_point=operating_point)
        reviewer, at = decided.get(r["sha256"], ("", "")) if r["review"] != "unreviewed" else ("", "")
        rows.append({**row, **{c: r[c] for c in WORKLIST_EXPORT_COLUMNS if c in r},
                     "reviewer": reviewer, "decided_at_utc": at})
    return csvsafe.rows_csv(columns, rows)
