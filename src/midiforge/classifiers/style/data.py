"""Labelled recordings for the style classifier: corpus renders, user folders, the split.

Every corpus piece is rendered `variants` times, each with another instrument and
soundfont, and the instruments overlap between styles (piano, violin and flute play in
several), so the label is carried by the music, not by the patch. A user adds a style
as a folder `DIR/STYLE_NAME/*.wav`; the part of a file's stem before `__` names its
piece, so several takes of one piece stay together.

The split is by piece, never by clip or recording: clips of one piece on both sides
let a model recognise the piece instead of the style and inflate accuracy (GTZAN's
artist-and-recording leak). It is stratified per style so every style is tested.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midiforge import audio, corpus, render
from midiforge.classifiers.style.features import clips
from midiforge.errors import MidiforgeError

__all__ = [
    "SPLITS",
    "Item",
    "StyleDataError",
    "clips",
    "load_recording",
    "render_style_set",
    "scan_items",
    "soundfont_pool",
    "split_by_piece",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SF2_DIR = Path("/usr/share/sounds/sf2")
# Four GM banks that sound unlike each other (sampled, small sampled, FM). FluidR3 is
# held out of transcription training only; a style model may hear it.
SOUNDFONTS = ("FluidR3_GM.sf2", "TimGM6mb.sf2", "sf_GMbank.sf2", "OPL-3_FM_128M.sf2")


class StyleDataError(MidiforgeError, ValueError):
    """Training data that cannot make a style set: an empty style, too few pieces."""


@dataclass(frozen=True, order=True)
class Item:
    """One recording with its label; `piece` groups a piece's recordings for the split."""

    style: str
    piece: str
    path: Path

    @property
    def recording(self) -> str:
        return f"{self.style}/{self.path.stem}"


# --- rendering the corpus -------------------------------------------------------------


def soundfont_pool() -> list[Path]:
    """The installed SOUNDFONTS, else pretty_midi's bundled TimGM6mb."""
    found = [SF2_DIR / name for name in SOUNDFONTS if (SF2_DIR / name).is_file()]
    return found or [render.default_soundfont()]


def _piece_rng(seed: int, piece_id: str, k: int) -> np.random.Generator:
    """Independent of which other pieces were rendered or skipped."""
    return np.random.default_rng([seed, zlib.crc32(piece_id.encode()), k])


def variant_programs(pm: Any, style: str, choice: int) -> list[int]:
    """Set and return the GM programs of one variant; `choice` indexes the style's options.

    Non-quartets play one instrument from `corpus.VARY_PROGRAMS`. Quartet parts keep
    their register and move together through `corpus.VARY_QUARTET`'s columns (strings,
    winds, piano, string ensemble), so a variant is one coherent ensemble.
    """
    if style == "quartet":
        roles = corpus.assign_programs(pm, style, False, random.Random(0))  # draws nothing
        column = choice % len(corpus.VARY_QUARTET[corpus.VIOLIN])
        programs = [corpus.VARY_QUARTET[r][column] for r in roles]
    else:
        choices = corpus.VARY_PROGRAMS[style]
        programs = [choices[choice % len(choices)]] * len(pm.instruments)
    for inst, program in zip(pm.instruments, programs, strict=True):
        inst.program = int(program)
        inst.is_drum = False
    return programs


