"""Monitoring: is the model still working here? Input drift, readers, the audit sample, the stop rule.

A thin page: the report is :func:`engine.monitoring.report.build` (what ``python -m engine.monitor``
writes), its charts :mod:`engine.monitoring.figures`; clearing the stop rule is
:func:`engine.monitoring.state.clear`, recorded with a name and a reason.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from engine.errors import StoreError
from engine.monitoring import report, state as alerts
from engine.monitoring.figures import figures
from engine.monitoring.html import render as render_html
from engine.monitoring.periods import ModelInfo
from engine.monitoring.windows import WindowSpec

from dashboard import labels, resources, state
from dashboard.figures import CHART_CONFIG

WINDOWS = ("7d", "30d", "100", "200", "500")
CLEAR_BY, CLEAR_REASON, FLASH = "mon_clear_by", "mon_clear_reason", "_mon_flash"


@st.cache_data(max_entries=8, show_spinner="Building the monitoring report…")
def _report(root: str, signature: tuple, window: str, minute: str, names: bool, first: tuple, _store) -> dict:
    return report.build(_store, WindowSpec.parse(window), names=names, first_model=ModelInfo(*first))


def _clear(store) -> None:
    """Button callback: record who cleared the stop rule and why (before the banner is drawn again)."""
    try:
        n = alerts.clear(store, st.session_state.get(CLEAR_BY, ""), st.session_state.get(CLEAR_REASON, ""))
    except StoreError as exc:
        st.session_state[FLASH] = ("error", str(exc))
        return
    st.session_state[FLASH] = ("success", f"Stop rule cleared ({labels.plural(n, 'alert')}); the record keeps your name and reason.")
    st.session_state[CLEAR_REASON] = ""


def _stop_rule(store, rep: dict) -> None:
    st.subheader("Stop rule")
    flash = st.session_state.pop(FLASH, None)
    if flash:
        getattr(st, flash[0])(flash[1])
    rule = rep["stop_rule"]
    if not rule["alerts"]:
        st.success("Not crossed: the model is in use.", icon=":material/check_circle:")
    for a in rule["alerts"]:
        st.error(f"**Under review since {a['since'][:16].replace('T', ' ')} UTC** ({a['kind']}): {a['reason']}",
                 icon=":material/gpp_maybe:")
    cols = st.columns(2)
    for col, key in zip(cols, ("disagreement", "drift")):
        run = rule[key]
        col.metric(f"{key.capitalize()} CUSUM", f"{run['value']:.2f} of h {run['h']:.2f}",
                   help=f"{run['events']} events in {run['observations']} observations since the restart; "
                        f"reference rate {run['p0']:.3f} ({rule['reference'][key]}), looking for {run['p1']:.3f}")
    if rule["alerts"]:
        with st.form("mon_clear_form", border=True):
            st.text_input("Your name", key=CLEAR_BY, max_chars=80)
            st.text_area("Why the model can be used again", key=CLEAR_REASON, max_chars=2000)
            st.form_submit_button("Clear the stop rule", type="primary", on_click=_clear, args=(store,),
                                  icon=":material/restart_alt:")


def _inputs(rep: dict) -> None:
    st.subheader("Inputs (no labels needed)")
    alert = rep["input_alert"]
    if alert["alert"]:
        st.warning(f"Input alert on window W{alert['window'] + 1}: **{', '.join(alert['moved'])}** moved "
                   "against the reference.", icon=":material/warning:")
    else:
        st.info("No input alert on the latest window with enough studies.", icon=":material/info:")
    if rep["windows"]:
        latest = rep["windows"][-1]
        st.caption(f"Latest window W{latest['index'] + 1}: {latest['scored']} scored studies; reference: "
                   f"{rep['reference']['kind']} ({rep['reference']['scored']} scored studies), probabilities also "
                   f"against {rep['reference']['validation_predictions'] or 0} validation predictions.")
        st.dataframe(pd.DataFrame([{k: c[k] for k in ("input", "statistic", "value", "status", "p_value")}
                                   for c in latest["checks"]]), hide_index=True, key="mon_checks")


def _readers(rep: dict) -> None:
    st.subheader("Readers and the audit sample")
    r, a = rep["readers"]["overall"], rep["audit"]
    fmt = lambda x: "—" if x["rate"] is None else f"{x['rate']:.3f} ({x['k']} of {x['n']})"  # noqa: E731
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Decisions", f"{r['decisions']:,}")
    c2.metric("PPV of a flag", fmt(r["ppv"]), help="agreed flags of decided flags; exact 95% interval "
              f"{r['ppv']['low']}-{r['ppv']['high']}")
    c3.metric("Audit drawn", fmt(a["drawn"]), help=f"share asked {a['share']}; {a['pending']} awaiting review")
    c4.metric("Miss rate (audit)", fmt(a["miss_rate"]), help="readers disagreed on audited unflagged studies; "
              f"exact 95% interval {a['miss_rate']['low']}-{a['miss_rate']['high']}")
    group = st.selectbox("By", list(rep["readers"]["by"]), key="mon_group")
    rows = [{"group": g["group"], "decisions": g["decisions"], "agreement": g["agreement"]["rate"],
             "flags decided": g["flagged_decided"], "PPV": g["ppv"]["rate"], "PPV low": g["ppv"]["low"],
             "PPV high": g["ppv"]["high"]} for g in rep["readers"]["by"][group]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="mon_groups")


def render() -> None:
    store = resources.store()
    ref = state.model_ref()
    card = resources.predictor(ref).card
    first = (ref.key, f"{card.name or card.architecture} {card.version}".strip(), float(card.threshold))
    st.title("Monitoring")
    window = st.selectbox("Window", WINDOWS, key="mon_window", format_func=lambda w: WindowSpec.parse(w).label)
    minute = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M")
    rep = _report(str(store.root), report.signature(store), window, minute, True, first, store)
    st.caption(rep["period"]["notice"])
    if rep["period"]["model_fingerprint"] != ref.key.rsplit("@", 1)[-1]:
        st.info(f"Monitoring follows the model in use for the store ({rep['period']['model']}), not the sidebar's.")
    _stop_rule(store, rep)
    _inputs(rep)
    for title, fig in figures(rep):
        st.plotly_chart(fig, key=f"mon_fig_{title}", config=CHART_CONFIG)
    _readers(rep)
    public = lambda: _report(str(store.root), report.signature(store), window, minute, False, first, store)  # noqa: E731
    d1, d2 = st.columns(2)
    d1.download_button("Download the report (JSON)", data=lambda: json.dumps(public(), indent=1), key="mon_json",
                       file_name="monitoring.json", mime="application/json", on_click="ignore",
                       icon=":material/download:")
    d2.download_button("Download the report (HTML)", data=lambda: render_html(public()), key="mon_html",
                       file_name="monitoring.html", mime="text/html", on_click="ignore", icon=":material/download:")


if __name__ == "__main__":
    render()
