"""Varied training renders, so a fine-tuned transcriber generalizes to an unheard violin.

Evaluation renders held-out pieces with FluidR3_GM, a soundfont training never hears.
A model trained on one soundfont learns that soundfont: its attacks, its release tails,
its lack of vibrato. So every training pair is rendered in a freshly drawn way:

- a training soundfont (never FluidR3 or anything built from it) x a GM program that
  suits the style, with per-note vibrato as pitch bend and, sometimes, FluidSynth's
  reverb and chorus; or our own additive bowed-string synthesizer (`synth.synth_render`);
- then recording-chain post-processing (`synth.augment_audio`): EQ, room reverb, noise, gain.

This module draws the timbre, renders soundfont variants and writes the training pairs
and the held-out evaluation set; the signal generation and processing live in `synth`.

Ground truth is the MIDI actually rendered (transposed where asked); vibrato, reverb and
release tails change only the sound. Every draw comes from an explicit numpy Generator
seeded from (seed, piece, variant), so a build is reproducible and one piece's timbre
does not depend on which other pieces were skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pretty_midi
import soundfile as sf

from midiforge import corpus, midi_io, render
from midiforge.registry import sha256_file
from midiforge.transcription.synth import (
    TAIL_S,
    VIBRATO_RAMP_S,
    AugmentParams,
    SynthParams,
    Vibrato,
    augment_audio,
    sample_augment,
    sample_synth_params,
    sample_vibrato,
    synth_render,
)

log = logging.getLogger(__name__)

SF2_DIR = Path("/usr/share/sounds/sf2")
# Debian package -> soundfont file. TimGM6mb also ships inside pretty_midi.
TRAINING_SOUNDFONTS = {
    "timgm6mb-soundfont": SF2_DIR / "TimGM6mb.sf2",
    "csound-soundfont": SF2_DIR / "sf_GMbank.sf2",
    "opl3-soundfont": SF2_DIR / "OPL-3_FM_128M.sf2",
}
# The evaluation's soundfont and its derivatives (fluidr3mono, MuseScore General). Paths
# are resolved first: Debian's default-GM.sf2 is a symlink to FluidR3_GM.sf2.
_EVAL_ONLY = re.compile(r"fluidr3|musescore", re.IGNORECASE)
P_SYNTH = 0.3  # share of variants from the additive synthesizer
BEND_RATE_HZ = 100.0  # pitch-bend updates per second: 14+ steps per 7 Hz vibrato cycle
BEND_RANGE_CENTS = 200.0  # GM's default pitch-bend sensitivity (+-2 semitones)
LOWEST_KEY, HIGHEST_KEY = 21, 108  # basic-pitch's 88 keys

# (GM program, weight) per style. Violin-family and string patches dominate; other
# melodic instruments come in at low weight so the model keys on pitch, not on one patch.
STYLE_PROGRAMS: dict[str, tuple[tuple[int, float], ...]] = {
    "fiddle": ((40, 3), (110, 2), (41, 1), (48, 1), (49, 1), (50, 0.5), (51, 0.5),
               (42, 0.3), (73, 0.3), (68, 0.3), (71, 0.3), (21, 0.3), (56, 0.3)),
    "folk": ((73, 2), (74, 1), (40, 1.5), (110, 1), (41, 0.5), (48, 0.5), (71, 0.5),
             (68, 0.5), (21, 0.5), (22, 0.3), (75, 0.3)),
    "chorale": ((19, 2), (20, 1), (48, 1.5), (49, 1), (52, 1), (71, 0.5), (61, 0.5)),
}  # fmt: skip
# Quartet parts by register (high, middle, low): violin-like, viola-like, cello-like.
QUARTET_PROGRAMS: tuple[tuple[tuple[int, float], ...], ...] = (
    ((40, 3), (48, 1), (49, 0.5), (110, 0.5), (73, 0.3), (68, 0.3)),
    ((41, 3), (40, 1), (48, 1), (71, 0.3), (69, 0.3)),
    ((42, 3), (43, 0.5), (48, 0.5), (70, 0.3)),
)


class Variant(NamedTuple):
    audio: np.ndarray  # float32 mono
    midi: pretty_midi.PrettyMIDI  # the ground truth: exactly what was rendered
    description: dict[str, Any]


@dataclass(frozen=True)
class Timbre:
    """One way to render a piece; `describe()` is what the manifest records."""

    source: Literal["soundfont", "synth"]
    soundfont: Path | None = None
    programs: tuple[int, int, int] = (40, 41, 42)  # by register: high, middle, low
    vibrato: Vibrato | None = None
    effects: render.FluidEffects | None = None
    synth: SynthParams | None = None
    augment: AugmentParams | None = None

    def describe(self) -> dict[str, Any]:
        d = _rounded(dataclasses.asdict(self))
        d["soundfont"] = self.soundfont.name if self.soundfont else None
        if self.source == "synth":
            d["programs"] = None
            d["synth"].pop("vibrato", None)  # the same draw as the top-level `vibrato`
        else:
            d["programs"] = sorted(set(self.programs))
            d["instruments"] = [pretty_midi.program_to_instrument_name(p) for p in d["programs"]]
        return d


def _rounded(x: Any) -> Any:
    """Floats to 4 decimals, tuples to lists: a readable, JSON-stable manifest."""
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    if isinstance(x, float | np.floating):
        return round(float(x), 4)
    return x


# --- the training pool -----------------------------------------------------------------


def check_pool(pool: Iterable[str | Path]) -> list[Path]:
    """Existing soundfont paths, refusing the evaluation's soundfont under any name."""
    paths = [Path(p) for p in pool]
    for p in paths:
        if _EVAL_ONLY.search(p.name) or _EVAL_ONLY.search(p.resolve().name):
            raise ValueError(f"{p} is the evaluation soundfont (FluidR3) and never trains")
        if not p.is_file():
            raise render.RenderError(f"soundfont not found: {p}")
    if not paths:
        raise ValueError("the training pool holds no soundfont")
    return paths


