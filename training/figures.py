"""Evaluation figures: pure builders (arrays in, a figure out) and two small writers.

Every chart exists twice: a Plotly figure (interactive HTML) and a Matplotlib figure (static PNG,
no browser needed). Builders never touch the disk or global state (Matplotlib figures are made
with ``matplotlib.figure.Figure``, not pyplot). ``write_html`` saves with
``include_plotlyjs="directory"``: the HTML files of one folder share a single ``plotly.min.js``
written beside them, so the reports open offline and the library is stored once per folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure

from engine.evaluation import metrics as M

CLASS_NAMES = ("normal", "pneumonia")
SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf")
POINT_COLOR = "#d62728"
_SIZE = 460


@dataclass(frozen=True)
class ScoredSet:
    """One model's scores on one labelled set, with the threshold it operates at."""

    name: str
    labels: np.ndarray          # 0 normal / 1 pneumonia
    scores: np.ndarray          # probability of pneumonia
    threshold: Optional[float] = None

    @classmethod
    def of(cls, name: str, labels, scores, threshold: Optional[float] = None) -> "ScoredSet":
        return cls(name, np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64),
                   None if threshold is None else float(threshold))

    @property
    def auc(self) -> float:
        return M.roc_auc(self.labels, self.scores)

    @property
    def average_precision(self) -> float:
        return M.average_precision(self.labels, self.scores)

    def confusion(self) -> Optional[M.Confusion]:
        return None if self.threshold is None else M.confusion_at(self.labels, self.scores, self.threshold)


SetOrSets = Union[ScoredSet, Sequence[ScoredSet]]


def _sets(s: SetOrSets) -> list[ScoredSet]:
    return [s] if isinstance(s, ScoredSet) else list(s)


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _square(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      width=_SIZE + 140, height=_SIZE, legend=dict(x=1.02, y=0, xanchor="left"),
                      margin=dict(l=60, r=20, t=60, b=50))
    fig.update_xaxes(range=[-0.01, 1.01], constrain="domain")
    fig.update_yaxes(range=[-0.01, 1.01], scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


# --------------------------------------------------------------------------- Plotly builders

def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES,
                            threshold: Optional[float] = None) -> go.Figure:
    """``[[tn, fp], [fn, tp]]``: truth in rows, prediction in columns; count and row share per cell."""
    m = np.asarray(matrix, dtype=np.int64)
    rows = np.maximum(m.sum(axis=1, keepdims=True), 1)
    names = [str(c).capitalize() for c in class_names]
    text = [[f"{v}<br>{v / r[0]:.0%} of true {n.lower()}" for v in row]
            for row, r, n in zip(m, rows, names)]
    fig = go.Figure(go.Heatmap(z=m, x=[f"Predicted {n}" for n in names], y=[f"True {n}" for n in names],
                               text=text, texttemplate="%{text}", colorscale="Blues", showscale=False,
                               hovertemplate="%{y}, %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    title = "Confusion matrix" + (f" at threshold {threshold:.3f}" if threshold is not None else "")
    fig.update_layout(title=title, template="plotly_white", width=_SIZE + 60, height=_SIZE - 60)
    return fig


def roc_figure(sets: SetOrSets, title: Optional[str] = None,
               auc_ci: Optional[Sequence[float]] = None) -> go.Figure:
    """ROC curve(s) with the chance diagonal; each set's operating point is marked when it has a
    threshold. One set: its AUC (and ``auc_ci``) in the title; several: AUC in each legend entry."""
    sets = _sets(sets)
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                               line=dict(dash="dot", color="#999", width=1), hoverinfo="skip"))
    for i, s in enumerate(sets):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        fpr, tpr, thr = M.roc_curve(s.labels, s.scores)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line=dict(color=color, width=2),
                                 name=f"{s.name} (AUC {_f(s.auc)})" if len(sets) > 1 else s.name,
                                 customdata=thr, hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}, threshold "
                                                               "%{customdata:.4f}<extra></extra>"))
        c = s.confusion()
        if c is not None and np.isfinite(c.sensitivity) and np.isfinite(c.specificity):
            fig.add_trace(go.Scatter(
                x=[1 - c.specificity], y=[c.sensitivity], mode="markers",
                name=f"{s.name + ': ' if len(sets) > 1 else ''}threshold {s.threshold:.3f}",
                marker=dict(size=12, symbol="circle", color=POINT_COLOR if len(sets) == 1 else color,
                            line=dict(color="black", width=1)),
                hovertemplate=(f"threshold {s.threshold:.4f}<br>sensitivity {c.sensitivity:.3f}<br>"
                               f"specificity {c.specificity:.3f}<extra></extra>")))
    if title is None:
        if len(sets) == 1:
            ci = f" [95% CI {_f(auc_ci[0])}–{_f(auc_ci[1])}]" if auc_ci is not None else ""
            title = f"ROC — {sets[0].name}: AUC {_f(sets[0].auc)}{ci}"
        else:
            title = "ROC curves"
    return _square(fig, title, "1 − specificity (false-positive rate)", "Sensitivity (true-positive rate)")


