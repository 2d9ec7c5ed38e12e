"""The three drum-filter commands as library calls: extract, train (and register),
evaluate.

Training and evaluation read songs as `data.py` pairs them (audio/, raw/, edited/).
Evaluation scores keep decisions on the detections, labelled by matching to the
edited MIDI (`labels.py`): precision is the share of kept hits the producer kept, recall
the share of the producer's kept detections that the filter kept. Edited hits that
detection never proposed are outside any filter's reach; `detection_recall` reports them
apart.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from midiforge.classifiers.drums import hitmidi, labels
from midiforge.classifiers.drums.data import (
    LabelledHits,
    SongFolderError,
    labelled_hits,
    pair_songs,
    song_table,
    summary,
    write_json,
)
from midiforge.classifiers.drums.detect import (
    DrumDefaults,
    detect_hits,
    fallback_keep,
    load_defaults,
    load_stem,
)
from midiforge.classifiers.drums.features import FEATURES, FeatureConfig, hit_features
from midiforge.classifiers.drums.kit import check_stem
from midiforge.classifiers.drums.model import DrumTrainConfig, TrainingDataError, train_filter
from midiforge.classifiers.drums.onnx_export import DrumFilter, save_model
from midiforge.classifiers.drums.plots import plot_confusion, plot_importance

KEEP_AT = 0.5  # a model keeps a hit at this keep probability or above
KIND = "drum-filter"  # the registry kind of a trained filter
_AMP = FEATURES.index("Amp")


def _defaults(defaults: DrumDefaults | str | Path | None) -> DrumDefaults:
    return defaults if isinstance(defaults, DrumDefaults) else load_defaults(defaults)


def resolve_model(name: str | Path, models_root: str | None = None) -> Path:
    """A model folder: `name` itself if it is a folder, else the registry model of that
    name (which must be of kind drum-filter)."""
    if Path(name).is_dir():
        return Path(name)
    from midiforge.registry import Registry

    registry = Registry(models_root)
    kind = registry.manifest(str(name)).kind
    if kind != KIND:
        raise SongFolderError(f"model {name!r} is a {kind}, not a {KIND}")
    return registry.fetch(str(name))


# --- extract -------------------------------------------------------------------------------


def extract(
    stem_wav: str | Path,
    stem: str,
    out_mid: str | Path,
    model_folder: str | Path | None = None,
    defaults: DrumDefaults | str | Path | None = None,
) -> dict[str, Any]:
    """Detect hits on a stem, keep them by the model (keep probability >= 0.5) or, with
    no model, by the stem's fallback thresholds, and write one drum note per kept hit."""
    check_stem(stem)
    d = _defaults(defaults)
    flt = DrumFilter.load(model_folder) if model_folder else None
    if flt is not None and flt.stem != stem:
        raise SongFolderError(f"model {model_folder} filters {flt.stem} hits, not {stem}")
    sr = flt.sample_rate if flt else d.sample_rate
    audio = load_stem(stem_wav, sr)
    onsets = detect_hits(audio, sr, d.for_stem(stem), d.hop_length, d.n_fft)
    feats = hit_features(audio, sr, onsets, stem, flt.feature_config if flt else FeatureConfig())
    if flt is not None:
        keep = flt.keep_probability(feats) >= KEEP_AT
    else:
        keep = fallback_keep(feats, d.for_stem(stem))
    hitmidi.write_hits(out_mid, onsets[keep], hitmidi.amp_to_velocity(feats[keep, _AMP]), stem)
    return {
        "out": str(out_mid),
        "stem": stem,
        "duration_s": len(audio) / sr,
        "detected": len(onsets),
        "kept": int(keep.sum()),
        "decided_by": "model" if flt else "fallback",
        "model": str(model_folder) if model_folder else None,
    }


# --- train ---------------------------------------------------------------------------------


def train(  # noqa: PLR0917 - the command's four folders and its output, in its order
    stem: str,
    raw_dir: str | Path,
    edited_dir: str | Path,
    audio_dir: str | Path,
    output_folder: str | Path,
    cfg: DrumTrainConfig,
    *,
    hits: LabelledHits | None = None,
) -> dict[str, Any]:
    """Label every raw detection, train and cross-validate (folds by song), and write the
    model folder (model.onnx, config.yaml, metrics.json, features.json, importance.png,
    report.json). The report holds what `register` needs: `metrics` and
    `training_data_hash`. Raises TrainingDataError under 50 detections or with one class.
    `hits`: these folders already labelled with cfg's features (a sweep's driver has)."""
    check_stem(stem)
    cfg.validate_config()
    if hits is None:
        hits = labelled_hits(stem, raw_dir, edited_dir, audio_dir, cfg)
    estimator, result = train_filter(hits.x, hits.y, cfg.filter, groups=hits.song)
    out = Path(output_folder)
    metrics = {**result["cv"], **summary(hits), "stem": stem, "model": cfg.filter.model}
    save_model(out, estimator, stem, cfg, metrics=metrics, x_check=hits.x)
    plot_importance(result["importance"], out / "importance.png",
                    f"{stem} filter ({cfg.filter.model}): feature importance")  # fmt: skip
    report = {
        "stem": stem,
        "folder": str(out),
        "songs": [s["song"] for s in hits.songs],
        "unpaired": hits.unpaired,
        "metrics": metrics,
        "cv": result["cv"],
        "importance": result["importance"],
        "training_data_hash": hits.data_hash,
    }
    write_json(out / "report.json", report)
    return report


