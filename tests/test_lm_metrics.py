"""Generation metrics: per-piece numbers, Yang & Lerch set overlap, config report."""

import json
import math

import numpy as np
import pytest

from midiforge.lm.metrics import (
    CONFIG_METRICS,
    PIECE_METRICS,
    REFERENCE_METRICS,
    Piece,
    avg_interval,
    chord_tone_ratio,
    evaluate_configs,
    note_density,
    parse_key,
    pch_kl,
    pch_overlap_and_kl,
    piece_metrics,
    pitch_entropy,
    pitch_range,
    reference_context,
    self_similarity_8bar,
    to_jsonable,
    write_results,
)

C_MAJOR = (60, 62, 64, 65, 67, 69, 71)


def melody(pitches, dur=0.25, bar_s=1.0, key="C major", chord_with=None):
    """Consecutive notes of `dur` seconds; `chord_with` adds that pitch under every note."""
    rows = [(i * dur, (i + 1) * dur, p, 80) for i, p in enumerate(pitches)]
    if chord_with is not None:
        rows += [(s, e, chord_with, 60) for s, e, _, _ in rows]
    return Piece(np.array(rows, dtype=np.float64).reshape(-1, 4), bar_s, key)


def arpeggios(triads, key="C major", bar_s=1.0):
    """One bar per triad: root, third, fifth, octave as quarter-bar notes."""
    pitches = [p for root, third, fifth in triads for p in (root, third, fifth, root + 12)]
    return melody(pitches, dur=bar_s / 4, bar_s=bar_s, key=key)


EMPTY = Piece(np.zeros((0, 4)), 1.0, "C major")
TONIC, SUBDOM, DOM, SUPERTONIC = (60, 64, 67), (65, 69, 72), (67, 71, 74), (62, 65, 69)


def random_piece(rng, n_bars=16, pcs=C_MAJOR, p=None, notes_per_bar=4):
    pitches = rng.choice(pcs, size=n_bars * notes_per_bar, p=p)
    return melody(pitches, dur=1.0 / notes_per_bar)


def test_parse_key_accepts_music21_and_short_names():
    assert parse_key("A minor") == (9, "minor")
    assert parse_key("Am") == (9, "minor")
    assert parse_key("D") == (2, "major")
    assert parse_key("D major") == (2, "major")
    assert parse_key("B- major") == (10, "major")
    assert parse_key("Bbm") == (10, "minor")
    assert parse_key("f# minor") == (6, "minor")
    assert parse_key("a") == (9, "minor")  # music21: lower-case tonic is minor
    assert parse_key("D dorian") == (2, "minor")
    with pytest.raises(ValueError, match="key"):
        parse_key("H major")
    with pytest.raises(ValueError, match="key"):
        Piece(np.zeros((0, 4)), 1.0, "not a key")


def test_pitch_entropy_bounds():
    assert pitch_entropy(melody([60, 72, 48, 60])) == 0.0
    assert pitch_entropy(melody(range(60, 72))) == pytest.approx(math.log2(12))
    assert pitch_entropy(melody([60, 67])) == pytest.approx(1.0)
    assert math.isnan(pitch_entropy(EMPTY))


def test_pch_kl_is_zero_for_the_reference_distribution_and_grows_with_drift():
    reference = [melody([60, 62, 64, 64]), melody([67, 64, 60, 60])]
    context = reference_context(reference)
    # Aggregate: C 3/8, D 1/8, E 3/8, G 1/8; the same proportions in other octaves.
    same = melody([48, 60, 72, 62, 52, 64, 76, 67])
    assert pch_kl(same, context.pch) == pytest.approx(0.0, abs=1e-12)
    drifts = [
        pch_kl(melody([60, 60, 62, 62, 64, 64, 64, 67]), context.pch),  # C -> D
        pch_kl(melody([60, 60, 60, 62, 64, 64, 64, 61]), context.pch),  # G -> C#
        pch_kl(melody([60, 61, 61, 63, 64, 66, 66, 68]), context.pch),  # mostly off the set
    ]
    assert drifts == sorted(drifts)
    assert drifts[0] > 1e-3
    assert math.isnan(pch_kl(EMPTY, context.pch))


def test_reference_pch_kl_is_leave_one_out():
    # Three copies of one distribution: each piece against the other two scores 0.
    same = [melody([60, 62, 64, 64]), melody([72, 74, 76, 76]), melody([48, 50, 52, 52])]
    assert reference_context(same).means["pch_kl"] == pytest.approx(0.0, abs=1e-12)
    # Two pieces: each is scored against the other alone, never against itself.
    a, b = melody([60, 62, 64, 64]), melody([67, 64, 60, 60])
    want = (pch_kl(a, _pc(b)) + pch_kl(b, _pc(a))) / 2
    got = reference_context([a, b]).means["pch_kl"]
    assert got == pytest.approx(want) and got > pch_kl(a, reference_context([a, b]).pch)
    assert math.isnan(reference_context([a]).means["pch_kl"])  # no other piece


