"""`midiforge extract` and `midiforge compare` on real renders with exact reference MIDI,
transcribed by the real stock model."""

from __future__ import annotations

import argparse
import json
import logging
import shutil

import numpy as np
import pytest
import soundfile as sf

from midiforge import evaluation, midi_io, registry
from midiforge.config import ConfigError
from midiforge.transcription import command
from midiforge.transcription.compare import CompareConfig, compare, format_table
from midiforge.transcription.extract import extract
from midiforge.transcription.models import (
    InputError,
    ModelNotFoundError,
    resolve_model,
    transcribe_audio,
)
from midiforge.transcription.notes import NoteDecoding

SUMMARY_KEYS = {
    "notes",
    "precision",
    "recall",
    "f1",
    "f1_offset",
    "onset_err_median_ms",
    "onset_err_p90_ms",
    "pieces",
}
PIECE_KEYS = {"piece", "notes", "precision", "recall", "f1", "f1_offset"}
METRIC_KEYS = SUMMARY_KEYS - {"notes", "pieces"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def stock_path() -> str:
    return str(registry.stock_model_path())


@pytest.fixture(scope="module")
def fiddle_run(tiny_corpus, stock_path, tmp_path_factory):
    """stock by name and by path on the two fiddle renders, scored against their MIDI."""
    out = tmp_path_factory.mktemp("compare-fiddle")
    cfg = CompareConfig(
        models=["stock", stock_path],
        input=str(tiny_corpus / "audio" / "fiddle"),
        reference=str(tiny_corpus / "midi" / "fiddle"),
        out=str(out),
    )
    return compare(cfg), out


def test_stock_by_name_and_by_path_score_the_same_and_well(fiddle_run, stock_path):
    results, _ = fiddle_run
    by_name, by_path = results["models"]["stock"], results["models"][stock_path]
    assert by_name == by_path
    assert results["per_piece"]["stock"] == results["per_piece"][stock_path]
    assert by_name["pieces"] == 2
    assert by_name["f1"] > 0.8  # stock finds nearly every violin onset of these renders
    assert by_name["f1_offset"] < by_name["f1"]  # offsets are the harder half
    assert 0 < by_name["onset_err_median_ms"] <= by_name["onset_err_p90_ms"] <= 50
    rows = results["per_piece"]["stock"]
    assert [r["piece"] for r in rows] == sorted(r["piece"] for r in rows)
    assert by_name["notes"] == sum(r["notes"] for r in rows)
    assert by_name["f1"] == pytest.approx(np.mean([r["f1"] for r in rows]))  # mean of pieces
    assert results["unpaired"] == []
    table = format_table(results).splitlines()
    assert len(table) == 3 and table[1].startswith("stock ") and "-" not in table[1].split()


def test_results_json_has_the_exact_schema(fiddle_run, stock_path, tiny_corpus):
    results, out = fiddle_run
    written = json.loads((out / "results.json").read_text())
    assert written == results
    assert set(written) == {
        "models", "per_piece", "inputs", "reference", "decoding", "unpaired", "skipped"
    }  # fmt: skip
    assert written["skipped"] == []
    assert list(written["models"]) == ["stock", stock_path]
    for name in written["models"]:
        assert set(written["models"][name]) == SUMMARY_KEYS
        assert len(written["per_piece"][name]) == 2
        assert all(set(row) == PIECE_KEYS for row in written["per_piece"][name])
    assert sorted(written["inputs"]) == sorted(
        str(p) for p in (tiny_corpus / "audio" / "fiddle").glob("*.wav")
    )
    assert written["reference"] == str(tiny_corpus / "midi" / "fiddle")
    # neither model has a decoding.yaml: both decode with basic-pitch's thresholds
    for name in written["models"]:
        assert written["decoding"][name]["onset_threshold"] == 0.5
        assert written["decoding"][name]["frame_threshold"] == 0.3
    assert (out / "config.yaml").is_file()


def test_piano_rolls_are_real_pictures(fiddle_run):
    from matplotlib.image import imread

    _, out = fiddle_run
    pngs = sorted(out.glob("pianoroll-*.png"))
    assert len(pngs) == 4  # 2 models x 2 pieces (plots=3, but only 2 pieces)
    assert sum(p.name.startswith("pianoroll-stock-") for p in pngs) == 2
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
        pixels = imread(png)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 800
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # not blank


def test_unpaired_inputs_and_duplicate_references_are_reported(tiny_corpus, tmp_path, caplog):
    fiddle = sorted((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
    folk = sorted((tiny_corpus / "audio" / "folk").glob("*.wav"))
    audio_dir, ref_dir = tmp_path / "audio", tmp_path / "ref"
    for sub in ("a", "b"):  # one stem twice among the inputs
        (audio_dir / sub).mkdir(parents=True)
        shutil.copy(fiddle[0], audio_dir / sub)
    for f in (fiddle[1], *folk):
        shutil.copy(f, audio_dir)
    (ref_dir / "again").mkdir(parents=True)
    for f in (fiddle[0], fiddle[1], folk[1]):
        shutil.copy(tiny_corpus / "midi" / f.parent.name / f"{f.stem}.mid", ref_dir)
    shutil.copy(ref_dir / f"{fiddle[1].stem}.mid", ref_dir / "again")  # two references, one stem
    with caplog.at_level(logging.WARNING, logger="midiforge.transcription.compare"):
        results = compare(
            CompareConfig(models=["stock"], input=str(audio_dir), reference=str(ref_dir))
        )
    reasons = {(u["piece"], u["reason"]) for u in results["unpaired"]}
    assert reasons == {
        (f"a/{fiddle[0].stem}", "duplicate_input"),
        (f"b/{fiddle[0].stem}", "duplicate_input"),
        (fiddle[1].stem, "duplicate_reference"),
        (folk[0].stem, "no_reference"),
    }
    dup = next(u for u in results["unpaired"] if u["reason"] == "duplicate_reference")
    assert len(dup["references"]) == 2
    assert sum("is not scored" in r.message for r in caplog.records) == 4
    stock = results["models"]["stock"]
    assert stock["pieces"] == 1  # only the second folk tune has exactly one reference
    rows = {r["piece"]: r for r in results["per_piece"]["stock"]}
    assert len(rows) == 5 and all(r["notes"] > 0 for r in rows.values())  # all transcribed
    assert rows[folk[1].stem]["f1"] == stock["f1"]
    assert rows[folk[0].stem]["f1"] is None


def test_without_reference_metrics_are_null(tiny_corpus, tmp_path):
    wav = sorted((tiny_corpus / "audio" / "fiddle").glob("*.wav"))[0]
    results = compare(CompareConfig(models=["stock"], input=str(wav), out=str(tmp_path)))
    stock = results["models"]["stock"]
    assert all(stock[k] is None for k in METRIC_KEYS)
    assert stock["notes"] > 10 and stock["pieces"] == 0
    assert results["reference"] is None and results["unpaired"] == []
    (row,) = results["per_piece"]["stock"]
    assert row["piece"] == wav.stem and row["f1"] is None and row["notes"] == stock["notes"]
    assert format_table(results).splitlines()[1].split()[1:] == [
        str(stock["notes"]),
        *["-"] * 6,
        "0",
    ]
    (png,) = tmp_path.glob("pianoroll-*.png")  # the model's notes alone
    assert png.name == f"pianoroll-stock-{wav.stem}.png" and png.stat().st_size > 5_000


def test_extract_writes_what_transcribe_audio_and_compare_find(
    fiddle_run, tiny_corpus, stock_path, tmp_path
):
    wav = sorted((tiny_corpus / "audio" / "fiddle").glob("*.wav"))[0]
    local = tmp_path / wav.name  # the default output lands beside the input
    shutil.copy(wav, local)
    summary = extract(local)
    assert summary["out"] == str(tmp_path / f"{wav.stem}.mid")
    assert summary["model_path"] == stock_path and summary["duration_s"] == pytest.approx(8, 0.1)
    written = midi_io.notes_array(midi_io.load_midi(summary["out"]))
    (expected,) = transcribe_audio([wav], stock_path, NoteDecoding())
    assert summary["notes"] == len(expected) == len(written) > 10
    np.testing.assert_allclose(written[:, :2], expected[:, :2], atol=1 / 960)  # MIDI ticks
    np.testing.assert_array_equal(written[:, 2:], expected[:, 2:])
    # compare transcribed both fiddle clips in shared batches: the same notes, the same f1
    results, _ = fiddle_run
    row = next(r for r in results["per_piece"]["stock"] if r["piece"] == wav.stem)
    ref = midi_io.notes_array(
        midi_io.load_midi(tiny_corpus / "midi" / "fiddle" / f"{wav.stem}.mid")
    )
    assert row["notes"] == summary["notes"]
    assert row["f1"] == evaluation.note_metrics(ref, expected)["f1"]


def test_unreadable_files_are_skipped_and_listed(tiny_corpus, tmp_path):
    """A cut WAV, a silent one and an unreadable reference are each skipped with the
    reason; the good piece is still scored (one bad file used to end the comparison)."""
    wav = sorted((tiny_corpus / "audio" / "fiddle").glob("*.wav"))[0]
    mid = tiny_corpus / "midi" / "fiddle" / f"{wav.stem}.mid"
    (tmp_path / "a").mkdir()
    (tmp_path / "r").mkdir()
    shutil.copy(wav, tmp_path / "a" / "good.wav")
    shutil.copy(mid, tmp_path / "r" / "good.mid")
    (tmp_path / "a" / "cut.wav").write_bytes(wav.read_bytes()[:30])
    sf.write(tmp_path / "a" / "silent.wav", np.zeros(22_050 * 3, np.float32), 22_050)
    shutil.copy(wav, tmp_path / "a" / "badref.wav")
    (tmp_path / "r" / "badref.mid").write_bytes(b"MThd junk")
    cfg = CompareConfig(models=["stock"], input=str(tmp_path / "a"), reference=str(tmp_path / "r"))
    results = compare(cfg)
    reasons = {s["piece"]: s["reason"] for s in results["skipped"]}
    assert set(reasons) == {"cut", "silent", "badref"}
    assert "silence" in reasons["silent"] and "badref.mid" in reasons["badref"]
    assert results["models"]["stock"]["pieces"] == 1
    assert [r["piece"] for r in results["per_piece"]["stock"]] == ["good"]


def test_extract_into_a_folder_and_from_a_broken_model(tiny_corpus, tmp_path):
    """`--out DIR/` writes DIR/<input>.mid; a file that is no ONNX model, or another
    network's weights as a base, is a one-line error (MidiforgeError), not a traceback."""
    from midiforge.errors import MidiforgeError
    from midiforge.transcription.onnx_weights import from_onnx

    wav = sorted((tiny_corpus / "audio" / "fiddle").glob("*.wav"))[0]
    (tmp_path / "out").mkdir()
    assert extract(wav, out=tmp_path / "out")["out"] == str(tmp_path / "out" / f"{wav.stem}.mid")
    for name, data in (("empty.onnx", b""), ("text.onnx", b"not a model at all")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MidiforgeError, match=name):
            extract(wav, model=str(tmp_path / name), out=tmp_path / "x.mid")
    other = tmp_path / "other.onnx"
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    onnx.save(onnx.helper.make_model(graph), other)
    with pytest.raises(MidiforgeError):
        from_onnx(other)


def test_resolve_model_accepts_names_files_and_folders(tmp_path, stock_path):
    assert str(resolve_model("stock")) == stock_path
    assert str(resolve_model(stock_path)) == stock_path
    folder = tmp_path / "exported"
    folder.mkdir()
    shutil.copy(stock_path, folder / "model.onnx")
    assert resolve_model(str(folder)) == folder / "model.onnx"
    root = str(tmp_path / "registry")
    registry.Registry(root).push(folder, "fiddle-v1", kind="transcriber")
    pulled = resolve_model("fiddle-v1", models_root=root)
    assert (
        pulled.name == "model.onnx"
        and pulled.read_bytes() == folder.joinpath("model.onnx").read_bytes()
    )
    with pytest.raises(ModelNotFoundError, match=r"'fidle-v1'.*stock, fiddle-v1"):
        resolve_model("fidle-v1", models_root=root)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match=r"not an \.onnx model"):
        resolve_model(str(tmp_path / "notes.txt"))


def test_bad_inputs_are_refused_clearly(tmp_path, tiny_corpus):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no audio files"):
        compare(CompareConfig(input=str(tmp_path / "empty")))
    fiddle = str(tiny_corpus / "audio" / "fiddle")
    with pytest.raises(InputError, match="holds no reference MIDI files"):
        compare(CompareConfig(input=fiddle, reference=str(tmp_path / "empty")))
    with pytest.raises(ModelNotFoundError, match="'nope'"):
        compare(CompareConfig(models=["stock", "nope"], input=fiddle))
    with pytest.raises(ConfigError, match="repeated: stock"):
        compare(CompareConfig(models=["stock", "stock"], input=fiddle))
    with pytest.raises(InputError, match="no audio file"):
        extract(tmp_path / "missing.wav")


def _parser(add) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add(p)
    return p


def test_commands_parse_flags_and_overrides(tiny_corpus, tmp_path, capsys):
    wav = sorted((tiny_corpus / "audio" / "fiddle").glob("*.wav"))[1]
    ref = tiny_corpus / "midi" / "fiddle" / f"{wav.stem}.mid"
    flags = ["--models", "stock", "--input", str(wav), "--reference", str(ref)]
    args = _parser(command.add_compare).parse_args(
        [*flags, "--out", str(tmp_path / "c"), "--onset-threshold", "0.6"]
    )
    assert command.run_compare(args, ["--plots=0", "--plot_seconds=5"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[1].startswith("stock ") and "results.json" in printed
    saved = json.loads((tmp_path / "c" / "results.json").read_text())
    assert saved["decoding"]["stock"]["onset_threshold"] == 0.6
    assert saved["models"]["stock"]["pieces"] == 1
    assert not list((tmp_path / "c").glob("*.png"))  # --plots=0
    with pytest.raises(ConfigError, match="plotz"):
        command.run_compare(args, ["--plotz=1"])

    out = tmp_path / "x.mid"
    args = _parser(command.add_extract).parse_args(
        [str(wav), "--model", "stock", "--out", str(out), "--min-note-ms", "60"]
    )
    assert command.run_extract(args, []) == 0
    assert f"{out}: " in capsys.readouterr().out
    assert len(midi_io.notes_array(midi_io.load_midi(out))) > 10


def test_files_differing_only_in_extension_are_two_pieces(tmp_path):
    """x.wav and x.flac used to share one piece name: one row, one plot file."""
    from midiforge.transcription.compare import find_pieces

    for name in ("x.wav", "x.flac", "y.wav", "sub/x.wav"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    names = {p.name: p.audio.name for p in find_pieces(tmp_path)}
    assert names == {"x.wav": "x.wav", "x.flac": "x.flac", "y": "y.wav", "sub/x": "x.wav"}
