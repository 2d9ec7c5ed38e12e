"""The drum filter's two figures: feature importance and confusion matrices.

Drawn on a Figure with the Agg canvas directly, never through pyplot, so no global
backend state is touched and nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_importance(importance: dict[str, float], path: str | Path, title: str) -> Path:
    """Horizontal bars, the most important feature on top."""
    fig = _figure((6, 3.5))
    ax = fig.subplots()
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance")
    ax.set_title(title)
    fig.savefig(path, dpi=80)
    return Path(path)


def plot_confusion(confusions: dict[str, dict[str, int]], path: str | Path, title: str) -> Path:
    """One 2x2 matrix per decider (rows: label, columns: decision), side by side."""
    import numpy as np

    fig = _figure((4 * len(confusions), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(confusions)))
    for ax, (name, c) in zip(axes, confusions.items(), strict=True):
        m = np.array([[c["tp"], c["fn"]], [c["fp"], c["tn"]]])
        ax.imshow(m, cmap="Blues")
        for (r, k), v in np.ndenumerate(m):
            ax.text(k, r, str(v), ha="center", va="center",
                    color="white" if v > m.max() / 2 else "black")  # fmt: skip
        ax.set_xticks([0, 1], ["kept", "removed"])
        ax.set_yticks([0, 1], ["keep", "remove"])
        ax.set_xlabel("decision")
        ax.set_ylabel("edited MIDI says")
        ax.set_title(name)
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    return Path(path)