def _pc(piece: Piece) -> np.ndarray:
    return np.bincount(piece.notes[:, 2].astype(int) % 12, minlength=12).astype(float)


def test_reference_context_learns_the_triads_the_reference_uses():
    reference = [arpeggios([TONIC, SUBDOM, DOM, TONIC]), arpeggios([TONIC, DOM, SUBDOM, TONIC])]
    context = reference_context(reference)
    assert set(context.triads["major"]) == {"I", "IV", "V"}
    assert "minor" not in context.triads  # no minor-key bars in the reference
    assert context.triad_share["major"]["I"] == pytest.approx(0.5)
    assert context.means["chord_tone_ratio"] == pytest.approx(1.0)


def test_chord_tone_ratio_against_the_reference_harmony():
    context = reference_context([arpeggios([TONIC, SUBDOM, DOM, TONIC])])
    assert chord_tone_ratio(arpeggios([TONIC, TONIC, DOM, TONIC]), context.triads) == pytest.approx(
        1.0
    )
    # Key-relative: the same progression in D, read in D, fits the C-major reference.
    in_d = arpeggios([tuple(p + 2 for p in t) for t in (TONIC, SUBDOM, DOM, TONIC)], key="D")
    assert chord_tone_ratio(in_d, context.triads) == pytest.approx(1.0)
    # ii is not in the reference's vocabulary: its best allowed cover is IV (F, A, not D).
    two = arpeggios([SUPERTONIC, SUPERTONIC])
    assert chord_tone_ratio(two, context.triads) == pytest.approx(0.5)
    assert chord_tone_ratio(two, {}) == pytest.approx(1.0)  # no context: any diatonic triad
    cluster = melody(range(60, 72), dur=1 / 12)
    assert chord_tone_ratio(cluster, context.triads) < 0.5
    assert math.isnan(chord_tone_ratio(EMPTY, context.triads))


def test_chord_tone_ratio_minor_key_falls_back_to_its_own_triads():
    context = reference_context([arpeggios([TONIC, SUBDOM, DOM, TONIC])])
    a_minor = arpeggios([(57, 60, 64), (64, 68, 71)], key="A minor")  # i, harmonic V
    assert chord_tone_ratio(a_minor, context.triads) == pytest.approx(1.0)


def test_interval_range_density_on_a_scale():
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    piece = melody(scale)  # 8 quarter-bar notes: 2 bars
    assert avg_interval(piece) == pytest.approx(12 / 7)
    assert pitch_range(piece) == 12.0
    assert note_density(piece) == 4.0
    # A drone under the melody doubles the density but leaves the skyline alone.
    with_drone = melody(scale, chord_with=48)
    assert avg_interval(with_drone) == pytest.approx(12 / 7)
    assert pitch_range(with_drone) == 24.0
    assert note_density(with_drone) == 8.0
    assert math.isnan(avg_interval(melody([60])))
    assert note_density(EMPTY) == 0.0
    assert math.isnan(pitch_range(EMPTY))


def test_self_similarity_of_a_repeated_strain():
    rng = np.random.default_rng(0)
    first = random_piece(rng, n_bars=8).notes
    second = first.copy()
    second[:, :2] += 8.0
    repeated = Piece(np.concatenate([first, second]), 1.0, "C major")
    assert self_similarity_8bar(repeated) == pytest.approx(1.0)
    assert self_similarity_8bar(random_piece(rng, n_bars=16)) < 0.3
    assert math.isnan(self_similarity_8bar(random_piece(rng, n_bars=8)))
    assert math.isnan(self_similarity_8bar(EMPTY))


def test_empty_piece_gives_nan_not_an_error():
    context = reference_context([arpeggios([TONIC, SUBDOM])])
    values = piece_metrics(EMPTY, context)
    assert set(values) == set(PIECE_METRICS)
    assert values["note_density"] == 0.0
    assert all(math.isnan(v) for k, v in values.items() if k != "note_density")
    empty_context = reference_context([])
    assert math.isnan(piece_metrics(arpeggios([TONIC]), empty_context)["pch_kl"])