def pr_figure(sets: SetOrSets, title: Optional[str] = None) -> go.Figure:
    """Precision-recall curve(s), the prevalence baseline, operating points; AP in the title/legend."""
    sets = _sets(sets)
    fig = go.Figure()
    for i, s in enumerate(sets):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        prevalence = float(s.labels.mean()) if s.labels.size else float("nan")
        fig.add_trace(go.Scatter(x=[0, 1], y=[prevalence] * 2, mode="lines", hoverinfo="skip",
                                 name=f"prevalence {_f(prevalence, 2)}" + (f" ({s.name})" if len(sets) > 1 else ""),
                                 line=dict(dash="dot", color="#999" if len(sets) == 1 else color, width=1)))
        precision, recall, thr = M.precision_recall_curve(s.labels, s.scores)
        fig.add_trace(go.Scatter(x=recall, y=precision, mode="lines", line_shape="vh",
                                 line=dict(color=color, width=2), customdata=thr,
                                 name=f"{s.name} (AP {_f(s.average_precision)})" if len(sets) > 1 else s.name,
                                 hovertemplate="recall %{x:.3f}, precision %{y:.3f}, threshold "
                                               "%{customdata:.4f}<extra></extra>"))
        c = s.confusion()
        if c is not None and np.isfinite(c.sensitivity) and np.isfinite(c.ppv):
            fig.add_trace(go.Scatter(x=[c.sensitivity], y=[c.ppv], mode="markers",
                                     name=f"{s.name + ': ' if len(sets) > 1 else ''}threshold {s.threshold:.3f}",
                                     marker=dict(size=12, color=POINT_COLOR if len(sets) == 1 else color,
                                                 line=dict(color="black", width=1))))
    if title is None:
        title = (f"Precision-recall — {sets[0].name}: AP {_f(sets[0].average_precision)}"
                 if len(sets) == 1 else "Precision-recall curves")
    return _square(fig, title, "Recall (sensitivity)", "Precision (PPV)")


def calibration_figure(labels, scores, n_bins: int = 10, name: str = "model") -> go.Figure:
    """Reliability diagram (observed fraction of pneumonia per bin of predicted probability), the
    diagonal of perfect calibration, and the number of images per bin as bars; ECE in the title."""
    b = M.calibration_bins(labels, scores, n_bins)
    ece = M.expected_calibration_error(labels, scores, n_bins)
    full = b.counts > 0
    centers = (b.edges[:-1] + b.edges[1:]) / 2
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centers, y=b.counts / max(int(b.counts.sum()), 1), width=np.diff(b.edges) * 0.95,
                         name="share of images", marker_color="rgba(31,119,180,0.18)",
                         customdata=b.counts, hovertemplate="n=%{customdata}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(dash="dot", color="#999", width=1), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=b.mean_predicted[full], y=b.observed_fraction[full], mode="lines+markers",
                             name=name, line=dict(color=SERIES_COLORS[0], width=2),
                             customdata=b.counts[full],
                             hovertemplate="predicted %{x:.3f}<br>observed %{y:.3f}<br>n=%{customdata}"
                                           "<extra></extra>"))
    return _square(fig, f"Calibration — ECE {_f(ece)} ({n_bins} bins)", "Mean predicted probability",
                   "Observed fraction with pneumonia")


# --------------------------------------------------------------------------- Matplotlib builders

def _mpl_square(title: str, x: str, y: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(5.2, 4.8), dpi=100)
    ax = fig.add_subplot()
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    return fig, ax