def training_soundfonts() -> list[Path]:
    """The default pool: whichever of TimGM6mb, sf_GMbank and OPL-3 are installed."""
    found = [p for p in TRAINING_SOUNDFONTS.values() if p.is_file()]
    if not found:
        found = [render.default_soundfont()] if _has_bundled_soundfont() else []
    if not found:
        raise render.RenderError(
            "no training soundfont found in /usr/share/sounds/sf2; install the Debian "
            f"packages {', '.join(TRAINING_SOUNDFONTS)}"
        )
    return check_pool(found)


def _has_bundled_soundfont() -> bool:
    try:
        render.default_soundfont()
    except render.RenderError:
        return False
    return True


# --- drawing a timbre ------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[tuple[int, float]]) -> int:
    weights = np.array([w for _, w in options], dtype=np.float64)
    return int(options[rng.choice(len(options), p=weights / weights.sum())][0])


def sample_effects(rng: np.random.Generator) -> render.FluidEffects | None:
    """FluidSynth's reverb (and sometimes chorus) on 40% of soundfont renders."""
    if rng.random() >= 0.4:
        return None
    return render.FluidEffects(
        reverb_room_size=float(rng.uniform(0.2, 0.95)),
        reverb_damping=float(rng.uniform(0.0, 0.8)),
        reverb_width=float(rng.uniform(0.5, 50.0)),
        reverb_level=float(rng.uniform(0.3, 0.9)),
        reverb_send=int(rng.integers(30, 111)),
        chorus_nr=int(rng.integers(2, 5)) if rng.random() < 0.3 else 0,
        chorus_level=float(rng.uniform(0.5, 2.5)),
        chorus_speed=float(rng.uniform(0.2, 1.0)),
        chorus_depth=float(rng.uniform(2.0, 10.0)),
        chorus_send=int(rng.integers(30, 101)),
    )


def sample_programs(rng: np.random.Generator, style: str) -> tuple[int, int, int]:
    """GM programs by register (high, middle, low); one program for a whole non-quartet."""
    if style == "quartet":
        high, mid, low = (_pick(rng, opts) for opts in QUARTET_PROGRAMS)
        return high, mid, low
    if style not in STYLE_PROGRAMS:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(corpus.STYLES)}")
    p = _pick(rng, STYLE_PROGRAMS[style])
    return p, p, p


