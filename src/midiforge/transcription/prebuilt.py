"""The pre-built per-style transcribers (`jobs/finetune_transcriber.py --style fiddle`).

One command makes a model and the evidence for it:
1. held-out test pieces are chosen first (the front of the style's seeded order) and
   rendered plainly with a soundfont training never hears (FluidR3_GM by default);
2. up to `train_pieces` other pieces are rendered in varied timbres (transcription.variety:
   several soundfonts and instruments, our own string synthesizer, vibrato, reverb, EQ,
   noise), prepared into windows and used to fine-tune basic-pitch on Ray Train;
3. `midiforge compare` scores stock against the new model on the held-out renders, and
   on held-out renders of every other style, so regressions are visible.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midiforge import corpus
from midiforge.config import ConfigError
from midiforge.transcription.train_config import TrainRunConfig

log = logging.getLogger(__name__)

HELD_OUT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"  # Debian's fluid-soundfont-gm


@dataclass
class PrebuiltConfig:
    style: str = "fiddle"
    work: str = "out/transcription"  # renders, prepared windows, checkpoints
    results: str = ""  # default results/transcription-{style}
    train_pieces: int = 100
    variants: int = 2  # timbres per training piece
    max_transpose: int = 3  # semitones either way, drawn per variant
    p_synth: float = 0.3  # share of variants from our own string synthesizer
    seconds: float = 30.0  # each training piece is cut to this length
    test_pieces: int = 20
    test_seconds: float = 30.0
    test_soundfont: str = HELD_OUT_SOUNDFONT
    other_styles: list[str] = field(default_factory=lambda: list(corpus.STYLES))
    other_pieces: int = 6
    train: TrainRunConfig = field(default_factory=TrainRunConfig)
    seed: int = 0

    def validate_config(self) -> None:
        if self.style not in corpus.STYLES:
            raise ConfigError(f"style {self.style!r}: choose from {', '.join(corpus.STYLES)}")
        if self.train_pieces > 100:
            raise ConfigError("the pre-built recipe trains on at most 100 pieces")
        if not Path(self.test_soundfont).is_file():
            raise ConfigError(
                f"held-out soundfont {self.test_soundfont} not found: install Debian's "
                "fluid-soundfont-gm (make install does) or pass --test_soundfont=FILE.sf2"
            )


def build(cfg: PrebuiltConfig) -> dict[str, Any]:
    from midiforge.transcription import compare, prepare, train, variety

    work = Path(cfg.work) / cfg.style
    results = Path(cfg.results or f"results/transcription-{cfg.style}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    test_ids = [c.piece_id for c in _usable(cfg.style, cfg.seed, cfg.test_pieces, cfg.test_seconds)]
    test = variety.render_eval_set(
        cfg.style, test_ids, cfg.test_seconds, work / "test", cfg.test_soundfont
    )
    others = {}
    for style in (s for s in cfg.other_styles if s != cfg.style):
        ids = [c.piece_id for c in _usable(style, cfg.seed, cfg.other_pieces, cfg.test_seconds)]
        others[style] = variety.render_eval_set(
            style, ids, cfg.test_seconds, work / f"test-{style}", cfg.test_soundfont
        )
    timings["render_test_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = variety.build_pairs(
        cfg.style, cfg.train_pieces, cfg.seconds, work / "train-audio", cfg.seed,
        variants_per_piece=cfg.variants, skip_pieces=set(test_ids),
        max_transpose=cfg.max_transpose, p_synth=cfg.p_synth,
    )  # fmt: skip
    timings["render_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepared = prepare.prepare(
        prepare.PrepareConfig(
            audio_dir=str(work / "train-audio" / "audio"),
            midi_dir=str(work / "train-audio" / "midi"),
            output=str(work / "prepared"),
        )
    )
    timings["prepare_s"] = time.perf_counter() - t0
    run_cfg = cfg.train
    run_cfg.dataset = str(work / "prepared")
    run_cfg.output = run_cfg.output or cfg.style
    run_cfg.style = cfg.style
    run_cfg.seed = cfg.seed
    run_cfg.validate_config()
    t0 = time.perf_counter()
    metrics = train.run(run_cfg)
    timings["train_s"] = time.perf_counter() - t0
    models = ["stock", run_cfg.output]
    root = run_cfg.models_root
    main = compare.compare(compare.CompareConfig(
        models=models, input=str(work / "test" / "audio"), reference=str(work / "test" / "midi"),
        out=str(results), models_root=root,
    ))  # fmt: skip
    side = {}
    for style in others:
        side[style] = compare.compare(compare.CompareConfig(
            models=models, input=str(work / f"test-{style}" / "audio"),
            reference=str(work / f"test-{style}" / "midi"),
            out=str(results / "other-styles" / style), models_root=root, plots=1,
        ))["models"]  # fmt: skip
    trained = {train.piece_group(s) for s in metrics["train_pieces"]}
    overlap = sorted(set(test_ids) & trained)
    summary = {
        "style": cfg.style,
        "model": run_cfg.output,
        "held_out_soundfont": Path(cfg.test_soundfont).name,
        "training_soundfonts": pairs.get("pool"),
        "train_pieces": len(metrics["train_pieces"]) + len(metrics["val_pieces"]),
        "train_audio_s": prepared["totals"]["audio_seconds"],
        "test_pieces": test_ids,
        "train_test_overlap": overlap,
        "training": {k: metrics[k] for k in ("steps", "elapsed_s", "trainable_weights",
                                             "base_val_loss", "best_val_loss", "validation")},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "held_out": main["models"],
        "other_styles": side,
        "test_render": test.get("failures"),
    }  # fmt: skip
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _usable(style: str, seed: int, n: int, seconds: float) -> list[corpus.Candidate]:
    """The first n pieces of the style's seeded order that convert to MIDI."""
    out = []
    for cand in corpus.select(style, seed):
        if len(out) == n:
            break
        try:
            corpus.score_to_midi(cand, seconds)
        except (corpus.PieceError, ValueError) as e:
            log.info("held-out selection skips %s: %s", cand.piece_id, e)
            continue
        out.append(cand)
    return out