def register(
    folder: str | Path, name: str, report: dict[str, Any], models_root: str | None = None
) -> Any:
    """Push a trained filter folder to the registry as kind drum-filter, with its CV
    metrics and training-data hash; returns the registry Manifest."""
    from midiforge.registry import Registry

    return Registry(models_root).push(
        folder,
        name,
        kind=KIND,
        training_data_hash=report["training_data_hash"],
        metrics=report["metrics"],
    )


# --- evaluate ------------------------------------------------------------------------------


def evaluate(
    model_folder: str | Path | None,
    test_dir: str | Path,
    stem: str | None = None,
    *,
    out: str | Path | None = None,
    defaults: DrumDefaults | str | Path | None = None,
    tolerance_ms: float = labels.DEFAULT_TOLERANCE_S * 1000.0,
) -> dict[str, Any]:
    """Score the model's and the fallback's keep decisions on test_dir/{audio,raw,edited}.
    `stem` may be left out when a model is given (the model knows its stem). With `out`,
    writes out/results.json (this dict) and out/confusion.png. `model` is None when no
    model is given; `f1_gain` is the model's F1 less the fallback's."""
    flt = DrumFilter.load(model_folder) if model_folder else None
    if stem is None and flt is None:
        raise SongFolderError("give a stem (--stem) or a model")
    stem = check_stem(stem or flt.stem)
    if flt is not None and flt.stem != stem:
        raise SongFolderError(f"model {model_folder} filters {flt.stem} hits, not {stem}")
    d = _defaults(defaults)
    root = Path(test_dir)
    songs, unpaired = pair_songs(root / "raw", root / "edited", root / "audio")
    if not songs:
        raise SongFolderError(f"{root} holds no song with audio/, raw/ and edited/ files")
    tol = tolerance_ms / 1000.0
    deciders = ["model", "fallback"] if flt else ["fallback"]
    counts = {k: Counter() for k in deciders}
    per_song, hits, found = [], 0, 0
    for s in songs:
        feats, y, raw, edited = song_table(s, stem, FeatureConfig(), d.sample_rate, tol)
        keep = {"fallback": fallback_keep(feats, d.for_stem(stem))}
        if flt is not None:
            mf = feats  # the model's own feature settings, where they differ
            if flt.feature_config != FeatureConfig() or flt.sample_rate != d.sample_rate:
                mf = song_table(s, stem, flt.feature_config, flt.sample_rate, tol)[0]
            keep["model"] = flt.keep_probability(mf) >= KEEP_AT
        row: dict[str, Any] = {"song": s.name, "detections": len(raw), "edited": len(edited)}
        for k in deciders:
            c = labels.confusion(keep[k], y)
            counts[k].update(c)
            row[k] = labels.decision_metrics(c)
        per_song.append(row)
        hits += len(edited)
        found += len(labels.match_hits(raw, edited, tol))
    confusion = {k: {m: int(counts[k][m]) for m in ("tp", "fp", "fn", "tn")} for k in deciders}
    result: dict[str, Any] = {
        "stem": stem,
        "model": labels.decision_metrics(confusion["model"]) if flt else None,
        "fallback": labels.decision_metrics(confusion["fallback"]),
        "f1_gain": None,
        "songs": len(songs),
        "detections": sum(r["detections"] for r in per_song),
        "edited_hits": hits,
        "detection_recall": found / hits if hits else 0.0,
        "confusion": confusion,
        "per_song": per_song,
        "unpaired": unpaired,
        "model_folder": str(model_folder) if model_folder else None,
    }
    if flt is not None:
        result["f1_gain"] = result["model"]["f1"] - result["fallback"]["f1"]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", result)
        plot_confusion(confusion, out / "confusion.png", f"{stem}: {len(songs)} test songs")
        sweep = Path(model_folder) / "sweep.json" if model_folder else None
        if sweep is not None and sweep.is_file():  # results travel with the sweep behind them
            shutil.copyfile(sweep, out / "sweep.json")
    return result


__all__ = ["KEEP_AT", "KIND", "SongFolderError", "TrainingDataError", "evaluate", "extract",
           "register", "resolve_model", "train"]  # fmt: skip