def sample_timbre(
    rng: np.random.Generator,
    style: str,
    pool: Sequence[str | Path] | None = None,
    p_synth: float = P_SYNTH,
) -> Timbre:
    """Draw one way to render `style`; `pool` None is `training_soundfonts()`."""
    soundfonts = check_pool(pool) if pool is not None else training_soundfonts()
    programs = sample_programs(rng, style)  # also validates the style for synth timbres
    if rng.random() < p_synth:
        params = sample_synth_params(rng)
        return Timbre("synth", vibrato=params.vibrato, synth=params, augment=_maybe_augment(rng))
    return Timbre(
        "soundfont",
        soundfont=soundfonts[int(rng.integers(len(soundfonts)))],
        programs=programs,
        vibrato=sample_vibrato(rng),
        effects=sample_effects(rng),
        augment=_maybe_augment(rng),
    )


def _maybe_augment(rng: np.random.Generator) -> AugmentParams | None:
    """A tenth of variants stay clean, as a close-miked studio take would."""
    return None if rng.random() < 0.1 else sample_augment(rng)


# --- soundfont renders: programs by register, vibrato as pitch bend --------------------


def register_role(inst: pretty_midi.Instrument) -> int:
    """0 high (violin-like), 1 middle (viola-like), 2 low (cello-like) by median pitch."""
    median = float(np.median([n.pitch for n in inst.notes])) if inst.notes else 60.0
    return 0 if median >= 65 else (1 if median >= 53 else 2)


def apply_programs(pm: pretty_midi.PrettyMIDI, programs: tuple[int, int, int]) -> None:
    for inst in pm.instruments:
        inst.program = int(programs[register_role(inst)])
        inst.is_drum = False


def vibrato_bends(
    inst: pretty_midi.Instrument, vib: Vibrato, rng: np.random.Generator
) -> list[pretty_midi.PitchBend]:
    """Pitch-bend curve for one instrument (one channel).

    Per note, not one continuous LFO: a player starts each note at pitch and lets the
    vibrato in after `delay_s`, so onsets stay clean and the delay is audible on every
    note. A channel has one bend, so notes sounding together share it (as a double stop
    on one bow does); the curve restarts at each onset with a random phase.
    """
    onsets = np.unique([n.start for n in inst.notes])
    if onsets.size == 0:
        return []
    end = max(n.end for n in inst.notes)  # later bends would lengthen the render
    t = np.union1d(np.arange(onsets[0], end, 1.0 / BEND_RATE_HZ), onsets)  # onsets exact
    idx = np.searchsorted(onsets, t, side="right") - 1
    since = t - onsets[idx]
    phase = rng.uniform(0.0, 2 * np.pi, onsets.size)[idx]
    ramp = np.clip((since - vib.delay_s) / VIBRATO_RAMP_S, 0.0, 1.0)
    cents = vib.depth_cents * ramp * np.sin(2 * np.pi * vib.rate_hz * since + phase)
    values = np.clip(np.round(cents / BEND_RANGE_CENTS * 8192), -8192, 8191).astype(int)
    keep = np.r_[True, values[1:] != values[:-1]]  # only changes are events
    return [
        pretty_midi.PitchBend(int(v), float(x)) for v, x in zip(values[keep], t[keep], strict=True)
    ]


