"""Flags of the language-model commands, shared by `midiforge lm ...`, `midiforge generate`
and the Ray job entry points in jobs/."""

from __future__ import annotations

import argparse
import json
from typing import Any

from midiforge import config as cfgmod


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-root", help="model registry root (default $MIDIFORGE_MODELS)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--seed", type=int, help="same seed, same result")


def _train_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="the dataset job's --out (folder or URI)")
    p.add_argument("--out", required=True, help="registry name of the trained model")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP), default 1")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--storage", help="Ray Train storage for checkpoints (default out/lm/runs)")
    _common(p)


def add_pretrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=("debug", "small", "base"), help="model + schedule size")
    p.add_argument(
        "--exclude-style", action="append", help="leave a style out (default: fiddle); repeatable"
    )
    p.add_argument("--init-from", help="a local Hugging Face causal-LM folder to start from")
    _train_common(p)


def add_finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="registry name or local model folder")
    p.add_argument("--style", help="target style (default fiddle)")
    _train_common(p)


def _resources(args) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if args.workers:
        res["num_workers"] = args.workers
    if args.gpu:
        res["use_gpu"] = True
    return res


def run_pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.lm.config import PretrainConfig, preset_defaults
    from midiforge.lm.train import pretrain

    res = _resources(args)
    preset = (
        args.preset
        or cfgmod.parse_overrides(overrides).get("preset")
        or (cfgmod.read_yaml(args.config).get("preset") if args.config else None)
    )
    cfg = cfgmod.load(
        PretrainConfig,
        args.config,
        [*(f"--resources.{k}={v}" for k, v in res.items()), *overrides],
        defaults=preset_defaults(preset),
        dataset=args.dataset,
        out=args.out,
        preset=args.preset,
        exclude_styles=args.exclude_style,
        init_from=args.init_from,
        models_root=args.models_root,
        storage=args.storage,
        seed=args.seed,
    )
    m = pretrain(cfg)
    print(
        f"{cfg.out}: {m['parameters']:,} parameters, {m['steps']} steps in "
        f"{m['elapsed_s']:.0f} s, best val loss {m['best_val_loss']:.3f} "
        f"(perplexity {m['best_val_perplexity']:.2f}) on styles {', '.join(m['styles'])}"
    )
    return 0


def run_finetune(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.lm.config import FinetuneConfig
    from midiforge.lm.train import finetune

    res = _resources(args)
    cfg = cfgmod.load(
        FinetuneConfig,
        args.config,
        [*(f"--resources.{k}={v}" for k, v in res.items()), *overrides],
        base=args.base,
        dataset=args.dataset,
        style=args.style,
        out=args.out,
        models_root=args.models_root,
        storage=args.storage,
        seed=args.seed,
    )
    m = finetune(cfg)
    print(
        f"{cfg.out}: LoRA on {cfg.base} for {cfg.style}: {m['trainable_summary']}; "
        f"{m['steps']} steps, best val loss {m['best_val_loss']:.3f} "
        f"(perplexity {m['best_val_perplexity']:.2f}); adapter and merged model saved"
    )
    return 0


def add_export(p: argparse.ArgumentParser) -> None:
    from midiforge.lm.export import GRAPHS

    p.add_argument("name", help="registry name of a trained model")
    p.add_argument("--int8", action="store_true", help="also write an INT8 (dynamic) model")
    p.add_argument(
        "--graph",
        choices=GRAPHS,
        default="auto",
        help="gqa: Llama written around onnxruntime's fused attention (fast); traced: "
        "transformers' forward traced (any supported family); auto: gqa where it applies",
    )
    _common(p)


def run_export(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.lm.publish import export_registered

    info = export_registered(
        args.name, int8=args.int8, models_root=args.models_root, graph=args.graph
    )
    print(json.dumps(info, indent=2))
    return 0


def add_generate(p: argparse.ArgumentParser) -> None:
    # Defaults None: unset flags leave the --config YAML's values, else GenerateRequest's.
    p.add_argument("--model", required=True, help="'rules' or a registry name (exported)")
    p.add_argument("--style", help="default fiddle")
    p.add_argument("--key", help="e.g. Am, D, 'E- major' (default D major)")
    p.add_argument("--bpm", type=float, help="default 120")
    p.add_argument("--bars", type=int, help="default 16")
    p.add_argument("--time-signature", help="e.g. 3/4, 6/8, 3/1 (default 4/4)")
    p.add_argument("--prompt", help="MIDI file to continue")
    p.add_argument("--temperature", type=float, help="default 1.0; <= 0 is greedy")
    p.add_argument("--top-p", type=float, help="default 0.95")
    p.add_argument("--int8", action="store_true", help="use the INT8 model")
    p.add_argument(
        "--program", type=int, action="append", help="GM program to play (default: the style's)"
    )
    p.add_argument("--out", required=True, help="output .mid")
    _common(p)


def run_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from midiforge import config as cfgmod
    from midiforge.lm.generate import GenerateRequest, Generator

    req = cfgmod.load(
        GenerateRequest, args.config, overrides,
        style=args.style, key=args.key, bpm=args.bpm, bars=args.bars,
        time_signature=args.time_signature, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, programs=args.program,
    )  # fmt: skip
    if req.prompt_midi is not None:
        raise cfgmod.ConfigError("give the prompt as a file: --prompt x.mid")
    if args.prompt:
        req.prompt_midi = Path(args.prompt).read_bytes()
    gen = Generator.load(args.model, models_root=args.models_root, int8=args.int8)
    result = gen.generate(req)
    Path(args.out).write_bytes(result.midi)
    print(
        f"{args.out}: {result.bars} bars, {result.n_notes} notes, {result.n_tokens} tokens "
        f"in {result.seconds:.3f} s ({args.model})"
    )
    return 0


def add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, help="comma list: rules and/or registry names")
    p.add_argument("--dataset", required=True, help="the dataset job's --out with the style")
    p.add_argument("--style", default="fiddle")
    p.add_argument("--n", type=int, default=100, help="melodies per configuration")
    p.add_argument("--bars", type=int, default=16)
    p.add_argument("--out", required=True, help="folder for results.json/.md/.png")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="reference pieces: the held-out test split, or val for choosing settings",
    )
    p.add_argument(
        "--temperature", type=float, help="neural models' sampling (default: generate's)"
    )
    p.add_argument("--top-p", type=float, help="neural models' nucleus (default: generate's)")
    _common(p)


def run_evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.config import ConfigError
    from midiforge.lm.evaluate import evaluate

    if args.config or overrides:  # its settings are the flags; nothing else would be read
        raise ConfigError("lm evaluate takes its flags only, no --config or --key=value")

    results = evaluate(
        [m.strip() for m in args.models.split(",") if m.strip()],
        dataset=args.dataset,
        style=args.style,
        n=args.n,
        bars=args.bars,
        out=args.out,
        models_root=args.models_root,
        seed=args.seed or 0,
        split=args.split,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    for name, m in results["configs"].items():
        ppl = "-" if m["perplexity"] is None else f"{m['perplexity']:.2f}"
        print(f"{name:16s} perplexity {ppl:>8s}  pch_kl {m['pch_kl']:.3f}")
    print(f"results: {args.out}/results.json, results.md, results.png")
    return 0
