"""Files a run or an evaluation writes: prediction CSVs and training curves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from engine.worklist.csvsafe import write_rows



def write_predictions_csv(path: Path, files: Sequence[str], labels: Sequence[int],
                          probabilities: Sequence[float]) -> None:
    """``file,label,probability`` (label 0 normal / 1 pneumonia; probability of pneumonia)."""
    with open(path, "w", newline="") as f:
        write_rows(f, ["file", "label", "probability"],
                   ({"file": name, "label": int(y), "probability": repr(float(p))}
                    for name, y, p in zip(files, labels, probabilities)))


def write_curves(history: list[dict], out: Path) -> None:
    """Loss, validation AUC and learning rate per epoch: ``training_curves.html`` and ``.png``."""
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:     # e.g. a GPU image without plotly: the PNG below is enough, the run succeeds
        logging.getLogger(__name__).warning("plotly is not installed: training_curves.html not written")
    else:
        fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "validation AUC", "learning rate"))
        fig.add_trace(go.Scatter(x=epochs, y=[h["train_loss"] for h in history], name="train loss"), 1, 1)
        fig.add_trace(go.Scatter(x=epochs, y=[h["val_loss"] for h in history], name="val loss"), 1, 1)
        fig.add_trace(go.Scatter(x=epochs, y=[h["val_auc"] for h in history], name="val AUC"), 1, 2)
        fig.add_trace(go.Scatter(x=epochs, y=[h["lr"] for h in history], name="lr"), 1, 3)
        fig.update_layout(template="plotly_white", height=360, width=1100)
        fig.write_html(out / "training_curves.html", include_plotlyjs="directory")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    f, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    ax[0].plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax[0].set_title("loss")
    ax[0].legend()
    ax[1].plot(epochs, [h["val_auc"] for h in history], color="C2")
    ax[1].set_title("validation AUC")
    ax[2].plot(epochs, [h["lr"] for h in history], color="C3")
    ax[2].set_title("learning rate")
    for a in ax:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    f.tight_layout()
    f.savefig(out / "training_curves.png", dpi=110)
    plt.close(f)
