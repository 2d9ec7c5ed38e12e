"""Scores for `midiforge lm evaluate`: generated melodies against a reference set.

A piece is a `Piece`: an (N, 4) note array of (start_s, end_s, pitch, velocity) rows as
`midiforge.midi_io.notes_array` returns it, the bar length in seconds and a key name.
Key names are music21's ("A minor", "B- major", "f# minor") or short ("Am", "D", "Bbm"); a
lone lower-case tonic ("a") is minor, as in music21. Modal names map to the mode with the
same third: ionian, lydian, mixolydian are major; dorian, phrygian, aeolian, locrian minor.

Per-piece metrics (`piece_metrics`). Every one handles an empty piece; nan means
"undefined for this piece" and is skipped by every mean.

- pitch_entropy: Shannon entropy in bits of the piece's 12-bin pitch-class histogram
  (note counts, absolute pitch classes). 0 for one pitch class, log2(12) for all twelve
  equally often. nan when empty.
- pch_kl: KL(P_ref || P_piece) in bits. P_ref is the reference set's aggregate
  pitch-class histogram (note counts summed over all its pieces), P_piece the piece's;
  each is normalised, gets `PCH_EPSILON` added to every bin and is normalised again. 0
  when the piece has the reference's pitch-class distribution. nan when empty. The
  reference's own pch_kl is leave-one-out (each reference piece against the aggregate
  of the others): the level a real piece of the style reaches.
- chord_tone_ratio: how much of the piece is made of chord tones, with chords drawn from
  the reference's harmonic vocabulary. Pitch classes are taken relative to the piece's
  key tonic. Candidate chords are the diatonic triads of the key's mode: the seven
  triads on the degrees of the major scale (I ii iii IV V vi vii°) or of the natural
  minor scale (i ii° III iv v VI VII), plus the harmonic-minor V in minor. Each note is
  split over the bars it sounds in (`Piece.bar_s`); a triad's coverage of a bar is the
  sounding time of the bar's notes whose pitch class is in the triad. A triad "fits" a
  bar when no other candidate covers more of it (ties all fit). The reference context
  allows, per mode, the triads that fit at least `TRIAD_MIN_SHARE` of the reference's
  non-empty bars in that mode, each reference piece read in its own key. For each bar
  of the piece the best-covering allowed triad of its mode is the bar's chord, and
  chord_tone_ratio = (sounding time of chord tones) / (total sounding time), over all
  bars. When the reference has no bars in the piece's mode (or none of that mode's
  triads reaches the share) all of the mode's triads are allowed. Notes shorter than
  `MIN_NOTE_S` count as that long. nan when empty. The reference's own mean is
  reported next to the configs for comparison.
- avg_interval: mean absolute interval in semitones between consecutive notes of the
  skyline melody: at each distinct onset (onsets within `ONSET_TOLERANCE_S` are one),
  the highest pitch. nan with fewer than two onsets.
- pitch_range: highest pitch minus lowest, in semitones. nan when empty.
- note_density: notes per bar, bars = ceil(last note end / bar_s), at least 1. 0.0 for
  an empty piece (a model that writes nothing has density 0, which is worth seeing).
- self_similarity_8bar: mean over bar pairs (i, i + 8) of the Jaccard similarity of the
  bars' onset sets {(onset position quantised to 1/16 of a bar, pitch)}. Pairs of two
  empty bars are skipped. nan with fewer than 9 bars (or no pair left).

Set-level (`pch_overlap_and_kl`), after Yang & Lerch (2018), "On the evaluation of
generative models in music", on the normalised pitch-class histogram of each non-empty
piece: the intra-set Euclidean distances (all pairs of reference pieces) and the
inter-set distances (every generated piece to every reference piece) are each smoothed
with a Gaussian KDE; pch_overlap is the overlap area, the integral of min(p_intra,
p_inter), and pch_kl_set is KL(p_intra || p_inter) in bits, both on one common grid.
Overlap near 1 means the generated pieces sit among the reference pieces as the
reference pieces sit among themselves. Densities are floored at `KDE_DENSITY_FLOOR`
inside the log, so pch_kl_set saturates near 40 bits for disjoint sets. nan when either
distance set has fewer than two values or no spread.

Config level (`evaluate_configs`): means over pieces of the per-piece metrics (nan
skipped), the set-level pch_overlap / pch_kl_set, the caller's perplexity, the
reference's own means, and two-sided Wilcoxon signed-rank p-values for every pair of
configs and every per-piece metric, pieces paired by index (sample i of every config
shares condition and seed); pairs with a nan are dropped, and p is nan with fewer than
`WILCOXON_MIN_PAIRS` pairs or when every difference is zero. The returned structure
has None where a value is nan, so it is valid JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from midiforge.lm.vocab import parse_key

__all__ = ["parse_key"]  # the key names every metric reads; one parser for the package

# Additive smoothing per bin of a normalised pitch-class histogram: keeps KL finite when
# the piece never plays a pitch class the reference uses, while barely moving the bins
# that have real mass (a pitch class played once in 100 notes is still 10x larger).
PCH_EPSILON = 1e-3
# A triad is part of the reference's vocabulary when it fits at least this share of the
# reference's bars; below it the fits are mostly ties and passing chromaticism.
TRIAD_MIN_SHARE = 0.05
# Zero-length notes (possible in generated MIDI) still sound as something in the harmony.
MIN_NOTE_S = 1e-3
# Generated onsets come off a tick grid; 1 ms separates real onsets from float noise.
ONSET_TOLERANCE_S = 1e-3
SIMILARITY_GRID = 16  # onset positions per bar
SIMILARITY_LAG_BARS = 8  # phrase length of most fiddle tunes and folk dance forms
# Below this the signed-rank test cannot reach p < 0.05 two-sided (the smallest exact
# p-value with 5 pairs is 0.0625), so smaller samples are reported as undefined.
WILCOXON_MIN_PAIRS = 5
KDE_GRID_POINTS = 1024
# Floor on KDE densities inside the log: the tails of a Gaussian KDE underflow to 0.
KDE_DENSITY_FLOOR = 1e-12

PIECE_METRICS = (
    "pitch_entropy",
    "pch_kl",
    "chord_tone_ratio",
    "avg_interval",
    "pitch_range",
    "note_density",
    "self_similarity_8bar",
)
# The reference scores itself on every per-piece metric; its pch_kl is leave-one-out.
REFERENCE_METRICS = PIECE_METRICS
CONFIG_METRICS = (
    "perplexity",
    "pch_kl",
    "pch_overlap",
    "pch_kl_set",
    *(m for m in PIECE_METRICS if m != "pch_kl"),
)

_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)
_MAJOR_NAMES = ("I", "ii", "iii", "IV", "V", "vi", "vii°")
_MINOR_NAMES = ("i", "ii°", "III", "iv", "v", "VI", "VII")


def _diatonic_triads(scale: tuple[int, ...], names: tuple[str, ...]) -> dict[str, frozenset]:
    return {
        name: frozenset((scale[d], scale[(d + 2) % 7], scale[(d + 4) % 7]))
        for d, name in enumerate(names)
    }


# Triads as pitch-class sets relative to the tonic, per mode.
TRIADS: dict[str, dict[str, frozenset]] = {
    "major": _diatonic_triads(_MAJOR_SCALE, _MAJOR_NAMES),
    "minor": {**_diatonic_triads(_MINOR_SCALE, _MINOR_NAMES), "V": frozenset((7, 11, 2))},
}


@dataclass(frozen=True, eq=False)
class Piece:
    """One melody: (N, 4) notes (start_s, end_s, pitch, velocity), bar length, key name."""

    notes: np.ndarray
    bar_s: float
    key: str

    def __post_init__(self) -> None:
        notes = np.asarray(self.notes, dtype=np.float64).reshape(-1, 4)
        object.__setattr__(self, "notes", notes)
        if not (math.isfinite(self.bar_s) and self.bar_s > 0):
            raise ValueError(f"bar_s must be a positive number of seconds, got {self.bar_s}")
        parse_key(self.key)  # fail at construction, not halfway through an evaluation


@dataclass(frozen=True, eq=False)
class ReferenceContext:
    """What pieces are scored against; built by `reference_context`.

    pch: the reference's aggregate pitch-class distribution (12 bins, sums to 1, or all
    zero for an empty reference). triads: per mode, the allowed triad names.
    triad_share: per mode, the share of the reference's bars each triad fits.
    means: the reference's own nan-aware means of `REFERENCE_METRICS` (pch_kl
    leave-one-out).
    """

    pch: np.ndarray
    triads: dict[str, tuple[str, ...]]
    triad_share: dict[str, dict[str, float]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    n_pieces: int = 0


def _pitches(piece: Piece) -> np.ndarray:
    return np.rint(piece.notes[:, 2]).astype(np.int64)


def _pc_counts(piece: Piece) -> np.ndarray:
    return np.bincount(_pitches(piece) % 12, minlength=12).astype(np.float64)


def _n_bars(piece: Piece) -> int:
    if len(piece.notes) == 0:
        return 1
    # A last note ending on a barline within float noise does not open another bar.
    return max(1, math.ceil(piece.notes[:, 1].max() / piece.bar_s - 1e-9))


def _bar_pc_time(piece: Piece, tonic: int) -> np.ndarray:
    """(bars, 12) sounding seconds per bar and tonic-relative pitch class."""
    notes = piece.notes
    start = np.maximum(notes[:, 0], 0.0)
    end = np.maximum(notes[:, 1], start + MIN_NOTE_S)
    n_bars = max(_n_bars(piece), math.ceil(end.max() / piece.bar_s - 1e-9))
    edges = np.arange(n_bars + 1) * piece.bar_s
    overlap = np.minimum(end[:, None], edges[None, 1:]) - np.maximum(start[:, None], edges[:-1])
    onehot = np.zeros((len(notes), 12))
    onehot[np.arange(len(notes)), (_pitches(piece) - tonic) % 12] = 1.0
    return np.clip(overlap, 0.0, None).T @ onehot


def _triad_masks(mode: str, names: tuple[str, ...]) -> np.ndarray:
    masks = np.zeros((len(names), 12))
    for i, name in enumerate(names):
        masks[i, list(TRIADS[mode][name])] = 1.0
    return masks


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def _smoothed(hist: np.ndarray) -> np.ndarray:
    p = hist / hist.sum()
    p = p + PCH_EPSILON
    return p / p.sum()


def pitch_entropy(piece: Piece) -> float:
    counts = _pc_counts(piece)
    if counts.sum() == 0:
        return math.nan
    return _entropy_bits(counts / counts.sum())


def pch_kl(piece: Piece, reference_pch: np.ndarray) -> float:
    counts = _pc_counts(piece)
    if counts.sum() == 0 or reference_pch.sum() == 0:
        return math.nan
    p, q = _smoothed(reference_pch), _smoothed(counts)
    return float((p * np.log2(p / q)).sum())


def chord_tone_ratio(piece: Piece, triads: dict[str, tuple[str, ...]]) -> float:
    if len(piece.notes) == 0:
        return math.nan
    tonic, mode = parse_key(piece.key)
    names = triads.get(mode) or tuple(TRIADS[mode])
    time = _bar_pc_time(piece, tonic)
    covered = (time @ _triad_masks(mode, names).T).max(axis=1).sum()
    return float(covered / time.sum())


def avg_interval(piece: Piece) -> float:
    if len(piece.notes) < 2:
        return math.nan
    order = np.argsort(piece.notes[:, 0], kind="stable")
    onsets, pitches = piece.notes[order, 0], _pitches(piece)[order]
    group = np.cumsum(np.concatenate(([True], np.diff(onsets) > ONSET_TOLERANCE_S))) - 1
    skyline = np.full(group[-1] + 1, np.iinfo(np.int64).min)
    np.maximum.at(skyline, group, pitches)
    if len(skyline) < 2:
        return math.nan
    return float(np.abs(np.diff(skyline)).mean())


def pitch_range(piece: Piece) -> float:
    if len(piece.notes) == 0:
        return math.nan
    pitches = _pitches(piece)
    return float(pitches.max() - pitches.min())


def note_density(piece: Piece) -> float:
    return len(piece.notes) / _n_bars(piece)


def self_similarity_8bar(piece: Piece) -> float:
    n_bars = _n_bars(piece)
    if len(piece.notes) == 0 or n_bars <= SIMILARITY_LAG_BARS:
        return math.nan
    # Quantise on the global grid so a note a hair before a barline lands on beat 1.
    steps = np.rint(piece.notes[:, 0] / piece.bar_s * SIMILARITY_GRID).astype(np.int64)
    bars: dict[int, set[tuple[int, int]]] = {}
    for step, pitch in zip(steps.tolist(), _pitches(piece).tolist(), strict=True):
        bars.setdefault(step // SIMILARITY_GRID, set()).add((step % SIMILARITY_GRID, pitch))
    scores = []
    for i in range(n_bars - SIMILARITY_LAG_BARS):
        a, b = bars.get(i, set()), bars.get(i + SIMILARITY_LAG_BARS, set())
        if a or b:
            scores.append(len(a & b) / len(a | b))
    return float(np.mean(scores)) if scores else math.nan


def piece_metrics(piece: Piece, context: ReferenceContext) -> dict[str, float]:
    """Every metric of `PIECE_METRICS` for one piece (nan where undefined)."""
    return {
        "pitch_entropy": pitch_entropy(piece),
        "pch_kl": pch_kl(piece, context.pch),
        "chord_tone_ratio": chord_tone_ratio(piece, context.triads),
        "avg_interval": avg_interval(piece),
        "pitch_range": pitch_range(piece),
        "note_density": note_density(piece),
        "self_similarity_8bar": self_similarity_8bar(piece),
    }


def _nanmean(values: list[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if len(arr) else math.nan


def _triad_shares(pieces: list[Piece]) -> dict[str, dict[str, float]]:
    fits = {mode: dict.fromkeys(TRIADS[mode], 0) for mode in TRIADS}
    bars = dict.fromkeys(TRIADS, 0)
    for piece in pieces:
        if len(piece.notes) == 0:
            continue
        tonic, mode = parse_key(piece.key)
        names = tuple(TRIADS[mode])
        time = _bar_pc_time(piece, tonic)
        time = time[time.sum(axis=1) > 0]
        coverage = time @ _triad_masks(mode, names).T
        best = coverage.max(axis=1, keepdims=True)
        fit = np.isclose(coverage, best, rtol=1e-9, atol=1e-12) & (best > 0)
        bars[mode] += len(time)
        for name, count in zip(names, fit.sum(axis=0).tolist(), strict=True):
            fits[mode][name] += count
    return {
        mode: {name: count / bars[mode] for name, count in fits[mode].items()}
        for mode in TRIADS
        if bars[mode]
    }


def reference_context(pieces: list[Piece]) -> ReferenceContext:
    """Aggregate pitch-class histogram, allowed triads and own means of a reference set."""
    pch = np.zeros(12)
    for piece in pieces:
        pch += _pc_counts(piece)
    if pch.sum() > 0:
        pch /= pch.sum()
    shares = _triad_shares(pieces)
    triads = {
        mode: tuple(name for name, share in shares[mode].items() if share >= TRIAD_MIN_SHARE)
        for mode in shares
    }
    context = ReferenceContext(pch=pch, triads=triads, triad_share=shares, n_pieces=len(pieces))
    values = [piece_metrics(p, context) for p in pieces]
    means = {
        m: _leave_one_out_pch_kl(pieces) if m == "pch_kl" else _nanmean([v[m] for v in values])
        for m in REFERENCE_METRICS
    }
    return replace(context, means=means)


def _leave_one_out_pch_kl(pieces: list[Piece]) -> float:
    """Mean pch_kl of each reference piece against the aggregate of the others: what a
    real piece of the style scores, the level a generator can be compared with (scoring
    a piece against an aggregate that includes it would flatter the reference)."""
    counts = [_pc_counts(p) for p in pieces]
    total = np.sum(counts, axis=0) if counts else np.zeros(12)
    return _nanmean([pch_kl(p, total - c) for p, c in zip(pieces, counts, strict=True)])


def _pch_vectors(pieces: list[Piece]) -> np.ndarray:
    rows = [c / c.sum() for c in map(_pc_counts, pieces) if c.sum() > 0]
    return np.asarray(rows).reshape(-1, 12)


def _overlap_and_kl(intra: np.ndarray, inter: np.ndarray) -> tuple[float, float]:
    from scipy.integrate import trapezoid
    from scipy.stats import gaussian_kde

    for d in (intra, inter):
        # gaussian_kde needs a non-singular covariance: two or more distinct values.
        if len(d) < 2 or np.ptp(d) <= 1e-12:
            return math.nan, math.nan
    kdes = [gaussian_kde(intra), gaussian_kde(inter)]
    pad = 3.0 * max(math.sqrt(float(k.covariance[0, 0])) for k in kdes)
    both = np.concatenate([intra, inter])
    grid = np.linspace(both.min() - pad, both.max() + pad, KDE_GRID_POINTS)
    # Renormalised on the grid, so that identical sets give an overlap of exactly 1.
    p, q = (k(grid) / trapezoid(k(grid), grid) for k in kdes)
    overlap = float(trapezoid(np.minimum(p, q), grid))
    pf, qf = np.maximum(p, KDE_DENSITY_FLOOR), np.maximum(q, KDE_DENSITY_FLOOR)
    kl = float(trapezoid(pf * np.log2(pf / qf), grid))
    return overlap, max(kl, 0.0)


def pch_overlap_and_kl(reference: list[Piece], generated: list[Piece]) -> tuple[float, float]:
    """Yang & Lerch overlap area and KL(intra || inter) of pitch-class-histogram distances.

    Empty pieces have no histogram and are left out. (nan, nan) when there are too few
    pieces or the distances do not vary.
    """
    from scipy.spatial.distance import cdist, pdist

    ref, gen = _pch_vectors(reference), _pch_vectors(generated)
    if len(ref) < 2 or len(gen) < 1:
        return math.nan, math.nan
    return _overlap_and_kl(pdist(ref), cdist(gen, ref).ravel())


def wilcoxon_p(a: list[float | None], b: list[float | None]) -> float:
    """Two-sided Wilcoxon signed-rank p for index-paired values; nan if undefined."""
    n = min(len(a), len(b))
    x = np.array([math.nan if v is None else v for v in a[:n]], dtype=np.float64)
    y = np.array([math.nan if v is None else v for v in b[:n]], dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < WILCOXON_MIN_PAIRS or np.all(x == y):
        return math.nan
    from scipy.stats import wilcoxon

    return float(wilcoxon(x, y, alternative="two-sided").pvalue)


def to_jsonable(obj: Any) -> Any:
    """Plain Python for json.dumps: numpy values unwrapped, nan and inf as None."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def evaluate_configs(
    reference: list[Piece],
    configs: dict[str, list[Piece]],
    perplexity: dict[str, float | None],
) -> dict[str, Any]:
    """Score every config against the reference; JSON-safe (None for nan).

    {"n", "configs": {NAME: {CONFIG_METRICS...}}, "reference": {REFERENCE_METRICS...},
    "wilcoxon": {"A_vs_B": {PIECE_METRICS...: p}}, "per_piece": {NAME: {metric: [...]}}}.
    n is the largest number of pieces in a config; Wilcoxon pairs the first
    min(len(A), len(B)) pieces by index.
    """
    context = reference_context(reference)
    per_piece: dict[str, dict[str, list[float]]] = {}
    rows: dict[str, dict[str, float | None]] = {}
    for name, pieces in configs.items():
        values = [piece_metrics(p, context) for p in pieces]
        per_piece[name] = {m: [v[m] for v in values] for m in PIECE_METRICS}
        overlap, kl_set = pch_overlap_and_kl(reference, pieces)
        means = {m: _nanmean(per_piece[name][m]) for m in PIECE_METRICS}
        extra = {"perplexity": perplexity.get(name), "pch_overlap": overlap, "pch_kl_set": kl_set}
        rows[name] = {m: extra[m] if m in extra else means[m] for m in CONFIG_METRICS}
    names = list(configs)
    wilcoxon = {
        f"{a}_vs_{b}": {m: wilcoxon_p(per_piece[a][m], per_piece[b][m]) for m in PIECE_METRICS}
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    return to_jsonable(
        {
            "n": max((len(p) for p in configs.values()), default=0),
            "configs": rows,
            "reference": {m: context.means[m] for m in REFERENCE_METRICS},
            "wilcoxon": wilcoxon,
            "per_piece": per_piece,
        }
    )


def _cell(value: Any, fmt: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, fmt) if isinstance(value, int | float) else str(value)


def _setting(results: dict[str, Any]) -> str:
    """', test split; neural models sample at ...' when the caller recorded them."""
    text = f", {results['split']} split" if "split" in results else ""
    if "temperature" in results:
        text += (
            f"; neural models sample at temperature {results['temperature']:g}, "
            f"top-p {results['top_p']:g}"
        )
    return text


def _markdown(results: dict[str, Any]) -> str:
    header = ["config", *CONFIG_METRICS]
    lines = [
        f"# Generation evaluation (n = {results['n']} per config{_setting(results)})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, row in results["configs"].items():
        lines.append("| " + " | ".join([name, *(_cell(row.get(m)) for m in CONFIG_METRICS)]) + " |")
    ref = results["reference"]
    lines.append(
        "| " + " | ".join(["*reference*", *(_cell(ref.get(m)) for m in CONFIG_METRICS)]) + " |"
    )
    lines += [
        "",
        "## Wilcoxon signed-rank p-values (two-sided, paired by sample index)",
        "",
        "| pair | " + " | ".join(PIECE_METRICS) + " |",
        "|" + "---|" * (len(PIECE_METRICS) + 1),
    ]
    for pair, ps in results["wilcoxon"].items():
        cells = (_cell(ps.get(m), ".3g") for m in PIECE_METRICS)
        lines.append("| " + " | ".join([pair, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: Path) -> None:
    # Figure + the Agg canvas directly: no pyplot, so no global backend state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(results["per_piece"])
    cols = 4
    rows = math.ceil(len(PIECE_METRICS) / cols)
    fig = Figure(figsize=(4 * cols, 3.5 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, PIECE_METRICS, strict=False):
        data = [
            [v for v in results["per_piece"][n][metric] if v is not None and math.isfinite(v)]
            for n in names
        ]
        if names:
            ax.boxplot(data, tick_labels=names)
        ref = results["reference"].get(metric)
        if ref is not None:
            ax.axhline(ref, color="tab:red", linestyle="--", linewidth=1, label="reference mean")
            ax.legend(fontsize="small")
        ax.set_title(metric)
    for ax in axes[len(PIECE_METRICS) :]:
        ax.set_visible(False)
    fig.savefig(path, dpi=100)


def write_results(results: dict[str, Any], out_dir: str | Path) -> None:
    """results.json (per_piece included), results.md and results.png in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = to_jsonable(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(_markdown(results))
    _plot(results, out / "results.png")
