"""REMI grammar: masked random walks always finish with exactly the asked-for bars and
decode to MIDI of that length; real corpus sequences pass token by token. Rules baseline:
exact bars, deterministic, in the key, chord tones on the downbeats."""

import random

import numpy as np
import pytest
from symusic import Score

from midiforge import corpus, midi_io
from midiforge.lm import grammar as gr
from midiforge.lm import rules
from midiforge.symbolic import tokenize as tk

N_CONDITIONING = 56  # ids past the tokenizer's, as the LM vocabulary adds


@pytest.fixture(scope="module")
def tokenizer():
    return tk.make_tokenizer(tk.TokenizerSettings())


@pytest.fixture(scope="module")
def grammar(tokenizer):
    return gr.RemiGrammar(tokenizer, vocab_size=len(tokenizer.vocab) + N_CONDITIONING)


def ids_of(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.vocab[t] for t in tokens]


def names(tokenizer, ids) -> list[str]:
    inv = {i: t for t, i in tokenizer.vocab.items()}
    return [inv[i] for i in ids]


def kind_weights(tokenizer, vocab_size: int, sparse: bool) -> np.ndarray:
    """Sampling weights by token type: uniform, or favouring bar ends and new positions
    so that bars hold a few notes rather than hundreds."""
    w = np.ones(vocab_size)
    if sparse:
        for token, i in tokenizer.vocab.items():
            w[i] = {"Bar": 40.0, "EOS": 40.0, "Position": 2.0}.get(token.split("_")[0], 1.0)
    return w


def walk(grammar, state, rng, weights) -> list[int]:
    """Sample under the mask until the grammar says the sequence is finished."""
    out = []
    for _ in range(state.bars * grammar.max_tokens_per_bar + 1):
        mask = grammar.mask(state)
        assert mask.shape == (grammar.vocab_size,) and mask.dtype == bool
        assert mask.any(), f"dead end after {out[-8:]}"
        p = np.where(mask, weights, 0.0)
        token = int(rng.choice(len(p), p=p / p.sum()))
        state = grammar.advance(state, token)
        out.append(token)
        if grammar.finished(state):
            return out
    raise AssertionError("the walk did not finish within the per-bar budget")


def end_tick(pm) -> int:
    return pm.time_to_tick(pm.get_end_time())


@pytest.mark.parametrize("bars", [1, 2, 5, 16])
@pytest.mark.parametrize("forced", [False, True])
def test_masked_walks_finish_with_exact_bars_and_decode(tokenizer, grammar, bars, forced):
    vocab = tokenizer.vocab
    tempo = gr.nearest_tempo_token(tokenizer, 140)
    special = {vocab["PAD_None"], vocab["BOS_None"], vocab["MASK_None"]}
    tpq = tokenizer.time_division
    for seed in range(6):
        rng = np.random.default_rng(1000 * bars + seed)
        weights = kind_weights(tokenizer, grammar.vocab_size, sparse=seed % 3 != 0)
        state = grammar.start(bars, "4/4", tempo) if forced else grammar.start(bars)
        ids = walk(grammar, state, rng, weights)

        assert ids[-1] == vocab["EOS_None"] and vocab["EOS_None"] not in ids[:-1]
        assert max(ids) < len(vocab) and not special & set(ids)
        assert grammar.bars_in(ids) == bars
        toks = names(tokenizer, ids)
        if forced:
            assert toks[:4] == ["Bar_None", "TimeSig_4/4", "Position_0", tempo]
            assert {t for t in toks if t.startswith("TimeSig")} == {"TimeSig_4/4"}
            assert [t for t in toks if t.startswith("Tempo")] == [tempo]

        # As the generator hands it over: BOS and conditioning ids first.
        prompt = [vocab["BOS_None"], len(vocab) + 3, len(vocab) + 40]
        pm = midi_io.load_midi(gr.decode_to_midi(tokenizer, prompt + ids))
        assert end_tick(pm) * tpq // pm.resolution == sum(gr.bar_ticks(tokenizer, ids))
        end = pm.get_end_time()
        downbeats = pm.get_downbeats()
        assert len(downbeats[downbeats < end - 1e-6]) == bars
        notes = midi_io.notes_array(pm, include_drums=True)
        assert len(notes) > 0
        assert (notes[:, 0] < end).all() and (notes[:, 1] <= end + 1e-9).all()
        if forced:
            bar_s = 4 * 60 / float(tempo.removeprefix("Tempo_"))
            assert end == pytest.approx(bars * bar_s, rel=1e-5)
            assert end_tick(pm) == bars * 4 * pm.resolution
        reencoded = tokenizer.encode(Score.from_midi(midi_io.midi_bytes(pm)))
        assert 1 <= grammar.bars_in(reencoded.ids) <= bars


