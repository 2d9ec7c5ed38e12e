"""Generation on onnxruntime with a KV cache, constrained to the REMI grammar; or by rules.

`Generator.load("rules")` is the rule-based baseline; any other name is a registered,
exported language model. Sampling is seeded: same request, same MIDI. The grammar
(lm.grammar) masks every token that would break REMI's order or the bar count, so the
result always has exactly the requested number of bars.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)
RULES = "rules"


class GenerateError(MidiforgeError, ValueError):
    """A generation request that cannot be served; the message says why."""


@dataclass
class GenerateRequest:
    style: str = "fiddle"
    key: str = "D major"
    bpm: float = 120.0
    bars: int = 16
    temperature: float = 1.0  # <= 0: greedy
    top_p: float = 0.95
    seed: int = 0
    time_signature: str = "4/4"
    prompt_midi: bytes | None = None  # its first bars open the piece and count towards `bars`
    programs: list[int] | None = None  # GM programs to play; None = the style's own

    def check(self) -> None:
        from midiforge.lm.rules import Meter
        from midiforge.lm.vocab import parse_key

        try:
            parse_key(self.key)
            Meter.parse(self.time_signature)
        except ValueError as e:
            raise GenerateError(str(e)) from None
        if self.seed < 0:
            raise GenerateError(f"seed must be >= 0, not {self.seed}")
        bad = [p for p in self.programs or [] if not 0 <= p <= 127]
        if bad:
            raise GenerateError(f"GM programs are 0..127, not {bad}")
        if not 1 <= self.bars <= 256:
            raise GenerateError(f"bars must be 1..256, not {self.bars}")
        if not 20 <= self.bpm <= 300:
            raise GenerateError(f"bpm must be 20..300, not {self.bpm}")
        if not 0 < self.top_p <= 1:
            raise GenerateError(f"top_p must be in (0, 1], not {self.top_p}")


@dataclass
class GenerateResult:
    midi: bytes
    bars: int
    n_notes: int
    n_tokens: int
    seconds: float


def mean_nll(logits: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of `targets` under `logits` (T, V), and the count."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), targets].sum()), len(targets)


def _count_notes(midi: bytes) -> int:
    from midiforge import midi_io

    return int(sum(len(i.notes) for i in midi_io.load_midi(midi).instruments))


def at_bpm(midi: bytes, bpm: float) -> bytes:
    """The same notes (in ticks) played at `bpm`: REMI's tempo tokens are quantized (140 ->
    Tempo_141.61), but the user asked for 140. Later tempo changes keep their ratios."""
    import io

    import mido

    mf = mido.MidiFile(file=io.BytesIO(midi))
    tempos = [m for t in mf.tracks for m in t if m.type == "set_tempo"]
    if not tempos:
        mf.tracks[0].insert(0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    else:
        ratio = mido.bpm2tempo(bpm) / tempos[0].tempo
        for m in tempos:
            m.tempo = round(m.tempo * ratio)
    buf = io.BytesIO()
    mf.save(file=buf)
    return buf.getvalue()


class Generator:
    """Common interface of the rule baseline and the neural models."""

    name: str

    @staticmethod
    def load(
        name: str, models_root: str | None = None, int8: bool = False, threads: int = 0
    ) -> Generator:
        if name == RULES:
            return RulesGenerator()
        return NeuralGenerator.from_registry(name, models_root, int8, threads)

    def style_for(self, style: str) -> str:
        return style

    def perplexity(self, token_lists, style: str, keys: list[str]) -> float | None:
        return None

    def generate(self, req: GenerateRequest) -> GenerateResult:
        raise NotImplementedError


class RulesGenerator(Generator):
    name = RULES

    def generate(self, req: GenerateRequest) -> GenerateResult:
        from midiforge.lm.rules import generate_rules

        req.check()
        # Refused rather than dropped: the rules write one fresh line on one instrument.
        if req.prompt_midi:
            raise GenerateError("the rules generator does not continue a prompt (prompt_midi)")
        if req.programs and len(req.programs) > 1:
            raise GenerateError(f"the rules generator plays one program, not {req.programs}")
        t0 = time.perf_counter()
        kw = {"program": req.programs[0]} if req.programs else {}
        midi = generate_rules(
            req.key, req.bpm, req.bars, req.seed, time_signature=req.time_signature, **kw
        )
        return GenerateResult(midi, req.bars, _count_notes(midi), 0, time.perf_counter() - t0)


def sample(logits: np.ndarray, mask: np.ndarray, temperature: float, top_p: float, rng) -> int:
    """One token from the allowed ones: temperature, then nucleus (top-p) sampling."""
    allowed = np.flatnonzero(mask)
    z = logits[allowed].astype(np.float64)
    if temperature <= 0 or len(allowed) == 1:
        return int(allowed[int(np.argmax(z))])
    z = (z - z.max()) / temperature
    p = np.exp(z)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
    # What rng.choice(len(keep), p=q) computes, without its per-call validation of q
    # (5-20 us a token): the same uniform draw, so the same tokens for a seed.
    cdf = np.cumsum(p[keep] / p[keep].sum())
    cdf /= cdf[-1]
    return int(allowed[keep[int(np.searchsorted(cdf, rng.random(), side="right"))]])


def _training_seq_len(folder: Path, default: int = 256) -> int:
    import yaml

    path = folder / "lm_config.yaml"
    if not path.is_file():
        return default
    cfg = yaml.safe_load(path.read_text()) or {}
    return int((cfg.get("schedule") or {}).get("seq_len") or default)


class NeuralGenerator(Generator):
    """An exported model folder: model.onnx (or model.int8.onnx), vocab.json, tokenizer.json."""

    def __init__(self, folder: str | Path, name: str = "", int8: bool = False, threads: int = 0):
        from midiforge.lm.grammar import RemiGrammar
        from midiforge.lm.onnx_lm import OnnxCausalLM
        from midiforge.lm.vocab import LMVocab
        from midiforge.symbolic.tokenize import load_tokenizer

        folder = Path(folder)
        onnx = folder / ("model.int8.onnx" if int8 else "model.onnx")
        if not onnx.is_file():
            hint = " --int8" if int8 else ""
            raise GenerateError(
                f"model {name or folder} has no {onnx.name}: run `midiforge lm export {name}{hint}`"
            )
        self.name = name or folder.name
        self.vocab = LMVocab.load(folder / "vocab.json")
        self.tokenizer = load_tokenizer(folder / "tokenizer.json")
        self.lm = OnnxCausalLM(onnx, intra_op_threads=threads)
        self.grammar = RemiGrammar(self.tokenizer, self.lm.vocab_size)
        self.seq_len = _training_seq_len(folder)
        self.names = {v: k for k, v in self.tokenizer.vocab.items()}
        self.time_signatures = sorted(
            n.removeprefix("TimeSig_") for n in self.tokenizer.vocab if n.startswith("TimeSig_")
        )

    @classmethod
    def from_registry(
        cls, name: str, models_root: str | None, int8: bool = False, threads: int = 0
    ) -> NeuralGenerator:
        from midiforge import registry

        reg = registry.Registry(models_root)
        manifest = reg.manifest(name)
        if manifest.kind != "lm":
            raise GenerateError(f"model {name!r} is a {manifest.kind}, not a language model")
        return cls(reg.fetch(name), name, int8, threads)

    def style_for(self, style: str) -> str:
        """The style token to condition on: the style itself when the model knows it. A base
        model that never saw the style is asked for its closest-in-kind known style (folk
        melodies, when it has them), which is how a generic model would be used."""
        if style in self.vocab.styles:
            return style
        fallback = "folk" if "folk" in self.vocab.styles else self.vocab.styles[0]
        log.info("%s has no %r token; conditioning on %r", self.name, style, fallback)
        return fallback

    def _prompt_ids(self, req: GenerateRequest) -> list[int]:
        from midiforge.symbolic import tokenize

        if not req.prompt_midi:
            return []
        ids, reason, detail = tokenize.encode(self.tokenizer, req.prompt_midi)
        if reason:
            raise GenerateError(f"prompt MIDI unusable ({reason}): {detail}")
        bar = self.tokenizer.vocab["Bar_None"]
        starts = [i for i, t in enumerate(ids) if t == bar]
        return list(ids[: starts[req.bars]] if len(starts) > req.bars else ids)

    def _start(self, req: GenerateRequest, prompt: list[int]):
        """The grammar state after the prompt. Without one, the piece opens in the asked-for
        time signature and tempo; a continuation keeps the prompt's (its first TimeSig and
        Tempo, when the whole prompt keeps them), so it does not drift mid-piece."""
        from midiforge.lm.grammar import nearest_tempo_token

        if not prompt:
            known = self.time_signatures
            if known and req.time_signature not in known:
                raise GenerateError(
                    f"time signature {req.time_signature} is not in {self.name}'s vocabulary; "
                    f"choose from {', '.join(known)}"
                )
            return self.grammar.start(
                req.bars,
                time_signature=req.time_signature,
                tempo_token=nearest_tempo_token(self.tokenizer, req.bpm),
                programs=req.programs or self.vocab.programs.get(req.style),
            )
        names = [self.names[t] for t in prompt]
        ts = next((n.removeprefix("TimeSig_") for n in names if n.startswith("TimeSig_")), None)
        tempo = next((n for n in names if n.startswith("Tempo_")), None)
        error = None
        for kw in ({"time_signature": ts, "tempo_token": tempo}, {}):
            state = self.grammar.start(req.bars, **kw)
            try:
                for t in prompt:
                    state = self.grammar.advance(state, t)
            except ValueError as e:
                error = e
                continue
            if req.programs:
                # The prompt plays whatever it plays; the continuation only what was asked.
                allowed = self.grammar.start(1, programs=req.programs).program_ids
                state = dataclasses.replace(state, program_ids=allowed)
            return state
        raise GenerateError(f"prompt MIDI does not fit the REMI grammar: {error}")

    def _context(self, out: list[int]) -> list[int]:
        """What the model sees behind the prefix once the sequence outgrows its training
        length: the model only ever saw `seq_len`-token windows that start on a Bar, so
        positions past that are untrained. The window slides: the context restarts at the
        earliest Bar that leaves about half a window of music, as training windows do."""
        half = (self.seq_len - 3) // 2
        if len(out) <= self.seq_len - 3 - 1:
            return out
        bar = self.tokenizer.vocab["Bar_None"]
        starts = [i for i, t in enumerate(out) if t == bar and len(out) - i <= half]
        return out[starts[0] :] if starts else out[-half:]

    def generate(self, req: GenerateRequest) -> GenerateResult:
        from midiforge.lm.grammar import decode_to_midi

        req.check()
        if req.style not in self.vocab.styles:
            raise GenerateError(
                f"{self.name} knows styles {', '.join(self.vocab.styles)}, not {req.style!r}"
            )
        t0 = time.perf_counter()
        rng = np.random.default_rng(req.seed)
        prompt = self._prompt_ids(req)
        state = self._start(req, prompt)
        prefix = self.vocab.prefix(req.style, req.key)
        out = list(prompt)
        logits, cache = self.lm.prefill(np.asarray([prefix + self._context(out)], np.int64))
        while not self.grammar.finished(state):
            tok = sample(logits, self.grammar.mask(state), req.temperature, req.top_p, rng)
            state = self.grammar.advance(state, tok)
            out.append(tok)
            if self.grammar.finished(state):
                break
            if cache.length >= self.seq_len:
                ids = prefix + self._context(out)
                logits, cache = self.lm.prefill(np.asarray([ids], np.int64))
            else:
                logits, cache = self.lm.step(tok, cache)
        midi = at_bpm(decode_to_midi(self.tokenizer, out, req.bars), req.bpm)
        return GenerateResult(
            midi, req.bars, _count_notes(midi), len(out), time.perf_counter() - t0
        )

    def perplexity(self, token_lists, style: str, keys: list[str]) -> float:
        """exp(mean NLL) over every token of the given pieces (EOS included). Long pieces are
        cut into consecutive windows of the training length, each behind the conditioning
        prefix (given, never scored), so every token is scored once. Unlike training
        windows, which start on a bar, windows after a piece's first may start mid-bar;
        every neural configuration is scored on the same windows."""
        body = self.seq_len - 3
        total, count = 0.0, 0
        for toks, key in zip(token_lists, keys, strict=True):
            prefix = self.vocab.prefix(style, key)
            seq = [*list(toks), self.vocab.eos]
            for s in range(0, len(seq), body):
                ids = np.asarray(prefix + seq[s : s + body], np.int64)
                logits = self.lm.logits(ids[None])[0]
                nll, n = mean_nll(logits[2:-1], ids[3:])
                total, count = total + nll, count + n
        return math.exp(total / max(1, count))
