"""`midiforge sweep drums`: the drum-hit filter's hyperparameters on Ray Tune with ASHA.

The driver labels every detection once (the user's folders, or synthetic songs rendered
for the stem) and shares the feature table with every trial through the object store.
A trial cross-validates one draw from the space with song folds and reports after each
fold, so ASHA can stop a trial whose first folds trail the others. The best draw is
then trained on all hits (`workflow.train`: ONNX export with the parity check, feature
importance), registered with the sweep's summary, and scored against the threshold
fallback on held-out songs when there are any.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midiforge import config as cfgmod
from midiforge.classifiers.drums.model import DrumTrainConfig, FilterConfig
from midiforge.classifiers.drums.synth import RenderConfig
from midiforge.classifiers.sweep import SweepSettings, check_space

SWEEP_FILE = "sweep.json"  # beside the model; `drums evaluate --out` copies it


def _default_space() -> dict[str, Any]:
    return {
        "n_estimators": {"choice": [100, 200, 400]},
        "max_depth": {"choice": [None, 6, 12]},
        "min_samples_leaf": {"choice": [1, 2, 4, 8]},
        "class_weight": {"choice": [None, "balanced"]},
    }


@dataclass
class DrumSweepTarget:
    stem: str = "cymbals"
    out: str = ""  # registry name of the best model
    models_root: str | None = None
    work_dir: str = "out/drums"  # renders, the model folder, evaluations
    # The user's data; without it, `songs` synthetic songs are rendered for the stem.
    raw_dir: str | None = None
    edited_dir: str | None = None
    audio_dir: str | None = None
    songs: int = 16
    seconds: float = 20.0
    seed: int = 1
    # Held-out songs (audio/ raw/ edited/) for the final score; without test_dir,
    # `test_songs` are rendered with `test_seed` (0 = no held-out score).
    test_dir: str | None = None
    test_songs: int = 6
    test_seed: int = 2
    train: DrumTrainConfig = field(default_factory=DrumTrainConfig)

    def validate_config(self) -> None:
        folders = [self.raw_dir, self.edited_dir, self.audio_dir]
        if any(folders) and not all(folders):
            raise cfgmod.ConfigError("give raw_dir, edited_dir and audio_dir together")
        if self.seed == self.test_seed and not any(folders) and self.test_songs:
            raise cfgmod.ConfigError("seed and test_seed must differ: same seed, same songs")
        if self.out:  # pushed after the sweep: checked before it
            from midiforge.registry import validate_new_name

            validate_new_name(self.out)


@dataclass
class DrumSweepConfig:
    drums: DrumSweepTarget = field(default_factory=DrumSweepTarget)
    sweep: SweepSettings = field(default_factory=lambda: SweepSettings(metric="cv_f1"))
    # Keys of FilterConfig; a plain value fixes a key for every trial.
    space: dict[str, Any] = field(default_factory=_default_space)

    def validate_config(self) -> None:
        check_space(self.space, FilterConfig, "folds", "drums.train.filter.folds")


def trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One Tune trial: song-fold cross-validation of one draw, a report per fold."""
    from ray import tune

    from midiforge.classifiers.drums.model import fit_params

    hits = data["hits"]
    fit_params(
        hits.x, hits.y, {**data["filter"], **config},
        on_fold=lambda _i, running: tune.report(dict(running)), groups=hits.song,
    )  # fmt: skip


def _training_hits(t: DrumSweepTarget):
    """(labelled hits, (raw, edited, audio) folders): the user's, or rendered songs."""
    from midiforge.classifiers.drums.data import labelled_hits, rendered_hits

    if t.raw_dir:
        folders = (Path(t.raw_dir), Path(t.edited_dir), Path(t.audio_dir))
        return labelled_hits(t.stem, *folders, t.train), folders
    songs = Path(t.work_dir) / "songs" / f"train-{t.stem}-seed{t.seed}"
    hits = rendered_hits(RenderConfig(t.stem, t.songs, t.seconds, t.seed), songs, t.train)
    return hits, (songs / "raw", songs / "edited", songs / "audio")


def _test_dir(t: DrumSweepTarget) -> Path | None:
    from midiforge.classifiers.drums.data import ensure_rendered

    if t.test_dir:
        return Path(t.test_dir)
    if not t.test_songs:
        return None
    songs = Path(t.work_dir) / "songs" / f"test-{t.stem}-seed{t.test_seed}"
    return ensure_rendered(RenderConfig(t.stem, t.test_songs, t.seconds, t.test_seed), songs)


def run(cfg: DrumSweepConfig) -> dict[str, Any]:
    """Sweep; train, export and register the best draw; score it on held-out songs."""
    from midiforge.classifiers.drums import workflow
    from midiforge.classifiers.sweep import run_sweep

    cfg.validate_config()
    t = cfg.drums
    t.validate_config()
    name = t.out or f"drums-{t.stem}"
    hits, (raw, edited, audio) = _training_hits(t)
    base = cfgmod.to_dict(t.train.filter)
    settings = dataclasses.replace(cfg.sweep, max_t=t.train.filter.folds)
    settings.grace_period = min(settings.grace_period, settings.max_t)
    t0 = time.perf_counter()
    summary, _ = run_sweep(
        f"drums-{name}", trial, {"hits": hits, "filter": base}, cfg.space, settings
    )
    sweep_s = round(time.perf_counter() - t0, 1)
    best = cfgmod.from_dict(FilterConfig, {**base, **summary["best"]["config"]})
    train = dataclasses.replace(t.train, filter=best)
    folder = Path(t.work_dir) / "models" / name
    report = workflow.train(t.stem, raw, edited, audio, folder, train, hits=hits)
    summary["seconds"] = sweep_s
    (folder / SWEEP_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report["metrics"]["sweep"] = {
        "metric": summary["metric"],
        "best_config": summary["best"]["config"],
        "trials": len(summary["trials"]),
        "stopped_early": summary["stopped_early"],
    }
    workflow.register(folder, name, report, t.models_root)
    test = _test_dir(t)
    held_out = None
    if test is not None:
        held_out = workflow.evaluate(
            folder, test, t.stem, out=Path(t.work_dir) / "evaluations" / name
        )
    return {"sweep": summary, "folder": str(folder), "report": report, "held_out": held_out}
