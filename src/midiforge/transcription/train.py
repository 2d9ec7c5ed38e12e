"""`midiforge train run`: fine-tune a basic-pitch-shaped transcriber on Ray Train.

Reads a `train prepare` folder, holds out whole pieces for validation (renders of one
piece in several timbres, stems `PIECE__v0`, `PIECE__v1`, ..., count as one piece and
are never split), runs transcription.train_loop on a TorchTrainer, exports the best
weights to ONNX shaped like the stock model, scores parent and child on the validation
pieces' full recordings (calibrating the new model's decoding thresholds there, saved as
decoding.yaml), and registers the model with its metrics. Re-running the same
command after a kill resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from midiforge import config as cfgmod
from midiforge import raytrain
from midiforge.errors import MidiforgeError
from midiforge.transcription.train_config import TrainRunConfig

log = logging.getLogger(__name__)
VARIANT_SEP = "__"


class TrainDataError(MidiforgeError, ValueError):
    """The prepared folder cannot make a training run (too few pieces, no windows)."""


def piece_group(stem: str) -> str:
    """Renders of one piece share the part of the stem before `__`."""
    return stem.split(VARIANT_SEP, 1)[0]


def split_pieces(stems: list[str], cfg: TrainRunConfig) -> tuple[list[str], list[str]]:
    """(train stems, validation stems), split by piece group, seeded."""
    groups = sorted({piece_group(s) for s in stems})
    if cfg.val_pieces:
        val_groups = {piece_group(p) for p in cfg.val_pieces}
        unknown = val_groups - set(groups)
        if unknown:
            raise TrainDataError(f"val_pieces not in the dataset: {sorted(unknown)}")
    else:
        if len(groups) < 2:
            raise TrainDataError(
                f"{cfg.dataset} holds {len(groups)} piece(s); training needs at least 2 "
                "(one is held out for validation)"
            )
        shuffled = list(groups)
        random.Random(cfg.seed).shuffle(shuffled)
        n_val = min(len(groups) - 1, max(1, round(cfg.val_fraction * len(groups))))
        val_groups = set(shuffled[:n_val])
    val = sorted(s for s in stems if piece_group(s) in val_groups)
    train = sorted(s for s in stems if piece_group(s) not in val_groups)
    return train, val


def load_base(base: str, models_root: str | None = None):
    """A BasicPitch to start from: stock, a registry name, a model folder, weights.pt or a
    stock-shaped .onnx file."""
    from midiforge import registry
    from midiforge.transcription.export import WEIGHTS, load_weights
    from midiforge.transcription.onnx_weights import from_onnx

    if base == registry.STOCK:
        return from_onnx(registry.stock_model_path())
    path = Path(base)
    if path.is_file():
        return load_weights(path) if path.suffix == ".pt" else from_onnx(path)
    folder = path if path.is_dir() else registry.Registry(models_root).fetch(base)
    if (folder / WEIGHTS).is_file():
        return load_weights(folder / WEIGHTS)
    return from_onnx(folder / "model.onnx")


def _datasets(dataset: str, train: list[str], val: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from midiforge.transcription.prepare import windows_file

    # The pieces' files by name: reading the folder would skip a piece whose name starts
    # with "_" or "." (Ray Data takes those for metadata).
    folder = Path(dataset) / "windows"
    windows = ray.data.read_parquet([str(windows_file(folder, s)) for s in sorted({*train, *val})])

    def keep(stems: list[str]):
        values = pa.array(stems)
        return lambda t: t.filter(pc.is_in(t["piece"], value_set=values))

    out = {}
    for name, stems in (("train", train), ("val", val)):
        # Materialized once: every epoch re-reads the object store, not Parquet.
        out[name] = windows.map_batches(keep(stems), batch_format="pyarrow").materialize()
    return out


def _manifest_hash(dataset: str) -> str:
    """The prepared dataset's identity: the sha256 of its manifest.json."""
    return hashlib.sha256((Path(dataset) / "manifest.json").read_bytes()).hexdigest()


