"""Each pipeline stage as a pure function on a batch, without Ray."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from midiforge import audio, registry
from midiforge.pipeline import schema, split, stages, work
from midiforge.pipeline.config import DatasetConfig
from midiforge.symbolic.tokenize import make_tokenizer
from midiforge.transcription.runner import OnnxTranscriber


def input_batch(paths: list[str], kind: str, style: str = "fiddle", refs=None) -> stages.Batch:
    rows = [
        {
            "piece_id": f"{i:016x}",
            "source_uri": p,
            "kind": kind,
            "tier": 2 if kind == "audio" else 3,
            "style": style,
            "reference_uri": (refs or {}).get(p, ""),
            "status": "ok",
            "stage": "",
            "reason": "",
            "detail": "",
        }
        for i, p in enumerate(paths)
    ]
    return stages.batch_of(rows)


@pytest.fixture(scope="module")
def through_postprocess(tiny_corpus):
    wavs = sorted(str(p) for p in (tiny_corpus / "audio" / "fiddle").glob("*.wav"))
    refs = {w: w.replace("/audio/", "/midi/").replace(".wav", ".mid") for w in wavs}
    cfg = DatasetConfig()
    # One of the two tunes spans 9 semitones in 8 s; this fixture is about mechanics.
    cfg.validate.min_range_semitones = 7
    b = stages.load_inputs(input_batch(wavs, "audio", refs=refs), cfg.limits)
    b = stages.transcribe(b, OnnxTranscriber(registry.stock_model_path(), device="cpu"))
    return stages.postprocess(b, cfg.notes, cfg.validate, make_tokenizer(cfg.tokenizer), "{}")


def test_audio_rows_come_out_transcribed_validated_tokenized(through_postprocess):
    rows = stages.rows_of(through_postprocess)
    assert len(rows) == 2
    for r in rows:
        assert r["status"] == "ok", (r["reason"], r["detail"])
        assert r["ref_f1"] > 0.8  # scored against the exact MIDI the audio was rendered from
        assert len(np.frombuffer(r["tokens"], np.int32)) > 50
        assert r["key"] and r["n_notes"] > 8 and r["max_polyphony"] >= 1
    assert "audio" not in through_postprocess and "note" not in through_postprocess


_ACTOR = """
import json, pickle, sys
from midiforge.pipeline import stages
postprocess_args, batch = pickle.load(open(sys.argv[1], "rb"))
out = stages.rows_of(stages.Postprocess(*postprocess_args)(batch))
# A file, not stdout: imports may print (pyfluidsynth announces the library it found).
json.dump([[r["key"] for r in out], "music21" in sys.modules], open(sys.argv[2], "w"))
"""


@pytest.mark.parametrize("from_driver", [True, False])
def test_postprocess_actors_validate_with_the_drivers_key_profiles(
    tiny_corpus, tmp_path, from_driver
):
    """An actor given music21's key profiles by the driver (as the pipeline does) finds
    the same keys without importing music21 (~0.4 s of every actor's start-up)."""
    import json
    import pickle
    import subprocess
    import sys

    from midiforge.symbolic import validate

    cfg = DatasetConfig()
    mids = sorted((tiny_corpus / "midi").rglob("*.mid"))
    batch = stages.load_inputs(input_batch([str(m) for m in mids], "midi"), cfg.limits)
    profiles = validate.music21_key_profiles() if from_driver else None
    args = (cfg.notes, cfg.validate, cfg.tokenizer, "{}", profiles)
    (tmp_path / "args.pkl").write_bytes(pickle.dumps((args, batch)))
    subprocess.run(
        [sys.executable, "-c", _ACTOR, str(tmp_path / "args.pkl"), str(tmp_path / "out.json")],
        check=True,
    )  # fmt: skip
    keys, imported = json.loads((tmp_path / "out.json").read_text())
    assert keys == [validate.analyze(m.read_bytes())["key"] for m in mids]
    assert imported is not from_driver


def test_work_table_matches_the_contract(through_postprocess, tmp_path):
    table = work.to_work_table(through_postprocess)
    assert table.schema == schema.WORK
    work.write_work(through_postprocess, str(tmp_path))
    back = work.read_work(str(tmp_path))
    assert back.column("piece_id").to_pylist() == table.column("piece_id").to_pylist()
    assert back.column("tokens").to_pylist() == table.column("tokens").to_pylist()


def test_rejects_keep_their_first_reason(tmp_path):
    (tmp_path / "silent.wav").write_bytes(b"")
    (tmp_path / "x.txt").write_bytes(b"x")
    b = input_batch([str(tmp_path / "silent.wav"), str(tmp_path / "gone.wav")], "audio")
    b = stages.batch_of(
        [*stages.rows_of(b), *stages.rows_of(input_batch([str(tmp_path / "x.txt")], "unknown"))]
    )
    out = stages.rows_of(stages.load_inputs(b, audio.AudioLimits()))
    assert [(r["stage"], r["reason"]) for r in out] == [
        ("decode", "empty"), ("read", "read_failed"), ("list", "unsupported_extension")
    ]  # fmt: skip
    # later stages leave rejected rows alone
    again = stages.rows_of(stages.transcribe(stages.batch_of(out), transcriber=None))
    assert [r["reason"] for r in again] == ["empty", "read_failed", "unsupported_extension"]


def test_read_failures_of_any_kind_reject_only_that_file(tiny_corpus):
    """A file URI, a file over max_bytes, and a URI pyarrow cannot parse (ArrowInvalid, a
    ValueError): each input gets its own outcome, and the batch goes on."""
    mid = next((tiny_corpus / "midi" / "fiddle").glob("*.mid"))
    wav = next((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
    limit = wav.stat().st_size - 1
    assert mid.stat().st_size <= limit
    b = stages.batch_of(
        [
            *stages.rows_of(input_batch([f"file://{mid}"], "midi")),
            *stages.rows_of(input_batch([f"file://{wav}", "nosuch://bucket/x.wav"], "audio")),
        ]
    )
    out = stages.rows_of(stages.load_inputs(b, audio.AudioLimits(), max_bytes=limit))
    assert [(r["status"], r["reason"]) for r in out] == [
        ("ok", ""), ("rejected", "too_large"), ("rejected", "read_failed")
    ]  # fmt: skip
    assert out[0]["midi"] == mid.read_bytes()
    size = wav.stat().st_size
    assert out[1]["detail"] == f"{size} bytes > maximum {limit} bytes (max_input_bytes)"
    assert out[2]["detail"].startswith("ArrowInvalid: ")


@pytest.fixture(scope="module")
def transcriber():
    return OnnxTranscriber(registry.stock_model_path(), device="cpu")


@pytest.fixture(scope="module")
def fiddle_batch(tiny_corpus):
    wavs = sorted(str(p) for p in (tiny_corpus / "audio" / "fiddle").glob("*.wav"))
    return stages.load_inputs(input_batch(wavs, "audio"), DatasetConfig().limits)


def test_a_failed_model_call_rejects_only_the_input_it_failed_on(fiddle_batch, transcriber):
    """The model runs on a whole batch at once; when that call fails, each input is
    retried alone, and only the one that fails alone is rejected."""
    good, bad = stages.rows_of(fiddle_batch)
    bad["audio"] += b"\x00"  # no longer whole float32 samples: fails inside the call
    out = stages.rows_of(stages.transcribe(stages.batch_of([good, bad]), transcriber))
    assert (out[1]["status"], out[1]["stage"], out[1]["reason"]) == (
        "rejected", "transcribe", "model_failed"
    )  # fmt: skip
    assert out[1]["detail"].startswith("ValueError: ")
    alone = stages.rows_of(stages.transcribe(stages.batch_of([good]), transcriber))[0]
    assert out[0]["status"] == "ok" and out[0]["n_frames"] > 0
    assert out[0]["note"] == alone["note"]


def test_a_crash_in_one_rows_postprocessing_rejects_only_that_row(fiddle_batch, transcriber):
    cfg = DatasetConfig()
    cfg.validate.min_range_semitones = 7  # as in through_postprocess: about mechanics
    b = stages.rows_of(stages.transcribe(fiddle_batch, transcriber))
    b[1]["n_frames"] += 1  # the outputs no longer fill n_frames rows: decoding raises
    tok = make_tokenizer(cfg.tokenizer)
    out = stages.rows_of(stages.postprocess(stages.batch_of(b), cfg.notes, cfg.validate, tok, "{}"))
    assert (out[1]["status"], out[1]["stage"], out[1]["reason"]) == (
        "rejected", "transcribe", "notes_failed"
    )  # fmt: skip
    assert out[1]["detail"].startswith("ValueError: ")
    assert out[0]["status"] == "ok", (out[0]["reason"], out[0]["detail"])
    assert len(out[0]["tokens"]) > 0


def test_batch_of_keeps_trailing_nul_bytes():
    b = stages.batch_of([{"midi": b"MThd\x00\x00"}, {"midi": b"\x00"}])
    assert b["midi"][0] == b"MThd\x00\x00" and b["midi"][1] == b"\x00"


def test_splits_are_stratified_deterministic_and_by_piece():
    pieces = [(f"{i:016x}", 1 + (i % 2) * 2) for i in range(40)]  # 20 of tier 1, 20 of tier 3
    a = split.assign_splits(pieces, (0.8, 0.1, 0.1), seed=0)
    assert a == split.assign_splits(list(reversed(pieces)), (0.8, 0.1, 0.1), seed=0)
    assert a != split.assign_splits(pieces, (0.8, 0.1, 0.1), seed=1)
    for tier in (1, 3):
        counts = Counter(a[p] for p, t in pieces if t == tier)
        assert counts == {"train": 16, "val": 2, "test": 2}
    # ...and by style within a tier: each style gets its own val and test pieces
    styled = [(p, 3, "fiddle" if i < 12 else "folk") for i, (p, _) in enumerate(pieces[:24])]
    b = split.assign_splits(styled, (0.8, 0.1, 0.1), seed=0)
    for style in ("fiddle", "folk"):
        counts = Counter(b[p] for p, _, s in styled if s == style)
        assert counts == {"train": 10, "val": 1, "test": 1}
    assert split.split_counts(3, (0.8, 0.1, 0.1)) == (1, 1, 1)
    assert split.split_counts(2, (0.8, 0.1, 0.1)) == (2, 0, 0)
    # Halves of 3 both round to 2: the train count used to go negative (-1, 2, 2).
    assert split.split_counts(3, (0.0, 0.5, 0.5)) == (0, 2, 1)
    assert all(min(split.split_counts(n, (0.0, 0.5, 0.5))) >= 0 for n in range(10))


def test_a_song_in_two_forms_keeps_one_split():
    """Songs given as audio (tier 2) and as MIDI (tier 3): without links the two strata
    split independently and some songs land in two splits; with links every song has
    one split, the songs still split 8/1/1, and unlinked pieces keep their split."""
    songs = [f"{i:02d}" for i in range(20)]
    audio = {s: f"a{s}{'0' * 13}" for s in songs}
    midi = {s: f"b{s}{'0' * 13}" for s in songs}
    pieces = [(audio[s], 2, "fiddle") for s in songs] + [(midi[s], 3, "fiddle") for s in songs]
    solo = [(f"c{i:015x}", 3, "folk") for i in range(10)]
    frac = (0.8, 0.1, 0.1)
    unlinked = split.assign_splits(pieces + solo, frac, seed=0)
    assert any(unlinked[audio[s]] != unlinked[midi[s]] for s in songs)
    groups = {p: f"g{s}" for s in songs for p in (audio[s], midi[s])}
    linked = split.assign_splits(pieces + solo, frac, seed=0, groups=groups)
    assert all(linked[audio[s]] == linked[midi[s]] for s in songs)
    assert Counter(linked[audio[s]] for s in songs) == {"train": 16, "val": 2, "test": 2}
    assert {p: linked[p] for p, *_ in solo} == {p: unlinked[p] for p, *_ in solo}
    # the lead is the member in the lowest stratum: the audio's split is the one it had
    assert all(linked[audio[s]] == unlinked[audio[s]] for s in songs)
    assert linked == split.assign_splits(list(reversed(pieces + solo)), frac, 0, groups)


def test_expand_augments_train_only(through_postprocess):
    table = work.to_work_table(through_postprocess)
    ids = table.column("piece_id").to_pylist()
    splits = {ids[0]: "train", ids[1]: "val"}
    cfg = DatasetConfig()
    out = split.expand(table, splits=splits, augment_splits=["train"], aug_cfg=cfg.augment,
                       tokenizer=make_tokenizer(cfg.tokenizer), seed=0)  # fmt: skip
    assert out.schema == schema.DATASET
    rows = out.to_pylist()
    val = [r for r in rows if r["piece_id"] == ids[1]]
    train = [r for r in rows if r["piece_id"] == ids[0]]
    assert len(val) == 1 and json.loads(val[0]["augmentation"]) == split.ORIGINAL
    assert len(train) > 8  # the original plus transpositions (and octaves where they fit)
    shifts = {json.loads(r["augmentation"])["transpose"] for r in train}
    assert len(shifts) >= 8
    assert all(r["split"] == "train" and r["tokens"] for r in train)
    again = split.expand(table, splits=splits, augment_splits=["train"], aug_cfg=cfg.augment,
                         tokenizer=make_tokenizer(cfg.tokenizer), seed=0)  # fmt: skip
    assert again.equals(out)
    assert isinstance(out, pa.Table)


def test_lm_windows_carry_each_copys_own_key(through_postprocess):
    """The key column of a transposed copy is estimated on the copy, so the language
    model's Key token must be that column as is (adding the shift again made the token
    disagree with the music on 11 of 12 copies)."""
    from midiforge.lm import data as lm_data
    from midiforge.lm.vocab import LMVocab, parse_key

    table = work.to_work_table(through_postprocess)
    ids = table.column("piece_id").to_pylist()
    pid = ids[0]
    cfg = DatasetConfig()
    tok = make_tokenizer(cfg.tokenizer)
    rows = split.expand(table, splits=dict.fromkeys(ids, "train"), augment_splits=["train"],
                        aug_cfg=cfg.augment, tokenizer=tok, seed=0).to_pylist()  # fmt: skip
    pieces = [lm_data.piece_from_row(r) for r in rows if r["piece_id"] == pid]
    original = next(p for p in pieces if p.transpose == 0)
    tonic, mode = parse_key(original.key)
    vocab = LMVocab.for_tokenizer(tok, ["fiddle"])
    bar = tok.vocab["Bar_None"]
    shifted = [p for p in pieces if p.transpose]
    assert len(shifted) >= 8
    for p in shifted:
        assert parse_key(p.key) == ((tonic + p.transpose) % 12, mode), (p.transpose, p.key)
        w = lm_data.windows([p], vocab, seq_len=64, bar_id=bar)
        assert (w[:, 2] == vocab.key_id(p.key)).all()


def test_work_rows_of_another_transcriber_version_are_not_reused(tmp_path):
    """A transcriber re-pushed under its name (new weights or a new decoding.yaml) is a
    new version: a re-run refuses the old version's work rows instead of mixing them in.
    The check used to compare the name only."""
    from midiforge.config import ConfigError
    from midiforge.pipeline.build import _start_checks, work_settings

    reg = registry.Registry(str(tmp_path / "reg"))
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.onnx").write_bytes(registry.stock_model_path().read_bytes())
    reg.push(model, "tx", kind="transcriber")
    out = str(tmp_path / "out")
    cfg = DatasetConfig(midi=["x"], transcriber="tx", models_root=str(reg.root), out=out)
    first = work_settings(cfg, _start_checks(cfg))
    assert first["notes"]["onset_threshold"] == 0.5  # basic-pitch's, as resolved
    work.check_settings(out, first)
    # Any work file counts as earlier work for the check.
    earlier = tmp_path / "out" / work.WORK_DIR / "part-x.parquet"
    pq.write_table(pa.table({"piece_id": ["p"]}), earlier)
    work.check_settings(out, work_settings(cfg, _start_checks(cfg)))  # same version: reused

    (model / "decoding.yaml").write_text("onset_threshold: 0.6\n")
    reg.push(model, "tx", kind="transcriber")
    second = work_settings(cfg, _start_checks(cfg))
    assert second["transcriber_version"] != first["transcriber_version"]
    with pytest.raises(ConfigError, match=r"notes\.onset_threshold: 0\.5 then, 0\.6 now") as e:
        work.check_settings(out, second)
    assert "transcriber_version" in str(e.value)


def test_a_rerun_redoes_rows_of_another_kind_and_retryable_failures(tmp_path):
    """A row made when the file was listed as another kind, or a reject that says more
    about the moment than the file (read_failed, model_failed), or of a file changed
    since (another size or modification time), is dropped and redone; other rejects and
    accepted rows are kept. Rows used to be reused by path alone."""
    out = str(tmp_path)

    def row(pid: str, kind: str, status: str = "ok", reason: str = "", stamp="1:1") -> dict:
        return {"piece_id": pid, "source_uri": pid, "source_stamp": stamp, "kind": kind,
                "status": status, "reason": reason, "tokens": b""}  # fmt: skip

    work.write_work(stages.batch_of([
        row("a", "unknown", "rejected", "unsupported_extension"),
        row("b", "audio", "rejected", "read_failed"),
        row("c", "audio", "rejected", "too_polyphonic"),
        row("d", "midi"),
        row("f", "midi", stamp="5:9"),
        row("g", "midi", stamp=None),  # written before stamps were recorded
    ]), out)  # fmt: skip
    work.write_work(stages.batch_of([row("b", "audio", "rejected", "model_failed")]), out)
    now = {
        "a": ("midi", "1:1"), "b": ("audio", "1:1"), "c": ("audio", "1:1"),
        "d": ("midi", "1:1"), "e": ("audio", "1:1"), "f": ("midi", "5:10"),
        "g": ("midi", "7:7"),
    }  # fmt: skip
    stale = work.stale_pieces(out, now)
    assert stale == {"a", "b", "f"}
    work.drop_rows(out, stale)
    assert len(work.work_files(out)) == 1  # the file of b's second row held nothing else
    left = work.read_work(out, columns=["piece_id"]).to_pylist()
    assert sorted(r["piece_id"] for r in left) == ["c", "d", "g"]
    assert work.stale_pieces(out, now) == set()
    # A work file from before the column existed reads it as nulls: its rows are kept.
    old = pa.table({"piece_id": ["h"], "kind": ["midi"], "status": ["ok"], "reason": [""]})
    pq.write_table(old, tmp_path / work.WORK_DIR / "part-old.parquet")
    assert work.stale_pieces(out, {**now, "h": ("midi", "3:3")}) == set()
    assert not [p for p in (tmp_path / work.WORK_DIR).iterdir() if ".tmp-" in p.name]
