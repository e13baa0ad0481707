"""The stop rule's banner, on every page: drawn by ``Home.py`` before the page runs.

Each run asks the store for a cheap signature (:func:`engine.monitoring.report.signature`); when it
changed (a study scored, a decision, an alert cleared), :func:`engine.monitoring.report.refresh` draws
the audit sample and runs the stop rule, and a crossing is recorded; the banner shows every alert not
yet cleared. The first monitoring period starts here, with the sidebar's model, when the store has none.
"""

from __future__ import annotations

import sqlite3

import streamlit as st

from engine.errors import EngineError
from engine.monitoring import report
from engine.monitoring.periods import ModelInfo

from dashboard import resources, state


@st.cache_data(max_entries=8, show_spinner=False)
def _alerts(root: str, signature: tuple, key: str, label: str, threshold: float, _store) -> list[tuple[str, str]]:
    return [(a.since, a.reason) for a in report.refresh(_store, first_model=ModelInfo(key, label, threshold))]


def render(store) -> None:
    """One error banner per active alert ("Model under review since <time>: <reason>")."""
    ref = state.model_ref()
    card = resources.predictor(ref).card
    label = f"{card.name or card.architecture} {card.version}".strip()
    try:
        alerts = _alerts(str(store.root), report.signature(store), ref.key, label, float(card.threshold), store)
    except (EngineError, sqlite3.Error) as exc:      # monitoring must never take a page down
        st.warning(f"Monitoring could not be brought up to date: {exc}", icon=":material/warning:")
        return
    for since, reason in alerts:
        st.error(f"**Model under review since {since[:16].replace('T', ' ')} UTC**: {reason}. See *Monitoring*.",
                 icon=":material/gpp_maybe:")
