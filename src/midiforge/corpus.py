"""music21's bundled corpus as styled MIDI sets: real music with exact ground truth.

Styles and where they come from:

- chorale: Bach chorales (`bach/bwvN.M`), four voices.
- fiddle:  Ryan's Mammoth Collection, one reel/jig/hornpipe per ABC file.
- folk:    Essen folk songs; each collection file holds hundreds of tunes, so one
           candidate is (file, X: number) and is parsed alone with `number=`.
- quartet: Haydn, Mozart and Beethoven string quartet movements.

Selection is deterministic: candidates are listed in sorted order and shuffled by a
generator seeded from (seed, style).
"""

from __future__ import annotations

import copy
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pretty_midi

from midiforge import midi_io

log = logging.getLogger(__name__)

STYLES = ("chorale", "fiddle", "folk", "quartet")

# General MIDI programs (0-based). Defaults are the natural instrument of each style;
# the `vary` lists are what --vary-instruments draws from, so that models trained on
# these renders learn the music rather than one patch.
VIOLIN, VIOLA, CELLO, CHURCH_ORGAN, FLUTE = 40, 41, 42, 19, 73
DEFAULT_PROGRAMS = {"chorale": CHURCH_ORGAN, "fiddle": VIOLIN, "folk": FLUTE}
VARY_PROGRAMS = {
    # organ, reed organ, piano, strings, choir aahs, brass section, clarinet
    "chorale": (19, 20, 0, 48, 52, 61, 71),
    # violin, fiddle, flute, accordion, harmonica, nylon guitar, piano, banjo
    "fiddle": (40, 110, 73, 21, 22, 24, 0, 105),
    # flute, recorder, accordion, piano, nylon guitar, harp, violin, clarinet
    "folk": (73, 74, 21, 0, 24, 46, 40, 71),
}
# Quartet parts vary within their register: (violin-like, viola-like, cello-like).
VARY_QUARTET = {
    VIOLIN: (40, 73, 68, 0, 48),  # violin, flute, oboe, piano, strings
    VIOLA: (41, 71, 69, 0, 48),  # viola, clarinet, english horn, piano, strings
    CELLO: (42, 70, 32, 0, 48),  # cello, bassoon, acoustic bass, piano, strings
}
_QUARTET_FILES = re.compile(
    r"^(haydn/opus(1no1|74no1)/movement\d|mozart/k(80|155|156|458)/movement\d"
    r"|beethoven/(opus18no\d(/movement\d)?|opus59no\d/movement\d|opus74|opus132|opus133))\.mxl$"
)


@dataclass(frozen=True, order=True)
class Candidate:
    style: str
    path: str  # corpus-relative, e.g. "bach/bwv1.6.mxl"
    number: int | None = None  # tune number inside an ABC collection

    @property
    def piece_id(self) -> str:
        stem = re.sub(r"\.(mxl|abc|krn|xml)$", "", self.path).replace("/", "-")
        return f"{self.style}-{stem}" + (f"-{self.number}" if self.number is not None else "")

    @property
    def source(self) -> str:
        return f"music21:{self.path}" + (f"#{self.number}" if self.number is not None else "")


class PieceError(RuntimeError):
    """A corpus piece that cannot be turned into MIDI; the message is the reason."""


def _corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def _rel(path: Path) -> str:
    return path.relative_to(_corpus_root()).as_posix()


def list_candidates(style: str) -> list[Candidate]:
    from music21 import corpus

    if style == "chorale":
        paths = [p for p in corpus.getComposer("bach") if re.search(r"bwv\d+\.\d+", Path(p).name)]
        return sorted(Candidate(style, _rel(Path(p))) for p in paths)
    if style == "fiddle":
        return sorted(Candidate(style, _rel(Path(p))) for p in corpus.getComposer("ryansMammoth"))
    if style == "folk":
        out = []
        for p in sorted(corpus.getComposer("essenFolksong")):
            text = Path(p).read_text(encoding="latin-1")
            numbers = sorted({int(x) for x in re.findall(r"^X:\s*(\d+)", text, re.MULTILINE)})
            out += [Candidate(style, _rel(Path(p)), n) for n in numbers]
        return out
    if style == "quartet":
        rels = {
            _rel(Path(p)) for c in ("haydn", "mozart", "beethoven") for p in corpus.getComposer(c)
        }
        return sorted(Candidate(style, r) for r in rels if _QUARTET_FILES.match(r))
    raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")


def select(style: str, seed: int) -> list[Candidate]:
    """All candidates of a style in a seed-determined order (take from the front)."""
    cands = list_candidates(style)
    random.Random(f"{seed}:{style}").shuffle(cands)
    return cands


