"""Plotly figures of a monitoring report (the dict :func:`engine.monitoring.report.build` returns).

Every figure is built from the report alone, so the HTML report and the Monitoring page draw the same
charts; each shows its counts (in the axis labels, the legend or the hover text). No template is set:
the dashboard applies its theme, the HTML report Plotly's default.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = ("#4FA3D9", "#E8A23B", "#7BC67E", "#C77DBA", "#E06C75", "#56B6C2", "#9AA5B1", "#D8B26E", "#8E9CF0")
HEIGHT = 380


def _labels(report: dict) -> list[str]:
    return [f"W{w['index'] + 1}{' (ref)' if w['is_reference'] else ''}<br>n={w['scored']}" for w in report["windows"]]


def _layout(title: str, x: str, y: str, **extra) -> dict:
    return {**dict(title=dict(text=title), xaxis=dict(title=dict(text=x)), yaxis=dict(title=dict(text=y)),
                   height=HEIGHT, margin=dict(l=55, r=20, t=50, b=50), barmode="group",
                   legend=dict(orientation="h", yanchor="bottom", y=-0.45, x=0)), **extra}


def drift_figure(report: dict) -> go.Figure:
    """PSI of every input per window, with the 0.10 and 0.25 lines."""
    labels, data = _labels(report), []
    names = [c["input"] for c in report["windows"][0]["checks"] if c["statistic"] == "PSI"] if report["windows"] else []
    for i, name in enumerate(names):
        checks = [next(c for c in w["checks"] if c["input"] == name) for w in report["windows"]]
        data.append(dict(type="bar", name=name, x=labels, y=[c["value"] for c in checks],
                         marker=dict(color=COLORS[i % len(COLORS)]),
                         customdata=[[c["status"], c["p_value"]] for c in checks],
                         hovertemplate=name + ": PSI %{y:.3f} (%{customdata[0]}, p %{customdata[1]})<extra></extra>"))
    t = report["thresholds"]
    shapes = [dict(type="line", xref="paper", x0=0, x1=1, y0=v, y1=v, line=dict(dash=dash, color="#888"))
              for v, dash in ((t["psi_watch"], "dot"), (t["psi_moved"], "dash"))]
    return go.Figure({"data": data, "layout": _layout("Input drift: PSI per window (dotted 0.10 watch, dashed "
                                                      "0.25 moved)", "window (scored studies)", "PSI",
                                                      shapes=shapes)})


def _rate_trace(name: str, labels: list, rates: list[dict], color: str) -> dict:
    """One share per window (``{"rate", "low", "high", "k", "n"}``) as a line with its exact interval as
    error bars and "k of n" on hover; a window without a rate is a gap."""
    def gap_or(f):
        return [f(x) if x["rate"] is not None else None for x in rates]
    return dict(type="scatter", mode="lines+markers", name=name, x=labels, y=[x["rate"] for x in rates],
                line=dict(color=color),
                error_y=dict(type="data", symmetric=False, array=gap_or(lambda x: x["high"] - x["rate"]),
                             arrayminus=gap_or(lambda x: x["rate"] - x["low"])),
                customdata=[[x["k"], x["n"]] for x in rates],
                hovertemplate=name + ": %{y:.3f} (%{customdata[0]} of %{customdata[1]})<extra></extra>")


def rates_figure(report: dict) -> go.Figure:
    """Warning share, flag rate and unreadable share per window, with exact 95% intervals."""
    labels = _labels(report)
    data = [_rate_trace(name, labels, [w["rates"][name] for w in report["windows"]], COLORS[i])
            for i, name in enumerate(("warning share", "flag rate", "unreadable share"))]
    return go.Figure({"data": data, "layout": _layout("Rates per window (exact 95% intervals)", "window",
                                                      "share", yaxis=dict(range=[0, 1.02], title=dict(text="share")))})


def probability_figure(report: dict) -> go.Figure:
    """The distribution of probabilities: validation, the reference window and the latest window."""
    h = report["histogram"]
    centres = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
    data = []
    for i, (key, name) in enumerate((("validation", "validation"), ("reference", "reference window"),
                                     ("latest", "latest window"))):
        counts = h[key]
        total = sum(counts)
        if not total:
            continue
        data.append(dict(type="bar", name=f"{name} (n={total})", x=centres, y=[c / total for c in counts],
                         customdata=counts, marker=dict(color=COLORS[i]), width=0.045 / 3 * 2,
                         hovertemplate=name + ": %{customdata} studies (%{y:.1%})<extra></extra>"))
    return go.Figure({"data": data, "layout": _layout("Probability of pneumonia", "probability",
                                                      "share of studies")})


def mix_figure(report: dict, name: str) -> go.Figure:
    """One categorical input's counts per window, stacked."""
    labels = _labels(report)
    cats = sorted({c for w in report["windows"] for c in w["mix"][name]})
    data = [dict(type="bar", name=c, x=labels, y=[w["mix"][name].get(c, 0) for w in report["windows"]],
                 marker=dict(color=COLORS[i % len(COLORS)]), hovertemplate=c + ": %{y} studies<extra></extra>")
            for i, c in enumerate(cats)]
    return go.Figure({"data": data, "layout": _layout(f"{name.capitalize()} per window", "window", "studies",
                                                      barmode="stack")})


def cusum_figure(report: dict) -> go.Figure:
    """Both stop-rule sums since the restart, with their limits h."""
    rule = report["stop_rule"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[
        f"Disagreement ({rule['disagreement']['events']} of {rule['disagreement']['observations']} decisions)",
        f"Drift: warnings ({rule['drift']['events']} of {rule['drift']['observations']} studies)"])
    for col, key in ((1, "disagreement"), (2, "drift")):
        run = rule[key]
        x = list(range(1, len(run["path"]) + 1))
        fig.add_trace(go.Scatter(x=x, y=run["path"], mode="lines", name=f"{key} CUSUM",
                                 line=dict(color=COLORS[col - 1])), row=1, col=col)
        fig.add_hline(y=run["h"], line=dict(dash="dash", color="#E06C75"), row=1, col=col,
                      annotation_text=f"h = {run['h']:.2f}")
    fig.update_layout(height=HEIGHT, margin=dict(l=55, r=20, t=60, b=40), showlegend=False,
                      title=dict(text="Stop rule: Bernoulli CUSUMs since the restart"))
    return fig


def readers_figure(report: dict) -> go.Figure:
    """Agreement with the model and the PPV of a flag per window, with exact 95% intervals."""
    labels = _labels(report)
    data = [_rate_trace(name, labels, [w["readers"][key] for w in report["windows"]], COLORS[i])
            for i, (key, name) in enumerate((("agreement", "agreement"), ("ppv", "PPV of a flag")))]
    return go.Figure({"data": data, "layout": _layout("Readers per window (exact 95% intervals)", "window",
                                                      "share", yaxis=dict(range=[0, 1.02], title=dict(text="share")))})


def figures(report: dict) -> list[tuple[str, go.Figure]]:
    """Every chart of the report, titled, in reading order (mixes only for inputs seen with a value)."""
    out = [("Input drift", drift_figure(report)), ("Rates", rates_figure(report)),
           ("Probabilities", probability_figure(report))]
    for name in (report["windows"][0]["mix"] if report["windows"] else {}):
        cats = {c for w in report["windows"] for c in w["mix"][name]}
        if cats - {"unknown"}:
            out.append((f"Mix: {name}", mix_figure(report, name)))
    out += [("Readers", readers_figure(report)), ("Stop rule", cusum_figure(report))]
    return out
