"""Triage: upload a batch, get a worklist sorted by probability of pneumonia."""

from __future__ import annotations

import threading

import streamlit as st

from dashboard import labels, pacs_panel, resources, state, upload_spool, worklist
from dashboard.batch import (MAX_ARCHIVE_BYTES, MAX_FILE_BYTES, MAX_FILES, MB, Upload, fmt_mb, ingest_uploads,
                             score_worklist)

REVIEW_PAGE = "views/review.py"


def _open_in_review(sha: str) -> None:
    st.session_state[state.REVIEW_SHA] = sha
    st.switch_page(REVIEW_PAGE)


_CONFIRM_CLEAR = "_confirm_clear"
_LAST_CLEAR = "_last_clear"           # the ArchiveReceipt of the last Clear, for Undo


def _ask_clear() -> None:
    st.session_state[_CONFIRM_CLEAR] = True


def _cancel_clear() -> None:
    st.session_state.pop(_CONFIRM_CLEAR, None)


def _clear(store, wl) -> None:
    """Archive (never delete) the worklist's studies; Undo brings them back with their decisions."""
    st.session_state.pop(_CONFIRM_CLEAR, None)
    st.session_state[_LAST_CLEAR] = store.archive_studies(wl)
    st.session_state.pop(state.OPEN_STUDY, None)


def _undo_clear(store, wl) -> None:
    receipt = st.session_state.pop(_LAST_CLEAR, None)
    if receipt is not None:
        store.restore_studies(wl, receipt.batch)


def _clear_controls(store, wl, n_studies: int, slot) -> None:
    """Clear asks first; a cleared worklist can be brought back (Undo) for as long as this session lasts,
    and the archived rows stay in the store after that."""
    if st.session_state.get(_CONFIRM_CLEAR):
        with slot.container(border=True):
            st.warning(f"Clear the worklist? Its {labels.plural(n_studies, 'study')} and your decisions on them leave this "
                       "worklist (they are archived, not deleted, and Undo brings them back).")
            y, n = st.columns(2)
            y.button("Yes, clear the worklist", key="clear_confirm", type="primary", on_click=_clear,
                     args=(store, wl), icon=":material/delete_sweep:")
            n.button("Cancel", key="clear_cancel", on_click=_cancel_clear)
    else:
        slot.button("Clear worklist…", key="clear_worklist", on_click=_ask_clear, icon=":material/delete_sweep:",
                    help="Asks before clearing; studies are archived and can be restored with Undo.")


def _undo_banner(store, wl) -> None:
    receipt = st.session_state.get(_LAST_CLEAR)
    if receipt is None or not receipt.count:
        return
    u1, u2 = st.columns([4, 1], vertical_alignment="center")
    u1.info(f"Cleared {labels.plural(receipt.count, 'study')} (archived with their "
            "decisions).", icon=":material/inventory_2:")
    u2.button("Undo clear", key="undo_clear", on_click=_undo_clear, args=(store, wl), icon=":material/undo:")


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps them): after an upload's bytes went
    to the store, the server's resident memory drops back instead of staying at its peak."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):      # not glibc: nothing to do
        pass


def upload_limits_text() -> str:
    """The limits as the uploader states them: the box under it shows the per-file limit Streamlit enforces
    (a ZIP's, the largest upload), so the label says what an image may weigh."""
    return (f"an image up to {MAX_FILE_BYTES / MB:,.0f} MB; a ZIP of them, the largest upload, up to "
            f"{MAX_ARCHIVE_BYTES / MB:,.0f} MB")


def _uploader():
    return st.file_uploader(
        f"Chest radiographs: DICOM (.dcm or no extension), JPEG, PNG, or ZIP archives of them ({upload_limits_text()})",
        accept_multiple_files=True, key=state.uploader_key(), max_upload_size=MAX_ARCHIVE_BYTES // MB,
        help=f"Up to {MAX_FILES:,} studies per worklist. The content decides the format, not the extension. "
             "Files go to the worklist store and the uploader empties. A larger image is listed as refused, "
             "with the reason.")