def test_tight_budgets_still_finish(tokenizer):
    tempo = gr.nearest_tempo_token(tokenizer, 90)
    g = gr.RemiGrammar(tokenizer, max_tokens_per_bar=gr.MIN_TOKENS_PER_BAR)
    for bars in (1, 3):
        for seed in range(20):
            rng = np.random.default_rng(seed)
            forced = {"time_signature": "3/4", "tempo_token": tempo} if seed % 2 else {}
            ids = walk(g, g.start(bars, **forced), rng, np.ones(g.vocab_size))
            assert g.bars_in(ids) == bars
            per_bar = np.diff(np.flatnonzero(np.asarray(ids) == tokenizer.vocab["Bar_None"]))
            assert (per_bar <= gr.MIN_TOKENS_PER_BAR).all()

    # A whole-sequence budget: the least that holds 4 bars with a forced tempo is
    # Bar TimeSig Position_0 Tempo Program Pitch Velocity Duration + 3 x (Bar TimeSig) + EOS.
    least = 8 + 3 * 2 + 1
    g = gr.RemiGrammar(tokenizer)
    for max_tokens in (least, least + 7, 60):
        for seed in range(10):
            state = g.start(4, "4/4", tempo, max_tokens=max_tokens)
            ids = walk(g, state, np.random.default_rng(seed), np.ones(g.vocab_size))
            assert len(ids) <= max_tokens and g.bars_in(ids) == 4
    with pytest.raises(ValueError, match="cannot hold"):
        g.start(4, "4/4", tempo, max_tokens=least - 1)


