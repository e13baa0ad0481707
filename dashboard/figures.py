"""Pure Plotly figure builders: arrays and engine results in, a ``go.Figure`` out.

Each figure is built in one ``go.Figure({...})`` call from plain dicts: Plotly validates it once,
which is several times faster than adding traces and updating the layout step by step (it keeps
a threshold change on the Performance page well under the dashboard's time budget). No template
is set: ``st.plotly_chart`` applies the app's dark theme. One small palette keeps a class the
same colour on every chart.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from engine.evaluation.metrics import CalibrationBins, Confusion, clopper_pearson

ACCENT = "#4FA3D9"
CLASS_COLORS = ("#9AA5B1", "#E8A23B")      # normal: neutral grey, pneumonia: amber
# Confusion-matrix cells from the page's dark background to the accent: no white glare on the dark theme.
DARK_SCALE = [[0.0, "#1C2127"], [1.0, "#2F6F99"]]
SERIES_COLORS = ("#4FA3D9", "#E8A23B", "#7BC67E", "#C77DBA", "#E06C75", "#56B6C2", "#D8D8D8")
HEIGHT = 360
# st.plotly_chart(config=CHART_CONFIG): no toolbar over the titles (drag still zooms, double-click resets)
CHART_CONFIG = {"displayModeBar": False, "displaylogo": False}
LOG_FPR_MIN_NEGATIVES = 50    # a log false-positive axis only with this many normals: on 8 it is mostly empty
LOG_COUNTS_MIN = 20           # a log count axis only when a bin holds this many: below, counts read plainly
_UNIT = dict(range=[-0.01, 1.01], constrain="domain")


def _figure(data: list[dict], title: str, x: str, y: str, *, square: bool = False, **layout) -> go.Figure:
    xaxis = dict(title=dict(text=x), **(_UNIT if square else {}), **layout.pop("xaxis", {}))
    yaxis = dict(title=dict(text=y), **(dict(_UNIT, scaleanchor="x", scaleratio=1) if square else {}),
                 **layout.pop("yaxis", {}))
    return go.Figure({"data": data, "layout": dict(
        title=dict(text=title), xaxis=xaxis, yaxis=yaxis, height=HEIGHT,
        margin=dict(l=50, r=20, t=50, b=45),
        legend=dict(orientation="h", yanchor="bottom", y=-0.35, x=0), **layout)})


def _diagonal(name: str, x=(0, 1), y=(0, 1)) -> dict:
    return dict(type="scatter", x=list(x), y=list(y), mode="lines", name=name,
                line=dict(dash="dot", color="#666", width=1), hoverinfo="skip")


def _point(x: float, y: float, name: str) -> dict:
    return dict(type="scatter", x=[x], y=[y], mode="markers", name=name,
                marker=dict(size=12, color=CLASS_COLORS[1], line=dict(color="white", width=1)))


def confusion_figure(confusion: Confusion, class_names: Sequence[str], threshold: float) -> go.Figure:
    """Counts with truth in rows and prediction at ``threshold`` in columns."""
    m = np.array(confusion.matrix())
    names = [str(c).capitalize() for c in class_names]
    total = max(int(m.sum()), 1)
    text = [[f"{v}<br>({v / total:.0%})" for v in row] for row in m]
    heat = dict(type="heatmap", z=m.tolist(), x=[f"Predicted {n}" for n in names],
                y=[f"True {n}" for n in names], text=text, texttemplate="%{text}", colorscale=DARK_SCALE,
                textfont=dict(color="#E3E5E8", size=15), xgap=2, ygap=2,
                showscale=False, hovertemplate="%{y}, %{x}: %{z}<extra></extra>")
    return _figure([heat], f"Confusion matrix at threshold {threshold:.3f}", "", "",
                   yaxis=dict(autorange="reversed"))


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float,
               point: Optional[tuple[float, float]] = None, threshold: Optional[float] = None,
               n_negative: int = 0) -> go.Figure:
    """ROC curve, chance line and the current operating point (1 - specificity, sensitivity).

    With ``n_negative`` of at least ``LOG_FPR_MIN_NEGATIVES`` the false-positive axis is logarithmic,
    from one false positive (1/n) to all: at AUC 0.99 the linear curve sits in a corner, while the low
    false-positive region where a triage threshold lives is what a reader needs to see. A zero
    false-positive rate is drawn at 1/(2n). With fewer normals the axes are linear (a log axis over a
    few false-positive steps is mostly empty, and its chance line curves).
    """
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    log = n_negative >= LOG_FPR_MIN_NEGATIVES
    layout: dict = {}
    if log:
        floor = 0.5 / n_negative
        fpr = np.maximum(fpr, floor)
        grid = np.geomspace(floor, 1.0, 50)
        data = [dict(type="scatter", x=grid, y=grid, mode="lines", name="Chance",
                     line=dict(dash="dot", color="#666", width=1), hoverinfo="skip")]
        layout = dict(xaxis=dict(type="log", range=[np.log10(floor), 0.0]), yaxis=dict(range=[-0.01, 1.01]))
    else:
        data = [_diagonal("Chance")]
    data.append(dict(type="scatter", x=fpr, y=tpr, mode="lines", name="ROC",
                     line=dict(color=ACCENT, width=2, shape="hv")))
    if point is not None and np.all(np.isfinite(point)):
        label = "Operating point" + (f" (threshold {threshold:.3f})" if threshold is not None else "")
        x = max(point[0], 0.5 / n_negative) if log else point[0]
        data.append(_point(x, point[1], label))
    axis = "1 - specificity (false-positive rate" + (", log scale)" if log else ")")
    return _figure(data, f"ROC curve (AUC {auc:.3f})", axis, "Sensitivity (true-positive rate)",
                   square=not log, **layout)


def pr_figure(precision: np.ndarray, recall: np.ndarray, ap: float, prevalence: float,
              point: Optional[tuple[float, float]] = None) -> go.Figure:
    """Precision-recall curve, the prevalence baseline and the current point (recall, precision)."""
    data = [_diagonal("Prevalence", y=(prevalence, prevalence)),
            dict(type="scatter", x=recall, y=precision, mode="lines", name="Precision-recall",
                 line=dict(color=ACCENT, width=2, shape="vh"))]
    if point is not None and np.all(np.isfinite(point)):
        data.append(_point(point[0], point[1], "Operating point"))
    return _figure(data, f"Precision-recall (AP {ap:.3f})", "Recall (sensitivity)", "Precision (PPV)",
                   square=True)


def histogram_figure(labels: np.ndarray, scores: np.ndarray, threshold: float,
                     class_names: Sequence[str], bins: int = 40, log_counts: Optional[bool] = None) -> go.Figure:
    """Overlaid probability histograms per true class with a vertical threshold line.

    Counts on a log axis when a bin holds ``LOG_COUNTS_MIN`` studies or more (``log_counts`` None): the end
    bins of a confident model hold hundreds of studies and would hide the handful of false negatives and
    false positives in between. The log axis starts at half a study, so a bin of one is a visible bar
    (from 1 it would have no height); with smaller counts the axis is linear."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    top = max((int(np.histogram(scores[labels == k], edges)[0].max(initial=0)) for k in (0, 1)), default=0)
    log = top >= LOG_COUNTS_MIN if log_counts is None else log_counts
    data = [dict(type="histogram", x=scores[labels == k], name=f"True {name}", opacity=0.65,
                 marker=dict(color=CLASS_COLORS[k]), xbins=dict(start=0.0, end=1.0, size=1.0 / bins),
                 hovertemplate="%{x}: %{y} studies<extra></extra>")
            for k, name in enumerate(class_names[:2])]
    line = dict(type="line", x0=threshold, x1=threshold, y0=0, y1=1, xref="x", yref="paper",
                line=dict(color="white", dash="dash", width=2))
    note = dict(x=threshold, y=1, xref="x", yref="paper", text=f"threshold {threshold:.3f}",
                showarrow=False, yanchor="bottom")
    yaxis = dict(type="log", dtick=1, range=[np.log10(0.5), np.log10(max(top, 1) * 1.6)]) if log else \
        dict(rangemode="tozero", dtick=1 if top <= 10 else None)
    return _figure(data, "Probabilities by true class", "Predicted probability",
                   "Studies (log scale)" if log else "Studies", barmode="overlay", shapes=[line],
                   annotations=[note], xaxis=dict(range=[0, 1]), yaxis=yaxis)


