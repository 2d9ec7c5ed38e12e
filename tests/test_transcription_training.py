"""A debug-sized fine-tune on the shared local Ray: prepare -> Ray Train -> ONNX -> registry,
then the registered model by name in extract, compare, the dataset job and Serve."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
import yaml

from midiforge import midi_io, registry
from midiforge.pipeline.build import build_dataset
from midiforge.pipeline.config import DatasetConfig
from midiforge.transcription import compare, extract, prepare, train
from midiforge.transcription.calibrate import Calibration
from midiforge.transcription.export import load_weights
from midiforge.transcription.models import resolve_model, transcribe_audio
from midiforge.transcription.notes import NoteDecoding, model_decoding
from midiforge.transcription.onnx_weights import from_onnx
from midiforge.transcription.train_config import TrainRunConfig, TrainSchedule

from .conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_local")
NAME = "tiny-fiddle"


def _config(prepared, root, runs, **kw) -> TrainRunConfig:
    return TrainRunConfig(
        dataset=str(prepared),
        output=NAME,
        trainable=["note2", "onset2"],  # the cheapest heads: seconds per step on 2 cores
        schedule=TrainSchedule(epochs=1, batch_size=2, max_steps=3, lr=1e-3),
        storage=str(runs),
        models_root=str(root),
        style="fiddle",
        # A grid without basic-pitch's defaults, so the model's decoding.yaml differs from
        # stock's thresholds and the tests below see whether each consumer honours it.
        calibrate=Calibration(onset_thresholds=[0.35, 0.7], frame_thresholds=[0.2, 0.45]),
        **kw,
    )


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("tx")
    for kind in ("audio", "midi"):
        for style in ("fiddle", "folk"):
            shutil.copytree(tiny_corpus / kind / style, work / kind / style)
    prepare.prepare(prepare.PrepareConfig(
        audio_dir=str(work / "audio"), midi_dir=str(work / "midi"), output=str(work / "prep")
    ))  # fmt: skip
    cfg = _config(work / "prep", work / "reg", work / "runs")
    metrics = train.run(cfg)
    return work, cfg, metrics


def test_registered_with_metrics_and_lineage(trained):
    _, cfg, metrics = trained
    man = registry.Registry(cfg.models_root).manifest(NAME)
    assert man.kind == "transcriber" and man.parent == "stock"
    assert {"model.onnx", "weights.pt", "transcriber_config.yaml", "metrics.json"} <= set(man.files)
    assert man.training_data_hash and man.metrics["steps"] == 3
    val = metrics["validation"]
    assert set(val) == {"pieces", "calibration", "trained", "base", "base_calibrated"}
    assert val["pieces"] == len(metrics["val_pieces"]) >= 1
    assert val["calibration"]["pieces"] == val["pieces"] and len(val["calibration"]["grid"]) == 4
    # Split by piece: no piece on both sides.
    assert not set(metrics["train_pieces"]) & set(metrics["val_pieces"])
    assert metrics["train_windows"] > 0 and metrics["val_windows"] > 0


def test_calibrated_thresholds_are_saved_with_the_model(trained):
    _, cfg, metrics = trained
    folder = registry.Registry(cfg.models_root).fetch(NAME)
    saved = yaml.safe_load((folder / "decoding.yaml").read_text())
    grid = metrics["validation"]["calibration"]["grid"]
    best = max(g["score"] for g in grid)
    chosen = [g for g in grid if g["onset_threshold"] == saved["onset_threshold"]
              and g["frame_threshold"] == saved["frame_threshold"]]  # fmt: skip
    assert len(chosen) == 1 and chosen[0]["score"] == pytest.approx(best)
    for k in ("f1", "f1_offset"):  # the validation figures are taken at those thresholds
        assert metrics["validation"]["trained"][k] == pytest.approx(chosen[0][k])
    assert metrics["validation"]["base"]["onset_threshold"] == 0.5  # stock has no decoding.yaml


def _calibrated_differs(wav, cfg) -> np.ndarray:
    """The model's notes at its decoding.yaml thresholds, checked to differ from its notes
    at basic-pitch's defaults (else the consumer tests below could not fail)."""
    path = resolve_model(NAME, cfg.models_root)
    want = transcribe_audio([wav], path)[0]
    at_defaults = transcribe_audio([wav], path, NoteDecoding(0.5, 0.3, 127.70))[0]
    assert not _same(want, at_defaults)
    return want


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same notes: count, and start, end, pitch within MIDI's timing resolution."""
    return a.shape == b.shape and np.allclose(a[:, :3], b[:, :3], atol=0.01)