def test_advance_rejects_what_the_mask_forbids(tokenizer, grammar):
    v = tokenizer.vocab
    tempo = gr.nearest_tempo_token(tokenizer, 140)

    def feed(state, *tokens):
        for t in tokens:
            state = grammar.advance(state, v[t])
        return state

    start = grammar.start(2)
    for bad in ("Pitch_60", "BOS_None", "PAD_None", "MASK_None", "EOS_None", "Position_0"):
        with pytest.raises(ValueError, match="not allowed"):
            grammar.advance(start, v[bad])
    with pytest.raises(ValueError, match="conditioning"):
        grammar.advance(start, len(v) + 1)  # a conditioning id
    with pytest.raises(ValueError, match="not allowed"):
        grammar.advance(start, grammar.vocab_size)

    mid_note = feed(start, "Bar_None", "TimeSig_4/4", "Position_4", "Program_40", "Pitch_60")
    for bad in ("Bar_None", "Position_8", "Program_40", "Duration_1.0.8"):
        with pytest.raises(ValueError, match="not allowed"):
            grammar.advance(mid_note, v[bad])
    note_done = feed(mid_note, "Velocity_91", "Duration_1.0.8")
    for bad in ("Position_4", "Position_2", "Position_32", "EOS_None", "Tempo_121.29"):
        with pytest.raises(
            ValueError, match="not allowed"
        ):  # positions go forward, within 4/4; 2 bars asked
            grammar.advance(note_done, v[bad])
    last_bar = feed(note_done, "Bar_None", "TimeSig_3/4", "Position_23", "Program_-1")
    with pytest.raises(ValueError, match="not allowed"):
        grammar.advance(last_bar, v["Pitch_60"])  # drums take PitchDrum
    last_bar = feed(last_bar, "PitchDrum_36", "Velocity_91", "Duration_0.4.8")
    with pytest.raises(ValueError, match="not allowed"):
        grammar.advance(last_bar, v["Bar_None"])  # a third bar
    done = feed(last_bar, "EOS_None")
    assert grammar.finished(done) and not grammar.mask(done).any()
    with pytest.raises(ValueError, match="not allowed"):
        grammar.advance(done, v["Bar_None"])

    forced = grammar.start(1, "4/4", tempo)
    with pytest.raises(ValueError, match="not allowed"):
        feed(forced, "Bar_None", "TimeSig_3/4")
    opened = feed(forced, "Bar_None", "TimeSig_4/4")
    for bad in ("Position_4", "Bar_None", "EOS_None"):
        with pytest.raises(
            ValueError, match="not allowed"
        ):  # the forced tempo comes first, at Position_0
            grammar.advance(opened, v[bad])
    with pytest.raises(ValueError, match="not allowed"):
        feed(opened, "Position_0", "Program_40")
    with pytest.raises(ValueError, match="not allowed"):
        feed(opened, "Position_0", "Tempo_40.0")
    after_tempo = feed(opened, "Position_0", tempo)
    with pytest.raises(ValueError, match="not allowed"):
        grammar.advance(after_tempo, v["EOS_None"])  # a piece holds at least one note
    with pytest.raises(ValueError, match="not allowed"):  # no other tempo after the forced one
        feed(after_tempo, "Position_8", "Tempo_40.0")

    violin = grammar.start(1, programs=[40])
    with pytest.raises(ValueError, match="not allowed"):
        feed(violin, "Bar_None", "TimeSig_4/4", "Position_0", "Program_41")


def test_notes_past_the_last_barline_are_allowed_and_cut(tokenizer, grammar):
    ids = ids_of(tokenizer, "Bar_None", "TimeSig_4/4", "Position_0", "Tempo_121.29",
                 "Program_40", "Pitch_60", "Velocity_91", "Duration_1.0.8", "Position_24",
                 "Program_40", "Pitch_64", "Velocity_91", "Duration_8.0.4")  # fmt: skip
    assert grammar.accepts(ids)
    assert not grammar.accepts(ids, fit_last_barline=True)
    pm = midi_io.load_midi(gr.decode_to_midi(tokenizer, ids))
    notes = midi_io.notes_array(pm)
    bar_s = 4 * 60 / 121.29
    assert pm.get_end_time() == pytest.approx(bar_s, rel=1e-5)
    assert notes[-1, 1] == pytest.approx(bar_s, rel=1e-5)


def test_decode_strips_the_prompt_stops_at_eos_and_pads_to_bars(tokenizer):
    v = tokenizer.vocab
    body = ids_of(tokenizer, "Bar_None", "TimeSig_3/4", "Position_0", "Tempo_121.29",
                  "Program_0", "Pitch_60", "Velocity_91", "Duration_0.4.8")  # fmt: skip
    junk = ids_of(tokenizer, "Bar_None", "TimeSig_3/4", "Position_0", "Program_0", "Pitch_72",
                  "Velocity_91", "Duration_0.4.8")  # fmt: skip
    seq = [v["BOS_None"], len(v), len(v) + 5, *body, v["EOS_None"], *junk, v["PAD_None"]]
    pm = midi_io.load_midi(gr.decode_to_midi(tokenizer, seq))
    assert [n.pitch for i in pm.instruments for n in i.notes] == [60]
    bar_s = 3 * 60 / 121.29
    assert pm.get_end_time() == pytest.approx(bar_s, rel=1e-5)
    padded = midi_io.load_midi(gr.decode_to_midi(tokenizer, seq, bars=4))
    assert padded.get_end_time() == pytest.approx(4 * bar_s, rel=1e-5)
    with pytest.raises(ValueError, match="no music tokens"):
        gr.decode_to_midi(tokenizer, [v["BOS_None"], len(v), v["EOS_None"]])


