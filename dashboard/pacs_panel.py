"""The dashboard's PACS pieces: a DICOMweb source on Triage, new inbox studies without a manual
refresh, and "send to PACS" on Review for a reviewed study. The logic is :mod:`engine.pacs`.

Configured by the deployment, never typed by a user (the server would fetch from any address typed):

* ``CXR_DICOMWEB_URL``: the DICOMweb root the PACS source queries and pulls from.
* ``CXR_PACS_DESTINATION``: where "send to PACS" sends (``AET@HOST:PORT`` for C-STORE, or an
  ``http(s)://`` DICOMweb root for STOW-RS); ``CXR_PACS_AET``: our AE title for C-STORE (TRIAGE).
* ``CXR_INBOX_POLL_S``: how often Triage looks for studies the receiver added (5 s; 0 turns it off).
"""

from __future__ import annotations


import pandas as pd
import streamlit as st

from dashboard import labels, state
from engine.settings import settings
from engine.errors import EngineError

DICOMWEB_URL_ENV = "CXR_DICOMWEB_URL"
DESTINATION_ENV = "CXR_PACS_DESTINATION"
AET_ENV = "CXR_PACS_AET"
POLL_ENV = "CXR_INBOX_POLL_S"
_MODALITIES = {"CR and DX": ("CR", "DX"), "CR": ("CR",), "DX": ("DX",)}


# ------------------------------------------------------------------------------------------------
# New inbox studies appear by themselves

def inbox_watch(store, wl) -> None:
    """Rerun the page when the store changes under it (the receiver or a pull added studies)."""
    try:
        every = float(settings().inbox_poll_s)
    except ValueError:
        every = 5.0
    st.session_state[state.INBOX_SEEN] = store.version(wl)
    if every <= 0:
        return

    @st.fragment(run_every=every)
    def _watch() -> None:
        now = store.version(wl)
        if now != st.session_state.get(state.INBOX_SEEN):
            st.session_state[state.INBOX_SEEN] = now
            st.rerun(scope="app")
    _watch()


# ------------------------------------------------------------------------------------------------
# The PACS source beside upload

def _date(d) -> str:
    return d.strftime("%Y%m%d") if d else ""


def pacs_source(store) -> int:
    """Query the configured DICOMweb server and pull studies into the inbox; returns images added."""
    from engine.pacs import send as pacs
    url = settings().dicomweb_url
    with st.expander("PACS (DICOMweb)", icon=":material/cloud_download:", expanded=False):
        if not url:
            st.caption("No PACS query is set up on this server (your administrator can connect one; "
                       "studies the PACS sends to the triage receiver appear here without it).",
                       help=f"Administrators: start the dashboard with {DICOMWEB_URL_ENV}=<DICOMweb root>.")
            return 0
        st.caption(f"Query {url} (QIDO-RS) and pull radiographs (WADO-RS) into the shared inbox, which every "
                   "worklist lists.")
        c1, c2, c3, c4 = st.columns(4)
        date_from = c1.date_input("Study date from", value=None, key="pacs_from")
        date_to = c2.date_input("to", value=None, key="pacs_to")
        modality = c3.selectbox("Modality", list(_MODALITIES), key="pacs_modality")
        accession = c4.text_input("Accession number", key="pacs_accession", max_chars=16)
        if st.button("Search the PACS", key="pacs_search", icon=":material/search:"):
            try:
                hits: dict[str, object] = {}
                for m in _MODALITIES[modality]:
                    for h in pacs.query(url, date_from=_date(date_from), date_to=_date(date_to), modality=m,
                                        accession=accession.strip()):
                        hits.setdefault(h.study_uid, h)
                st.session_state[state.PACS_HITS] = list(hits.values())
            except pacs.PacsError as exc:
                st.session_state.pop(state.PACS_HITS, None)
                st.error(str(exc))
        hits = st.session_state.get(state.PACS_HITS) or []
        if not hits:
            if state.PACS_HITS in st.session_state:
                st.info("No study matches.")
            return 0
        st.dataframe(pd.DataFrame([{"study date": h.date, "modalities": h.modalities, "images": h.instances}
                                   for h in hits]), hide_index=True, key="pacs_hits_table")
        if st.button(f"Pull {labels.plural(len(hits), 'study')} into the inbox", key="pacs_pull",
                     type="primary", icon=":material/download:"):
            added = 0
            try:
                with st.spinner("Retrieving from the PACS…"):
                    for h in hits:
                        added += len(pacs.pull(url, store, modalities=_MODALITIES[modality], study_uid=h.study_uid))
            except pacs.PacsError as exc:
                st.error(str(exc))
            st.session_state.pop(state.PACS_HITS, None)
            st.success(f"{labels.plural(added, 'image')} retrieved into the inbox; they are scored below.")
            return added
    return 0


# ------------------------------------------------------------------------------------------------
# Results the receiver forwards (the outbox)

def outbox_status(store) -> None:
    """One line of outbox counts (nothing while it is empty); the rows: ``python -m engine.pacs outbox``."""
    counts = store.outbox_counts()
    if not any(counts.values()):
        return
    text = (f"Results to the PACS: {counts['sent']:,} sent, {counts['pending']:,} waiting, "
            f"{counts['failed']:,} failed (retried automatically).")
    hint = "Administrators: python -m engine.pacs outbox --store DIR lists them with the reasons; --retry retries now."
    if counts["failed"]:
        st.warning(text, icon=":material/outbox:")
        st.caption(hint)
    else:
        st.caption(text, help=hint)


# ------------------------------------------------------------------------------------------------
# Send to PACS from Review

def send_to_pacs(store, rec, predictor, explainer, thr: float, preset: str = "", heat=None) -> None:
    """A button that sends the reviewed study's SR (with the decision) and heatmap capture; ``heat``:
    Review's cached Grad-CAM map of the study, reused rather than computed again."""
    from engine.pacs import send as pacs
    from engine.pacs.dicom_out import NotDicomError, ResultWriter
    dest_text = settings().pacs_destination
    if not dest_text:
        st.caption("Sending results to the PACS is not set up on this server.",
                   help=f"Administrators: start the dashboard with {DESTINATION_ENV}=AET@HOST:PORT or a DICOMweb root.")
        return
    try:
        dest = pacs.parse_destination(dest_text)
    except ValueError as exc:
        st.caption("Sending results to the PACS is set up wrongly on this server; ask your administrator.",
                   help=f"Administrators: {DESTINATION_ENV} is wrong: {exc}")
        return
    reviewed = bool(store.decisions(rec.id))
    if not st.button("Send report and heatmap to PACS", key="send_pacs", icon=":material/send:",
                     disabled=not reviewed,
                     help=f"A structured report (with your decision) and the heatmap capture, into the study in "
                          f"{dest}." if reviewed else "Record your decision first."):
        return
    origin = f"the dashboard's threshold ({preset})" if preset else "the dashboard's threshold"
    writer = ResultWriter(predictor, thr, origin, explainer=explainer)
    try:
        with st.spinner("Sending…"):
            n = pacs.send_study_results(store, rec, writer, dest,
                                        calling_aet=settings().pacs_aet or "TRIAGE", heat=heat)
    except NotDicomError:
        st.warning("Not a DICOM study: there is no study in the PACS to file the results into.")
    except pacs.PacsError as exc:
        st.error(str(exc))
    except (EngineError, OSError) as exc:   # an evicted file (StoreError says so), a decoder refusal
        st.error(f"Not sent: {exc}")
    else:
        st.success(f"Sent {labels.plural(n, 'object')} to {dest}.")