def test_only_the_trainable_heads_moved(trained):
    _, cfg, _ = trained
    folder = registry.Registry(cfg.models_root).fetch(NAME)
    new, old = load_weights(folder / "weights.pt"), from_onnx(registry.stock_model_path())
    changed = {k for k, v in new.head_state().items() if not torch.equal(v, old.head_state()[k])}
    assert changed and {k.split(".")[0] for k in changed} <= {"note2", "onset2"}


def test_rerun_finds_the_finished_run_and_trains_no_further(trained):
    """The same command again restores the run from its checkpoint, whose budget is spent:
    the same model comes back (a larger budget would go on: tests/test_lm_pipeline.py)."""
    work, cfg, first = trained
    before = load_weights(registry.Registry(cfg.models_root).fetch(NAME) / "weights.pt")
    again = train.run(_config(work / "prep", cfg.models_root, cfg.storage))
    assert again["steps"] == first["steps"] == 3
    assert again["best_val_loss"] == first["best_val_loss"]
    after = load_weights(registry.Registry(cfg.models_root).fetch(NAME) / "weights.pt")
    assert all(torch.equal(v, before.head_state()[k]) for k, v in after.head_state().items())
    # The same name with other heads to train is another run: refused, naming the change,
    # where it used to hand back this run's model as if trained so.
    from midiforge.config import ConfigError

    other = _config(work / "prep", cfg.models_root, cfg.storage)
    other.trainable = ["note2"]
    with pytest.raises(
        ConfigError, match=r"trainable: \['note2', 'onset2'\] then, \['note2'\] now"
    ):
        train.run(other)


def test_extract_and_compare_by_name(trained, tmp_path):
    work, cfg, _ = trained
    wav = sorted((work / "audio" / "fiddle").glob("*.wav"))[0]
    summary = extract.extract(wav, model=NAME, out=tmp_path / "x.mid", models_root=cfg.models_root)
    got = midi_io.notes_array(midi_io.load_midi(tmp_path / "x.mid"))
    want = _calibrated_differs(wav, cfg)
    assert summary["notes"] == len(want) == len(got) > 0
    np.testing.assert_allclose(got[:, :3], want[:, :3], atol=0.01)
    res = compare.compare(compare.CompareConfig(
        models=["stock", NAME], input=str(work / "audio" / "fiddle"),
        reference=str(work / "midi" / "fiddle"), out=str(tmp_path / "cmp"),
        models_root=cfg.models_root,
    ))  # fmt: skip
    assert set(res["models"]) == {"stock", NAME}
    assert res["models"][NAME]["pieces"] == 2
    # compare decodes the model at its decoding.yaml, as extract does, not at stock's
    own = model_decoding(resolve_model(NAME, cfg.models_root))
    used = res["decoding"][NAME]
    assert {k: used[k] for k in own} == own
    rows = {r["piece"]: r["notes"] for r in res["per_piece"][NAME]}
    for w in sorted((work / "audio" / "fiddle").glob("*.wav")):
        assert rows[w.stem] == len(_calibrated_differs(w, cfg))
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["models"] == res["models"]