def calibration_figure(bins: CalibrationBins, ece: float) -> go.Figure:
    """Reliability diagram: observed fraction of pneumonia against mean predicted probability."""
    full = bins.counts > 0
    counts = bins.counts[full].astype(int)
    observed = bins.observed_fraction[full]
    lows, highs = zip(*(clopper_pearson(int(round(f * n)), int(n)) for f, n in zip(observed, counts))) \
        if counts.size else ((), ())
    model = dict(type="scatter", x=bins.mean_predicted[full], y=observed,
                 mode="lines+markers+text", name="Model (95% exact interval per bin)", line=dict(color=ACCENT, width=2),
                 marker=dict(size=np.clip(4 + np.sqrt(counts), 5, 18)), text=[f"n={n}" for n in counts],
                 textposition="top center", textfont=dict(size=10, color="#9AA5B1"),
                 error_y=dict(type="data", symmetric=False, array=np.array(highs) - observed,
                              arrayminus=observed - np.array(lows), color="#5B6470", thickness=1),
                 customdata=counts,
                 hovertemplate="predicted %{x:.3f}<br>observed %{y:.3f}<br>n=%{customdata}<extra></extra>")
    return _figure([_diagonal("Perfect calibration"), model], f"Calibration (ECE {ece:.3f})",
                   "Mean predicted probability", "Observed fraction with pneumonia", square=True)


