"""The monitoring report of the current period: inputs, readers, audit and stop rule, as one dict.

:func:`refresh` does the work that must happen whoever looks (draw the audit sample, run the stop
rule, record a crossing); :func:`build` does it too and returns everything ``--json`` writes, the HTML
report and the Monitoring page draw: counts, rates with intervals, drift statistics with their status,
never a file name, a content hash or a patient identifier (readers by a pseudonym unless ``names``).
"""

from __future__ import annotations

import csv
from collections import Counter
from datetime import datetime, timezone
from typing import Optional, Sequence

import numpy as np

from engine.errors import StoreError
from engine.model.checkpoint import load_val_predictions_path
from engine.monitoring import audit, cusum, drift, periods, readers, state, stop_rule, tables
from engine.monitoring.periods import ModelInfo, Period
from engine.monitoring.stats import proportion
from engine.monitoring.windows import Window, WindowSpec, iso, split, unique_files, within
from engine.worklist.store import Store, StudyRow

HISTOGRAM_BINS = 20
THRESHOLDS = {
    "psi_watch": drift.PSI_WATCH, "psi_moved": drift.PSI_MOVED, "psi_p_value": drift.P_MOVED,
    "rate_interval": "Newcombe hybrid score 95%, moved when it excludes 0", "rate_min_change": drift.RATE_MIN_CHANGE,
    "min_studies": drift.MIN_STUDIES, "cusum_arl0": cusum.ARL0, "cusum_shift": "p1 = 2 p0",
    "disagreement_default_p0": stop_rule.DEFAULT_DISAGREEMENT, "warning_default_p0": stop_rule.DEFAULT_WARNING,
    "intervals": "exact Clopper-Pearson 95% for rates of readers and audit",
}


def validation_probabilities(period: Period) -> Optional[np.ndarray]:
    """The probabilities of the period's model on its validation split (None without the file)."""
    path = load_val_predictions_path(period.folder)
    if path is None:
        return None
    with open(path, newline="") as f:
        values = [float(r["probability"]) for r in csv.DictReader(f) if r.get("probability") not in (None, "")]
    return np.asarray(values, np.float64) if values else None


def _evaluate(store: Store, period: Period) -> tuple[list[StudyRow], list[dict], stop_rule.StopRule]:
    audit.draw(store, period)
    studies = store.monitored_studies(period.model_key, period.started)
    decisions = store.monitored_decisions(period.model_key, period.started)
    return studies, decisions, stop_rule.evaluate(store, period, studies, decisions)


def signature(store: Store) -> tuple:
    """Cheap to ask, and changes when monitoring's view could: a study or result added, a decision, an
    audit draw, a period or an alert raised or cleared (a cache key for :func:`refresh` and :func:`build`)."""
    with tables.reading(store) as con:
        mine = con.execute("SELECT (SELECT COUNT(*) FROM monitor_periods), "
                           "(SELECT COUNT(*) || ':' || COUNT(cleared_at) FROM monitor_state)").fetchone()
    return (*store.version(None), *mine)


def refresh(store: Store, first_model: Optional[ModelInfo] = None) -> list[state.Alert]:
    """Draw the audit sample and run the stop rule for the current period (started for ``first_model``
    when the store has none yet); return the active alerts."""
    period = periods.current(store) or (periods.ensure(store, first_model) if first_model else None)
    if period is not None:
        _evaluate(store, period)
    return state.active(store)


def _reference(period: Period, studies: Sequence[StudyRow], windows: Sequence[Window],
               given: Optional[tuple[str, str]]) -> tuple[list[StudyRow], dict, Optional[int]]:
    """The reference window's studies, its description, and the index of the window it is (if one)."""
    if given is not None:
        return within(studies, *given), {"kind": "given", "from": given[0], "to": given[1]}, None
    if period.reference_from is not None:
        return (within(studies, period.reference_from, period.reference_to),
                {"kind": "accepted", "from": period.reference_from, "to": period.reference_to}, None)
    if windows:
        return list(windows[0].studies), {"kind": "first window", "from": windows[0].start, "to": windows[0].end}, 0
    return [], {"kind": "none"}, None


def _rates(rows: Sequence[StudyRow], threshold: float) -> dict:
    return {name: proportion(k, n).as_dict() for name, (k, n) in drift.rates(rows, threshold).items()}