def _ingest_and_score(store, wl, files, pred, ref) -> None:
    """New uploads into the store, then every unscored study scored (with a progress bar)."""
    bar = st.empty()

    def progress(done: int, total) -> None:
        bar.progress(done / max(total or done, 1), text=f"Reading and scoring new files: {done:,} of {total:,}")

    if files:
        ingest_uploads(store, wl, [Upload(f.file_id, f.name, *upload_spool.reader(f)) for f in files])
        state.renew_uploader(files)     # the bytes are in the store: empty the widget, drop them from memory
    score_worklist(store, wl, pred, ref.key, progress=progress)
    bar.empty()
    if files:
        st.session_state[state.TRIM_PENDING] = True     # the next run, once Streamlit dropped the upload
        st.rerun()


def _eviction_notice(store, thr: float, ref) -> None:
    eviction = store.evict(protect_threshold=thr, model_key=ref.key)
    if eviction.over_limit:
        st.warning(eviction.notice())


def _summary(df, thr: float, store, wl, model_label: str) -> None:
    """The header line with Clear, the four counts, and the refusal notice."""
    h1, h2 = st.columns([4, 1], vertical_alignment="center")
    h1.caption(f"{labels.plural(len(df), 'study')} in your worklist, kept on this server for this page's link (a reload "
               "or a restart keeps them). Scored by " + labels.short_label(model_label) + ".")
    _clear_controls(store, wl, len(df), h2)
    c = worklist.counts(df, thr)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Flagged", f"{c.flagged:,}", help=f"probability ≥ {thr:.3f}")
    m2.metric("Not flagged", f"{c.not_flagged:,}")
    m3.metric("Unreadable", f"{c.unreadable:,}", help="could not be read, or refused by a limit")
    m4.metric("Files", f"{c.total:,}")
    refused = df["status"].eq("refused").sum()
    if refused:
        st.warning(f"{labels.plural(int(refused), 'file')} refused by a limit ({MAX_FILES:,} images per batch, "
                   f"{fmt_mb(MAX_FILE_BYTES)} per image, {fmt_mb(MAX_ARCHIVE_BYTES)} per ZIP); "
                   "they are listed with the reason.")


def _column_config(thr: float) -> dict:
    """Widths that fit the grid at 1440 px with the sidebar open (the study's header fields share one cell,
    warnings are shown short: in full in Review and the CSV)."""
    return {
        "thumbnail": st.column_config.ImageColumn("", width=48),
        "file": st.column_config.TextColumn("File", width=190),
        "probability": st.column_config.ProgressColumn(
            "P(pneumonia)", min_value=0.0, max_value=1.0, format="%.3f", width=120),
        "flag": st.column_config.TextColumn(f"At {thr:.3f}", width=84),
        "warn": st.column_config.TextColumn("⚠", width=32,
                                            help="A warning: outside the training population, or the image looks "
                                                 "unlike a frontal chest radiograph (read the Warnings column)"),
        "review": st.column_config.TextColumn("Review", width=88),
        "audit": st.column_config.TextColumn("Audit", width=56,
                                             help="Not flagged, drawn at random into the audit sample: please "
                                                  "review it (it measures what the model misses)"),
        "details": st.column_config.TextColumn("Study", width=150,
                                               help="Modality · view · age band · study date, from the DICOM header"),
        "warnings": st.column_config.TextColumn("Warnings", width=260,
                                                help="Each warning in short; in full on the Review page and in the CSV"),
        "reason": st.column_config.TextColumn("Unreadable because", width=220),
    }