def _render_piece(
    cand: corpus.Candidate, seconds: float, variants: int, seed: int, pool: list[Path]
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    import copy

    import pretty_midi

    from midiforge.transcription.variety import sample_effects

    pm, _ = corpus.score_to_midi(cand, seconds)
    order_rng = _piece_rng(seed, cand.piece_id, 0)
    n_choices = (
        len(corpus.VARY_QUARTET[corpus.VIOLIN])
        if cand.style == "quartet"
        else len(corpus.VARY_PROGRAMS[cand.style])
    )
    # Permutations, so a piece's variants differ in instrument and (when there are
    # enough soundfonts) in soundfont.
    programs_order = order_rng.permutation(n_choices)
    sf_order = order_rng.permutation(len(pool))
    out = []
    for k in range(variants):
        rng = _piece_rng(seed, cand.piece_id, k + 1)
        staged = copy.deepcopy(pm)
        programs = variant_programs(staged, cand.style, int(programs_order[k % n_choices]))
        soundfont = pool[int(sf_order[k % len(pool)])]
        effects = sample_effects(rng)  # reverb/chorus on 40%, as transcription draws it
        wave = render.render_midi(staged, soundfont, audio.TRANSCRIPTION_SR, effects=effects)
        if not np.isfinite(wave).all() or float(np.max(np.abs(wave), initial=0.0)) == 0.0:
            raise corpus.PieceError("the synthesizer produced silence or invalid samples")
        entry = {
            "variant": k,
            "programs": sorted(set(programs)),
            "instruments": [
                pretty_midi.program_to_instrument_name(p) for p in sorted(set(programs))
            ],
            "soundfont": soundfont.name,
            "effects": effects is not None,
            "seconds": round(wave.size / audio.TRANSCRIPTION_SR, 3),
        }
        out.append((wave, entry))
    return out


def render_style_set(  # noqa: PLR0917 - the six read as one sentence: what, how many, where
    styles: Iterable[str],
    pieces_per_style: int,
    seconds: float,
    out_dir: str | Path,
    seed: int,
    variants: int = 3,
    *,
    pool: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Render `pieces_per_style` usable corpus pieces per style, `variants` timbres each,
    to out_dir/STYLE/PIECE__vK.wav; write and return manifest.json.

    Pieces come from `corpus.select(style, seed)` in order; a piece music21 cannot export
    is skipped and listed under `failures`. The manifest holds no timings, so a seed
    reproduces it exactly.
    """
    import soundfile as sf

    styles = list(styles)
    unknown = [s for s in styles if s not in corpus.STYLES]
    if unknown:
        raise StyleDataError(
            f"cannot render styles {unknown}: the corpus has {', '.join(corpus.STYLES)}; "
            "add other styles as folders of audio (user_styles)"
        )
    if pieces_per_style < 1 or variants < 1 or seconds <= 0:
        raise StyleDataError("pieces_per_style and variants must be >= 1, seconds > 0")
    soundfonts = [Path(p) for p in pool] if pool is not None else soundfont_pool()
    out = Path(out_dir)
    recordings, failures = [], []
    for style in styles:
        (out / style).mkdir(parents=True, exist_ok=True)
        done = 0
        for cand in corpus.select(style, seed):
            if done == pieces_per_style:
                break
            try:
                rendered = _render_piece(cand, seconds, variants, seed, soundfonts)
            except (corpus.PieceError, ValueError) as e:
                log.warning("skipped %s: %s", cand.piece_id, e)
                failures.append({"piece": cand.piece_id, "style": style, "reason": str(e)})
                continue
            for wave, entry in rendered:  # written only once every variant rendered
                rel = f"{style}/{cand.piece_id}__v{entry['variant']}.wav"
                sf.write(out / rel, wave, audio.TRANSCRIPTION_SR, subtype="FLOAT")
                recordings.append({"piece": cand.piece_id, "style": style, "audio": rel, **entry})
            done += 1
        if done < pieces_per_style:
            failures.append({"piece": None, "style": style, "reason": f"only {done} pieces"})
        log.info("rendered %d %s pieces x %d variants", done, style, variants)
    manifest = {
        "kind": "style-set",
        "params": render_params(
            styles,
            pieces_per_style=pieces_per_style,
            seconds=seconds,
            seed=seed,
            variants=variants,
            pool=soundfonts,
        ),
        "recordings": recordings,
        "failures": failures,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def render_params(
    styles: Sequence[str],
    *,
    pieces_per_style: int,
    seconds: float,
    seed: int,
    variants: int,
    pool: Sequence[Path],
) -> dict[str, Any]:
    """What decides a render's content: a cached set is reused only if these match."""
    return {
        "styles": list(styles),
        "pieces_per_style": pieces_per_style,
        "seconds": seconds,
        "seed": seed,
        "variants": variants,
        "soundfonts": [Path(p).name for p in pool],
        "sample_rate": audio.TRANSCRIPTION_SR,
    }


# --- reading labelled folders -----------------------------------------------------------


def scan_items(root: str | Path, styles: Iterable[str] | None = None) -> list[Item]:
    """Every audio file root/STYLE/*.{wav,flac,mp3,ogg} as an Item, sorted.

    Works for a `render_style_set` folder and for a user's folder of styles alike; the
    file stem before `__` is the piece. `styles` None takes every subfolder with audio.
    """
    base = Path(root)
    if not base.is_dir():
        raise StyleDataError(f"no style folder {base}: want {base}/STYLE_NAME/*.wav")
    wanted = None if styles is None else set(styles)
    items = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if wanted is not None and folder.name not in wanted:
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in audio.AUDIO_EXTENSIONS:
                items.append(Item(folder.name, f.stem.split("__")[0], f))
    found = {i.style for i in items}
    missing = sorted((wanted or set()) - found)
    if missing:
        raise StyleDataError(f"{base} holds no audio for style(s) {', '.join(missing)}")
    if not items:
        raise StyleDataError(
            f"{base} holds no audio files: want {base}/STYLE_NAME/*.wav "
            f"({' '.join(audio.AUDIO_EXTENSIONS)})"
        )
    return items


def load_recording(path: str | Path, sample_rate: int = audio.TRANSCRIPTION_SR) -> np.ndarray:
    """An audio file -> float32 mono at `sample_rate`; StyleDataError names a bad file.
    The classifier's own limits apply (at least 1 s, not silent), so a recording it would
    refuse to score stops the data build before training, not its evaluation after."""
    p = Path(path)
    try:
        x, sr = audio.decode_checked(p.read_bytes(), audio.AudioLimits())
    except audio.AudioError as e:
        raise StyleDataError(f"{p}: {e}") from None
    return audio.to_mono(x, sr, sample_rate)


# --- the split ----------------------------------------------------------------------------


def _counts(n: int, fractions: Sequence[float], style: str) -> list[int]:
    """Pieces per split: every split with a positive fraction gets one piece or more."""
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n < len(wanted):
        raise StyleDataError(
            f"style {style!r} has {n} piece(s); a split into {len(wanted)} parts needs "
            f"{len(wanted)} or more (render more pieces or set a fraction to 0)"
        )
    counts = [0] * len(fractions)
    for i in wanted[1:]:  # every split but train: rounded, at least 1
        counts[i] = max(1, round(n * fractions[i]))
    counts[0] = n - sum(counts)
    if counts[0] < 1:
        raise StyleDataError(f"style {style!r}: {n} pieces leave none for training")
    return counts


def split_by_piece(
    items: Iterable[Item],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[Item]]:
    """{train, val, test} -> items, with every recording (and so every clip) of a piece on
    one side, stratified per style. `fractions` are of pieces (train, val, test); train
    takes what val and test leave. The same seed gives the same split."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise StyleDataError(f"fractions {list(fractions)}: want (train > 0, val >= 0, test >= 0)")
    by_style: dict[str, dict[str, list[Item]]] = {}
    for item in items:
        by_style.setdefault(item.style, {}).setdefault(item.piece, []).append(item)
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for style, pieces in sorted(by_style.items()):
        names = sorted(pieces)
        random.Random(f"{seed}:{style}").shuffle(names)
        start = 0
        for split, count in zip(SPLITS, _counts(len(names), fractions, style), strict=True):
            for name in names[start : start + count]:
                out[split] += pieces[name]
            start += count
    return {s: sorted(v) for s, v in out.items()}