def _window(w: Window, ref_rows: list[StudyRow], validation, period: Period, is_ref: bool,
            decisions: list[dict]) -> dict:
    rows = unique_files(w.studies)
    checks = drift.check_window(rows, ref_rows, validation, period.threshold, is_ref)
    return {**w.as_dict(), "files": len(rows), "scored": sum(r.ok for r in rows), "is_reference": is_ref,
            "checks": [c.as_dict() for c in checks], "moved": drift.moved(checks),
            "alert": bool(drift.moved(checks)), "rates": _rates(rows, period.threshold),
            "mix": {name: dict(sorted(Counter(drift.category(r, name) for r in rows if r.ok).items()))
                    for name in drift.MIXES},
            "readers": readers.summary(decisions)}


def _histogram(values) -> list[int]:
    if values is None or not len(values):
        return [0] * HISTOGRAM_BINS
    return np.histogram(np.clip(values, 0, 1), bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0].tolist()


def _input_alert(windows: list[dict]) -> dict:
    """The combined input alert of the latest window with enough scored studies to be tested."""
    tested = [w for w in windows if w["scored"] >= drift.MIN_STUDIES] or windows[-1:]
    if not tested:
        return {"window": None, "alert": False, "moved": []}
    w = tested[-1]
    return {"window": w["index"], "alert": w["alert"], "moved": w["moved"],
            "windows_with_alert": [x["index"] for x in windows if x["alert"]]}


def _notice(period: Period) -> str:
    when = period.started[:16].replace("T", " ")
    if period.reason == "first period":
        return (f"Monitoring of {period.model_label} at threshold {period.threshold:.3f} started {when} UTC. "
                "Check the threshold against the audit sample once it holds reviewed studies.")
    return (f"A new monitoring period started {when} UTC ({period.reason}: {period.model_label} at threshold "
            f"{period.threshold:.3f}). Check the threshold against the audit sample of this period.")


def _studies(studies: Sequence[StudyRow]) -> dict:
    files = unique_files(studies)
    return {"rows": len(studies), "files": len(files), "scored": sum(r.ok for r in files),
            "unreadable": sum(r.status in ("error", "refused") for r in files),
            "pending": sum(r.status == "pending" for r in files)}


def build(store: Store, spec: WindowSpec, *, reference: Optional[tuple[str, str]] = None, names: bool = False,
          now: Optional[str] = None, first_model: Optional[ModelInfo] = None) -> dict:
    """The report of the current period, cut into ``spec`` windows (see the module docstring)."""
    period = periods.current(store) or (periods.ensure(store, first_model) if first_model else None)
    if period is None:
        raise StoreError("monitoring has not started on this store: no period yet, and no model was given")
    now = now or iso(datetime.now(timezone.utc))
    studies, decisions, rule = _evaluate(store, period)
    windows = split(studies, spec, period.started, now)
    ref_rows, ref_desc, ref_index = _reference(period, studies, windows, reference)
    ref_files = unique_files(ref_rows)
    validation = validation_probabilities(period)
    window_of = {r.id: w.index for w in windows for r in w.studies}
    decided: dict[int, list[dict]] = {}
    for d in decisions:
        decided.setdefault(window_of.get(d["study_id"], -1), []).append(d)
    entries = [_window(w, ref_files, validation, period, w.index == ref_index, decided.get(w.index, []))
               for w in windows]
    latest = [r.probability for r in unique_files(windows[-1].studies) if r.ok] if windows else []
    alerts = state.active(store)
    return {
        "report": "cxr-triage monitoring", "version": 1, "generated": now,
        "period": {**period.as_dict(), "notice": _notice(period)},
        "periods": [{"id": p.id, "started": p.started, "reason": p.reason, "model": p.model_label,
                     "threshold": round(p.threshold, 4)} for p in periods.history(store)],
        "window": {"kind": spec.kind, "size": spec.size, "label": spec.label},
        "reference": {**ref_desc, "files": len(ref_files), "scored": sum(r.ok for r in ref_files),
                      "validation_predictions": None if validation is None else int(len(validation))},
        "studies": _studies(studies),
        "windows": entries,
        "input_alert": _input_alert(entries),
        "readers": {"overall": readers.summary(decisions), "by": readers.by_group(decisions, names)},
        "audit": readers.audit_summary(studies, period.threshold, period.audit_share, period.audit_seed),
        "stop_rule": {"state": "under review" if alerts else "in use",
                      "alerts": [a.as_dict(names) for a in alerts],
                      "history": [a.as_dict(names) for a in state.history(store, 20)], **rule.as_dict()},
        "histogram": {"edges": np.linspace(0, 1, HISTOGRAM_BINS + 1).round(3).tolist(),
                      "validation": _histogram(validation), "reference": _histogram(
                          [r.probability for r in ref_files if r.ok]), "latest": _histogram(latest)},
        "thresholds": THRESHOLDS,
    }
