"""Flags of the dataset job, shared by `midiforge dataset build` and jobs/build_dataset.py."""

from __future__ import annotations

import argparse
from typing import Any

from midiforge import config as cfgmod


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio", nargs="+", action="extend", help="audio files/folders (tier 2)")
    p.add_argument("--midi", nargs="+", action="extend", help="MIDI files/folders")
    p.add_argument("--out", help="output folder or URI")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--style", help="style label for every input")
    g.add_argument("--style-from-folder", action="store_true", help="style = parent folder name")
    p.add_argument("--tier-midi", type=int, choices=(1, 3), help="MIDI inputs: 1 gold, 3 bulk")
    p.add_argument("--separator", help="none | htdemucs (any Demucs name) | DIR:NAME")
    p.add_argument("--stem", help="Demucs stem to transcribe (default other)")
    p.add_argument("--transcriber", help="stock or a registry name")
    p.add_argument("--models-root", help="model registry root (default $MIDIFORGE_MODELS)")
    p.add_argument(
        "--reference-midi", nargs="+", action="extend", help="ground-truth MIDI, matched by stem"
    )
    p.add_argument("--augment-splits", help="comma list of splits to augment (default train)")
    p.add_argument("--address", help="auto | ray://HOST:PORT (default: a local Ray on 127.0.0.1)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--seed", type=int, help="same seed, same dataset")


def config_from_args(args: argparse.Namespace, overrides: list[str]):
    from midiforge.pipeline.config import DatasetConfig

    return cfgmod.load(
        DatasetConfig,
        args.config,
        overrides,
        audio=args.audio,
        midi=args.midi,
        out=args.out,
        style=args.style,
        style_from_folder=args.style_from_folder or None,
        tier_midi=args.tier_midi,
        separator=args.separator,
        stem=args.stem,
        transcriber=args.transcriber,
        models_root=args.models_root,
        reference_midi=args.reference_midi,
        augment_splits=args.augment_splits,
        seed=args.seed,
    )


def summary(rep: dict[str, Any], out: str) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = [
        f"dataset: {out}/dataset  ({rep['rows']} rows)",
        f"inputs {rep['inputs']}: accepted {rep['accepted']}, rejected {rep['rejected']}"
        f"  ({rep['audio_seconds']} s of audio, {rep['elapsed_seconds']} s wall)",
        "splits: "
        + ", ".join(
            f"{k} {v['pieces']} pieces / {v['rows']} rows" for k, v in rep["by_split"].items()
        ),
        "by style: "
        + ", ".join(f"{k} {v['accepted']}/{v['inputs']}" for k, v in rep["by_style"].items()),
    ]
    if rep["rejects_by_reason"]:
        lines.append(
            "rejects: " + ", ".join(f"{k} x{v}" for k, v in rep["rejects_by_reason"].items())
        )
    for style, m in rep.get("transcription", {}).items():
        lines.append(
            f"transcription {style:8s} F1 {m['f1']:.3f}  P {m['precision']:.3f}"
            f"  R {m['recall']:.3f}  F1(offset) {m['f1_offset']:.3f}  ({m['pieces']} pieces)"
        )
    lines.append(f"report: {out}/report.md, rejects: {out}/rejects.parquet")
    return "\n".join(lines)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.pipeline.build import build_dataset

    cfg = config_from_args(args, overrides)
    rep = build_dataset(cfg, address=args.address)
    print(summary(rep, cfg.out))
    return 0
