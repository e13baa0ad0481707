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

from engine.metrics import CalibrationBins, Confusion

ACCENT = "#4FA3D9"
CLASS_COLORS = ("#9AA5B1", "#E8A23B")      # normal: neutral grey, pneumonia: amber
SERIES_COLORS = ("#4FA3D9", "#E8A23B", "#7BC67E", "#C77DBA", "#E06C75", "#56B6C2", "#D8D8D8")
HEIGHT = 360
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
                y=[f"True {n}" for n in names], text=text, texttemplate="%{text}", colorscale="Blues",
                showscale=False, hovertemplate="%{y}, %{x}: %{z}<extra></extra>")
    return _figure([heat], f"Confusion matrix at threshold {threshold:.3f}", "", "",
                   yaxis=dict(autorange="reversed"))


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float,
               point: Optional[tuple[float, float]] = None, threshold: Optional[float] = None
               ) -> go.Figure:
    """ROC curve, chance diagonal and the current operating point (1 - specificity, sensitivity)."""
    data = [_diagonal("Chance"),
            dict(type="scatter", x=fpr, y=tpr, mode="lines", name="ROC",
                 line=dict(color=ACCENT, width=2, shape="hv"))]
    if point is not None and np.all(np.isfinite(point)):
        label = "Operating point" + (f" (threshold {threshold:.3f})" if threshold is not None else "")
        data.append(_point(point[0], point[1], label))
    return _figure(data, f"ROC curve (AUC {auc:.3f})", "1 - specificity (false-positive rate)",
                   "Sensitivity (true-positive rate)", square=True)


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
                     class_names: Sequence[str], bins: int = 40) -> go.Figure:
    """Overlaid probability histograms per true class with a vertical threshold line."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    data = [dict(type="histogram", x=scores[labels == k], name=f"True {name}", opacity=0.65,
                 marker=dict(color=CLASS_COLORS[k]), xbins=dict(start=0.0, end=1.0, size=1.0 / bins))
            for k, name in enumerate(class_names[:2])]
    line = dict(type="line", x0=threshold, x1=threshold, y0=0, y1=1, xref="x", yref="paper",
                line=dict(color="white", dash="dash", width=2))
    note = dict(x=threshold, y=1, xref="x", yref="paper", text=f"threshold {threshold:.3f}",
                showarrow=False, yanchor="bottom")
    return _figure(data, "Probability of pneumonia by true class", "Predicted probability", "Studies",
                   barmode="overlay", shapes=[line], annotations=[note], xaxis=dict(range=[0, 1]))


def calibration_figure(bins: CalibrationBins, ece: float) -> go.Figure:
    """Reliability diagram: observed fraction of pneumonia against mean predicted probability."""
    full = bins.counts > 0
    model = dict(type="scatter", x=bins.mean_predicted[full], y=bins.observed_fraction[full],
                 mode="lines+markers", name="Model", line=dict(color=ACCENT, width=2),
                 marker=dict(size=np.clip(4 + np.sqrt(bins.counts[full]), 5, 18)),
                 customdata=bins.counts[full],
                 hovertemplate="predicted %{x:.3f}<br>observed %{y:.3f}<br>n=%{customdata}<extra></extra>")
    return _figure([_diagonal("Perfect calibration"), model], f"Calibration (ECE {ece:.3f})",
                   "Mean predicted probability", "Observed fraction with pneumonia", square=True)


def compare_roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> go.Figure:
    """Overlaid ROC curves, one per evaluation: ``{name: (fpr, tpr, auc)}``."""
    data = [_diagonal("Chance")]
    for i, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        data.append(dict(type="scatter", x=fpr, y=tpr, mode="lines", name=f"{name} (AUC {auc:.3f})",
                         line=dict(color=SERIES_COLORS[i % len(SERIES_COLORS)], width=2, shape="hv")))
    return _figure(data, "ROC curves", "1 - specificity (false-positive rate)",
                   "Sensitivity (true-positive rate)", square=True)