def test_nearest_tempo_token(tokenizer):
    assert gr.nearest_tempo_token(tokenizer, 140) == "Tempo_141.61"
    assert gr.nearest_tempo_token(tokenizer, 10) == "Tempo_40.0"
    assert gr.nearest_tempo_token(tokenizer, 1000) == "Tempo_250.0"


def test_unsupported_tokenizers_and_sizes_are_refused(tokenizer):
    import miditok

    with pytest.raises(ValueError, match="smaller"):
        gr.RemiGrammar(tokenizer, vocab_size=len(tokenizer.vocab) - 1)
    with pytest.raises(ValueError, match="at least"):
        gr.RemiGrammar(tokenizer, max_tokens_per_bar=gr.MIN_TOKENS_PER_BAR - 1)
    rests = miditok.REMI(miditok.TokenizerConfig(use_programs=True, use_rests=True))
    with pytest.raises(ValueError, match="use_rests"):
        gr.RemiGrammar(rests)
    with pytest.raises(ValueError, match="Program tokens"):
        gr.RemiGrammar(tk.make_tokenizer(tk.TokenizerSettings(use_programs=False)))
    with pytest.raises(ValueError, match="no TimeSig_11/4"):
        gr.RemiGrammar(tokenizer).start(2, "11/4")


def test_tokenizer_without_tempo_and_time_signature_tokens():
    tokenizer = tk.make_tokenizer(tk.TokenizerSettings(use_tempos=False, use_time_signatures=False))
    g = gr.RemiGrammar(tokenizer)
    for seed in range(10):
        ids = walk(g, g.start(3), np.random.default_rng(seed),
                   kind_weights(tokenizer, g.vocab_size, sparse=True))  # fmt: skip
        assert g.bars_in(ids) == 3
        pm = midi_io.load_midi(gr.decode_to_midi(tokenizer, ids))
        assert end_tick(pm) == 3 * 4 * pm.resolution  # 4/4, MidiTok's default


# --- real sequences --------------------------------------------------------------------

REAL = [
    ("fiddle", "ryansMammoth/LucyCampbellsReel.abc", None, 20.0),
    ("chorale", "bach/bwv27.6.mxl", None, 20.0),
    # Changes time signature (2/4 and 1/4 bars).
    ("folk", "essenFolksong/han2.abc", 580, 30.0),
    # The whole tune, ending on a note held past its last barline (Duration_8.0.4 in 4/4).
    ("folk", "essenFolksong/altdeu10.abc", 25, 30.0),
    # Three programs; a cello note runs past the excerpt's last barline.
    ("quartet", "mozart/k155/movement3.mxl", None, 30.0),
]


@pytest.fixture(scope="module")
def real_sequences(tokenizer):
    out = {}
    for style, path, number, seconds in REAL:
        pm, _ = corpus.score_to_midi(corpus.Candidate(style, path, number), seconds)
        corpus.assign_programs(pm, style, vary=False, rng=random.Random(0))
        ids, reason, detail = tk.encode(tokenizer, midi_io.midi_bytes(pm))
        assert reason is None, detail
        out[f"{style}:{path}#{number}"] = ids.tolist()
    return out


def test_real_sequences_pass_the_grammar_token_by_token(tokenizer, grammar, real_sequences):
    eos = tokenizer.vocab["EOS_None"]
    for name, ids in real_sequences.items():
        state = grammar.start(grammar.bars_in(ids))
        for i, token in enumerate([*ids, eos]):
            try:
                state = grammar.advance(state, token)
            except ValueError as e:
                context = names(tokenizer, ids[max(0, i - 6) : i + 1])
                pytest.fail(f"{name}: token {i}: {e}; {context}")
        assert grammar.finished(state), name

        # Forcing the sequence's own time signature and tempo accepts it too, unless it
        # changes time signature (forcing locks every bar to one).
        toks = names(tokenizer, ids)
        sigs = {t for t in toks if t.startswith("TimeSig_")}
        tempo = next(t for t in toks if t.startswith("Tempo_"))
        forced = grammar.accepts(ids, time_signature=sigs.pop(), tempo_token=tempo)
        assert forced == (not sigs), name