def _worklist_table(df, thr: float) -> None:
    """The worklist grid; selecting a row opens that study in Review."""
    f1, f2, f3 = st.columns([3, 1, 1])
    show = f1.radio("Show", worklist.VIEWS, horizontal=True, key="wl_view", persist_state="session")
    studies = f2.toggle("One row per study", value=True, key="wl_studies", persist_state="session",
                        help="DICOM images of one study (same Study Instance UID) as one row, led by its most "
                             "probable image")
    thumbs = f3.toggle("Thumbnails", value=True, key="wl_thumbs", persist_state="session")
    table = worklist.view(df, thr, show, thumbs, studies)
    st.caption("Select a row to open the study in Review.")
    event = st.dataframe(table, hide_index=True, key="worklist_table", on_select="rerun",
                         selection_mode="single-row", column_order=worklist.grid_columns(table),
                         column_config=_column_config(thr))
    rows = list(event.selection.rows) if event is not None else []
    readable = worklist.readable_shas(df)
    if rows != st.session_state.get(state.WORKLIST_ROWS):     # a newly selected row picks the study
        st.session_state[state.WORKLIST_ROWS] = rows
        if rows and rows[0] < len(table) and table.iloc[rows[0]]["sha256"] in readable:
            _open_in_review(table.iloc[rows[0]]["sha256"])      # one click opens the study


def _open_controls(df) -> None:
    readable = worklist.readable_shas(df)
    if st.session_state.get(state.OPEN_STUDY) not in readable:
        st.session_state.pop(state.OPEN_STUDY, None)
    if not readable:
        return
    names = {sha: name for sha, name in zip(df["sha256"], df["file"]) if sha}
    o1, o2 = st.columns([3, 1], vertical_alignment="bottom")
    pick = o1.selectbox("Open a study in Review (or select a row above)", readable, key=state.OPEN_STUDY,
                        format_func=lambda s: names.get(s, s[:12]))
    if o2.button("Open in Review", type="primary", icon=":material/visibility:", key="open_review"):
        _open_in_review(pick)


def _unreadable_and_export(df, thr: float, store, model_label: str) -> None:
    bad = worklist.unreadable(df)
    if len(bad):
        with st.expander(f"{labels.plural(len(bad), 'file')} could not be scored", expanded=len(bad) <= 20):
            st.dataframe(bad, hide_index=True, column_config={
                "file": "File", "status": "Status", "reason": st.column_config.TextColumn("Reason", width="large")})
    e1, e2 = st.columns([2, 1], vertical_alignment="bottom")
    with_ids = e1.checkbox("Include patient identifiers in the CSV (names, IDs, birth dates)",
                           key="export_ids", value=False,
                           help="Off by default: the export then holds no patient identifier.")
    # The CSV is made when the button is clicked, outside this script run, where st.session_state cannot
    # be read: what it needs from the session is taken now.
    point, wl = state.operating_point_label(), state.worklist()
    e2.download_button(
        "Download worklist CSV", icon=":material/download:", key="export_csv",
        data=lambda: worklist.export_csv(worklist.with_identifiers(df, store.identifiers) if with_ids else df,
                                         thr, model_label, with_ids, point,
                                         worklist.decisions_by_sha(store.worklist_decisions(wl))),
        file_name="worklist_with_identifiers.csv" if with_ids else "worklist.csv", mime="text/csv",
        on_click="ignore")


def render() -> None:
    if st.session_state.pop(state.TRIM_PENDING, False):
        # Streamlit drops the emptied uploader's files when this run ends: trim a moment after.
        threading.Timer(3.0, _release_freed_memory).start()
    ref = state.model_ref()
    pred = resources.predictor(ref)
    thr = state.threshold()
    store = resources.store()
    wl = state.worklist()
    model_label = pred.card.label
    st.title("Triage")
    files = _uploader()
    pacs_panel.pacs_source(store)
    pacs_panel.outbox_status(store)
    _ingest_and_score(store, wl, files, pred, ref)
    _eviction_notice(store, thr, ref)
    pacs_panel.inbox_watch(store, wl)
    _undo_banner(store, wl)
    batch = resources.worklist_batch(state.worklist(), ref.key)
    if batch is None:
        st.info("Upload files to build a worklist. Each file is scored once; moving the threshold "
                "only re-flags. The worklist is kept (on this server) for this page's link.")
        return
    df = batch.worklist
    _summary(df, thr, store, wl, model_label)
    _worklist_table(df, thr)
    _open_controls(df)
    _unreadable_and_export(df, thr, store, model_label)


if __name__ == "__main__":
    render()
