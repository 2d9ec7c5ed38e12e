"""Score transcription models side by side on the same audio (`midiforge compare`).

Every model transcribes every input with its own note decoding: thresholds given here
apply to all models; thresholds left unset come from each model's `decoding.yaml` (the
values its training run calibrated on validation pieces; basic-pitch's for stock), since
that is how each model is used everywhere else. With reference MIDI,
each piece is scored with `evaluation.note_metrics` (the project's one definition of
precision / recall / f1 / f1_offset) and the model's figures are means over pieces, so a
long piece does not outweigh the rest. Onset errors are pooled over all matched notes of
all pieces: they describe timing, which is a property of notes, not of pieces.

Audio is paired with reference MIDI by file stem. Whatever cannot be paired (no
reference, two references with one stem, two inputs with one stem) is still transcribed,
listed under `unpaired` with its reason and logged, never dropped in silence.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midiforge import audio, evaluation, midi_io
from midiforge import config as cfgmod
from midiforge.transcription.models import InputError, resolve_model, transcribe_audio
from midiforge.transcription.notes import NoteDecoding, model_decoding

log = logging.getLogger(__name__)

MIDI_EXTENSIONS = (".mid", ".midi")
METRICS = ("precision", "recall", "f1", "f1_offset")
SUMMARY_KEYS = ("notes", *METRICS, "onset_err_median_ms", "onset_err_p90_ms", "pieces")


@dataclass
class CompareConfig:
    models: list[str] = field(default_factory=lambda: ["stock"])  # names, .onnx files, folders
    input: str = ""  # an audio file, or a folder searched recursively
    reference: str | None = None  # a MIDI file, or a folder; paired to audio by stem
    out: str | None = None  # folder for results.json, config.yaml and piano rolls
    plots: int = 3  # piano rolls per model (the first pieces by name)
    plot_seconds: float = 20.0  # the start of each piece that a piano roll shows
    # Note decoding for every model; None = each model's own (its decoding.yaml, else
    # basic-pitch's defaults).
    onset_threshold: float | None = None
    frame_threshold: float | None = None
    min_note_ms: float | None = None
    models_root: str | None = None  # registry root (default $MIDIFORGE_MODELS)

    def validate_config(self) -> None:
        if not self.input:
            raise cfgmod.ConfigError("input: give an audio file or folder (--input)")
        if not self.models:
            raise cfgmod.ConfigError("models: give at least one model (--models stock,NAME)")
        repeated = sorted(m for m, n in Counter(self.models).items() if n > 1)
        if repeated:
            raise cfgmod.ConfigError(f"models: each model once, repeated: {', '.join(repeated)}")
        if self.plots < 0 or self.plot_seconds <= 0:
            raise cfgmod.ConfigError("plots must be >= 0 and plot_seconds > 0")
        self.decoding().validate_config()

    def decoding(self) -> NoteDecoding:
        return NoteDecoding(
            onset_threshold=self.onset_threshold,
            frame_threshold=self.frame_threshold,
            minimum_note_ms=self.min_note_ms,
        )


@dataclass
class Piece:
    name: str  # path below the input folder, without its suffix: unique by construction
    audio: Path
    reference: Path | None = None


# --- inputs and pairing ------------------------------------------------------------------


def _files(root: Path, extensions: tuple[str, ...], what: str) -> list[Path]:
    """`root` itself if it is a file, else every file below it with one of `extensions`."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(f"no {what} file or folder {root}")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not found:
        raise InputError(f"{root} holds no {what} files ({' '.join(extensions)})")
    return found


def find_pieces(input_path: str | Path) -> list[Piece]:
    """Audio inputs, sorted by path. A piece is named by its path under the folder
    without the extension, or with it where two files differ only in extension."""
    root = Path(input_path)
    files = _files(root, audio.AUDIO_EXTENSIONS, "audio")
    if root.is_file():
        return [Piece(root.stem, root)]
    rels = [f.relative_to(root) for f in files]
    names = [r.with_suffix("").as_posix() for r in rels]
    # x.wav and x.flac in one folder would share a row, a reference and a plot file
    taken = Counter(names)
    return [
        Piece(name if taken[name] == 1 else rel.as_posix(), f)
        for name, rel, f in zip(names, rels, files, strict=True)
    ]