def test_yang_lerch_overlap_same_versus_different_distribution():
    rng = np.random.default_rng(1)
    weights = np.array([0.3, 0.05, 0.2, 0.1, 0.2, 0.1, 0.05])
    reference = [random_piece(rng, n_bars=4, p=weights) for _ in range(40)]
    same = [random_piece(rng, n_bars=4, p=weights) for _ in range(40)]
    other = [random_piece(rng, n_bars=4, pcs=(61, 63, 66)) for _ in range(40)]
    oa_same, kl_same = pch_overlap_and_kl(reference, same)
    oa_other, kl_other = pch_overlap_and_kl(reference, other)
    assert oa_same > 0.8
    assert oa_other < 0.1
    assert 0.0 <= kl_same < 0.3 < kl_other


def test_yang_lerch_degenerate_sets_are_nan():
    one = [arpeggios([TONIC])]
    assert all(math.isnan(v) for v in pch_overlap_and_kl(one, one))
    identical = [arpeggios([TONIC]) for _ in range(5)]
    assert all(math.isnan(v) for v in pch_overlap_and_kl(identical, identical))
    assert all(math.isnan(v) for v in pch_overlap_and_kl(identical * 2, []))


def _no_nan(token):
    raise AssertionError(f"non-JSON constant {token}")


def test_evaluate_configs_structure_and_wilcoxon():
    rng = np.random.default_rng(2)
    reference = [random_piece(rng) for _ in range(10)]
    narrow = [random_piece(rng, pcs=(60, 62, 64)) for _ in range(20)]
    wide = [random_piece(rng, pcs=(48, 60, 72, 84)) for _ in range(20)]
    results = evaluate_configs(
        reference, {"base": narrow, "lora": wide, "short": narrow[:4]}, {"base": 3.5}
    )
    assert set(results) == {"n", "configs", "reference", "wilcoxon", "per_piece"}
    assert results["n"] == 20
    assert list(results["configs"]) == ["base", "lora", "short"]
    assert all(tuple(row) == CONFIG_METRICS for row in results["configs"].values())
    assert tuple(results["reference"]) == REFERENCE_METRICS
    assert list(results["wilcoxon"]) == ["base_vs_lora", "base_vs_short", "lora_vs_short"]
    assert results["configs"]["base"]["perplexity"] == 3.5
    assert results["configs"]["lora"]["perplexity"] is None
    assert results["configs"]["base"]["pitch_range"] == pytest.approx(4.0, abs=0.5)
    assert results["configs"]["lora"]["pch_overlap"] < results["configs"]["base"]["pch_overlap"]
    assert len(results["per_piece"]["lora"]["pitch_range"]) == 20
    assert results["wilcoxon"]["base_vs_lora"]["pitch_range"] < 0.05
    assert results["wilcoxon"]["base_vs_short"]["pitch_range"] is None  # 4 pairs
    # Every piece has 16 bars of 4 notes: all differences zero.
    assert results["wilcoxon"]["base_vs_lora"]["note_density"] is None
    json.loads(json.dumps(results), parse_constant=_no_nan)


def test_results_with_empty_and_short_pieces_are_json_safe(tmp_path):
    reference = [arpeggios([TONIC, SUBDOM, DOM, TONIC]), arpeggios([TONIC, DOM, TONIC, TONIC])]
    configs = {"rules": [EMPTY] * 6, "base": [arpeggios([TONIC])] * 6}
    results = evaluate_configs(reference, configs, {"rules": None, "base": float("nan")})
    assert results["configs"]["rules"]["pitch_entropy"] is None
    assert results["configs"]["base"]["perplexity"] is None
    assert results["configs"]["base"]["self_similarity_8bar"] is None
    write_results(results, tmp_path / "eval")
    text = (tmp_path / "eval" / "results.json").read_text()
    assert json.loads(text, parse_constant=_no_nan) == results
    markdown = (tmp_path / "eval" / "results.md").read_text()
    assert "| rules |" in markdown and "| base |" in markdown and "rules_vs_base" in markdown
    assert (tmp_path / "eval" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_to_jsonable_converts_numpy_and_nan():
    value = {"a": np.float32(1.5), "b": [np.nan, np.int64(3)], "c": np.array([1.0, np.inf])}
    assert to_jsonable(value) == {"a": 1.5, "b": [None, 3], "c": [1.0, None]}


@pytest.mark.parametrize(
    ("bpm", "asked"), [(500.0, 300), (7.5, 20), (None, 120), (float("nan"), 120), (140.4, 140)]
)
def test_reference_tempos_outside_the_generators_range_are_asked_at_the_nearest(bpm, asked):
    from midiforge.lm.evaluate import _request_bpm
    from midiforge.lm.generate import GenerateRequest

    assert _request_bpm({"bpm": bpm}) == asked
    GenerateRequest(bpm=asked).check()  # a request the generators take
