"""The `midiforge` command. Each subcommand parses flags and calls one library function;
the printing of results lives here and nowhere else in the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from midiforge import config as cfgmod

log = logging.getLogger("midiforge")


# --- corpus ----------------------------------------------------------------------------


def _corpus_render(args: argparse.Namespace) -> int:
    from midiforge.corpus_render import RenderConfig, render_corpus

    cfg = cfgmod.load(
        RenderConfig,
        args.config,
        args.overrides,
        styles=args.styles,
        per_style=args.per_style,
        seconds=args.seconds,
        out=args.out,
        soundfont=args.soundfont,
        sample_rate=args.sample_rate,
        vary_instruments=args.vary_instruments or None,
        midi_only=args.midi_only or None,
        seed=args.seed,
    )
    manifest = render_corpus(cfg)
    for p in manifest["pieces"]:
        print(
            f"  {p['style']:8s} {p['piece']:48s} {p['midi_seconds']:6.2f} s  "
            f"{', '.join(sorted(set(p['instruments'])))}"
        )
    for f in manifest["failures"]:
        print(f"  SKIPPED {f['piece'] or f['source']}: {f['reason']}")
    speed = manifest["speed"]
    if cfg.midi_only:
        print(f"wrote {len(manifest['pieces'])} MIDI files in {speed['wall_seconds']} s")
        return 0
    print(
        f"rendered {len(manifest['pieces'])} pieces, {speed['audio_seconds']} s of audio in "
        f"{speed['wall_seconds']} s: {speed['audio_seconds_per_wall_second']} audio-s per wall-s "
        f"overall, {speed['audio_seconds_per_synth_second']} in the synthesizer alone "
        f"-> {cfg.out}/manifest.json"
    )
    return 0


def _add_corpus(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser("corpus", help="the demo corpus: music21 scores rendered to audio")
    csub = corpus.add_subparsers(dest="action", required=True)
    r = csub.add_parser("render", help="render corpus pieces to WAV + the exact MIDI")
    r.add_argument("--styles", help="comma-separated: chorale,fiddle,folk,quartet")
    r.add_argument("--per-style", type=int, help="pieces per style (default 3)")
    r.add_argument("--seconds", type=float, help="cut each piece to this length (default 20)")
    r.add_argument("--out", help="output folder")
    r.add_argument("--soundfont", help=".sf2 file (default: pretty_midi's TimGM6mb.sf2)")
    r.add_argument("--sample-rate", type=int, help="Hz (default 22050)")
    r.add_argument("--vary-instruments", action="store_true", help="draw GM programs per piece")
    r.add_argument(
        "--midi-only", action="store_true", help="write the MIDI only (no audio rendering)"
    )
    _common(r)
    r.set_defaults(func=_corpus_render)


# --- models ----------------------------------------------------------------------------


def _registry(args: argparse.Namespace):
    from midiforge.registry import Registry

    return Registry(args.root)


def _models_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    print(f"registry: {reg.root}")
    print(f"{'NAME':24s} {'KIND':18s} {'VERSION':32s} {'SIZE':>10s}  CREATED")
    for m in reg.list():
        print(f"{m.name:24s} {m.kind:18s} {m.version:32s} {m.size_bytes:>10d}  {m.created}")
    return 0


def _models_push(args: argparse.Namespace) -> int:
    try:
        metrics = json.loads(args.metrics) if args.metrics else None
    except json.JSONDecodeError as e:
        raise cfgmod.ConfigError(f"--metrics is not a JSON object: {e}") from None
    m = _registry(args).push(
        args.path,
        args.name,
        kind=args.kind,
        parent=args.parent,
        training_data_hash=args.training_data_hash,
        metrics=metrics,
    )
    print(f"pushed {m.name} version {m.version} ({len(m.files)} files, {m.size_bytes} bytes)")
    return 0


def _models_pull(args: argparse.Namespace) -> int:
    dest = _registry(args).pull(args.name, args.to)
    print(f"pulled {args.name} to {dest} (checksums verified)")
    return 0


def _models_show(args: argparse.Namespace) -> int:
    print(_registry(args).manifest(args.name).to_json())
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the model registry (folder or s3:// gs:// URI)")
    msub = models.add_subparsers(dest="action", required=True)

    def root(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--root", help="registry root; default $MIDIFORGE_MODELS or ~/.midiforge/models"
        )

    p = msub.add_parser("list", help="list models")
    root(p)
    p.set_defaults(func=_models_list)
    p = msub.add_parser("push", help="upload a model folder (or one .onnx file) atomically")
    p.add_argument("path")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--kind", help="transcriber|separator|lm|lm-adapter|drum-filter|style-classifier|other"
    )
    p.add_argument("--parent", help="the model this one was trained from")
    p.add_argument("--training-data-hash")
    p.add_argument("--metrics", help="JSON object (default: the folder's metrics.json)")
    root(p)
    p.set_defaults(func=_models_push)
    p = msub.add_parser("pull", help="download a model, verifying every checksum")
    p.add_argument("name")
    p.add_argument("--to", required=True)
    root(p)
    p.set_defaults(func=_models_pull)
    p = msub.add_parser("show", help="print a model's manifest")
    p.add_argument("name")
    root(p)
    p.set_defaults(func=_models_show)


# --- dataset ---------------------------------------------------------------------------


def _dataset_build(args: argparse.Namespace) -> int:
    from midiforge.pipeline import command

    return command.run(args, args.overrides)


def _add_dataset(sub: argparse._SubParsersAction) -> None:
    from midiforge.pipeline import command

    ds = sub.add_parser("dataset", help="the dataset job on Ray Data")
    dsub = ds.add_subparsers(dest="action", required=True)
    b = dsub.add_parser("build", help="audio + MIDI in, validated tokenized split Parquet out")
    command.add_arguments(b)
    b.set_defaults(func=_dataset_build)


# --- serve -----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from midiforge.serving.local import run

    run(args.config, port=args.port, overrides=args.overrides)
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="run the HTTP endpoints locally on 127.0.0.1",
        description="Run serve/config.yaml's app on a local Ray, bound to 127.0.0.1. Any "
        "field of its args (serving/settings.py: ServeSettings) can be overridden as "
        "--key=value, e.g. --generator_model=rules --max_audio_seconds=120.",
    )
    s.add_argument(
        "--config", default="serve/config.yaml", help="Serve config (default serve/config.yaml)"
    )
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=_serve)


# --- language model, transcription ---------------------------------------------------------


def _commands(sub: argparse._SubParsersAction, table) -> None:
    """(name, add_flags, run, help) rows -> subcommands whose run gets the --key=value
    overrides. No prefix matching: an override like --work=... must not become --workers."""
    for name, add, run, help_ in table:
        p = sub.add_parser(name, help=help_, allow_abbrev=False)
        add(p)
        p.set_defaults(func=lambda a, run=run: run(a, a.overrides))


def _add_lm(sub: argparse._SubParsersAction) -> None:
    from midiforge.lm import command

    lm = sub.add_parser("lm", help="the MIDI language model: pretrain, finetune, export, evaluate")
    _commands(lm.add_subparsers(dest="action", required=True), (
        ("pretrain", command.add_pretrain, command.run_pretrain, "train a base model (Ray Train)"),
        ("finetune", command.add_finetune, command.run_finetune, "LoRA-fine-tune on one style"),
        ("export", command.add_export, command.run_export, "ONNX with KV cache (+ INT8)"),
        ("evaluate", command.add_evaluate, command.run_evaluate, "score generators on a style"),
    ))  # fmt: skip
    _commands(sub, (("generate", command.add_generate, command.run_generate,
                     "generate MIDI with a model or the rule baseline"),))  # fmt: skip


def _add_transcription(sub: argparse._SubParsersAction) -> None:
    from midiforge.transcription import command
    from midiforge.transcription import train_command as tc

    _commands(sub, (
        ("extract", command.add_extract, command.run_extract, "audio file -> MIDI with a model"),
        ("compare", command.add_compare, command.run_compare, "score models on audio + MIDI"),
    ))  # fmt: skip
    train = sub.add_parser("train", help="fine-tune a basic-pitch-shaped transcriber")
    _commands(train.add_subparsers(dest="action", required=True), (
        ("prepare", tc.add_prepare, tc.run_prepare, "audio + MIDI pairs -> training windows"),
        ("run", tc.add_run, tc.run_run, "fine-tune on Ray Train, export ONNX, register"),
        ("prebuilt", tc.add_prebuilt, tc.run_prebuilt, "render, train and compare one style"),
    ))  # fmt: skip


def _add_classifiers(sub: argparse._SubParsersAction) -> None:
    from midiforge.classifiers import sweep_command
    from midiforge.classifiers.drums import command as drums
    from midiforge.classifiers.style import command as style

    d = sub.add_parser("drums", help="the drum-hit filter: extract, train, evaluate")
    _commands(d.add_subparsers(dest="action", required=True), (
        ("extract", drums.add_extract, drums.run_extract, "drum stem -> MIDI hits"),
        ("train", drums.add_train, drums.run_train, "learn keep/remove from edited MIDI"),
        ("evaluate", drums.add_evaluate, drums.run_evaluate, "model vs thresholds on songs"),
        ("render", drums.add_render, drums.run_render, "render synthetic drum-stem songs"),
    ))  # fmt: skip
    s = sub.add_parser("style", help="the style classifier: train, evaluate, predict")
    _commands(s.add_subparsers(dest="action", required=True), (
        ("train", style.add_train, style.run_train, "render, train, export, register"),
        ("evaluate", style.add_evaluate, style.run_evaluate, "accuracy on held-out pieces"),
        ("predict", style.add_predict, style.run_predict, "audio file -> top styles"),
    ))  # fmt: skip
    _commands(sub, (("sweep", sweep_command.add_sweep, sweep_command.run_sweep,
                     "Ray Tune sweep of a classifier -> ONNX -> registry"),))  # fmt: skip


# --- entry point -------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--seed", type=int, help="random seed (same seed, same output)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="midiforge",
        description="Audio to genre-specific MIDI training data, models and endpoints on Ray.",
        epilog="Any config key can be overridden as --key=value (e.g. --tail_s=0.5).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_corpus(sub)
    _add_dataset(sub)
    _add_models(sub)
    _add_serve(sub)
    _add_lm(sub)
    _add_transcription(sub)
    _add_classifiers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--") and "=" in a]
    stray = [a for a in rest if a not in overrides]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = overrides
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if overrides and not hasattr(args, "config"):
        parser.error(f"{args.command} takes no --key=value overrides: {' '.join(overrides)}")
    func: Callable[[argparse.Namespace], int] = args.func
    from midiforge.errors import run_reporting_errors

    return run_reporting_errors(lambda: func(args))


if __name__ == "__main__":
    sys.exit(main())