def pair_references(pieces: list[Piece], reference: str | Path) -> list[dict[str, Any]]:
    """Set `piece.reference` where exactly one MIDI file shares the audio's stem; return
    the pieces left unpaired, each with its reason. One audio file and one MIDI file are
    paired whatever their names: the user named both."""
    ref_root = Path(reference)
    refs = _files(ref_root, MIDI_EXTENSIONS, "reference MIDI")
    if ref_root.is_file() and len(pieces) == 1:
        pieces[0].reference = refs[0]
        return []
    by_stem: dict[str, list[Path]] = {}
    for r in refs:
        by_stem.setdefault(r.stem, []).append(r)
    audio_stems = Counter(p.audio.stem for p in pieces)
    unpaired = []
    for p in pieces:
        candidates = by_stem.get(p.audio.stem, [])
        if audio_stems[p.audio.stem] > 1:
            reason = "duplicate_input"
        elif not candidates:
            reason = "no_reference"
        elif len(candidates) > 1:
            reason = "duplicate_reference"
        else:
            p.reference = candidates[0]
            continue
        unpaired.append(
            {
                "piece": p.name,
                "input": str(p.audio),
                "reason": reason,
                "references": [str(c) for c in candidates],
            }
        )
    for u in unpaired:
        log.warning(
            "%s is not scored: %s (stem %r; references: %s)",
            u["input"],
            u["reason"].replace("_", " "),
            Path(u["input"]).stem,
            ", ".join(u["references"]) or "none",
        )
    return unpaired


def _readable(pieces: list[Piece]) -> tuple[list[Piece], dict[str, np.ndarray], list[dict]]:
    """(the pieces whose audio and reference load, their reference notes, the others with
    the reason): one unreadable, too short or silent file is skipped and listed, not the
    end of a comparison of every model on every file. Decoding each file once more here
    costs little beside the models."""
    from midiforge.transcription.models import load_clip

    usable, refs, skipped = [], {}, []
    for p in pieces:
        try:
            load_clip(p.audio)
            if p.reference:
                refs[p.name] = load_reference(p.reference)
        except InputError as e:
            log.warning("%s is skipped: %s", p.audio, e)
            skipped.append({"piece": p.name, "input": str(p.audio), "reason": str(e)})
            continue
        usable.append(p)
    if not usable:
        raise InputError(f"no usable audio among {len(pieces)} file(s): {skipped[0]['reason']}")
    return usable, refs, skipped


def load_reference(path: Path) -> np.ndarray:
    try:
        return midi_io.notes_array(midi_io.load_midi(path))
    except ValueError as e:
        raise InputError(f"reference {path}: {e}") from None


# --- scoring -------------------------------------------------------------------------------


def match_onsets(ref: np.ndarray, est: np.ndarray) -> list[tuple[int, int]]:
    """(ref index, est index) pairs matched on onset (50 ms) and pitch: the pairs that
    `note_metrics`' onset-only f1 counts."""
    if len(ref) == 0 or len(est) == 0:
        return []
    import mir_eval

    # The same interval and pitch conversion as note_metrics, so the pairs agree with it.
    ref_i, ref_p = evaluation._intervals_pitches(ref)
    est_i, est_p = evaluation._intervals_pitches(est)
    return mir_eval.transcription.match_notes(
        ref_i,
        ref_p,
        est_i,
        est_p,
        onset_tolerance=evaluation.ONSET_TOLERANCE_S,
        offset_ratio=None,
    )


