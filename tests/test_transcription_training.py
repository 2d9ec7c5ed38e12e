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

from midiforge import midi_io, registry
from midiforge.pipeline.build import build_dataset
from midiforge.pipeline.config import DatasetConfig
from midiforge.transcription import compare, extract, prepare, train
from midiforge.transcription.export import load_weights
from midiforge.transcription.models import resolve_model, transcribe_audio
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
    assert set(metrics["validation"]) == {"base", "trained"}
    assert metrics["validation"]["base"]["pieces"] == len(metrics["val_pieces"]) >= 1
    # Split by piece: no piece on both sides.
    assert not set(metrics["train_pieces"]) & set(metrics["val_pieces"])
    assert metrics["train_windows"] > 0 and metrics["val_windows"] > 0


def test_only_the_trainable_heads_moved(trained):
    _, cfg, _ = trained
    folder = registry.Registry(cfg.models_root).fetch(NAME)
    new, old = load_weights(folder / "weights.pt"), from_onnx(registry.stock_model_path())
    changed = {
        k for k, v in new.head_state().items() if not torch.equal(v, old.head_state()[k])
    }
    assert changed and {k.split(".")[0] for k in changed} <= {"note2", "onset2"}


def test_rerun_resumes_from_the_checkpoint(trained):
    work, cfg, _ = trained
    again = train.run(_config(work / "prep", cfg.models_root, cfg.storage))
    assert again["resumed_from_step"] == 3


def test_extract_and_compare_by_name(trained, tmp_path):
    work, cfg, _ = trained
    wav = sorted((work / "audio" / "fiddle").glob("*.wav"))[0]
    summary = extract.extract(wav, model=NAME, out=tmp_path / "x.mid", models_root=cfg.models_root)
    got = midi_io.notes_array(midi_io.load_midi(tmp_path / "x.mid"))
    want = transcribe_audio([wav], resolve_model(NAME, cfg.models_root))[0]
    assert summary["notes"] == len(want) == len(got) > 0
    np.testing.assert_allclose(got[:, :3], want[:, :3], atol=0.01)
    res = compare.compare(compare.CompareConfig(
        models=["stock", NAME], input=str(work / "audio" / "fiddle"),
        reference=str(work / "midi" / "fiddle"), out=str(tmp_path / "cmp"),
        models_root=cfg.models_root,
    ))  # fmt: skip
    assert set(res["models"]) == {"stock", NAME}
    assert res["models"][NAME]["pieces"] == 2
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
    models = {json.loads(m)["transcriber"]["name"] for m in table.to_table()["models"].to_pylist()}
    assert models == {NAME}


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
        ), name="midiforge", route_prefix="/")  # fmt: skip
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            r = client.post("/v1/transcribe", files={"audio": ("a.wav", wav.read_bytes())},
                            params={"model": NAME, "format": "json"})  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        want = transcribe_audio([wav], resolve_model(NAME, cfg.models_root))[0]
        assert body["model"] == NAME and len(body["notes"]) == len(want)
    finally:
        serve.shutdown()
