"""Debug sweeps on the shared local Ray: two Tune trials each, ASHA, the best trial
exported to ONNX (parity-checked) and registered; then /v1/classify answers from the
registered style model."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from midiforge.classifiers.style.classifier import StyleClassifier
from midiforge.classifiers.style.run import StyleConfig
from midiforge.classifiers.style.sweep import StyleSweepConfig
from midiforge.classifiers.style.sweep import run as sweep_style
from midiforge.classifiers.style.train import StyleTrainConfig
from midiforge.classifiers.sweep import SweepSettings, search_space
from midiforge.config import ConfigError
from midiforge.registry import Registry

from .conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_local")


def test_search_space_from_yaml_values():
    from ray.tune.search.sample import Categorical, Float

    space = search_space({"lr": {"loguniform": [1e-4, 1e-2]}, "width": {"choice": [4, 8]},
                          "epochs": 3})  # fmt: skip
    assert isinstance(space["lr"], Float) and isinstance(space["width"], Categorical)
    assert space["epochs"] == 3
    as_yaml = search_space({"lr": {"loguniform": ["1e-4", "1e-2"]}})["lr"]  # YAML strings
    assert (as_yaml.lower, as_yaml.upper) == (1e-4, 1e-2)
    with pytest.raises(ConfigError, match="unknown sampler"):
        search_space({"lr": {"gaussian": [0, 1]}})
    with pytest.raises(ConfigError, match="low < high"):
        search_space({"lr": {"uniform": [1, 0]}})


def test_sweep_configs_refuse_unknown_keys_and_the_budget():
    from midiforge.classifiers.drums.sweep import DrumSweepConfig

    with pytest.raises(ConfigError, match=r"unknown keys \['lr'\]"):
        DrumSweepConfig(space={"lr": 0.1}).validate_config()
    with pytest.raises(ConfigError, match="epochs is ASHA's budget"):
        StyleSweepConfig(space={"epochs": 3}).validate_config()


@pytest.fixture(scope="module")
def style_sweep(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("style-sweep")
    cfg = StyleSweepConfig(
        style=StyleConfig(
            out="style-swept", styles=["chorale", "fiddle"], pieces_per_style=3, seconds=3.0,
            variants=1, val_fraction=0.34, test_fraction=0.33, work_dir=str(root / "work"),
            models_root=str(root / "models"), train=StyleTrainConfig.debug(),
        ),
        sweep=SweepSettings(
            metric="val_best_accuracy", num_samples=2, max_concurrent_trials=2,
            cpus_per_trial=0.5, storage=str(root / "sweeps"),
        ),
        space={"lr": {"loguniform": [1e-3, 1e-2]}, "width": {"choice": [4, 6]}},
    )  # fmt: skip
    return cfg, sweep_style(cfg)


def test_style_sweep_registers_the_best_trial(style_sweep):
    cfg, summary = style_sweep
    sweep = summary["sweep"]
    assert len(sweep["trials"]) == 2 and all(t["error"] is None for t in sweep["trials"])
    assert all(1 <= t["iterations"] <= 2 for t in sweep["trials"])  # 2 epochs = max_t
    best = sweep["best"]
    furthest = max(t["iterations"] for t in sweep["trials"])
    assert best["iterations"] == furthest and best["metrics"]["val_best_accuracy"] == max(
        t["metrics"]["val_best_accuracy"] for t in sweep["trials"] if t["iterations"] == furthest
    )
    folder = Registry(cfg.style.models_root).fetch("style-swept")
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["sweep"]["best"]["config"] == best["config"]
    # The exported model is the best trial's: its config carries the trial's draws.
    import yaml

    train = yaml.safe_load((folder / "config.yaml").read_text())["train"]
    assert train["width"] == best["config"]["width"]
    assert train["lr"] == pytest.approx(best["config"]["lr"])
    # TensorBoard event files for every trial.
    from pathlib import Path

    assert len(list(Path(sweep["logdir"]).rglob("events.out.tfevents.*"))) >= 2


def test_classify_endpoint_answers_from_the_registered_model(style_sweep, tmp_path):
    from ray import serve

    from midiforge.serving.app import build_app

    cfg, _ = style_sweep
    folder = Registry(cfg.style.models_root).fetch("style-swept")
    sr = 22_050
    t = np.arange(3 * sr) / sr
    clip = (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t % 0.5)).astype(np.float32)
    wav = tmp_path / "clip.wav"
    sf.write(wav, clip, sr, subtype="FLOAT")  # the exact samples, no 16-bit rounding
    want = StyleClassifier.load(folder).predict(clip, sr, top=2)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(
            {"models_root": cfg.style.models_root, "classifier_model": "style-swept"},
            gateway_options={"ray_actor_options": {"num_cpus": 0.1}},
            transcriber_options={"ray_actor_options": {"num_cpus": 0.1}},
            generator_options={"ray_actor_options": {"num_cpus": 0.05}},
            classifier_options={"ray_actor_options": {"num_cpus": 0.2}},
        ), name="midiforge", route_prefix="/")  # fmt: skip
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            r = client.post("/v1/classify", files={"audio": ("c.wav", wav.read_bytes())},
                            params={"top": 2})  # fmt: skip
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "style-swept" and len(body["styles"]) == 2
            got = [(s["style"], s["probability"]) for s in body["styles"]]
            assert [g[0] for g in got] == [w[0] for w in want]
            np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)
            silent = client.post("/v1/classify", files={"audio": ("s.wav", _silence(tmp_path))})
            assert silent.status_code == 422 and silent.json()["error"] == "silence", silent.text
            unknown = client.post("/v1/classify", params={"model": "nope"},
                                  files={"audio": ("c.wav", wav.read_bytes())})  # fmt: skip
            assert unknown.status_code == 404
            again = client.post("/v1/classify", files={"audio": ("c.wav", wav.read_bytes())})
            assert again.status_code == 200  # the replica survived the bad requests
    finally:
        serve.shutdown()


def _silence(tmp_path) -> bytes:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(22_050 * 2, np.float32), 22_050)
    return path.read_bytes()


@pytest.fixture(scope="module")
def drum_sweep(tmp_path_factory):
    from midiforge.classifiers.drums.model import DrumTrainConfig, FilterConfig
    from midiforge.classifiers.drums.sweep import DrumSweepConfig, DrumSweepTarget
    from midiforge.classifiers.drums.sweep import run as sweep_drums

    root = tmp_path_factory.mktemp("drum-sweep")
    cfg = DrumSweepConfig(
        drums=DrumSweepTarget(
            stem="snare", out="snare-swept", models_root=str(root / "models"),
            work_dir=str(root / "work"), songs=4, seconds=8.0, seed=1, test_songs=1,
            test_seed=2, train=DrumTrainConfig(filter=FilterConfig(folds=3)),
        ),
        sweep=SweepSettings(metric="cv_f1", num_samples=2, max_concurrent_trials=2,
                            cpus_per_trial=0.5, storage=str(root / "sweeps")),
        space={"n_estimators": {"choice": [5, 10]}, "max_depth": {"choice": [3, None]}},
    )  # fmt: skip
    return cfg, sweep_drums(cfg)


def test_drum_sweep_registers_the_best_trial(drum_sweep, tmp_path):
    from midiforge.classifiers.drums import command
    from midiforge.cli import build_parser

    cfg, result = drum_sweep
    sweep = result["sweep"]
    assert len(sweep["trials"]) == 2 and all(t["error"] is None for t in sweep["trials"])
    assert all(1 <= t["iterations"] <= 3 for t in sweep["trials"])  # one report per fold
    best = sweep["best"]
    furthest = max(t["iterations"] for t in sweep["trials"])
    assert best["iterations"] == furthest  # a trial ASHA stopped early is not compared
    assert best["metrics"]["cv_f1"] == max(
        t["metrics"]["cv_f1"] for t in sweep["trials"] if t["iterations"] == furthest
    )
    man = Registry(cfg.drums.models_root).manifest("snare-swept")
    assert man.kind == "drum-filter" and "sweep.json" in man.files
    assert man.metrics["sweep"]["best_config"] == best["config"]
    folder = Registry(cfg.drums.models_root).fetch("snare-swept")
    import yaml

    saved = yaml.safe_load((folder / "config.yaml").read_text())["filter"]
    assert {k: saved[k] for k in best["config"]} == best["config"]
    held = result["held_out"]
    assert held["songs"] == 1 and 0 <= held["model"]["f1"] <= 1
    # `drums evaluate --out` writes results.json with the sweep that made the model.
    test_dir = f"{cfg.drums.work_dir}/songs/test-snare-seed2"  # rendered by the sweep
    args = build_parser().parse_args([
        "drums", "evaluate", "--model", "snare-swept", "--models-root", cfg.drums.models_root,
        "--test-dir", test_dir, "--out", str(tmp_path / "eval"),
    ])  # fmt: skip
    assert command.run_evaluate(args, []) == 0
    written = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(written["model"]) >= {"precision", "recall", "f1"} and written["songs"] == 1
    assert json.loads((tmp_path / "eval" / "sweep.json").read_text())["best"] == json.loads(
        json.dumps(best)
    )
