"""`midiforge style train` and `style evaluate` as library calls: render (or reuse) the
data, split by piece, train, export, evaluate the export on the test pieces, push.

Renders are cached under `work_dir/renders/HASH` (the hash of what decides their
content), so a second training run or a sweep trial with other hyperparameters does
not render again. The model folder records the run config and the piece split
(`split.json`), so `style evaluate` can rebuild exactly the held-out pieces later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midiforge import config as cfgmod
from midiforge import corpus
from midiforge.classifiers.style.classifier import KIND, StyleClassifier, resolve_model_dir
from midiforge.classifiers.style.data import (
    SPLITS,
    Item,
    StyleDataError,
    load_recording,
    render_params,
    render_style_set,
    scan_items,
    soundfont_pool,
    split_by_piece,
)
from midiforge.classifiers.style.ensemble import HAND_FILE
from midiforge.classifiers.style.train import StyleTrainConfig

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
SWEEP_FILE = "sweep.json"  # a sweep's record beside its model; `style evaluate --out` copies it


@dataclass
class StyleConfig:
    out: str = ""  # registry name; a path with a '/' writes that folder and pushes nothing
    styles: list[str] = field(default_factory=lambda: list(corpus.STYLES))  # rendered
    user_styles: list[str] = field(default_factory=list)  # folders of STYLE_NAME/*.wav
    pieces_per_style: int = 40
    seconds: float = 30.0  # of each piece
    variants: int = 3  # renders per piece, each another instrument and soundfont
    val_fraction: float = 0.15  # of pieces, never of clips
    test_fraction: float = 0.15
    data_dir: str | None = None  # renders; None = {work_dir}/renders/{hash of their params}
    work_dir: str = "out/style"
    seed: int = 0  # renders and split; train.seed seeds the network
    models_root: str | None = None
    train: StyleTrainConfig = field(default_factory=StyleTrainConfig)

    def validate_config(self) -> None:
        unknown = [s for s in self.styles if s not in corpus.STYLES]
        if unknown:
            raise cfgmod.ConfigError(
                f"styles {unknown}: the corpus renders {', '.join(corpus.STYLES)}; "
                "give other styles as user_styles folders"
            )
        if not self.styles and not self.user_styles:
            raise cfgmod.ConfigError("give corpus styles or user_styles folders")
        if self.pieces_per_style < 1 or self.variants < 1 or self.seconds <= 0:
            raise cfgmod.ConfigError("pieces_per_style and variants >= 1, seconds > 0")
        val, test = self.val_fraction, self.test_fraction
        if val <= 0 or test < 0 or val + test >= 1:
            raise cfgmod.ConfigError("val_fraction > 0, test_fraction >= 0, and their sum < 1")
        if self.out and "/" not in self.out:  # pushed after training: checked before
            from midiforge.registry import validate_new_name

            validate_new_name(self.out)

    def fractions(self) -> tuple[float, float, float]:
        return (1 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)

    def model_folder(self) -> Path:
        if not self.out:
            raise cfgmod.ConfigError("out: give a registry name or a folder path (--out)")
        if "/" in self.out:
            return Path(self.out)
        return Path(self.work_dir) / "models" / self.out


# --- data ------------------------------------------------------------------------------


def _params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def prepare_items(cfg: StyleConfig) -> tuple[list[Item], dict[str, Any]]:
    """Every labelled recording (corpus renders, then user folders) and a data record."""
    items: list[Item] = []
    record: dict[str, Any] = {"render_seconds": 0.0}
    if cfg.styles:
        params = render_params(
            cfg.styles, pieces_per_style=cfg.pieces_per_style, seconds=cfg.seconds,
            seed=cfg.seed, variants=cfg.variants, pool=soundfont_pool(),
        )  # fmt: skip
        data_dir = Path(cfg.data_dir or Path(cfg.work_dir) / "renders" / _params_hash(params))
        manifest = data_dir / "manifest.json"
        recorded = json.loads(manifest.read_text()).get("params") if manifest.is_file() else None
        cached = recorded == params
        if recorded is not None and not cached:
            raise StyleDataError(
                f"{data_dir} holds renders of other settings (see {manifest.name}); give an "
                "empty or new folder, so old renders do not mix into these"
            )
        if not cached:
            t0 = time.perf_counter()
            render_style_set(
                cfg.styles, cfg.pieces_per_style, cfg.seconds, data_dir, cfg.seed, cfg.variants
            )
            record["render_seconds"] = round(time.perf_counter() - t0, 1)
        items += scan_items(data_dir, cfg.styles)
        record.update(data_dir=str(data_dir), data_hash=_params_hash(params), cached=cached)
    for folder in cfg.user_styles:
        items += scan_items(folder)
    return items, record


def split_record(splits: dict[str, list[Item]]) -> dict[str, list[str]]:
    return {s: sorted({f"{i.style}/{i.piece}" for i in splits[s]}) for s in SPLITS}


# --- train ------------------------------------------------------------------------------


def _hand_model(cfg: StyleConfig, train_items: list[Item], labels: list[str]):
    import numpy as np

    from midiforge.classifiers.style.ensemble import fit_hand_model
    from midiforge.classifiers.style.features import handcrafted_features

    sr = cfg.train.mel_config().sample_rate
    feats = np.stack([handcrafted_features(load_recording(i.path, sr), sr) for i in train_items])
    y = np.array([labels.index(i.style) for i in train_items])
    return fit_hand_model(feats, y, labels)


@dataclass
class Prepared:
    """What every training of one StyleConfig shares: the renders, the split by piece
    and the clips' log-mels (a sweep computes them once for all its trials)."""

    labels: list[str]
    splits: dict[str, list[Item]]
    data: Any  # train.StyleData
    record: dict[str, Any]


