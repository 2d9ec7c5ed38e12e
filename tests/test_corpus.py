"""Corpus sources: listing, deterministic selection, export repairs, cutting, programs."""

import random

import pytest

from midiforge import corpus


@pytest.mark.parametrize(
    ("style", "at_least"), [("chorale", 200), ("fiddle", 1000), ("folk", 5000), ("quartet", 30)]
)
def test_each_style_has_real_candidates(style, at_least):
    cands = corpus.list_candidates(style)
    assert len(cands) >= at_least
    assert len({c.piece_id for c in cands}) == len(cands)


def test_selection_is_deterministic_from_seed():
    a = [c.piece_id for c in corpus.select("folk", 1)[:20]]
    assert a == [c.piece_id for c in corpus.select("folk", 1)[:20]]
    assert a != [c.piece_id for c in corpus.select("folk", 2)[:20]]


def test_quartet_candidates_are_quartets_not_sonatas():
    paths = {c.path for c in corpus.list_candidates("quartet")}
    assert "haydn/opus74no1/movement1.mxl" in paths
    assert not any("k545" in p or p.endswith(".krn") for p in paths)


def test_excerpt_is_cut_and_keeps_parts():
    cand = corpus.Candidate("quartet", "haydn/opus74no1/movement1.mxl")
    pm, parts = corpus.score_to_midi(cand, seconds=6.0)
    assert len(parts) == 4
    assert len(pm.instruments) == 4
    assert 5.0 < pm.get_end_time() <= 6.0
    programs = corpus.assign_programs(pm, "quartet", vary=False, rng=random.Random(0))
    assert programs == [40, 40, 41, 42]  # violin, violin, viola, cello from part names


@pytest.mark.parametrize(
    ("style", "path", "number", "first_error"),
    [
        # ABC repeats music21 cannot expand (ExpanderException)
        ("fiddle", "ryansMammoth/SmashTheWindowsJig.abc", None, "badly formed repeats"),
        # one TimeSignature object shared between measures (StreamException)
        ("folk", "essenFolksong/han2.abc", 580, "already found"),
    ],
)
def test_known_export_failures_are_repaired(style, path, number, first_error):
    score = corpus._parse(corpus.Candidate(style, path, number))
    with pytest.raises(Exception, match=first_error):
        corpus._to_midi(score)
    pm = corpus._export(score)
    assert sum(len(i.notes) for i in pm.instruments) > 20


def test_vary_instruments_draws_from_the_style_list():
    cand = corpus.Candidate("fiddle", corpus.list_candidates("fiddle")[0].path)
    seen = set()
    for seed in range(12):
        pm, _ = corpus.score_to_midi(cand, seconds=2.0)
        seen.update(corpus.assign_programs(pm, "fiddle", vary=True, rng=random.Random(seed)))
    assert seen <= set(corpus.VARY_PROGRAMS["fiddle"])
    assert len(seen) >= 3
