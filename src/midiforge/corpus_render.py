"""`midiforge corpus render`: corpus pieces -> DIR/midi, DIR/audio, DIR/manifest.json.

The MIDI written to DIR/midi is read back and rendered, so the audio is the rendering
of exactly that file. Pieces that fail are listed in the manifest with their reason.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from midiforge import config as cfgmod
from midiforge import corpus, midi_io, render
from midiforge.registry import sha256_file

log = logging.getLogger(__name__)


@dataclass
class RenderConfig:
    styles: list[str] = field(default_factory=lambda: list(corpus.STYLES))
    per_style: int = 3  # pieces per style
    seconds: float = 20.0  # each piece is cut to this length
    out: str = "corpus-out"
    soundfont: str | None = None  # any .sf2; None = pretty_midi's TimGM6mb.sf2
    sample_rate: int = render.DEFAULT_SAMPLE_RATE
    vary_instruments: bool = False  # draw GM programs from each style's list
    tail_s: float = 0.25  # release rendered after the last note-off
    seed: int = 0
    midi_only: bool = False  # symbolic corpora for the language model need no audio

    def validate_config(self) -> None:
        unknown = [s for s in self.styles if s not in corpus.STYLES]
        if unknown or not self.styles:
            raise cfgmod.ConfigError(
                f"styles {unknown or self.styles} not known; choose from {', '.join(corpus.STYLES)}"
            )
        if self.per_style < 1 or self.seconds <= 0 or self.sample_rate < 8000:
            raise cfgmod.ConfigError("per_style >= 1, seconds > 0 and sample_rate >= 8000 required")


def render_piece(
    cand: corpus.Candidate, cfg: RenderConfig, soundfont: Path, out: Path
) -> dict[str, Any]:
    rng = random.Random(f"{cfg.seed}:{cand.piece_id}")
    pm, part_names = corpus.score_to_midi(cand, cfg.seconds)
    programs = corpus.assign_programs(pm, cand.style, cfg.vary_instruments, rng)
    midi_path = out / "midi" / cand.style / f"{cand.piece_id}.mid"
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    midi_path.write_bytes(midi_io.midi_bytes(pm))
    rendered = midi_io.load_midi(midi_path.read_bytes())
    entry = {
        "piece": cand.piece_id,
        "style": cand.style,
        "source": cand.source,
        "parts": part_names,
        "programs": programs,
        "instruments": [render_program_name(p) for p in programs],
        "midi": midi_path.relative_to(out).as_posix(),
        "midi_seconds": round(rendered.get_end_time(), 4),
        "n_notes": int(sum(len(i.notes) for i in rendered.instruments)),
    }
    tempi = rendered.get_tempo_changes()[1]
    entry["bpm"] = round(float(tempi[0]), 3) if len(tempi) else 120.0
    if cfg.midi_only:
        return entry
    t0 = time.perf_counter()
    audio = render.render_midi(rendered, soundfont, cfg.sample_rate, tail_s=cfg.tail_s)
    synth_s = time.perf_counter() - t0
    if not np.isfinite(audio).all() or float(np.max(np.abs(audio))) == 0.0:
        raise corpus.PieceError("the synthesizer produced silence or invalid samples")
    wav_path = out / "audio" / cand.style / f"{cand.piece_id}.wav"
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(wav_path, audio, cfg.sample_rate, subtype="FLOAT")
    entry["audio"] = wav_path.relative_to(out).as_posix()
    entry["audio_seconds"] = round(len(audio) / cfg.sample_rate, 4)
    entry["synth_seconds"] = round(synth_s, 4)
    return entry


def render_program_name(program: int) -> str:
    import pretty_midi

    return pretty_midi.program_to_instrument_name(int(program))


def render_corpus(cfg: RenderConfig) -> dict[str, Any]:
    """Render `per_style` pieces of each style; returns the manifest it writes."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    soundfont = Path(cfg.soundfont) if cfg.soundfont else render.default_soundfont()
    if not soundfont.is_file() and not cfg.midi_only:
        raise render.RenderError(f"soundfont not found: {soundfont}")
    pieces, failures = [], []
    started = time.perf_counter()
    for style in cfg.styles:
        done = 0
        for cand in corpus.select(style, cfg.seed):
            if done == cfg.per_style:
                break
            try:
                pieces.append(render_piece(cand, cfg, soundfont, out))
                done += 1
            except (corpus.PieceError, ValueError) as e:
                failures.append({"piece": cand.piece_id, "source": cand.source, "reason": str(e)})
                log.warning("skipped %s: %s", cand.piece_id, e)
        if done < cfg.per_style:
            failures.append(
                {"piece": None, "source": style, "reason": f"only {done} usable pieces of {style}"}
            )
    wall = time.perf_counter() - started
    audio_s = sum(p.get("audio_seconds", 0.0) for p in pieces)
    synth_s = sum(p.get("synth_seconds", 0.0) for p in pieces)
    manifest = {
        "config": cfgmod.to_dict(cfg),
        "soundfont": None
        if cfg.midi_only
        else {"path": str(soundfont), "sha256": sha256_file(soundfont)},
        "renderer": "fluidsynth (reverb and chorus off)",
        "pieces": pieces,
        "failures": failures,
        "speed": {
            "audio_seconds": round(audio_s, 2),
            "wall_seconds": round(wall, 2),
            "audio_seconds_per_wall_second": round(audio_s / wall, 2) if wall else None,
            # The synthesizer alone; the rest of the wall time is music21 parsing/export.
            "audio_seconds_per_synth_second": round(audio_s / synth_s, 1) if synth_s else None,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
