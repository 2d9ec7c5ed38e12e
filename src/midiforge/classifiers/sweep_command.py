"""Flags of `midiforge sweep drums|style` (and jobs/sweep_classifier.py): one Ray Tune
sweep with ASHA, then the best trial exported to ONNX and registered. Any key of the
sweep's config is an override: `--sweep.max_concurrent_trials=4`, `--space.lr=0.001`,
`--style.pieces_per_style=40`, `--drums.stem=snare`."""

from __future__ import annotations

import argparse
import json

from midiforge import config as cfgmod

TARGETS = ("drums", "style")


def add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGETS, help="which classifier to sweep")
    p.add_argument("--num-samples", type=int, help="trials drawn from the space (default 8)")
    p.add_argument("--out", help="registry name of the best model (default: the target)")
    p.add_argument("--address", help="Ray address (default: the job's cluster or a local Ray)")
    p.add_argument("--storage", help="Tune results and TensorBoard logs (default out/sweeps)")
    p.add_argument("--models-root", help="model registry root (default $MIDIFORGE_MODELS)")
    p.add_argument("--config", help="YAML config file (the target's sweep config)")
    p.add_argument("--seed", type=int, help="same seed, same draws and data")


def _sweep_flags(args: argparse.Namespace) -> list[str]:
    flags = {
        "num_samples": args.num_samples,
        "address": args.address,
        "storage": args.storage,
        "seed": args.seed,
    }
    return [f"--sweep.{k}={v}" for k, v in flags.items() if v is not None]


def run_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.target == "style":
        from midiforge.classifiers.style import sweep as target

        section, cls = "style", target.StyleSweepConfig
    else:
        from midiforge.classifiers.drums import sweep as target

        section, cls = "drums", target.DrumSweepConfig
    given = {"out": args.out or args.target, "models_root": args.models_root}
    flags = [f"--{section}.{k}={v}" for k, v in given.items() if v is not None]
    if args.seed is not None:
        flags.append(f"--{section}.seed={args.seed}")
    cfg = cfgmod.load(cls, args.config, [*_sweep_flags(args), *flags, *overrides])
    summary = target.run(cfg)
    sweep = summary["sweep"]
    best = sweep["best"]
    print(
        f"{len(sweep['trials'])} trials, {sweep['stopped_early']} stopped early by ASHA; "
        f"best {sweep['metric']} {best['metrics'][sweep['metric']]:.4f} with "
        f"{json.dumps(best['config'])}"
    )
    print(f"registered {given['out']}: {summary['folder']}")
    print(f"tensorboard --logdir {sweep['logdir']}")
    return 0
