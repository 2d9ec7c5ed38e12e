"""Style classifier data: the piece split, clips, user folders, renders and the log-mel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from midiforge.classifiers.style.data import (
    SPLITS,
    Item,
    StyleDataError,
    clips,
    render_style_set,
    scan_items,
    split_by_piece,
)
from midiforge.classifiers.style.features import (
    HAND_FEATURES,
    MelConfig,
    handcrafted_features,
    log_mel,
    mel_clips,
)

SR = 22_050


def _items(styles: dict[str, int], variants: int = 3) -> list[Item]:
    return [
        Item(style, f"{style}-p{p}", Path(f"/x/{style}/{style}-p{p}__v{v}.wav"))
        for style, n in styles.items()
        for p in range(n)
        for v in range(variants)
    ]


def _pieces(items: list[Item]) -> set[tuple[str, str]]:
    return {(i.style, i.piece) for i in items}


# --- split by piece ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_keeps_every_piece_on_one_side(seed):
    items = _items({"chorale": 12, "fiddle": 9, "mine": 5})
    splits = split_by_piece(items, (0.6, 0.2, 0.2), seed)
    sides = [_pieces(splits[s]) for s in SPLITS]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not sides[a] & sides[b], f"a piece is in both {SPLITS[a]} and {SPLITS[b]}"
    # Nothing lost, nothing duplicated, every variant of a piece together.
    assert sorted(i for s in SPLITS for i in splits[s]) == sorted(items)
    for s in SPLITS:
        for _, piece in sides[SPLITS.index(s)]:
            assert sum(i.piece == piece for i in splits[s]) == 3


def test_split_is_stratified_and_reproducible():
    items = _items({"chorale": 12, "fiddle": 12, "folk": 4})
    splits = split_by_piece(items, (0.5, 0.25, 0.25), seed=3)
    for style, n in (("chorale", 12), ("fiddle", 12), ("folk", 4)):
        counts = [len({i.piece for i in splits[s] if i.style == style}) for s in SPLITS]
        assert sum(counts) == n and min(counts) >= 1
    assert [len({i.piece for i in splits[s] if i.style == "chorale"}) for s in SPLITS] == [6, 3, 3]
    assert split_by_piece(items, (0.5, 0.25, 0.25), seed=3) == splits
    assert split_by_piece(items, (0.5, 0.25, 0.25), seed=4) != splits


def test_split_without_test_and_too_few_pieces():
    splits = split_by_piece(_items({"a": 2, "b": 2}), (0.5, 0.5, 0.0))
    assert not splits["test"] and len(_pieces(splits["val"])) == 2
    with pytest.raises(StyleDataError, match="style 'b' has 2 piece"):
        split_by_piece(_items({"a": 5, "b": 2}), (0.6, 0.2, 0.2))
    with pytest.raises(StyleDataError, match="fractions"):
        split_by_piece(_items({"a": 5}), (0.0, 0.5, 0.5))


# --- clips and features ------------------------------------------------------------------------


def test_clips_cover_the_audio_and_pad_short_audio():
    assert clips(np.zeros(10 * SR, np.float32), SR, 4.0, 2.0).shape == (4, 4 * SR)  # 0-6 s
    x = np.arange(11 * SR, dtype=np.float32)
    c = clips(x, SR, 4.0, 2.0)
    assert c.shape == (5, 4 * SR)  # starts 0, 2, 4, 6 s, then one ending at 11 s
    assert c[0, 0] == 0 and c[-1, -1] == x[-1]
    short = clips(np.ones(SR, np.float32), SR, 4.0, 2.0)
    assert short.shape == (1, 4 * SR) and short[0, SR:].max() == 0
    with pytest.raises(ValueError, match="mono"):
        clips(np.zeros((2, SR), np.float32), SR, 1.0, 1.0)


def test_mel_shape_determinism_and_level():
    cfg = MelConfig(n_mels=32, clip_s=2.0, clip_hop_s=1.0)
    t = np.arange(5 * SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    feats = mel_clips(tone, cfg)
    assert feats.shape == (4, 1, 32, cfg.frames) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, mel_clips(tone, cfg))
    # Fixed reference: quieter audio gives lower features (by 20 dB / scale), floored silence.
    quiet = mel_clips(0.1 * tone, cfg)
    peak_bin = feats[0, 0].max(axis=1).argmax()
    assert feats[0, 0, peak_bin, 20] - quiet[0, 0, peak_bin, 20] == pytest.approx(20 / 40, abs=1e-3)
    silent = log_mel(np.zeros(cfg.clip_samples, np.float32), cfg)
    assert np.all(silent == pytest.approx(cfg.floor))


def test_handcrafted_features_are_finite():
    t = np.arange(4 * SR) / SR
    clicks = np.sin(2 * np.pi * 660 * t) * (np.mod(t, 0.5) < 0.05)
    f = handcrafted_features(clicks.astype(np.float32), SR)
    assert f.shape == (len(HAND_FEATURES),) and np.isfinite(f).all()
    assert 1.0 < f[3] < 4.0  # two onsets per second


# --- folders and renders -------------------------------------------------------------------------


def test_scan_user_styles(tmp_path):
    tone = np.sin(np.linspace(0, 2000, SR)).astype(np.float32)
    for rel in ("blues/song1__take1.wav", "blues/song1__take2.wav", "blues/song2.wav",
                "jazz/tune.flac", "jazz/notes.txt"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("not audio")
        else:
            sf.write(tmp_path / rel, tone, SR)
    items = scan_items(tmp_path)
    assert [(i.style, i.piece) for i in items] == [
        ("blues", "song1"), ("blues", "song1"), ("blues", "song2"), ("jazz", "tune"),
    ]  # fmt: skip
    assert items[0].recording == "blues/song1__take1"
    with pytest.raises(StyleDataError, match="no audio for style"):
        scan_items(tmp_path, ["blues", "reggae"])
    with pytest.raises(StyleDataError, match="no style folder"):
        scan_items(tmp_path / "missing")


def test_render_style_set_varies_instruments(tmp_path):
    manifest = render_style_set(["fiddle"], 1, 2.0, tmp_path, seed=0, variants=3)
    recs = manifest["recordings"]
    assert len(recs) == 3 and not manifest["failures"]
    assert len({tuple(r["programs"]) for r in recs}) == 3  # three different instruments
    for r in recs:
        assert (tmp_path / r["audio"]).is_file()
        assert r["audio"] == f"fiddle/{r['piece']}__v{r['variant']}.wav"
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    items = scan_items(tmp_path)
    assert {i.piece for i in items} == {recs[0]["piece"]} and len(items) == 3
    with pytest.raises(StyleDataError, match="cannot render styles"):
        render_style_set(["blues"], 1, 2.0, tmp_path, seed=0)
