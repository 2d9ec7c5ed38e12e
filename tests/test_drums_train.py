"""Drum filter training: refusal rules, cross-validation, ONNX parity, and one small run
from rendered songs through train, evaluate, extract and the commands."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from midiforge.classifiers.drums import command, hitmidi, workflow
from midiforge.classifiers.drums.features import FEATURES
from midiforge.classifiers.drums.model import (
    DrumTrainConfig,
    FilterConfig,
    TrainingDataError,
    fit_params,
    train_filter,
)
from midiforge.classifiers.drums.onnx_export import (
    DrumFilter,
    ExportError,
    check_parity,
    save_model,
    to_onnx,
)
from midiforge.classifiers.drums.synth import render_songs
from midiforge.config import ConfigError

FAST = FilterConfig(n_estimators=30)


def _separable(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Keep hits are loud and long, remove hits weak and short, with noise on every column."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    x = rng.normal(0, 1, (n, len(FEATURES)))
    x[:, FEATURES.index("GeoMean")] += np.where(y == 1, -25.0, -45.0)
    x[:, FEATURES.index("SustainMs")] = np.where(y == 1, 120.0, 20.0) + rng.normal(0, 10, n)
    return x, y


# --- refusal rules and cross-validation -----------------------------------------------------


def test_too_few_detections_are_refused():
    x, y = _separable(49)
    with pytest.raises(TrainingDataError, match=r"only 49 labelled detections.*at least 50"):
        train_filter(x, y, FAST)


def test_one_class_is_refused():
    x, _ = _separable(80)
    with pytest.raises(TrainingDataError, match=r"labelled 'keep'.*both kept and removed"):
        train_filter(x, np.ones(80, np.int64), FAST)
    with pytest.raises(TrainingDataError, match="labelled 'remove'"):
        train_filter(x, np.zeros(80, np.int64), FAST)


def test_bad_shapes_and_configs_are_refused():
    with pytest.raises(TrainingDataError, match=r"\(N, 7\)"):
        train_filter(np.zeros((60, 3)), np.zeros(60), FAST)
    with pytest.raises(ConfigError, match="choose from forest, logistic"):
        train_filter(*_separable(), FilterConfig(model="svm"))


@pytest.mark.parametrize("model", ["forest", "logistic"])
def test_separable_features_cross_validate_well(model):
    x, y = _separable()
    est, report = train_filter(x, y, FilterConfig(model=model, n_estimators=30))
    cv = report["cv"]
    assert cv["folds"] == 5 and cv["cv_f1"] > 0.9
    for m in ("accuracy", "precision", "recall", "f1"):
        assert 0 <= cv[f"cv_{m}"] <= 1 and cv[f"cv_{m}_std"] >= 0
    assert list(report["importance"]) != [] and set(report["importance"]) == set(FEATURES)
    if model == "forest":
        assert sum(report["importance"].values()) == pytest.approx(1.0)
    assert report["keep"] + report["remove"] == report["detections"] == len(y)
    assert est.predict(x[:5]).shape == (5,)


def test_fit_params_takes_config_field_names_and_reports_each_fold():
    x, y = _separable()
    seen = []
    params = {"model": "forest", "n_estimators": 20, "max_depth": 4, "class_weight": "balanced"}
    out = fit_params(x, y, params, on_fold=lambda i, m: seen.append(i))
    assert seen == [0, 1, 2, 3, 4]
    assert out["cv_f1"] > 0.9 and "cv_f1_std" in out
    assert fit_params(x, y, {"model": "logistic", "C": 0.5}, folds=3)["folds"] == 3
    songs = np.arange(len(y)) % 8  # eight songs: no song's hits are split between folds
    assert fit_params(x, y, {"n_estimators": 20}, groups=songs)["grouped"] is True
    with pytest.raises(ConfigError, match="n_trees"):
        fit_params(x, y, {"n_trees": 10})


def test_removals_in_one_song_fall_back_to_per_hit_folds():
    """Song-grouped folds with every removal in one song would train a fold on 'keep'
    alone (the logistic model then raised sklearn's one-class error): the folds split
    songs instead, and the report says they are not grouped."""
    x, y = _separable()
    songs = np.where(y == 0, 0, 1 + np.arange(len(y)) % 4)  # removals all in song 0
    out = fit_params(x, y, {"model": "logistic"}, groups=songs)
    assert out["grouped"] is False and out["cv_f1"] > 0.9


# --- ONNX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["forest", "logistic"])
def test_onnx_matches_sklearn_and_loads(tmp_path, model):
    x, y = _separable()
    cfg = DrumTrainConfig(filter=FilterConfig(model=model, n_estimators=30))
    est, report = train_filter(x, y, cfg.filter)
    rand = np.random.default_rng(5).normal(-30, 40, (300, len(FEATURES)))
    folder = save_model(tmp_path / "m", est, "hihat", cfg, metrics=report["cv"], x_check=rand)
    assert {p.name for p in folder.iterdir()} == {
        "model.onnx", "config.yaml", "metrics.json", "features.json"}  # fmt: skip
    info = json.loads((folder / "features.json").read_text())
    assert info["features"] == list(FEATURES) and info["stem"] == "hihat"
    assert json.loads((folder / "metrics.json").read_text())["onnx_parity_max_abs"] <= 1e-4
    flt = DrumFilter.load(folder)
    assert flt.stem == "hihat" and flt.config == cfg
    ref = est.predict_proba(rand.astype(np.float32).astype(np.float64))[:, 1]
    np.testing.assert_allclose(flt.keep_probability(rand), ref, atol=1e-4)
    assert flt.keep_probability(np.zeros((0, 7))).shape == (0,)


def test_parity_check_raises_on_a_different_model():
    x, y = _separable()
    a, _ = train_filter(x, y, FilterConfig(model="logistic"))
    b, _ = train_filter(x, 1 - y, FilterConfig(model="logistic"))
    with pytest.raises(ExportError, match="differ from scikit-learn"):
        check_parity(b, to_onnx(a), x)


def test_loading_a_folder_that_is_not_a_filter(tmp_path):
    with pytest.raises(ExportError, match=r"missing model\.onnx"):
        DrumFilter.load(tmp_path)


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """Three short snare songs to train on, one held out (another seed)."""
    root = tmp_path_factory.mktemp("drums")
    train = render_songs("snare", 3, 6.0, root / "train", seed=0)
    test = render_songs("snare", 1, 6.0, root / "test", seed=1)
    return root, train, test


def test_rendered_songs_have_three_files_and_bleed(songs):
    root, train, _ = songs
    for s in train:
        for sub, ext in (("audio", "wav"), ("raw", "mid"), ("edited", "mid")):
            assert (root / "train" / sub / f"{s['song']}.{ext}").is_file()
        edited = hitmidi.read_onsets(root / "train" / "edited" / f"{s['song']}.mid")
        assert len(edited) == s["hits"] > 0
        assert s["detections"] > s["hits"]  # bleed and re-triggers add proposals
        assert set(s["bleed_db"]) == {"kick", "toms", "hihat", "cymbals"}
    again = render_songs("snare", 1, 6.0, root / "again", seed=0)[0]
    assert again == train[0]  # same seed, same song


def test_train_evaluate_extract(songs, tmp_path):
    root, _, _ = songs
    d = root / "train"
    (d / "audio" / "orphan.wav").write_bytes((d / "audio" / "snare-s0-000.wav").read_bytes())
    try:
        report = workflow.train("snare", d / "raw", d / "edited", d / "audio", tmp_path / "m",
                                DrumTrainConfig(filter=FAST))  # fmt: skip
    finally:
        (d / "audio" / "orphan.wav").unlink()
    assert report["unpaired"] == [{"song": "orphan", "reason": "missing_raw, missing_edited",
                                   "files": [str(d / "audio" / "orphan.wav")]}]  # fmt: skip
    assert len(report["songs"]) == 3 and len(report["training_data_hash"]) == 64
    assert (tmp_path / "m" / "importance.png").stat().st_size > 0
    m = report["metrics"]
    assert m["detections"] >= 50 and all(0 <= m[f"cv_{k}"] <= 1 for k in ("precision", "f1"))

    result = workflow.evaluate(tmp_path / "m", root / "test", out=tmp_path / "eval")
    assert result["songs"] == 1 and result["stem"] == "snare"
    for decider in ("model", "fallback"):
        assert set(result[decider]) == {"precision", "recall", "f1"}
        assert all(0 <= v <= 1 for v in result[decider].values())
        assert sum(result["confusion"][decider].values()) == result["detections"]
    assert 0 <= result["detection_recall"] <= 1
    # The learned filter beats the threshold fallback it replaces (README: 0.71 vs 0.51 F1).
    assert result["model"]["f1"] > result["fallback"]["f1"]
    assert (tmp_path / "eval" / "confusion.png").is_file()
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["songs"] == 1
    only_fallback = workflow.evaluate(None, root / "test", "snare")
    assert only_fallback["model"] is None and only_fallback["fallback"] == result["fallback"]

    wav = root / "test" / "audio" / "snare-s1-000.wav"
    s = workflow.extract(wav, "snare", tmp_path / "x.mid", model_folder=tmp_path / "m")
    assert s["decided_by"] == "model" and 0 <= s["kept"] <= s["detected"]
    assert len(hitmidi.read_onsets(tmp_path / "x.mid")) == s["kept"]
    s = workflow.extract(wav, "snare", tmp_path / "y.mid")
    assert s["decided_by"] == "fallback"
    with pytest.raises(workflow.SongFolderError, match="filters snare hits, not kick"):
        workflow.extract(wav, "kick", tmp_path / "z.mid", model_folder=tmp_path / "m")


def _run(add, run, argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add(p)
    return run(p.parse_args(argv), [])


def test_commands_register_and_resolve_by_name(songs, tmp_path, capsys):
    root, _, _ = songs
    d = root / "train"
    code = _run(command.add_train, command.run_train, [
        "--stem", "snare", "--raw-dir", str(d / "raw"), "--edited-dir", str(d / "edited"),
        "--audio-dir", str(d / "audio"), "--output", "snare-test", "--model", "logistic",
        "--work-dir", str(tmp_path / "m")])  # fmt: skip
    assert code == 0 and "registered snare-test" in capsys.readouterr().out
    code = _run(command.add_evaluate, command.run_evaluate,
                ["--model", "snare-test", "--test-dir", str(root / "test")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "model" in out and "fallback" in out
    wav = root / "test" / "audio" / "snare-s1-000.wav"
    code = _run(command.add_extract, command.run_extract, [
        str(wav), "--stem", "snare", "--out", str(tmp_path / "x.mid"),
        "--use-ml-model", "snare-test"])  # fmt: skip
    assert code == 0 and "model snare-test" in capsys.readouterr().out
    assert workflow.resolve_model(tmp_path / "m") == tmp_path / "m"


def test_a_silent_stem_is_left_out_not_the_end_of_training(songs, tmp_path):
    """A song whose stem is silent (a song without that drum) is listed with the unpaired
    songs, with the reason, and the others train; extracting from it is a one-line error
    that names the file."""
    import shutil

    import soundfile as sf

    from midiforge import audio
    from midiforge.classifiers.drums.data import labelled_hits
    from midiforge.errors import MidiforgeError

    root, train, _ = songs
    d = tmp_path / "train"
    shutil.copytree(root / "train", d)
    silent = d / "audio" / f"{train[0]['song']}.wav"
    x, sr = sf.read(silent)
    sf.write(silent, np.zeros_like(x), sr)
    hits = labelled_hits("snare", d / "raw", d / "edited", d / "audio",
                         DrumTrainConfig(filter=FAST))  # fmt: skip
    assert [s["song"] for s in hits.songs] == [s["song"] for s in train[1:]]
    [left_out] = hits.unpaired
    assert left_out["song"] == train[0]["song"] and "silence" in left_out["reason"]
    with pytest.raises(audio.AudioError, match="silence") as err:
        workflow.extract(silent, "snare", tmp_path / "x.mid")
    assert str(silent) in str(err.value) and isinstance(err.value, MidiforgeError)