def test_dataset_job_transcribes_with_the_registered_model(trained, tmp_path):
    work, cfg, _ = trained
    ds = DatasetConfig(
        audio=[str(work / "audio" / "fiddle")], out=str(tmp_path / "ds"), style="fiddle",
        transcriber=NAME, models_root=cfg.models_root, seed=0,
    )  # fmt: skip
    report = build_dataset(ds)
    assert report["inputs"] == 2 and report["accepted"] >= 1, report
    table = pads.dataset(tmp_path / "ds" / "dataset", format="parquet", partitioning="hive")
    rows = table.to_table().to_pylist()
    assert {json.loads(r["models"])["transcriber"]["name"] for r in rows} == {NAME}
    for wav in sorted((work / "audio" / "fiddle").glob("*.wav")):  # at the model's thresholds
        mine = [r for r in rows if r["source_uri"].endswith(wav.name)]
        if mine:
            want = _calibrated_differs(wav, cfg)
            got = [midi_io.notes_array(midi_io.load_midi(r["midi"])) for r in mine]
            assert any(_same(g, want) for g in got)


def test_serve_answers_with_the_registered_model(trained):
    from ray import serve

    from midiforge.serving.app import build_app

    work, cfg, _ = trained
    wav = sorted((work / "audio" / "fiddle").glob("*.wav"))[0]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(
            {"models_root": cfg.models_root},
            gateway_options={"ray_actor_options": {"num_cpus": 0.1}},
            transcriber_options={"ray_actor_options": {"num_cpus": 0.5}},
            generator_options={"ray_actor_options": {"num_cpus": 0.1}},
            classifier_options={"ray_actor_options": {"num_cpus": 0.05}},
        ), name="midiforge", route_prefix="/")  # fmt: skip
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            r = client.post("/v1/transcribe", files={"audio": ("a.wav", wav.read_bytes())},
                            params={"model": NAME, "format": "json"})  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        want = _calibrated_differs(wav, cfg)
        got = np.array([[n["start"], n["end"], n["pitch"]] for n in body["notes"]])
        assert body["model"] == NAME and _same(np.c_[got, np.zeros(len(got))], want)
    finally:
        serve.shutdown()


def test_pieces_named_with_a_leading_underscore_or_dot_are_read(tiny_corpus, tmp_path):
    """Ray Data skips files named "_..." or "." when it reads a folder; a piece's windows
    are read by name, so `_intro.wav` trains like any other piece."""
    for kind, ext in (("audio", "wav"), ("midi", "mid")):
        src = sorted((tiny_corpus / kind / "fiddle").glob(f"*.{ext}"))
        (tmp_path / kind).mkdir()
        for name, f in zip(("_intro", ".take", "song"), [*src, src[0]], strict=True):
            shutil.copyfile(f, tmp_path / kind / f"{name}.{ext}")
    manifest = prepare.prepare(prepare.PrepareConfig(
        audio_dir=str(tmp_path / "audio"), midi_dir=str(tmp_path / "midi"),
        output=str(tmp_path / "prep"),
    ))  # fmt: skip
    windows = {p["piece"]: p["windows"] for p in manifest["pieces"]}
    assert set(windows) == {"_intro", ".take", "song"}
    ds = train._datasets(str(tmp_path / "prep"), ["_intro", ".take"], ["song"])
    assert ds["train"].count() == windows["_intro"] + windows[".take"]
    assert ds["val"].count() == windows["song"]


def test_moved_validation_files_stop_training_before_it_starts(tiny_corpus, tmp_path, monkeypatch):
    """Prepare records its folders as absolute paths, so training finds the validation
    recordings from any folder; when they are gone, it says so before it trains (it
    used to fail after the whole run, at scoring)."""
    for kind in ("audio", "midi"):
        shutil.copytree(tiny_corpus / kind / "fiddle", tmp_path / kind)
    monkeypatch.chdir(tmp_path)
    manifest = prepare.prepare(
        prepare.PrepareConfig(audio_dir="audio", midi_dir="midi", output="prep")
    )
    assert manifest["config"]["audio_dir"] == str(tmp_path / "audio")
    (tmp_path / "audio").rename(tmp_path / "moved")
    cfg = _config(tmp_path / "prep", tmp_path / "reg", tmp_path / "runs", val_fraction=0.5)
    with pytest.raises(train.TrainDataError, match="gone since prepare"):
        train.run(cfg)
