"""Style classifier end to end on a tiny rendered set: debug CNN -> ONNX folder -> predict,
evaluate, registry and the commands; plus the model, augmentation and ensemble parts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from midiforge.classifiers.style import command
from midiforge.classifiers.style.classifier import (
    StyleClassifier,
    StyleInputError,
    StyleModelError,
    resolve_model_dir,
)
from midiforge.classifiers.style.data import split_by_piece
from midiforge.classifiers.style.ensemble import HandModel, combine, fit_hand_model
from midiforge.classifiers.style.features import MelConfig, handcrafted_features
from midiforge.classifiers.style.model import CnnConfig, build_model
from midiforge.classifiers.style.onnx_export import max_abs_diff
from midiforge.classifiers.style.run import StyleConfig, evaluate_model, train_and_export
from midiforge.classifiers.style.train import StyleTrainConfig, augment, build_data, train_style
from midiforge.config import ConfigError
from midiforge.registry import Registry

from .conftest import config_from_command

SR = 22_050


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """2 styles x 3 pieces x 1 variant x 3 s, one piece each for val and test."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("style")
    cfg = StyleConfig(
        out="style-debug",
        styles=["chorale", "fiddle"],
        pieces_per_style=3,
        seconds=3.0,
        variants=1,
        val_fraction=0.34,
        test_fraction=0.33,
        work_dir=str(root / "work"),
        models_root=str(root / "models"),
        train=StyleTrainConfig.debug(),
    )
    # Files an earlier run left in the model folder: a sweep's record, a hand model.
    cfg.model_folder().mkdir(parents=True)
    for stale in ("sweep.json", "hand.json"):
        (cfg.model_folder() / stale).write_text("{}")
    summary = train_and_export(cfg)
    return cfg, summary


def test_train_writes_a_complete_model_folder(trained):
    cfg, _ = trained
    folder = cfg.model_folder()
    for name in ("model.onnx", "config.yaml", "labels.json", "metrics.json", "split.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "labels.json").read_text()) == ["chorale", "fiddle"]
    split = json.loads((folder / "split.json").read_text())
    assert [len(split[s]) for s in ("train", "val", "test")] == [2, 2, 2]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["history"]] == [1, 2]
    assert set(metrics["test"]) >= {"accuracy", "per_class_f1", "pieces", "confusion"}
    assert metrics["test"]["confusion"]["labels"] == ["chorale", "fiddle"]
    assert np.asarray(metrics["test"]["confusion"]["matrix"]).sum() == 2
    assert (folder.parent.parent / "evaluations" / folder.name / "confusion.png").is_file()
    # Pushed, and found again by name.
    reg = Registry(cfg.models_root)
    assert reg.manifest("style-debug").kind == "style-classifier"
    # An earlier run's files neither stay beside the model nor travel with it.
    assert (
        not (folder / "sweep.json").exists()
        and "sweep.json" not in reg.manifest("style-debug").files
    )
    hand = cfg.train.w_hand > 0
    assert (
        (folder / "hand.json").is_file()
        == hand
        == ("hand.json" in reg.manifest("style-debug").files)
    )
    assert (resolve_model_dir("style-debug", cfg.models_root) / "model.onnx").is_file()


