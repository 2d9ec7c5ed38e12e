"""Conditioning tokens and training windows of the language model (no Ray, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from midiforge.lm import data
from midiforge.lm.vocab import STYLE_SLOTS, KeyNameError, LMVocab, key_name, key_token, parse_key
from midiforge.symbolic.tokenize import TokenizerSettings, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(TokenizerSettings())


def test_key_names_parse_and_transpose():
    assert parse_key("A minor") == (9, "minor") == parse_key("Am") == parse_key("a")
    assert parse_key("E- major") == (3, "major") == parse_key("Eb")
    assert parse_key("f#m") == (6, "minor")
    assert key_token("D major", transpose=2) == "Key_E"
    assert key_token("A minor", transpose=-10) == "Key_Bm"
    assert key_name("Key_F#m") == "F# minor"
    with pytest.raises(KeyNameError, match="H major"):
        parse_key("H major")


def test_style_slots_and_save_load(tokenizer, tmp_path):
    v = LMVocab.for_tokenizer(tokenizer, ["folk", "chorale"])
    assert v.styles == ["chorale", "folk"] and v.size == len(tokenizer.vocab) + STYLE_SLOTS + 24
    fiddle = v.add_style("fiddle")
    assert fiddle == len(tokenizer.vocab) + 2 and v.add_style("fiddle") == fiddle
    v.programs = {"fiddle": [40]}
    v.save(tmp_path / "vocab.json")
    assert LMVocab.load(tmp_path / "vocab.json") == v
    assert v.prefix("fiddle", "D major") == [v.bos, fiddle, v.key_id("D major")]
    with pytest.raises(ValueError, match="techno"):
        v.style_id("techno")


def test_windows_start_on_bars_carry_the_prefix_and_cover_the_piece(tokenizer):
    bar = tokenizer.vocab["Bar_None"]
    other = tokenizer.vocab["Position_0"]
    tokens = np.array(([bar] + [other] * 19) * 10, np.int32)  # 10 bars of 20 tokens
    v = LMVocab.for_tokenizer(tokenizer, ["folk"])
    # a copy transposed up 2 from G: its key column already says A major
    piece = data.Piece("p", "folk", "A major", transpose=2, tokens=tokens)
    w = data.windows([piece], v, seq_len=63, bar_id=bar)
    assert w.shape[1] == 63 and len(w) > 1
    assert (w[:, :3] == v.prefix("folk", "A major")).all()
    assert (w[:, 3] == bar).all()
    assert w[-1][w[-1] != v.pad][-1] == v.eos  # the last window reaches the piece's end
    programs = data.style_programs([piece], tokenizer)
    assert programs == {"folk": []}
