"""Keep/remove labels for proposed hits, read off a producer's edited MIDI.

A detection is labelled keep (1) when it is matched to an edited hit, remove (0)
otherwise. Matching is one-to-one and greedy by distance: of all (detection, edited hit)
pairs within the tolerance, the closest pair is matched first, then the closest of the
rest, and so on; each detection and each edited hit is used at most once, so a double
trigger 20 ms after a real hit is labelled remove, not keep twice. Ties go to the earlier
detection, then the earlier edited hit, so the labels do not depend on the sort.

The same matching scores decisions: a kept detection matched to an edited hit is a true
positive, `decision_metrics` counts the rest.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TOLERANCE_S = 0.030


def match_hits(
    detected_s: np.ndarray, edited_s: np.ndarray, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> list[tuple[int, int]]:
    """(detection index, edited index) pairs, sorted by detection index. A pair exactly
    `tolerance_s` apart still matches."""
    det = np.asarray(detected_s, dtype=np.float64).reshape(-1)
    ref = np.asarray(edited_s, dtype=np.float64).reshape(-1)
    if det.size == 0 or ref.size == 0:
        return []
    dist = np.abs(det[:, None] - ref[None, :])
    # A nanosecond of slack: times read back from MIDI ticks are not exact decimals.
    i, j = np.nonzero(dist <= tolerance_s + 1e-9)
    order = np.lexsort((j, i, dist[i, j]))
    used_det, used_ref, pairs = set(), set(), []
    for k in order:
        a, b = int(i[k]), int(j[k])
        if a not in used_det and b not in used_ref:
            used_det.add(a)
            used_ref.add(b)
            pairs.append((a, b))
    return sorted(pairs)


def label_detections(
    detected_s: np.ndarray, edited_s: np.ndarray, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> np.ndarray:
    """int64 array, 1 = keep (matched to an edited hit), 0 = remove."""
    labels = np.zeros(len(np.asarray(detected_s).reshape(-1)), dtype=np.int64)
    for a, _ in match_hits(detected_s, edited_s, tolerance_s):
        labels[a] = 1
    return labels


def confusion(keep: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Counts of keep decisions against labels: tp kept and labelled keep, fp kept but
    labelled remove, fn removed but labelled keep, tn removed and labelled remove."""
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    return {
        "tp": int(np.sum(keep & labels)),
        "fp": int(np.sum(keep & ~labels)),
        "fn": int(np.sum(~keep & labels)),
        "tn": int(np.sum(~keep & ~labels)),
    }


def decision_metrics(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall and F1 of the keep class; 0 where a ratio has no denominator."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
