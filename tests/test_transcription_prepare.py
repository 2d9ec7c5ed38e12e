"""`midiforge train prepare` on real files: good pairs from the tiny corpus plus one
deliberately broken pair per reason, each of which must be listed, never dropped."""

from __future__ import annotations

import argparse
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pretty_midi
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from midiforge import audio as audiomod
from midiforge import config as cfgmod
from midiforge import midi_io
from midiforge.transcription import constants as bp
from midiforge.transcription import targets
from midiforge.transcription.prepare import (
    STAGING,
    PrepareConfig,
    PrepareError,
    load_manifest,
    prepare,
    read_window,
)
from midiforge.transcription.train_command import add_prepare, run_prepare

STYLES = ("fiddle", "folk", "quartet")
EXPECTED_BROKEN = {
    "orphan": "no_midi",
    "lonely": "no_audio",
    "random": "not_audio",
    "silent": "silence",
    "noteless": "no_notes",
    "drums": "no_notes",
    "corrupt": "midi_unreadable",
    "stretched": "duration_mismatch",
    "dup": "duplicate_stem",
}


def _wav(x: np.ndarray, sr: int = bp.AUDIO_SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _midi(instrument: pretty_midi.Instrument) -> bytes:
    pm = pretty_midi.PrettyMIDI()
    pm.instruments.append(instrument)
    return midi_io.midi_bytes(pm)


def _stretched(mid: Path, factor: float) -> bytes:
    pm = midi_io.load_midi(mid)
    for inst in pm.instruments:
        for n in inst.notes:
            n.start, n.end = n.start * factor, n.end * factor
    return midi_io.midi_bytes(pm)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _add_broken(audio: Path, midi: Path, wav: bytes, mid: Path) -> None:
    """One pair per reason; `wav` and `mid` are a good pair's bytes to lend where needed."""
    drum = pretty_midi.Instrument(program=0, is_drum=True)
    drum.notes = [pretty_midi.Note(velocity=90, pitch=36, start=t, end=t + 0.1) for t in range(8)]
    files = {
        audio / "orphan.wav": wav,
        midi / "lonely.mid": mid.read_bytes(),
        audio / "random.wav": np.random.default_rng(0).bytes(20_000),
        midi / "random.mid": mid.read_bytes(),
        audio / "silent.wav": _wav(np.zeros(3 * bp.AUDIO_SAMPLE_RATE, np.float32)),
        midi / "silent.mid": mid.read_bytes(),
        audio / "noteless.wav": wav,
        midi / "noteless.mid": _midi(pretty_midi.Instrument(program=40)),
        audio / "drums.wav": wav,
        midi / "drums.mid": _midi(drum),
        audio / "corrupt.wav": wav,
        midi / "corrupt.mid": np.random.default_rng(1).bytes(300),
        audio / "stretched.wav": wav,
        midi / "stretched.mid": _stretched(mid, 3.0),
        audio / "a" / "dup.wav": wav,
        audio / "b" / "dup.wav": wav,
        midi / "dup.mid": mid.read_bytes(),
    }
    for path, data in files.items():
        _write(path, data)


@pytest.fixture(scope="module")
def inputs(tiny_corpus, tmp_path_factory) -> Path:
    """audio/STYLE/STEM.wav (nested) and midi/STEM.mid (flat): pairing ignores folders."""
    root = tmp_path_factory.mktemp("prepare-inputs")
    for style in STYLES:
        wav = sorted((tiny_corpus / "audio" / style).glob("*.wav"))[0]
        mid = tiny_corpus / "midi" / style / f"{wav.stem}.mid"
        _write(root / "audio" / style / wav.name, wav.read_bytes())
        _write(root / "midi" / mid.name, mid.read_bytes())
    wav = sorted((root / "audio" / "fiddle").glob("*.wav"))[0]
    _add_broken(root / "audio", root / "midi", wav.read_bytes(), root / "midi" / f"{wav.stem}.mid")
    return root


def _config(inputs: Path, output: Path, **kw) -> PrepareConfig:
    return cfgmod.load(
        PrepareConfig, audio_dir=str(inputs / "audio"), midi_dir=str(inputs / "midi"),
        output=str(output), **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory) -> tuple[PrepareConfig, dict]:
    cfg = _config(inputs, tmp_path_factory.mktemp("prepared") / "out")
    return cfg, prepare(cfg)


def _rows(cfg: PrepareConfig, piece: dict) -> list[dict]:
    return pq.read_table(Path(cfg.output) / piece["file"]).to_pylist()


def _source(inputs: Path, piece: dict) -> tuple[np.ndarray, np.ndarray]:
    """The piece's audio and notes, decoded here on their own."""
    data = (inputs / "audio" / piece["audio"]).read_bytes()
    x = audiomod.load_for_transcription(data, audiomod.AudioLimits())
    return x, midi_io.notes_array(midi_io.load_midi(inputs / "midi" / piece["midi"]))


def test_every_broken_pair_is_listed_with_its_reason(prepared):
    _, m = prepared
    assert {b["piece"]: b["reason"] for b in m["broken"]} == EXPECTED_BROKEN
    by_piece = {b["piece"]: b for b in m["broken"]}
    assert by_piece["dup"]["audio"] == "a/dup.wav, b/dup.wav"
    assert by_piece["orphan"]["midi"] is None and by_piece["lonely"]["audio"] is None
    assert "last note-off" in by_piece["stretched"]["detail"]
    t = m["totals"]
    assert (t["pieces"], t["broken"]) == (3, len(EXPECTED_BROKEN))
    assert t["pairs_found"] == t["pieces"] + t["broken"]
    assert [p["piece"] for p in m["pieces"]] == sorted(p["piece"] for p in m["pieces"])


def test_good_pieces_give_one_window_per_hop(prepared, inputs):
    cfg, m = prepared
    for piece in m["pieces"]:
        info = sf.info(inputs / "audio" / piece["audio"])
        assert info.samplerate == bp.AUDIO_SAMPLE_RATE  # so no resampling changes the length
        expected = math.ceil(info.frames / round(cfg.hop_s * bp.AUDIO_SAMPLE_RATE))
        rows = _rows(cfg, piece)
        assert piece["windows"] == len(rows) == expected
        assert [r["window"] for r in rows] == list(range(expected))
        starts = [k * cfg.hop_s for k in range(expected)]
        assert [r["start_s"] for r in rows] == pytest.approx(starts)
        assert {r["piece"] for r in rows} == {piece["piece"]}
    assert m["totals"]["windows"] == sum(p["windows"] for p in m["pieces"])
    assert m["targets"]["frames_per_window"] == 172


def test_windows_hold_the_decoded_audio_and_its_targets(prepared, inputs):
    cfg, m = prepared
    for piece in m["pieces"]:
        x, notes = _source(inputs, piece)
        assert piece["n_notes"] == len(notes)
        for row in _rows(cfg, piece):
            audio, frames = read_window(row)
            start = round(row["start_s"] * bp.AUDIO_SAMPLE_RATE)
            chunk = x[start : start + bp.AUDIO_N_SAMPLES]
            assert audio.dtype == np.float32 and audio.shape == (bp.AUDIO_N_SAMPLES,)
            np.testing.assert_array_equal(audio[: len(chunk)], chunk)
            assert not audio[len(chunk) :].any()  # the last windows are zero-padded
            want = targets.window_targets(notes, row["start_s"])
            for name, shape in targets.SHAPES.items():
                assert frames[name].shape == shape
                np.testing.assert_array_equal(frames[name], want[name])
            assert row["n_note_frames"] == int(want["note"].sum())


def test_onset_count_is_the_notes_starting_in_the_window(prepared, inputs):
    cfg, m = prepared
    for piece in m["pieces"]:
        _, notes = _source(inputs, piece)
        counted = 0
        for row in _rows(cfg, piece):
            frame = np.round((notes[:, 0] - row["start_s"]) / targets.FRAME_S).astype(int)
            inside = (frame >= 0) & (frame < bp.FRAMES_PER_WINDOW)
            # two notes on one key and frame (unisons in a quartet) are one onset cell
            cells = {(f, int(p)) for f, p in zip(frame[inside], notes[inside, 2], strict=True)}
            assert row["n_onsets"] == len(cells)
            counted += row["n_onsets"]
        assert counted >= len(notes)  # overlapping windows see every onset at least once


def test_rerun_into_the_same_folder_replaces_it(prepared, inputs, tmp_path):
    cfg, first = prepared
    out = tmp_path / "out"
    shutil.copytree(cfg.output, out)
    (out / "windows" / "gone-piece.parquet").write_bytes(b"stale")
    (out / STAGING).mkdir()
    (out / STAGING / "half.parquet").write_bytes(b"killed run")
    again = prepare(_config(inputs, out))
    assert again["totals"] == first["totals"]
    assert again["pieces"] == first["pieces"] and again["broken"] == first["broken"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    files = [p["file"] for p in again["pieces"]]
    assert written == sorted(["config.yaml", "manifest.json", *files])
    assert load_manifest(out)["totals"] == again["totals"]


def test_all_broken_raises_with_reasons_and_keeps_the_previous_output(prepared, inputs, tmp_path):
    cfg, first = prepared
    bad = tmp_path / "bad"
    for name in ("silent.wav", "random.wav"):
        _write(bad / "audio" / name, (inputs / "audio" / name).read_bytes())
    for name in ("silent.mid", "random.mid", "noteless.mid", "lonely.mid"):
        _write(bad / "midi" / name, (inputs / "midi" / name).read_bytes())
    out = tmp_path / "out"
    shutil.copytree(cfg.output, out)
    with pytest.raises(PrepareError) as e:
        prepare(_config(bad, out))
    for reason in ("silence", "not_audio", "no_audio"):
        assert reason in str(e.value)
    assert load_manifest(out) == first
    assert not (out / STAGING).exists()
    with pytest.raises(PrepareError):
        prepare(_config(bad, tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()


def test_cli_prints_the_summary_and_every_broken_reason(inputs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_prepare(parser)
    args = parser.parse_args(
        ["--audio-dir", str(inputs / "audio"), "--midi-dir", str(inputs / "midi"),
         "--output", str(tmp_path / "out"), "--seed", "3"]
    )  # fmt: skip
    assert run_prepare(args, ["--tail_allowance_s=2.0"]) == 0
    printed = capsys.readouterr().out
    assert "3 pieces" in printed
    for stem, reason in EXPECTED_BROKEN.items():
        assert f"BROKEN {stem}: {reason}" in printed
    config = load_manifest(tmp_path / "out")["config"]
    assert (config["seed"], config["tail_allowance_s"]) == (3, 2.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--hop_s=0"], "hop_s"),
        (["--hop_s=2.5"], "hop_s"),
        (["--min_notes=0"], "min_notes"),
        (["--duration_tolerance_s=-1"], "duration_tolerance_s"),
        (["--hop=1"], "unknown config key"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, message):
    with pytest.raises(cfgmod.ConfigError, match=message):
        cfgmod.load(
            PrepareConfig, overrides=overrides, audio_dir="a", midi_dir="m", output=str(tmp_path)
        )


def test_config_names_missing_folders(tmp_path):
    with pytest.raises(cfgmod.ConfigError, match="--midi-dir, --output"):
        cfgmod.load(PrepareConfig, audio_dir="a")
    with pytest.raises(PrepareError, match="not a folder"):
        prepare(PrepareConfig(audio_dir=str(tmp_path / "no"), midi_dir=str(tmp_path), output="o"))


def test_read_window_rejects_a_short_audio_row(prepared):
    cfg, m = prepared
    row = _rows(cfg, m["pieces"][0])[0]
    with pytest.raises(ValueError, match="samples"):
        read_window({**row, "audio": row["audio"][:-4]})
