"""Score a style model on held-out recordings, through the exported ONNX model.

Evaluation runs `StyleClassifier` (what Serve and `predict` run), not the torch model,
so the figures describe the artifact users get. The unit is the recording (a file, the
mean of its clips, what a user submits): `accuracy`, `per_class_f1` and the confusion
matrix count recordings. `piece_accuracy` pools every recording of a piece first, and
`pieces` counts the distinct held-out pieces, so one can see how many there were.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from midiforge.classifiers.style.classifier import StyleClassifier, StyleModelError
from midiforge.classifiers.style.data import Item, load_recording

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
CONFUSION_PNG = "confusion.png"


def evaluate_items(
    classifier: StyleClassifier, items: Sequence[Item], out_dir: str | Path | None = None
) -> dict[str, Any]:
    """{accuracy, piece_accuracy, per_class_f1, pieces, recordings, confusion, errors};
    with `out_dir`, also results.json and confusion.png there."""
    from sklearn.metrics import confusion_matrix, f1_score

    labels = classifier.labels
    unknown = sorted({i.style for i in items} - set(labels))
    if unknown:
        raise StyleModelError(f"the model knows {labels}, not the test style(s) {unknown}")
    if not items:
        raise StyleModelError("no recordings to evaluate")
    index = {s: i for i, s in enumerate(labels)}
    probs = np.stack(
        [
            classifier.probabilities(load_recording(i.path, classifier.mel.sample_rate),
                                     classifier.mel.sample_rate)
            for i in items
        ]
    )  # fmt: skip
    truth = np.array([index[i.style] for i in items])
    pred = probs.argmax(axis=1)
    k = list(range(len(labels)))
    f1 = f1_score(truth, pred, labels=k, average=None, zero_division=0)
    matrix = confusion_matrix(truth, pred, labels=k)
    pieces: dict[tuple[str, str], list[int]] = {}
    for n, item in enumerate(items):
        pieces.setdefault((item.style, item.piece), []).append(n)
    piece_hits = [probs[rows].mean(axis=0).argmax() == index[s] for (s, _), rows in pieces.items()]
    results = {
        "accuracy": float(np.mean(pred == truth)),
        "piece_accuracy": float(np.mean(piece_hits)),
        "per_class_f1": {s: float(f) for s, f in zip(labels, f1, strict=True)},
        "pieces": len(pieces),
        "recordings": len(items),
        "confusion": {"labels": list(labels), "matrix": matrix.tolist()},
        "errors": [
            {
                "recording": item.recording,
                "true": item.style,
                "predicted": labels[pred[n]],
                "probability": round(float(probs[n, pred[n]]), 4),
            }
            for n, item in enumerate(items)
            if pred[n] != truth[n]
        ],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        plot_confusion(out / CONFUSION_PNG, matrix, labels, results["accuracy"])
    return results


def plot_confusion(path: Path, matrix: np.ndarray, labels: Sequence[str], accuracy: float) -> None:
    """Counts per (true, predicted) cell, true styles as rows."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = 2.5 + 0.6 * len(labels)
    fig = Figure(figsize=(size, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    top = matrix.max() if matrix.size else 0
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {accuracy:.3f} ({int(matrix.sum())} recordings)")
    fig.savefig(path, dpi=80)