def _corner(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> Optional[tuple[float, float]]:
    """The top-left region where every curve lies once it leaves the axes, as (largest false-positive rate,
    smallest sensitivity) to zoom on; None unless every AUC is at least 0.95 (otherwise the curves are
    apart on the full axes)."""
    if not curves or min(auc for *_, auc in curves.values()) < 0.95:
        return None
    x_hi = max(float(np.asarray(f)[np.argmax(np.asarray(t) >= 0.99)]) for f, t, _ in curves.values())
    y_lo = min(float(np.asarray(t)[np.asarray(f) <= x_hi / 10].max(initial=0.0)) for f, t, _ in curves.values())
    return min(max(x_hi * 1.2, 0.02), 0.5), max(min(y_lo, 0.99) - 0.02, 0.0)


def compare_roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> go.Figure:
    """Overlaid ROC curves, one per evaluation: ``{name: (fpr, tpr, auc)}``. When every AUC is 0.95 or more
    the curves overlap in the top-left corner, so an inset magnifies that corner (its axes are labelled)."""
    data = [_diagonal("Chance")]
    for i, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        data.append(dict(type="scatter", x=fpr, y=tpr, mode="lines", name=f"{name} (AUC {auc:.3f})",
                         legendgroup=name, line=dict(color=SERIES_COLORS[i % len(SERIES_COLORS)], width=2, shape="hv")))
    corner = _corner(curves)
    layout: dict = {}
    if corner is not None:
        x_hi, y_lo = corner
        for i, (name, (fpr, tpr, _)) in enumerate(curves.items()):
            data.append(dict(type="scatter", x=fpr, y=tpr, mode="lines", xaxis="x2", yaxis="y2", showlegend=False,
                             legendgroup=name, hoverinfo="skip",
                             line=dict(color=SERIES_COLORS[i % len(SERIES_COLORS)], width=2, shape="hv")))
        small = dict(tickfont=dict(size=10), showgrid=True, gridcolor="#2A2E33", linecolor="#666", mirror=True,
                     showline=True)
        layout = dict(xaxis2=dict(domain=[0.5, 0.97], anchor="y2", range=[0, x_hi], **small),
                      yaxis2=dict(domain=[0.08, 0.62], anchor="x2", range=[y_lo, 1.002], **small),
                      annotations=[dict(text=f"zoom: FPR 0–{x_hi:.2f}, sensitivity {y_lo:.2f}–1", x=0.735, y=0.63,
                                        xref="paper", yref="paper", showarrow=False, yanchor="bottom",
                                        font=dict(size=11, color="#9AA5B1"))])
    return _figure(data, "ROC curves", "1 - specificity (false-positive rate)",
                   "Sensitivity (true-positive rate)", square=corner is None,
                   **({"xaxis": dict(range=[-0.01, 1.01]), "yaxis": dict(range=[-0.01, 1.01])} if corner else {}),
                   **layout)


def linked_views(original: np.ndarray, overlay: np.ndarray, titles: Sequence[str]) -> go.Figure:
    """The radiograph and its overlay side by side with linked axes: zooming or panning one moves the
    other (Plotly's ``matches``); double-click resets. Images are RGB uint8 of the same shape, sent as
    lossless PNGs, so zooming in shows the image's own pixels."""
    from dashboard.imaging import png_data_uri
    h, w = original.shape[:2]
    axis = dict(showticklabels=False, showgrid=False, zeroline=False)
    return go.Figure({
        "data": [dict(type="image", source=png_data_uri(original), xaxis="x", yaxis="y", hoverinfo="skip"),
                 dict(type="image", source=png_data_uri(overlay), xaxis="x2", yaxis="y2", hoverinfo="skip")],
        "layout": dict(
            xaxis=dict(domain=[0.0, 0.495], range=[0, w], **axis),
            yaxis=dict(range=[h, 0], scaleanchor="x", **axis),
            xaxis2=dict(domain=[0.505, 1.0], matches="x", **axis),
            yaxis2=dict(matches="y", scaleanchor="x2", **axis),
            annotations=[dict(text=t, x=x, y=1.0, xref="paper", yref="paper", showarrow=False, yanchor="bottom")
                         for t, x in zip(titles, (0.25, 0.75))],
            height=520, margin=dict(l=0, r=0, t=28, b=0), dragmode="zoom")})