def render_soundfont(
    pm: pretty_midi.PrettyMIDI, timbre: Timbre, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """FluidSynth render of `pm` (programs already set) with the timbre's bends/effects."""
    staged = copy.deepcopy(pm)
    if timbre.vibrato is not None:
        for inst in staged.instruments:
            inst.pitch_bends = vibrato_bends(inst, timbre.vibrato, rng)
    return render.render_midi(
        staged, timbre.soundfont, sample_rate, tail_s=TAIL_S, effects=timbre.effects
    )


# --- variants, training pairs and the held-out evaluation set ----------------------------


def transpose(pm: pretty_midi.PrettyMIDI, semitones: int) -> pretty_midi.PrettyMIDI:
    out = copy.deepcopy(pm)
    for inst in out.instruments:
        for n in inst.notes:
            n.pitch += semitones
    return out


def _draw_shift(pm: pretty_midi.PrettyMIDI, max_transpose: int, rng: np.random.Generator) -> int:
    """Uniform in +-max_transpose, narrowed so every note stays on basic-pitch's keys."""
    pitches = [n.pitch for inst in pm.instruments for n in inst.notes]
    if not max_transpose or not pitches:
        return 0
    lo = max(-max_transpose, LOWEST_KEY - min(pitches))
    hi = min(max_transpose, HIGHEST_KEY - max(pitches))
    return int(rng.integers(lo, hi + 1)) if lo <= hi else 0


def render_timbre(
    pm: pretty_midi.PrettyMIDI, timbre: Timbre, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Render with one timbre, then its recording chain. `pm` is not modified."""
    if timbre.source == "synth":
        if timbre.synth is None:
            raise ValueError("a synth timbre needs SynthParams")
        audio = synth_render(pm, sample_rate, timbre.synth, rng)
    else:
        audio = render_soundfont(pm, timbre, sample_rate, rng)
    if timbre.augment is not None:
        audio = augment_audio(audio, sample_rate, rng, timbre.augment)
    if not np.isfinite(audio).all() or float(np.max(np.abs(audio), initial=0.0)) == 0.0:
        raise corpus.PieceError(f"{timbre.source} render produced silence or invalid samples")
    return audio


def render_variant(
    pm: pretty_midi.PrettyMIDI,
    rng: np.random.Generator,
    style: str,
    pool: Sequence[str | Path] | None = None,
    sample_rate: int = render.DEFAULT_SAMPLE_RATE,
    *,
    max_transpose: int = 0,
    p_synth: float = P_SYNTH,
) -> Variant:
    """One training variant of `pm`: a drawn timbre, optionally transposed.

    The returned MIDI is the ground truth for the audio: transposed, programs set, and
    round-tripped through MIDI bytes so it equals the file a caller writes. Vibrato
    bends live only on the render's private copy: they are performance, not notes.
    """
    timbre = sample_timbre(rng, style, pool, p_synth)
    shift = _draw_shift(pm, max_transpose, rng)
    truth = transpose(pm, shift)
    if timbre.source == "soundfont":
        apply_programs(truth, timbre.programs)
    truth = midi_io.load_midi(midi_io.midi_bytes(truth))
    audio = render_timbre(truth, timbre, sample_rate, rng)
    return Variant(audio, truth, {**timbre.describe(), "transpose": shift})


def variant_rng(seed: int, piece_id: str, k: int) -> np.random.Generator:
    """Independent of which other pieces were rendered or skipped."""
    return np.random.default_rng([seed, zlib.crc32(piece_id.encode()), k])


def write_pair(
    out: Path, cand: corpus.Candidate, k: int, variant: Variant, sample_rate: int
) -> dict[str, Any]:
    """Write audio/{piece}__v{k}.wav and midi/{piece}__v{k}.mid; returns their entry."""
    stem = f"{cand.piece_id}__v{k}"
    sf.write(out / "audio" / f"{stem}.wav", variant.audio, sample_rate, subtype="FLOAT")
    (out / "midi" / f"{stem}.mid").write_bytes(midi_io.midi_bytes(variant.midi))
    return {
        "piece": cand.piece_id,
        "source": cand.source,
        "variant": k,
        "audio": f"audio/{stem}.wav",
        "midi": f"midi/{stem}.mid",
        "audio_seconds": round(len(variant.audio) / sample_rate, 4),
        "n_notes": int(sum(len(i.notes) for i in variant.midi.instruments)),
        "timbre": variant.description,
    }


def _failure(cand: corpus.Candidate, e: Exception) -> dict[str, str]:
    log.warning("skipped %s: %s", cand.piece_id, e)
    return {"piece": cand.piece_id, "source": cand.source, "reason": str(e)}


def _soundfont_record(paths: Iterable[Path]) -> list[dict[str, str]]:
    return [{"name": p.name, "path": str(p), "sha256": sha256_file(p)} for p in paths]


def _prepare_out(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    for sub in ("audio", "midi"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def build_pairs(
    style: str,
    n_pieces: int,
    seconds: float,
    out_dir: str | Path,
    seed: int,
    *,
    variants_per_piece: int = 1,
    skip_pieces: Iterable[str] = frozenset(),
    offset: int = 0,
    pool: Sequence[str | Path] | None = None,
    sample_rate: int = render.DEFAULT_SAMPLE_RATE,
    max_transpose: int = 0,
    p_synth: float = P_SYNTH,
) -> dict[str, Any]:
    """Render `n_pieces` usable pieces of `style`, `variants_per_piece` timbres each.

    Pieces come from `corpus.select(style, seed)` starting at `offset`; those in
    `skip_pieces` (held-out evaluation pieces) are never rendered. Writes
    audio/{piece}__v{k}.wav + midi/{piece}__v{k}.mid and manifest.json, which it returns;
    the manifest holds no timings or output paths, so a seed reproduces it exactly.
    """
    out = _prepare_out(out_dir)
    soundfonts = check_pool(pool) if pool is not None else training_soundfonts()
    skip = set(skip_pieces)
    pairs, failures, skipped, done = [], [], [], 0
    for cand in corpus.select(style, seed)[offset:]:
        if done == n_pieces:
            break
        if cand.piece_id in skip:
            skipped.append(cand.piece_id)
            continue
        try:
            pm, _ = corpus.score_to_midi(cand, seconds)
            variants = [
                render_variant(pm, variant_rng(seed, cand.piece_id, k), style, soundfonts,
                               sample_rate, max_transpose=max_transpose, p_synth=p_synth)
                for k in range(variants_per_piece)
            ]  # fmt: skip
        except (corpus.PieceError, ValueError) as e:
            failures.append(_failure(cand, e))
            continue
        # Written only once every variant rendered: a failed piece leaves no files.
        pairs += [write_pair(out, cand, k, v, sample_rate) for k, v in enumerate(variants)]
        done += 1
    if done < n_pieces:
        failures.append({"piece": None, "source": style, "reason": f"only {done} usable pieces"})
    manifest = {
        "kind": "training-pairs",
        "style": style,
        "seed": seed,
        "seconds": seconds,
        "sample_rate": sample_rate,
        "variants_per_piece": variants_per_piece,
        "offset": offset,
        "max_transpose": max_transpose,
        "p_synth": p_synth,
        "pool": _soundfont_record(soundfonts),  # the training soundfonts
        "skipped_held_out": skipped,
        "pairs": pairs,
        "failures": failures,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _resolve(style: str, pieces: Iterable[corpus.Candidate | str]) -> list[corpus.Candidate]:
    """Candidates, or piece ids looked up among the style's candidates."""
    items = list(pieces)
    ids = [p for p in items if isinstance(p, str)]
    by_id = {c.piece_id: c for c in corpus.list_candidates(style)} if ids else {}
    missing = [p for p in ids if p not in by_id]
    if missing:
        raise ValueError(f"unknown {style} pieces: {', '.join(missing)}")
    return [by_id[p] if isinstance(p, str) else p for p in items]


def render_eval_set(
    style: str,
    pieces: Iterable[corpus.Candidate | str],
    seconds: float,
    out_dir: str | Path,
    soundfont: str | Path,
    *,
    program: int | None = None,
    sample_rate: int = render.DEFAULT_SAMPLE_RATE,
) -> dict[str, Any]:
    """Plain renders of held-out pieces with one soundfont: no effects, no augmentation,
    the style's default programs (or `program` for every part). Same layout as
    `build_pairs` (stems {piece}__v0), so one prepare command reads both."""
    out = _prepare_out(out_dir)
    sf_path = Path(soundfont)
    rng = random.Random(0)  # assign_programs draws nothing when vary=False
    pairs, failures = [], []
    for cand in _resolve(style, pieces):
        try:
            pm, _ = corpus.score_to_midi(cand, seconds)
            corpus.assign_programs(pm, style, False, rng)
            if program is not None:
                for inst in pm.instruments:
                    inst.program = int(program)
            pm = midi_io.load_midi(midi_io.midi_bytes(pm))
            audio = render.render_midi(pm, sf_path, sample_rate)
        except (corpus.PieceError, ValueError) as e:
            failures.append(_failure(cand, e))
            continue
        programs = sorted({int(inst.program) for inst in pm.instruments})
        plain = {"source": "soundfont", "soundfont": sf_path.name, "programs": programs}
        pairs.append(write_pair(out, cand, 0, Variant(audio, pm, plain), sample_rate))
    manifest = {
        "kind": "evaluation",
        "style": style,
        "seconds": seconds,
        "sample_rate": sample_rate,
        "soundfont": _soundfont_record([sf_path])[0],
        "pairs": pairs,
        "failures": failures,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
