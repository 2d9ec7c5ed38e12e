"""`midiforge sweep style`: the style classifier's hyperparameters on Ray Tune with ASHA.

The renders, the split by piece and the log-mels are made once in the driver and
shared with every trial through the object store. Each trial trains a CNN with one draw
from the space, reports after every epoch (ASHA stops the trailing trials at each rung)
and checkpoints its best-validation weights. The best trial's weights are exported to
ONNX (with the parity check), evaluated on the held-out test pieces and registered,
with the sweep's summary beside them in metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midiforge import config as cfgmod
from midiforge.classifiers.style.run import SWEEP_FILE, Prepared, StyleConfig
from midiforge.classifiers.sweep import SweepSettings, check_space

WEIGHTS = "weights.pt"


def _default_space() -> dict[str, Any]:
    return {
        "lr": {"loguniform": [3e-4, 3e-3]},
        "width": {"choice": [16, 32]},
        "dropout": {"uniform": [0.1, 0.5]},
        "weight_decay": {"loguniform": [1e-4, 1e-1]},
    }


@dataclass
class StyleSweepConfig:
    style: StyleConfig = field(default_factory=StyleConfig)  # data, base training, out name
    sweep: SweepSettings = field(default_factory=lambda: SweepSettings(metric="val_best_accuracy"))
    # Keys of StyleTrainConfig; a plain value fixes a key for every trial.
    space: dict[str, Any] = field(default_factory=_default_space)

    def validate_config(self) -> None:
        from midiforge.classifiers.style.train import StyleTrainConfig

        check_space(self.space, StyleTrainConfig, "epochs", "style.train.epochs")


def trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One Tune trial: train with `config` over the base training config, report every
    epoch, checkpoint whenever validation improves."""
    import torch
    from ray import tune

    from midiforge.classifiers.style.train import StyleTrainConfig, build_data, train_style

    prepared: Prepared = data["prepared"]
    # One thread per trial: trials run side by side, each on its own CPU.
    cfg = cfgmod.from_dict(StyleTrainConfig, {**data["train"], **config, "threads": 1})
    clips = prepared.data
    if clips.train.x.shape[2] != cfg.n_mels:  # the space sweeps the mel resolution
        clips = build_data(prepared.splits, prepared.labels, cfg.mel_config())
    best = -1.0

    def report(epoch: int, metrics: dict[str, Any], model) -> None:
        nonlocal best
        improved = metrics["val_accuracy"] > best
        best = max(best, metrics["val_accuracy"])
        out = {k: v for k, v in metrics.items() if k.startswith(("val_", "train_"))}
        out["val_best_accuracy"] = best
        if not improved:
            tune.report(out)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(model.state_dict(), Path(d) / WEIGHTS)
            tune.report(out, checkpoint=tune.Checkpoint.from_directory(d))

    train_style(cfg, clips, report=report)


def run(cfg: StyleSweepConfig) -> dict[str, Any]:
    """Sweep, then export, evaluate and register the best trial's model."""
    import torch

    from midiforge.classifiers.style.model import build_model
    from midiforge.classifiers.style.run import export_trained, prepare
    from midiforge.classifiers.style.train import build_data
    from midiforge.classifiers.sweep import run_sweep

    cfg.validate_config()
    style = cfg.style
    settings = dataclasses.replace(cfg.sweep, max_t=style.train.epochs)
    settings.grace_period = min(settings.grace_period, settings.max_t)
    prepared = prepare(style)
    t0 = time.perf_counter()
    data = {"prepared": prepared, "train": cfgmod.to_dict(style.train)}
    summary, best = run_sweep(f"style-{Path(style.out).name}", trial, data, cfg.space, settings)
    sweep_s = round(time.perf_counter() - t0, 1)
    train = cfgmod.from_dict(type(style.train), {**data["train"], **summary["best"]["config"]})
    model = build_model(train.cnn_config(len(prepared.labels)))
    # The trial checkpoints only when validation improves: its last checkpoint is its best.
    with best.checkpoint.as_directory() as d:
        model.load_state_dict(torch.load(Path(d) / WEIGHTS, weights_only=True))
    model.eval()
    if train.n_mels != style.train.n_mels:
        prepared.data = build_data(prepared.splits, prepared.labels, train.mel_config())
    columns = ("training_iteration", "train_loss", "val_loss", "val_accuracy")
    history = [
        {"epoch": int(row["training_iteration"]), **{k: float(row[k]) for k in columns[1:]}}
        for row in best.metrics_dataframe[list(columns)].to_dict("records")
    ]
    summary["seconds"] = sweep_s
    style = dataclasses.replace(style, train=train)
    # Written before the export pushes the folder, so the registry holds it too.
    folder = style.model_folder()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SWEEP_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return export_trained(
        style, prepared, model, history, train_s=sweep_s, extra={"sweep": summary}
    )
