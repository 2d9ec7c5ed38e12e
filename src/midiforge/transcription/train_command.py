"""Flags of `midiforge train ...` (fine-tuning a basic-pitch-shaped transcriber).

Each subcommand has an `add_*` that declares its flags and a `run_*` that builds the
config (defaults <- --config YAML <- flags <- --key=value overrides), calls the library
and prints the summary; the library itself only logs.
"""

from __future__ import annotations

import argparse
from typing import Any

from midiforge import config as cfgmod


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--seed", type=int, help="same seed, same result")


def add_prepare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio-dir", help="folder of audio (searched recursively)")
    p.add_argument("--midi-dir", help="folder of the matching MIDI, paired by file stem")
    p.add_argument("--output", help="folder for windows/*.parquet and manifest.json")
    p.add_argument("--hop-s", type=float, help="seconds between window starts (default 1.0)")
    _common(p)


def _print_prepare(manifest: dict[str, Any], output: str) -> None:
    t = manifest["totals"]
    print(
        f"{output}: {t['pieces']} pieces, {t['windows']} windows, {t['audio_seconds']:.1f} s "
        f"of audio from {t['pairs_found']} stems; {t['broken']} broken pairs"
    )
    for b in manifest["broken"]:
        print(f"  BROKEN {b['piece']}: {b['reason']}: {b['detail']}")
        print(f"         audio {b['audio'] or '-'}  midi {b['midi'] or '-'}")


def run_prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.transcription.prepare import PrepareConfig, prepare

    cfg = cfgmod.load(
        PrepareConfig,
        args.config,
        overrides,
        audio_dir=args.audio_dir,
        midi_dir=args.midi_dir,
        output=args.output,
        hop_s=args.hop_s,
        seed=args.seed,
    )
    _print_prepare(prepare(cfg), cfg.output)
    return 0


def add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="a `midiforge train prepare` output folder")
    p.add_argument("--base-model", help="stock (default) | registry name | folder | weights.pt")
    p.add_argument("--epochs", type=int, help="passes over the training windows (default 50)")
    p.add_argument("--batch-size", type=int, help="windows per step and worker (default 16)")
    p.add_argument("--output", help="registry name of the trained model")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP), default 1")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget for training")
    p.add_argument("--storage", help="Ray Train storage (default out/transcription/runs)")
    p.add_argument("--models-root", help="model registry root (default $MIDIFORGE_MODELS)")
    _common(p)


def _schedule_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "max_minutes": args.max_minutes}
    return {k: v for k, v in flags.items() if v is not None}


def _resource_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"num_workers": args.workers, "use_gpu": True if args.gpu else None}
    return {k: v for k, v in flags.items() if v is not None}


def run_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.transcription.train import run
    from midiforge.transcription.train_config import TrainRunConfig

    cfg = cfgmod.load(
        TrainRunConfig,
        args.config,
        overrides,
        schedule=_schedule_flags(args) or None,
        resources=_resource_flags(args) or None,
        dataset=args.dataset,
        output=args.output,
        base_model=args.base_model,
        storage=args.storage,
        models_root=args.models_root,
        seed=args.seed,
    )
    _print_run(run(cfg), cfg.output)
    return 0


def _print_run(m: dict[str, Any], name: str) -> None:
    print(
        f"registered {name}: {m['steps']} steps in {m['elapsed_s']:.0f} s, "
        f"{m['trainable_weights']:,} trainable weights, {m['train_windows']} train / "
        f"{m['val_windows']} val windows; val loss {m['base_val_loss']:.4f} (base) -> "
        f"{m['best_val_loss']:.4f}"
    )
    val = m["validation"]
    print(f"  on {val['pieces']} validation recordings (onset / frame thresholds):")
    for model in ("base", "base_calibrated", "trained"):
        if model in val:
            v = val[model]
            print(
                f"  {model:16s} onset-F1 {v['f1']:.3f}  onset+offset F1 {v['f1_offset']:.3f}"
                f"  ({v['onset_threshold']:.2f} / {v['frame_threshold']:.2f})"
            )


def add_prebuilt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style", help="fiddle (default), chorale, quartet, folk")
    p.add_argument("--train-pieces", type=int, help="training pieces (<= 100)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget for training")
    p.add_argument("--results", help="where compare writes (default results/transcription-STYLE)")
    p.add_argument("--models-root", help="model registry root (default $MIDIFORGE_MODELS)")
    _common(p)


def run_prebuilt(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from midiforge.transcription.prebuilt import PrebuiltConfig, build

    train = {"models_root": args.models_root, "schedule": {"max_minutes": args.max_minutes}}
    if hasattr(args, "dataset"):  # jobs/finetune_transcriber.py --style: its `train run` flags
        train.update(
            schedule=_schedule_flags(args), resources=_resource_flags(args),
            storage=args.storage, base_model=args.base_model, output=args.output,
        )  # fmt: skip
    cfg = cfgmod.load(
        PrebuiltConfig,
        args.config,
        overrides,
        train=_drop_none(train) or None,
        style=args.style,
        train_pieces=args.train_pieces,
        results=args.results,
        seed=args.seed,
    )
    summary = build(cfg)
    print(json.dumps({k: summary[k] for k in ("model", "held_out", "timings_s")}, indent=2))
    return 0


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        kept = _drop_none(v) if isinstance(v, dict) else v
        if kept is not None and kept != {}:
            out[k] = kept
    return out


def add_job(p: argparse.ArgumentParser) -> None:
    """jobs/finetune_transcriber.py: `train run` flags, or `--style` for the pre-built recipe."""
    add_run(p)
    p.add_argument("--style", help="build the pre-built model of a style instead of --dataset")
    p.add_argument("--train-pieces", type=int, help="with --style: training pieces (<= 100)")
    p.add_argument("--results", help="with --style: compare output folder")


def run_job(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.style and not args.dataset:
        return run_prebuilt(args, overrides)
    return run_run(args, overrides)