def _init_payload(model) -> dict[str, Any]:
    return {
        "front": dataclasses.asdict(model.cqt.constants),
        "state": {k: v.detach().numpy().copy() for k, v in model.head_state().items()},
    }


def run(cfg: TrainRunConfig) -> dict[str, Any]:
    """Train, export, evaluate, register; returns the registered metrics."""
    from midiforge import registry
    from midiforge.transcription import prepare
    from midiforge.transcription.export import export_onnx, save_weights
    from midiforge.transcription.torch_model import BasicPitch

    if not cfg.dataset or not cfg.output:
        raise TrainDataError("train run needs --dataset and --output")
    manifest = prepare.load_manifest(cfg.dataset)
    stems = [p["piece"] for p in manifest["pieces"]]
    train, val = split_pieces(stems, cfg)
    _, audio, midi = _val_files(manifest, val)
    missing = [str(p) for p in (*audio, *midi) if not p.is_file()]
    if missing:  # they are scored after training: found missing now, not then
        raise TrainDataError(
            f"{len(missing)} validation file(s) of {cfg.dataset} are gone since prepare "
            f"(moved, or a relative folder read from elsewhere): {', '.join(missing[:3])}"
        )
    base = load_base(cfg.base_model, cfg.models_root)
    raytrain.connect()
    datasets = _datasets(cfg.dataset, train, val)
    n_train, n_val = datasets["train"].count(), datasets["val"].count()
    sched, res = cfg.schedule, cfg.resources
    if n_train < sched.batch_size * res.num_workers or n_val == 0:
        raise TrainDataError(
            f"{n_train} training / {n_val} validation windows: too few for batch size "
            f"{sched.batch_size} x {res.num_workers} worker(s)"
        )
    per_epoch = max(1, n_train // (sched.batch_size * res.num_workers))
    total = per_epoch * sched.epochs
    total = min(total, sched.max_steps) if sched.max_steps else total
    name = f"transcriber-{cfg.output}"
    loop_cfg = {
        "init": _init_payload(base),
        "trainable": list(cfg.trainable),
        "schedule": dataclasses.asdict(sched),
        "loss": dataclasses.asdict(cfg.loss),
        "augment": dataclasses.asdict(cfg.augment),
        "total_steps": total,
        "steps_per_epoch": per_epoch,
        "seed": cfg.seed,
        "threads": raytrain.threads(res),
        "tensorboard": raytrain.tensorboard_dir(cfg.storage, name),
    }
    trainable = sum(
        p.numel() for n, p in base.named_parameters() if n.split(".")[0] in cfg.trainable
    )
    log.info(
        "fine-tuning %s from %s: %d train windows (%d pieces), %d val windows (%d pieces), "
        "%d steps, %d trainable weights", cfg.output, cfg.base_model, n_train,
        len({piece_group(s) for s in train}), n_val, len({piece_group(s) for s in val}),
        total, trainable,
    )  # fmt: skip
    data_hash = _manifest_hash(cfg.dataset)
    ident = raytrain.run_identity(
        {k: v for k, v in loop_cfg.items() if k != "init"},  # the weights: named below
        base_model=cfg.base_model, dataset=data_hash,
        val_fraction=cfg.val_fraction, val_pieces=cfg.val_pieces,
    )  # fmt: skip
    result = raytrain.fit(name, _loop, loop_cfg, datasets, res, cfg.storage, ident)
    model = BasicPitch(base.cqt.constants)
    model.load_state_dict(raytrain.best_state(result))
    folder = Path(cfg.storage) / f"{cfg.output}-model"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    export_onnx(model, folder / "model.onnx")
    save_weights(model, folder / "weights.pt")
    last = result.metrics or {}
    metrics = {
        "base_model": cfg.base_model,
        "style": cfg.style,
        "trainable_weights": trainable,
        "train_windows": n_train,
        "val_windows": n_val,
        "train_pieces": sorted({piece_group(s) for s in train}),
        "val_pieces": sorted({piece_group(s) for s in val}),
        "steps": last.get("step"),
        "elapsed_s": last.get("elapsed_s"),
        "resumed_from_step": last.get("resumed_from_step", 0),
        "base_val_loss": last.get("base_val_loss"),
        "best_val_loss": last.get("best_val_loss"),
        "validation": _val_note_metrics(manifest, val, cfg, folder),
        "history": raytrain.history(result),
    }
    (folder / "transcriber_config.yaml").write_text(
        yaml.safe_dump(cfgmod.to_dict(cfg), sort_keys=False)
    )
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_jsonable))
    registry.Registry(cfg.models_root).push(
        folder, cfg.output, kind="transcriber", parent=cfg.base_model,
        training_data_hash=data_hash, metrics={k: v for k, v in metrics.items() if k != "history"},
    )  # fmt: skip
    return metrics