def prepare(cfg: StyleConfig) -> Prepared:
    from midiforge.classifiers.style.train import build_data

    items, record = prepare_items(cfg)
    labels = sorted({i.style for i in items})
    if len(labels) < 2:
        raise StyleDataError(f"a style classifier needs 2 or more styles, found {labels}")
    splits = split_by_piece(items, cfg.fractions(), cfg.seed)
    t0 = time.perf_counter()
    data = build_data(splits, labels, cfg.train.mel_config())
    record["feature_seconds"] = round(time.perf_counter() - t0, 1)
    return Prepared(labels, splits, data, record)


def train_and_export(cfg: StyleConfig) -> dict[str, Any]:
    """The whole `style train`: returns the summary that metrics.json also holds."""
    from midiforge.classifiers.style.train import train_style

    prepared = prepare(cfg)
    t0 = time.perf_counter()
    model, history = train_style(cfg.train, prepared.data)
    return export_trained(cfg, prepared, model, history, train_s=round(time.perf_counter() - t0, 1))


def export_trained(
    cfg: StyleConfig,
    prepared: Prepared,
    model,
    history: list[dict[str, Any]],
    *,
    train_s: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a trained CNN into its model folder, evaluate the export on the test pieces,
    and push it (unless cfg.out is a path). `extra` joins the summary (a sweep's)."""
    from midiforge.classifiers.style.evaluate import evaluate_items
    from midiforge.classifiers.style.model import parameter_count
    from midiforge.classifiers.style.onnx_export import save_model_folder, write_metrics

    folder = cfg.model_folder()
    labels, splits, data, record = prepared.labels, prepared.splits, prepared.data, prepared.record
    hand = _hand_model(cfg, splits["train"], labels) if cfg.train.w_hand > 0 else None
    best = max(history, key=lambda m: (m["val_accuracy"], -m["val_loss"]))
    summary: dict[str, Any] = {
        "labels": labels,
        "parameters": parameter_count(model),
        "clips": {"train": len(data.train), "val": len(data.val)},
        "recordings": {s: len(splits[s]) for s in SPLITS},
        "pieces": {s: len(v) for s, v in split_record(splits).items()},
        "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "train_seconds": train_s,
        **record,
        "history": history,
        **(extra or {}),
    }
    data_cfg = {k: v for k, v in cfgmod.to_dict(cfg).items() if k != "train"}
    data_cfg["data_dir"] = record.get("data_dir", cfg.data_dir)
    # A folder used before keeps its files: one this export does not write again (an
    # earlier sweep's record, an ensemble's hand model) would travel with the new model.
    if not (extra and "sweep" in extra):
        (folder / SWEEP_FILE).unlink(missing_ok=True)
    if hand is None:
        (folder / HAND_FILE).unlink(missing_ok=True)
    save_model_folder(
        folder, model, labels=labels, mel=cfg.train.mel_config(), train=cfg.train,
        metrics=summary, data=data_cfg, hand=hand,
    )  # fmt: skip
    (folder / SPLIT_FILE).write_text(json.dumps(split_record(splits), indent=2))
    if splits["test"]:
        results = evaluate_items(
            StyleClassifier.load(folder),
            splits["test"],
            Path(cfg.work_dir) / "evaluations" / folder.name,
        )
        summary["test"] = results
        write_metrics(folder, summary)
    if "/" not in cfg.out:
        _push(cfg, folder, summary, record.get("data_hash"))
    summary["folder"] = str(folder)
    return summary


def _push(cfg: StyleConfig, folder: Path, summary: dict[str, Any], data_hash: str | None) -> None:
    from midiforge.registry import Registry

    test = summary.get("test", {})
    metrics = {
        "val_accuracy": summary["val_accuracy"],
        "test_accuracy": test.get("accuracy"),
        "test_piece_accuracy": test.get("piece_accuracy"),
        "test_pieces": test.get("pieces"),
        "per_class_f1": test.get("per_class_f1"),
    }
    Registry(cfg.models_root).push(
        folder, cfg.out, kind=KIND, metrics=metrics, training_data_hash=data_hash
    )


# --- evaluate ---------------------------------------------------------------------------


def held_out_items(folder: Path) -> list[Item]:
    """The model's own test pieces, rebuilt from its config (rendered again if the
    renders are gone: the seed makes them identical)."""
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    split_path = folder / SPLIT_FILE
    if not config.get("data") or not split_path.is_file():
        raise StyleDataError(f"{folder} does not record its data and split; give --data DIR")
    cfg = cfgmod.from_dict(StyleConfig, {**config["data"], "train": config.get("train", {})})
    test = set(json.loads(split_path.read_text())["test"])
    if not test:
        raise StyleDataError(f"{folder} was trained without test pieces; give --data DIR")
    items, _ = prepare_items(cfg)
    return [i for i in items if f"{i.style}/{i.piece}" in test]


def evaluate_model(
    model: str,
    *,
    data: str | None = None,
    out: str | None = None,
    models_root: str | None = None,
) -> dict[str, Any]:
    """Score `model` (folder or registry name) on `data` (every recording under
    DIR/STYLE/) or, without it, on the model's own held-out pieces."""
    from midiforge.classifiers.style.evaluate import evaluate_items

    folder = resolve_model_dir(model, models_root)
    classifier = StyleClassifier.load(folder)
    items = scan_items(data) if data else held_out_items(folder)
    results = evaluate_items(classifier, items, out)
    if out and (folder / SWEEP_FILE).is_file():  # results travel with the sweep behind them
        shutil.copyfile(folder / SWEEP_FILE, Path(out) / SWEEP_FILE)
    return results