def test_bad_recordings_and_reused_render_folders_stop_before_training(tmp_path):
    """A recording the classifier would refuse to score (0.5 s) stops the data build with
    its path; a --data folder holding renders of other settings is refused, not mixed."""
    from midiforge.classifiers.style.data import StyleDataError, load_recording
    from midiforge.classifiers.style.run import prepare_items

    short = tmp_path / "short.wav"
    sf.write(short, np.sin(np.arange(SR // 2) / 10.0) * 0.3, SR)
    with pytest.raises(StyleDataError, match=r"short\.wav: too_short"):
        load_recording(short)
    (tmp_path / "renders").mkdir()
    (tmp_path / "renders" / "manifest.json").write_text(json.dumps({"params": {"seed": 9}}))
    cfg = StyleConfig(styles=["fiddle"], pieces_per_style=1, data_dir=str(tmp_path / "renders"))
    with pytest.raises(StyleDataError, match="renders of other settings"):
        prepare_items(cfg)


def test_predict_probabilities_and_top_k(trained):
    cfg, _ = trained
    clf = StyleClassifier.load(cfg.model_folder())
    t = np.arange(3 * 44_100) / 44_100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]) * 0.3
    p = clf.probabilities(stereo, 44_100)  # resampled and downmixed inside
    assert p.shape == (2,) and p.sum() == pytest.approx(1.0) and (p >= 0).all()
    import librosa

    mono = librosa.resample(stereo.mean(axis=0), orig_sr=44_100, target_sr=22_050,
                            res_type="soxr_hq").astype(np.float32)  # fmt: skip
    np.testing.assert_allclose(p, clf.probabilities(mono, 22_050), atol=1e-6)
    top = clf.predict(stereo, 44_100, top=3)
    assert len(top) == 2 and [s for s, _ in top] == [clf.labels[i] for i in np.argsort(-p)]
    assert top[0][1] >= top[1][1]
    assert clf.predict(stereo, 44_100, top=1) == top[:1]
    # Short audio is padded to one clip; repeated calls give the same answer.
    short = stereo[0, : int(1.2 * 44_100)]
    assert clf.predict(short, 44_100) == clf.predict(short, 44_100)


@pytest.mark.parametrize(
    ("audio", "reason"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros(3 * SR, np.float32), "silence"),
        (1e-5 * np.ones(3 * SR, np.float32), "silence"),
        (0.5 * np.ones(SR // 4, np.float32), "too_short"),
        (np.full(2 * SR, np.nan, np.float32), "nan_or_inf"),
        (np.zeros((SR, 2), np.float32), "bad_shape"),
    ],
)
def test_predict_refuses_unusable_audio(trained, audio, reason):
    clf = StyleClassifier.load(trained[0].model_folder())
    with pytest.raises(StyleInputError, match=reason) as e:
        clf.predict(audio, SR)
    assert e.value.reason == reason


def test_ensemble_model_folder_loads_and_mixes(trained, tmp_path):
    import shutil

    import yaml

    cfg, _ = trained
    folder = shutil.copytree(cfg.model_folder(), tmp_path / "ens")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    fit_hand_model(rng.normal(size=(20, 4)) + y[:, None], y, ["chorale", "fiddle"]).save(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["train"]["w_hand"] = 0.5
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    clf = StyleClassifier.load(folder)
    assert clf.hand is not None and clf.w_hand == 0.5
    t = np.arange(3 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    p = clf.probabilities(x, SR)
    # The CNN alone (the trained folder has no hand model), then the weighted mix.
    cnn_only = StyleClassifier.load(cfg.model_folder())
    assert cnn_only.hand is None or cnn_only.w_hand == 0
    p_cnn = cnn_only.probabilities(x, SR)
    p_hand = clf.hand.proba(handcrafted_features(x, SR))[0]
    mixed = combine(p_cnn, p_hand, clf.w_cnn, 0.5)
    np.testing.assert_allclose(p, mixed / mixed.sum(), atol=1e-6)
    assert not np.allclose(p, p_cnn, atol=1e-3)
    (folder / "hand.json").unlink()
    with pytest.raises(StyleModelError, match=r"hand\.json is missing"):
        StyleClassifier.load(folder)


def test_onnx_matches_torch(trained):
    cfg, _ = trained
    mel = cfg.train.mel_config()
    model = build_model(CnnConfig.debug(n_mels=mel.n_mels), seed=0)
    # Non-trivial BatchNorm statistics, so the parity check covers eval-mode folding.
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, mel.n_mels, mel.frames))
    from midiforge.classifiers.style.onnx_export import export_onnx

    path = export_onnx(model, cfg.model_folder().parent / "parity.onnx", mel.frames)
    assert max_abs_diff(model, path, mel.frames, n=5) < 1e-4


def test_evaluate_and_commands(trained, tmp_path, capsys):
    cfg, summary = trained
    results = evaluate_model("style-debug", models_root=cfg.models_root, out=str(tmp_path))
    assert results["recordings"] == 2 and results["pieces"] == 2
    assert results["accuracy"] == summary["test"]["accuracy"]
    assert (tmp_path / "confusion.png").is_file() and (tmp_path / "results.json").is_file()

    wav = next((cfg.model_folder().parent.parent / "renders").rglob("*.wav"))
    p = argparse.ArgumentParser()
    command.add_predict(p)
    args = p.parse_args([str(wav), "--model", "style-debug", "--models-root", cfg.models_root])
    assert command.run_predict(args, []) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and {line.split()[0] for line in lines} == {"chorale", "fiddle"}

    p = argparse.ArgumentParser()
    command.add_evaluate(p)
    args = p.parse_args(["--model", str(cfg.model_folder())])
    assert command.run_evaluate(args, []) == 0
    assert "accuracy" in capsys.readouterr().out


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(StyleModelError, match="not found"):
        resolve_model_dir("no-such-model", str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StyleModelError, match=r"without model\.onnx"):
        resolve_model_dir(tmp_path / "empty")


def test_the_service_resolves_names_in_the_registry_only(tmp_path, monkeypatch):
    """A folder in the working directory serves the CLI (`--model DIR`), but a model name
    from a request to the service must never load one."""
    from midiforge.classifiers.style.classifier import registry_model_dir

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model.onnx").write_bytes(b"onnx")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("runs") == Path("runs")
    with pytest.raises(StyleModelError, match="style model 'runs' not found"):
        registry_model_dir("runs", str(tmp_path / "reg"))


def test_train_command_flags_reach_the_config(monkeypatch):
    argv = ["--out", "m", "--styles", "folk,quartet", "--pieces-per-style", "5", "--seed", "3"]
    cfg = config_from_command(
        monkeypatch, "midiforge.classifiers.style.run:train_and_export",
        (command.add_train, command.run_train), argv,
        overrides=["--train.lr=0.01", "--train.width=8"],
    )  # fmt: skip
    assert cfg.styles == ["folk", "quartet"] and cfg.pieces_per_style == 5
    assert (cfg.seed, cfg.train.seed, cfg.train.lr, cfg.train.width) == (3, 3, 0.01, 8)
    p = argparse.ArgumentParser()
    command.add_train(p)
    with pytest.raises(ConfigError, match="user_styles"):
        command.run_train(p.parse_args(["--out", "m", "--styles", "blues"]), [])


# --- parts -------------------------------------------------------------------------------------


def test_cnn_shapes_and_config_checks():
    model = build_model(CnnConfig(n_mels=32, n_classes=5, width=8, blocks=3), seed=0)
    assert model(torch.zeros(3, 1, 32, 40)).shape == (3, 5)
    with pytest.raises(ConfigError, match="too few"):
        CnnConfig(n_mels=8, blocks=4).validate_config()
    with pytest.raises(ConfigError, match="2 or more"):
        CnnConfig(n_classes=1).validate_config()


def test_augment_keeps_shape_and_floor():
    cfg = StyleTrainConfig.debug()
    mel = cfg.mel_config()
    x = torch.zeros(6, 1, mel.n_mels, mel.frames)
    gen = torch.Generator().manual_seed(0)
    y = augment(x, cfg, mel.floor, mel.scale_db, gen)
    assert y.shape == x.shape and float(y.min()) >= mel.floor
    assert (y == mel.floor).any()  # masks are filled with silence
    assert not torch.equal(y[0], y[1])  # per-clip gain


def test_train_style_reports_every_epoch(trained):
    cfg, _ = trained
    from midiforge.classifiers.style.data import scan_items

    data_dir = json.loads((cfg.model_folder() / "metrics.json").read_text())["data_dir"]
    splits = split_by_piece(scan_items(data_dir), (0.34, 0.33, 0.33), seed=0)
    tcfg = StyleTrainConfig.debug()
    data = build_data(splits, ["chorale", "fiddle"], tcfg.mel_config())
    calls = []
    _, history = train_style(tcfg, data, report=lambda e, m, _model: calls.append((e, m)))
    assert [e for e, _ in calls] == [1, 2] and [m for _, m in calls] == history
    assert set(history[0]) >= {"epoch", "train_loss", "val_loss", "val_accuracy"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it learns
    with pytest.raises(ConfigError, match="clips are"):
        train_style(StyleTrainConfig(epochs=1), data)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_hand_model_matches_sklearn_and_combines(n_classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(n_classes), 20)
    x = rng.normal(size=(len(y), 4)) + y[:, None]
    hand = fit_hand_model(x, y, [f"s{i}" for i in range(n_classes)])
    mean, scale = x.mean(0), x.std(0)
    ref = LogisticRegression(max_iter=2000).fit((x - mean) / scale, y)
    np.testing.assert_allclose(hand.proba(x), ref.predict_proba((x - mean) / scale), atol=1e-9)
    assert HandModel(**json.loads(json.dumps(hand.__dict__))).proba(x[:2]).shape == (2, n_classes)
    p_cnn, p_hand = np.eye(n_classes)[0], np.eye(n_classes)[1]
    np.testing.assert_allclose(combine(p_cnn, p_hand, 1.0, 0.0), p_cnn)
    mixed = combine(p_cnn, p_hand, 3.0, 1.0)
    assert mixed[0] == pytest.approx(0.75) and mixed.sum() == pytest.approx(1.0)


def test_mel_config_checks():
    with pytest.raises(ConfigError, match="fmax"):
        MelConfig(fmax=20_000).validate_config()
    with pytest.raises(ConfigError, match="w_cnn"):
        StyleTrainConfig(w_cnn=0, w_hand=0).validate_config()