# --- rules baseline --------------------------------------------------------------------

CASES = [("Am", "4/4"), ("A minor", "3/4"), ("D", "4/4"), ("D major", "6/8"),
         ("F#m", "2/4"), ("Bb", "4/4"), ("C# minor", "12/8"), ("G", "3/1"),
         ("Em", "2/1")]  # fmt: skip


@pytest.mark.parametrize(("key", "time_signature"), CASES)
@pytest.mark.parametrize("bars", [1, 2, 8])
def test_rules_exact_bars_in_key_chord_tones_on_downbeats(key, time_signature, bars):
    bpm = 132.0
    num, den = (int(x) for x in time_signature.split("/"))
    bar_q = num * 4 / den
    for seed in range(4):
        pm = midi_io.load_midi(
            rules.generate_rules(key, bpm, bars, seed, time_signature=time_signature, program=41)
        )
        end = pm.get_end_time()
        assert end == pytest.approx(bars * bar_q * 60 / bpm, rel=1e-5)
        assert end_tick(pm) == round(bars * bar_q * pm.resolution)
        assert [i.program for i in pm.instruments] == [41]
        notes = pm.instruments[0].notes
        ticks = [(pm.time_to_tick(n.start), pm.time_to_tick(n.end), n.pitch) for n in notes]
        assert all(s < e <= end_tick(pm) for s, e, _ in ticks)

        allowed = set(rules.scale_pitch_classes(key)) | {rules.leading_tone(key)}
        assert {p % 12 for _, _, p in ticks} <= allowed

        chords = rules.chord_plan(key, bars, seed)
        bar_ticks = round(bar_q * pm.resolution)
        onsets = {s: p for s, _, p in ticks}
        for b, chord in enumerate(chords):
            assert onsets[b * bar_ticks] % 12 in chord, (seed, b)
        tonic = rules.scale_pitch_classes(key)[0]
        assert chords[-1][0] == tonic
        assert ticks[-1][0] == (bars - 1) * bar_ticks and ticks[-1][2] % 12 == tonic
        if bars >= 2:
            assert chords[-2][0] == rules.scale_pitch_classes(key)[4]  # V-I
            assert ticks[-1][2] - ticks[-2][2] in (-2, 1)  # the tonic reached by step


def test_rules_are_deterministic_per_seed_and_vary_across_seeds():
    a = rules.generate_rules("Am", 140, 8, seed=7)
    assert a == rules.generate_rules("Am", 140, 8, seed=7)
    outputs = {rules.generate_rules("Am", 140, 8, seed=s) for s in range(6)}
    assert len(outputs) == 6
    pitches = [n.pitch for n in midi_io.load_midi(a).instruments[0].notes]
    steps = np.abs(np.diff(pitches))
    assert np.mean(steps <= 2) > 0.5  # mostly stepwise


def test_rules_minor_keys_use_the_leading_tone_only_over_v():
    seen = set()
    for seed in range(10):
        pm = midi_io.load_midi(rules.generate_rules("Am", 120, 8, seed))
        seen |= {n.pitch % 12 for n in pm.instruments[0].notes}
    assert 8 in seen  # G#, the leading tone of A minor, over E major
    assert seen <= {9, 11, 0, 2, 4, 5, 7, 8}


def test_rules_refuse_bad_arguments():
    with pytest.raises(ValueError, match="not a key"):
        rules.generate_rules("H major", 120, 4, 0)
    with pytest.raises(ValueError, match="time signature"):
        rules.generate_rules("C", 120, 4, 0, time_signature="4/3")
    with pytest.raises(ValueError, match="bars"):
        rules.generate_rules("C", 120, 0, 0)
    with pytest.raises(ValueError, match="bpm"):
        rules.generate_rules("C", 0, 4, 0)
