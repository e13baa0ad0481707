"""The monitoring report as one self-contained HTML file: summary, tables of counts, Plotly charts.

Plotly's JavaScript is embedded once (``include_plotlyjs=True`` on the first chart), so the file opens
offline. Everything in it comes from the report dict: no file name, hash or patient identifier.
"""

from __future__ import annotations

import html
from typing import Iterable, Sequence

import plotly.io as pio

from engine.monitoring.figures import figures

_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}.alert{background:#fde2e1;padding:10px;
border-left:4px solid #c0392b}.ok{background:#e3f4e4;padding:10px;border-left:4px solid #2e7d32}"""


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    cell = lambda v: html.escape("—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _rate(p: dict) -> str:
    if p["rate"] is None:
        return f"— (0 of {p['n']})"
    return f"{p['rate']:.3f} ({p['k']} of {p['n']}; 95% {p['low']:.3f}-{p['high']:.3f})"


def _summary(report: dict) -> str:
    rule, alert, period = report["stop_rule"], report["input_alert"], report["period"]
    parts = [f"<p>{html.escape(period['notice'])}</p>"]
    if rule["alerts"]:
        parts += [f"<p class='alert'><b>Model under review since {html.escape(a['since'][:16])}</b>: "
                  f"{html.escape(a['reason'])}</p>" for a in rule["alerts"]]
    else:
        parts.append("<p class='ok'>Stop rule not crossed: the model is in use.</p>")
    if alert["alert"]:
        parts.append(f"<p class='alert'>Input alert (window W{alert['window'] + 1}): "
                     f"{html.escape(', '.join(alert['moved']))} moved.</p>")
    else:
        parts.append("<p class='ok'>No input alert on the latest tested window.</p>")
    return "".join(parts)


def _sections(report: dict) -> str:
    s, r, a = report["studies"], report["readers"]["overall"], report["audit"]
    latest = report["windows"][-1] if report["windows"] else None
    out = [f"<h2>Studies</h2>{_table(['rows', 'files', 'scored', 'unreadable', 'pending'], [list(s.values())])}"]
    out.append("<h2>Windows</h2>" + _table(
        ["window", "from", "to", "files", "scored", "alert", "moved"],
        [[f"W{w['index'] + 1}{' (reference)' if w['is_reference'] else ''}", w["from"][:16], w["to"][:16],
          w["files"], w["scored"], "yes" if w["alert"] else "no", ", ".join(w["moved"])] for w in report["windows"]]))
    if latest is not None:
        out.append(f"<h2>Inputs of the latest window (W{latest['index'] + 1})</h2>" + _table(
            ["input", "statistic", "value", "status", "p-value / interval"],
            [[c["input"], c["statistic"], c["value"], c["status"],
              c["p_value"] if c["interval"] is None else f"{c['interval'][0]:.3f} to {c['interval'][1]:.3f}"]
             for c in latest["checks"]]))
    out.append("<h2>Readers</h2>" + _table(["measure", "value"], [
        ["decisions", r["decisions"]], ["agreement", _rate(r["agreement"])], ["PPV of a flag", _rate(r["ppv"])],
        ["false positives among decided flags", _rate(r["false_positives"])]]))
    for group, rows in report["readers"]["by"].items() if r["decisions"] else ():
        out.append(f"<h3>By {html.escape(group)}</h3>" + _table(
            [group, "decisions", "agreement", "flags decided", "PPV"],
            [[g["group"], g["decisions"], _rate(g["agreement"]), g["flagged_decided"], _rate(g["ppv"])] for g in rows]))
    out.append("<h2>Audit sample</h2>" + _table(["measure", "value"], [
        ["share asked", a["share"]], ["unflagged studies", a["unflagged"]], ["drawn", _rate(a["drawn"])],
        ["reviewed", a["reviewed"]], ["pending review", a["pending"]], ["miss rate", _rate(a["miss_rate"])]]))
    return "".join(out)


def render(report: dict) -> str:
    """The whole HTML document."""
    charts = []
    for i, (title, fig) in enumerate(figures(report)):
        charts.append(f"<h2>{html.escape(title)}</h2>" +
                      pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), default_width="100%"))
    period = report["period"]
    title = f"Monitoring: {period['model']} at threshold {period['threshold']:.3f}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Generated {html.escape(report['generated'][:19])} UTC; windows of "
            f"{html.escape(report['window']['label'])}; reference: {html.escape(report['reference']['kind'])}.</p>"
            f"{_summary(report)}{_sections(report)}{''.join(charts)}</body></html>")