def _loop(cfg: dict[str, Any]) -> None:
    from midiforge.transcription.train_loop import train_loop

    train_loop(cfg)


def _jsonable(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else str(x)


def _val_files(manifest, val: list[str]) -> tuple[list[dict], list[Path], list[Path]]:
    """The validation pieces' rows, recordings and reference MIDI files."""
    conf = manifest["config"]
    wanted = set(val)
    pieces = [p for p in manifest["pieces"] if p["piece"] in wanted]
    audio = [Path(conf["audio_dir"]) / p["audio"] for p in pieces]
    midi = [Path(conf["midi_dir"]) / p["midi"] for p in pieces]
    return pieces, audio, midi


def _val_note_metrics(manifest, val: list[str], cfg: TrainRunConfig,
                      folder: Path) -> dict[str, Any]:  # fmt: skip
    """Note metrics on the validation pieces' full recordings (not windows): the numbers a
    user compares. The new model's thresholds are calibrated here and saved beside it as
    decoding.yaml; the base model is scored at its own thresholds, and also at the best
    ones for these pieces (`base_calibrated`), which shows how much of the gain is
    thresholds alone."""
    from midiforge import midi_io
    from midiforge.transcription import calibrate
    from midiforge.transcription.models import model_outputs, resolve_model
    from midiforge.transcription.notes import NoteDecoding, model_decoding, save_decoding

    pieces, audio, midi = _val_files(manifest, val)
    refs = [midi_io.notes_array(midi_io.load_midi(m)) for m in midi]
    model_path = folder / "model.onnx"
    try:
        base_path = resolve_model(cfg.base_model, cfg.models_root)
    except MidiforgeError:  # a weights.pt base has no ONNX to score; report the new model only
        base_path = None
    out: dict[str, Any] = {"pieces": len(pieces)}
    trained = list(model_outputs(audio, model_path))
    if cfg.calibrate.enabled:
        cal = calibrate.calibrate(trained, refs, cfg.calibrate)
        save_decoding(folder, cal["best"], note=(
            f"calibrated on {len(pieces)} validation recordings by midiforge train run; "
            f"score {cal['best']['score']:.4f} = {cfg.calibrate.objective}"
        ))  # fmt: skip
        out["calibration"] = cal
    decoding = NoteDecoding().resolve(model_decoding(model_path))
    out["trained"] = {**calibrate.score(trained, refs, decoding), **_thresholds(decoding)}
    if base_path is not None:
        base = list(model_outputs(audio, base_path))
        decoding = NoteDecoding().resolve(model_decoding(base_path))
        out["base"] = {**calibrate.score(base, refs, decoding), **_thresholds(decoding)}
        if cfg.calibrate.enabled:
            out["base_calibrated"] = calibrate.calibrate(base, refs, cfg.calibrate)["best"]
    return out


def _thresholds(d) -> dict[str, float]:
    return {"onset_threshold": d.onset_threshold, "frame_threshold": d.frame_threshold}
