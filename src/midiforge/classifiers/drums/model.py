"""Train the keep/remove classifier on labelled hits, with cross-validated figures.

Two model kinds: a random forest (the default: features on dB, ms and linear scales mix
freely, and no scaling is needed) and logistic regression inside a StandardScaler
pipeline (a baseline whose coefficients read as feature weights). Every figure is from
stratified k-fold cross-validation, so it comes from hits the model did not see; the
model that is returned is then fitted on all hits. Given each hit's song (`groups`),
the folds keep a song's hits together: hits of one song share a kit, a room and bleed
levels, so a model scored on its training songs' other hits reads better than it is.

`fit_params` is the one entry a Ray Tune trial calls: its parameter keys are the field
names of `FilterConfig`, and its metric names carry the `cv_` prefix the sweep reports.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from midiforge import config as cfgmod
from midiforge.classifiers.drums.features import FEATURES, FeatureConfig
from midiforge.classifiers.drums.labels import DEFAULT_TOLERANCE_S
from midiforge.config import ConfigError
from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

MODELS = ("forest", "logistic")
METRICS = ("accuracy", "precision", "recall", "f1")
MIN_DETECTIONS = 50  # below this a 5-fold estimate is noise, and so is the model


class TrainingDataError(MidiforgeError, ValueError):
    """Labelled hits that cannot train a filter (too few, or one class only)."""


@dataclass
class FilterConfig:
    model: str = "forest"  # forest | logistic
    n_estimators: int = 200  # forest: trees
    max_depth: int | None = None  # forest: None grows until min_samples_leaf stops it
    min_samples_leaf: int = 2  # forest: a leaf of one hit memorizes that hit
    class_weight: str | None = None  # None | "balanced" (weights classes by 1/frequency)
    C: float = 1.0  # logistic: inverse regularization strength
    folds: int = 5  # stratified cross-validation folds
    seed: int = 0

    def validate_config(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"model {self.model!r}: choose from {', '.join(MODELS)}")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"class_weight {self.class_weight!r}: use none or balanced")
        if self.n_estimators < 1 or self.min_samples_leaf < 1:
            raise ConfigError("n_estimators and min_samples_leaf must be >= 1")
        if self.max_depth is not None and self.max_depth < 1:
            raise ConfigError("max_depth must be >= 1 or none")
        if self.C <= 0:
            raise ConfigError("C must be > 0")
        if self.folds < 2:
            raise ConfigError("folds must be >= 2")


@dataclass
class DrumTrainConfig:
    """Everything a trained filter depends on; saved as its config.yaml."""

    filter: FilterConfig = field(default_factory=FilterConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    sample_rate: int = 22_050  # stems are resampled to this before features
    tolerance_ms: float = DEFAULT_TOLERANCE_S * 1000.0  # raw-to-edited match for labels

    def validate_config(self) -> None:
        self.filter.validate_config()
        self.features.validate_config()
        if self.sample_rate < 8000:
            raise ConfigError("sample_rate must be >= 8000")
        if self.tolerance_ms <= 0:
            raise ConfigError("tolerance_ms must be > 0")


def build_estimator(cfg: FilterConfig) -> Any:
    """An unfitted scikit-learn classifier for `cfg`."""
    if cfg.model == "forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=cfg.n_estimators,
            max_depth=cfg.max_depth,
            min_samples_leaf=cfg.min_samples_leaf,
            class_weight=cfg.class_weight,
            random_state=cfg.seed,
            n_jobs=1,  # Tune runs trials side by side; each trial gets its own CPU
        )
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=cfg.C, class_weight=cfg.class_weight, max_iter=1000)),
        ]
    )


def check_training_data(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(x) != len(y):
        raise TrainingDataError(
            f"features must be (N, {len(FEATURES)}) with one label per row, got {x.shape} "
            f"and {len(y)} labels"
        )
    if not np.isfinite(x).all():
        raise TrainingDataError("features hold NaN or infinite values")
    if len(y) < MIN_DETECTIONS:
        raise TrainingDataError(
            f"only {len(y)} labelled detections; training needs at least {MIN_DETECTIONS} "
            "(add songs, or longer ones)"
        )
    counts = np.bincount(y, minlength=2)
    if set(np.unique(y)) - {0, 1}:
        raise TrainingDataError("labels must be 0 (remove) or 1 (keep)")
    if counts.min() == 0:
        only = "keep" if counts[1] else "remove"
        raise TrainingDataError(
            f"all {len(y)} detections are labelled {only!r}: training needs both kept and "
            "removed hits (check that the edited MIDI belongs to these songs)"
        )
    if counts.min() < 2:
        raise TrainingDataError(
            f"only {counts.min()} detection labelled {'keep' if counts[1] < 2 else 'remove'}; "
            "cross-validation needs at least 2 of each"
        )
    return x, y


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    cfg: FilterConfig,
    on_fold: Callable[[int, dict[str, float]], None] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Stratified k-fold figures of the keep class: `cv_<metric>` (mean) and
    `cv_<metric>_std` per metric, plus `folds` and `grouped`. `on_fold(i, running)` is
    called after each fold with the means so far, for a Tune trial to report. With
    `groups` (one id per row, e.g. the song) and at least `cfg.folds` groups, no group
    is split between folds; with fewer, the folds are per hit and a warning says so."""
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    x, y = check_training_data(x, y)
    folds = min(cfg.folds, int(np.bincount(y).min()))
    if folds < cfg.folds:
        log.warning("%d folds asked, %d used: the rarer class has only %d hits",
                    cfg.folds, folds, folds)  # fmt: skip
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if len(groups) != len(y):
            raise TrainingDataError(f"{len(groups)} group ids for {len(y)} labelled rows")
    grouped = groups is not None and len(np.unique(groups)) >= folds
    if groups is not None and not grouped:
        log.warning("only %d songs for %d folds: folds split songs, so the figures run high",
                    len(np.unique(groups)), folds)  # fmt: skip
    kind = StratifiedGroupKFold if grouped else StratifiedKFold
    splits = list(
        kind(n_splits=folds, shuffle=True, random_state=cfg.seed).split(
            x, y, groups if grouped else None
        )
    )
    if grouped and any(len(np.unique(y[train])) < 2 for train, _ in splits):
        # One class in too few songs: some fold would train on the other class alone.
        log.warning("the rarer class sits in too few songs to keep songs whole: folds "
                    "split songs, so the figures run high")  # fmt: skip
        grouped = False
        splits = list(
            StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed).split(x, y)
        )
    rows: list[dict[str, float]] = []
    base = build_estimator(cfg)
    for i, (train, test) in enumerate(splits):
        pred = clone(base).fit(x[train], y[train]).predict(x[test])
        p, r, f, _ = precision_recall_fscore_support(
            y[test], pred, average="binary", pos_label=1, zero_division=0
        )
        rows.append({"accuracy": accuracy_score(y[test], pred), "precision": p, "recall": r,
                     "f1": f})  # fmt: skip
        if on_fold is not None:
            on_fold(i, _summary(rows))
    return {**_summary(rows), "folds": folds, "grouped": grouped}


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for m in METRICS:
        values = np.array([r[m] for r in rows], dtype=np.float64)
        out[f"cv_{m}"] = float(values.mean())
        out[f"cv_{m}_std"] = float(values.std())
    return out