def onset_errors_ms(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    """|est onset - ref onset| in ms for every onset-matched pair."""
    pairs = match_onsets(ref, est)
    if not pairs:
        return np.zeros(0)
    r, e = np.asarray(pairs).T
    return np.abs(est[e, 0] - ref[r, 0]) * 1000.0


def _summary(rows: list[dict[str, Any]], onset_errs: list[np.ndarray]) -> dict[str, Any]:
    scored = [r for r in rows if r["f1"] is not None]
    errs = np.concatenate(onset_errs) if onset_errs else np.zeros(0)
    out: dict[str, Any] = {"notes": sum(r["notes"] for r in rows)}
    for k in METRICS:
        out[k] = float(np.mean([r[k] for r in scored])) if scored else None
    out["onset_err_median_ms"] = float(np.median(errs)) if errs.size else None
    out["onset_err_p90_ms"] = float(np.percentile(errs, 90)) if errs.size else None
    out["pieces"] = len(scored)
    return out


def score_model(
    pieces: list[Piece], notes: list[np.ndarray], refs: dict[str, np.ndarray]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One model's summary and per-piece rows; metrics are None where a piece has no
    reference."""
    rows, errs = [], []
    for piece, est in zip(pieces, notes, strict=True):
        row: dict[str, Any] = {"piece": piece.name, "notes": len(est)}
        ref = refs.get(piece.name)
        if ref is None:
            row.update(dict.fromkeys(METRICS))
        else:
            row.update(evaluation.note_metrics(ref, est))
            errs.append(onset_errors_ms(ref, est))
        rows.append(row)
    return _summary(rows, errs), rows


# --- piano rolls -----------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A model or piece name as a file-name part: paths and odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:100] or "x"


def _rects(notes: np.ndarray, seconds: float, height: float) -> list[Any]:
    from matplotlib.patches import Rectangle

    return [
        Rectangle((s, p - height / 2), min(e, seconds) - s, height)
        for s, e, p, _ in notes
        if s < seconds
    ]


def plot_pianoroll(
    path: Path,
    est: np.ndarray,
    ref: np.ndarray | None,
    title: str,
    seconds: float,
) -> None:
    """Reference notes as grey bars, the model's notes on top: matched (onset and pitch)
    in blue, unmatched in red, so misses and false positives show at a glance."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    layers = []  # (notes, bar height, colour, legend label), drawn in order
    if ref is None:
        layers.append((est, 0.6, "tab:blue", "model"))
    else:
        matched = np.zeros(len(est), bool)
        matched[[e for _, e in match_onsets(ref, est)]] = True
        layers += [
            (ref, 0.9, "0.75", "reference"),
            (est[matched], 0.5, "tab:blue", "matched"),
            (est[~matched], 0.5, "tab:red", "unmatched"),
        ]
    for notes, height, colour, _ in layers:
        bars = PatchCollection(
            _rects(notes, seconds, height), facecolor=colour, edgecolor="white", linewidth=0.5
        )  # the white edge keeps repeated notes of one pitch apart
        ax.add_collection(bars)
    ax.legend(  # beside the axes, where it hides no notes
        handles=[Patch(facecolor=c, label=label) for _, _, c, label in layers],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    shown = np.concatenate([n[n[:, 0] < seconds] for n in (est, ref) if n is not None])
    if len(shown):  # fit the view to the notes: an 8 s clip need not sit in a 20 s frame
        ax.set_xlim(0, min(seconds, shown[:, 1].max()) + 0.1)
        ax.set_ylim(shown[:, 2].min() - 2, shown[:, 2].max() + 2)
    else:
        ax.set_xlim(0, seconds)
        ax.set_ylim(58, 74)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    fig.savefig(path, dpi=80)


def _plot_model(
    out: Path,
    model: str,
    *,
    pieces: list[Piece],
    notes: list[np.ndarray],
    rows: list[dict[str, Any]],
    refs: dict[str, np.ndarray],
    cfg: CompareConfig,
) -> list[Path]:
    chosen = [i for i, p in enumerate(pieces) if not refs or p.name in refs][: cfg.plots]
    written = []
    for i in chosen:
        piece, row = pieces[i], rows[i]
        title = f"{model} - {piece.name}"
        if row["f1"] is not None:
            title += f"   F1 {row['f1']:.3f}   F1+offset {row['f1_offset']:.3f}"
        path = out / f"pianoroll-{safe_name(model)}-{safe_name(piece.name)}.png"
        plot_pianoroll(path, notes[i], refs.get(piece.name), title, cfg.plot_seconds)
        written.append(path)
    return written


# --- the command -------------------------------------------------------------------------------


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Transcribe cfg.input with every model in cfg.models and score against
    cfg.reference if given. Returns the results (and writes them when cfg.out is set)."""
    cfg.validate_config()
    pieces = find_pieces(cfg.input)
    unpaired = pair_references(pieces, cfg.reference) if cfg.reference else []
    pieces, refs, skipped = _readable(pieces)
    # Every model is resolved before any is run, so a typo fails in seconds.
    model_paths = {m: resolve_model(m, cfg.models_root) for m in cfg.models}
    decodings = {m: cfg.decoding().resolve(model_decoding(path)) for m, path in model_paths.items()}
    out = Path(cfg.out) if cfg.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"models": {}, "per_piece": {}}
    for model, path in model_paths.items():
        log.info("transcribing %d inputs with %s (%s)", len(pieces), model, path)
        notes = transcribe_audio([p.audio for p in pieces], path, decodings[model])
        results["models"][model], results["per_piece"][model] = score_model(pieces, notes, refs)
        if out and cfg.plots:
            _plot_model(
                out,
                model,
                pieces=pieces,
                notes=notes,
                rows=results["per_piece"][model],
                refs=refs,
                cfg=cfg,
            )
    results.update(
        inputs=[str(p.audio) for p in pieces],
        reference=cfg.reference,
        decoding={m: dataclasses.asdict(d) for m, d in decodings.items()},
        unpaired=unpaired,
        skipped=skipped,
    )
    if out:
        (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
        cfgmod.save(cfg, out / "config.yaml")
    return results


def format_table(results: dict[str, Any]) -> str:
    """One row per model; '-' where a figure needs references that were not given."""

    def cell(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    names = list(results["models"])
    width = max([5, *(len(n) for n in names)])
    head = ("notes", "P", "R", "F1", "F1+off", "onset med ms", "p90 ms", "pieces")
    fmts = ("d", ".3f", ".3f", ".3f", ".3f", ".1f", ".1f", "d")
    widths = [max(len(h), 7) for h in head]
    lines = [
        f"{'model':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))
    ]
    for name in names:
        m = results["models"][name]
        cells = (cell(m[k], f) for k, f in zip(SUMMARY_KEYS, fmts, strict=True))
        lines.append(
            f"{name:<{width}}  "
            + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)