def confusion_matrix_mpl(matrix: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES,
                         threshold: Optional[float] = None) -> Figure:
    m = np.asarray(matrix, dtype=np.int64)
    rows = np.maximum(m.sum(axis=1), 1)
    fig = Figure(figsize=(4.6, 4.0), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
    names = [str(c).capitalize() for c in class_names]
    ax.set_xticks(range(len(names)), [f"Predicted\n{n}" for n in names])
    ax.set_yticks(range(len(names)), [f"True\n{n}" for n in names])
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            dark = m[i, j] > 0.6 * max(int(m.max()), 1)
            ax.text(j, i, f"{m[i, j]}\n{m[i, j] / rows[i]:.0%}", ha="center", va="center",
                    color="white" if dark else "black", fontsize=12)
    ax.set_title("Confusion matrix" + (f" at threshold {threshold:.3f}" if threshold is not None else ""),
                 fontsize=10)
    fig.tight_layout()
    return fig


def roc_mpl(sets: SetOrSets, title: Optional[str] = None,
            auc_ci: Optional[Sequence[float]] = None) -> Figure:
    sets = _sets(sets)
    if title is None:
        ci = f" [{_f(auc_ci[0])}–{_f(auc_ci[1])}]" if auc_ci is not None and len(sets) == 1 else ""
        title = f"ROC — {sets[0].name}: AUC {_f(sets[0].auc)}{ci}" if len(sets) == 1 else "ROC curves"
    fig, ax = _mpl_square(title, "1 − specificity", "Sensitivity")
    ax.plot([0, 1], [0, 1], ls=":", color="#999", lw=1)
    for i, s in enumerate(sets):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        fpr, tpr, _ = M.roc_curve(s.labels, s.scores)
        ax.plot(fpr, tpr, color=color, lw=2, label=f"{s.name} (AUC {_f(s.auc)})")
        c = s.confusion()
        if c is not None and np.isfinite(c.sensitivity) and np.isfinite(c.specificity):
            ax.plot([1 - c.specificity], [c.sensitivity], "o", ms=9, mec="black",
                    color=POINT_COLOR if len(sets) == 1 else color, label=f"threshold {s.threshold:.3f}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def pr_mpl(sets: SetOrSets, title: Optional[str] = None) -> Figure:
    sets = _sets(sets)
    if title is None:
        title = (f"Precision-recall — {sets[0].name}: AP {_f(sets[0].average_precision)}"
                 if len(sets) == 1 else "Precision-recall curves")
    fig, ax = _mpl_square(title, "Recall (sensitivity)", "Precision (PPV)")
    for i, s in enumerate(sets):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        if s.labels.size:
            ax.axhline(float(s.labels.mean()), ls=":", color="#999" if len(sets) == 1 else color, lw=1)
        precision, recall, _ = M.precision_recall_curve(s.labels, s.scores)
        ax.step(recall, precision, where="pre", color=color, lw=2,
                label=f"{s.name} (AP {_f(s.average_precision)})")
        c = s.confusion()
        if c is not None and np.isfinite(c.sensitivity) and np.isfinite(c.ppv):
            ax.plot([c.sensitivity], [c.ppv], "o", ms=9, mec="black",
                    color=POINT_COLOR if len(sets) == 1 else color, label=f"threshold {s.threshold:.3f}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def calibration_mpl(labels, scores, n_bins: int = 10, name: str = "model") -> Figure:
    b = M.calibration_bins(labels, scores, n_bins)
    ece = M.expected_calibration_error(labels, scores, n_bins)
    full = b.counts > 0
    fig, ax = _mpl_square(f"Calibration — ECE {_f(ece)} ({n_bins} bins)", "Mean predicted probability",
                          "Observed fraction with pneumonia")
    centers = (b.edges[:-1] + b.edges[1:]) / 2
    ax.bar(centers, b.counts / max(int(b.counts.sum()), 1), width=np.diff(b.edges) * 0.95,
           color="#1f77b4", alpha=0.18, label="share of images")
    ax.plot([0, 1], [0, 1], ls=":", color="#999", lw=1, label="perfect calibration")
    ax.plot(b.mean_predicted[full], b.observed_fraction[full], "o-", color=SERIES_COLORS[0], lw=2, label=name)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def gradcam_grid_mpl(panels: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]]) -> Figure:
    """One row per group (``"TP"``, ...), each a list of (RGB uint8 image, caption)."""
    rows = [(g, items) for g, items in panels if items]
    n_rows = max(len(rows), 1)
    n_cols = max((len(items) for _, items in rows), default=1)
    fig = Figure(figsize=(3.6 * n_cols, 2.2 * n_rows + 0.3), dpi=100)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (group, items) in enumerate(rows):
        for c, (rgb, caption) in enumerate(items):
            axes[r][c].imshow(rgb)
            axes[r][c].set_title(f"{group} · {caption}", fontsize=7)
    if not rows:
        axes[0][0].text(0.5, 0.5, "no images", ha="center", va="center")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- writers

def write_html(fig: go.Figure, path: Union[str, Path]) -> Path:
    """Interactive HTML that works offline: ``plotly.min.js`` is written once beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def write_png(fig: Figure, path: Union[str, Path], dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=dpi)
    return path