# --- score -> MIDI ----------------------------------------------------------------


def _strip_repeats(score) -> None:
    """Remove repeat barlines, volta brackets and repeat marks (segno, D.C., ...), so
    the written notes play once in order: music21 refuses to expand repeats it finds
    badly formed (ExpanderException), which ABC tunes and measure excerpts often are."""
    from music21 import bar, repeat, spanner

    for m in list(score.recurse().getElementsByClass("Measure")):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = bar.Barline("regular")
    marks = (repeat.RepeatExpression, spanner.RepeatBracket)
    for el in list(score.recurse().getElementsByClass(marks)):
        if el.activeSite is not None:
            el.activeSite.remove(el)


def _unshare_time_signatures(score) -> None:
    """Give each measure its own TimeSignature; ABC imports share one object between
    measures, and MIDI export then fails with "already found in this Stream"."""
    from music21 import meter

    seen: set[int] = set()
    for measure in score.recurse().getElementsByClass("Measure"):
        for ts in list(measure.getElementsByClass(meter.TimeSignature)):
            if id(ts) in seen:
                measure.replace(ts, copy.deepcopy(ts))
            seen.add(id(ts))


def _to_midi(score) -> pretty_midi.PrettyMIDI:
    from music21 import midi as m21midi

    return midi_io.load_midi(m21midi.translate.streamToMidiFile(score).writestr())


def _export(score) -> pretty_midi.PrettyMIDI:
    """Score -> PrettyMIDI, with the two known music21 export failures repaired."""
    try:
        return _to_midi(score)
    except Exception as first:  # music21 raises ExpanderException / StreamException
        log.debug("MIDI export failed (%s); stripping repeats and retrying", first)
    score = copy.deepcopy(score)
    _strip_repeats(score)
    _unshare_time_signatures(score)
    try:
        return _to_midi(score)
    except Exception as e:
        raise PieceError(f"music21 cannot export MIDI: {type(e).__name__}: {e}") from None


def _parse(cand: Candidate):
    from music21 import corpus

    try:
        if cand.number is not None:
            return corpus.parse(cand.path, number=cand.number)
        return corpus.parse(cand.path)
    except Exception as e:  # parse errors come from many music21 sub-parsers
        raise PieceError(f"music21 cannot parse: {type(e).__name__}: {e}") from None


def score_to_midi(cand: Candidate, seconds: float) -> tuple[pretty_midi.PrettyMIDI, list[str]]:
    """The first `seconds` of a corpus piece as MIDI, plus its part names.

    Exporting a whole quartet movement takes ~8 s, so we export a few measures first and
    double the count until the excerpt is long enough, then cut exactly. Where a score
    has no tempo mark, music21 plays quarter = 120.
    """
    score = _parse(cand)
    if score is None:
        raise PieceError("music21 returned no score")
    parts = list(getattr(score, "parts", [])) or [score]
    part_names = [(p.partName or "") for p in parts]
    n_measures = max((len(p.getElementsByClass("Measure")) for p in parts), default=0)
    k = 8
    while True:
        excerpt = score.measures(0, k) if n_measures > k else score
        pm = _export(excerpt)
        if excerpt is score or pm.get_end_time() >= seconds:
            break
        k *= 2
    midi_io.truncate(pm, seconds)
    if not pm.instruments:
        raise PieceError(f"no notes in the first {seconds:g} s")
    return pm, part_names


def _quartet_role(name: str, index: int) -> int:
    n = name.lower()
    if "viola" in n:
        return VIOLA
    if "cello" in n or "violoncello" in n or "bass" in n:
        return CELLO
    if "violin" in n or "vl" in n:
        return VIOLIN
    return (VIOLIN, VIOLIN, VIOLA, CELLO)[min(index, 3)]


def assign_programs(
    pm: pretty_midi.PrettyMIDI, style: str, vary: bool, rng: random.Random
) -> list[int]:
    """Set each instrument's GM program for `style`; returns the programs in order."""
    if style == "quartet":
        roles = [_quartet_role(inst.name, i) for i, inst in enumerate(pm.instruments)]
        programs = [rng.choice(VARY_QUARTET[r]) if vary else r for r in roles]
    else:
        program = rng.choice(VARY_PROGRAMS[style]) if vary else DEFAULT_PROGRAMS[style]
        programs = [program] * len(pm.instruments)
    for inst, prog in zip(pm.instruments, programs, strict=True):
        inst.program = int(prog)
        inst.is_drum = False
    return programs