def importance(estimator: Any) -> dict[str, float]:
    """Feature -> importance, largest first. Forest: impurity importances (sum 1);
    logistic: |coefficient| on standardized features (change in log-odds per standard
    deviation)."""
    if hasattr(estimator, "feature_importances_"):
        values = np.asarray(estimator.feature_importances_)
    else:
        values = np.abs(np.asarray(estimator[-1].coef_).reshape(-1))
    pairs = sorted(zip(FEATURES, values.tolist(), strict=True), key=lambda p: -p[1])
    return {k: float(v) for k, v in pairs}


def train_filter(
    x: np.ndarray, y: np.ndarray, cfg: FilterConfig, groups: np.ndarray | None = None
) -> tuple[Any, dict[str, Any]]:
    """Cross-validate (by `groups` where given), then fit on all hits. Returns (fitted
    estimator, report) with the report's `cv` figures, class counts and `importance`."""
    cfg.validate_config()
    x, y = check_training_data(x, y)
    cv = cross_validate(x, y, cfg, groups=groups)
    estimator = build_estimator(cfg).fit(x, y)
    report = {
        "model": cfg.model,
        "detections": len(y),
        "keep": int(y.sum()),
        "remove": int(len(y) - y.sum()),
        "cv": cv,
        "importance": importance(estimator),
        "config": dataclasses.asdict(cfg),
    }
    log.info("%s: cv f1 %.3f +- %.3f on %d hits", cfg.model, cv["cv_f1"], cv["cv_f1_std"],
             len(y))  # fmt: skip
    return estimator, report


def fit_params(
    x: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    folds: int = 5,
    on_fold: Callable[[int, dict[str, float]], None] | None = None,
    *,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Cross-validated figures for one hyperparameter set (a Tune trial's work). `params`
    keys are FilterConfig field names (a `folds` key there wins over the argument);
    unknown keys are refused with ConfigError. `on_fold(i, running)` gets the `cv_*`
    means over folds 0..i after each fold; pass `groups` (LabelledHits.song) to keep
    each song's hits in one fold."""
    cfg = cfgmod.from_dict(FilterConfig, {"folds": folds, **params})
    return cross_validate(x, y, cfg, on_fold, groups=groups)
