"""The PyTorch port of basic-pitch against onnxruntime on the shipped nmp.onnx, and the
export back to a stock-shaped ONNX file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from midiforge.registry import stock_model_path
from midiforge.transcription import constants as bp
from midiforge.transcription import export
from midiforge.transcription.onnx_weights import WeightsError, from_onnx, read_onnx
from midiforge.transcription.runner import OnnxTranscriber, windows
from midiforge.transcription.torch_model import HEADS


@pytest.fixture(scope="module")
def stock():
    return from_onnx(stock_model_path()).eval()


def _ort(path, x: np.ndarray) -> dict[str, np.ndarray]:
    return OnnxTranscriber(path, device="cpu").run_windows(x)


def _torch(model, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(torch.from_numpy(x)).items()}


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b) == {"note", "onset", "contour"}
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_weights_read_from_the_graph(stock):
    trainable = sum(p.numel() for p in stock.parameters())
    assert 16_000 < trainable < 18_000  # basic-pitch's ~17k weights
    front, state = read_onnx(stock_model_path())
    assert front.cqt_real.shape == front.cqt_imag.shape == (36, 256)
    assert front.length_scale.shape == (309,)
    assert set(state) == {f"{h}.{p}" for h in HEADS for p in ("weight", "bias")} | {
        "bn_scale",
        "bn_shift",
    }


def test_parity_on_random_audio(stock):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((3, bp.AUDIO_N_SAMPLES, 1))).astype(np.float32)
    ref, got = _ort(stock_model_path(), x), _torch(stock, x)
    assert ref["contour"].shape == (3, 172, 264) and ref["note"].shape == (3, 172, 88)
    assert _max_diff(ref, got) < 1e-3


def test_parity_on_real_audio(stock, tiny_corpus):
    wav = sorted((tiny_corpus / "audio" / "quartet").glob("*.wav"))[0]
    audio, sr = sf.read(wav, dtype="float32")
    assert sr == bp.AUDIO_SAMPLE_RATE
    x = windows(audio)
    ref, got = _ort(stock_model_path(), x), _torch(stock, x)
    assert _max_diff(ref, got) < 1e-3
    assert ref["note"].max() > 0.5  # real notes were heard, so the comparison means something


def test_export_is_stock_shaped_and_matches(stock, tmp_path):
    path = export.export_onnx(stock, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [bp.INPUT_NAME]
    assert {o.name for o in graph.output} == set(bp.OUTPUT_NAMES.values())
    rng = np.random.default_rng(1)
    x = (0.05 * rng.standard_normal((5, bp.AUDIO_N_SAMPLES, 1))).astype(np.float32)
    assert _max_diff(_ort(stock_model_path(), x), _ort(path, x)) < 1e-3
    export.save_weights(stock, tmp_path / "weights.pt")
    again = export.load_weights(tmp_path / "weights.pt")
    assert export.max_abs_diff(again, path) < export.VERIFY_ATOL


def test_changed_weights_change_the_export(stock, tmp_path):
    changed = export.load_weights(_saved(stock, tmp_path))
    with torch.no_grad():
        changed.onset2.bias += 1.0
    path = export.export_onnx(changed, tmp_path / "changed.onnx")
    x = (0.05 * np.random.default_rng(2).standard_normal((1, bp.AUDIO_N_SAMPLES, 1))).astype(
        np.float32
    )
    a, b = _ort(stock_model_path(), x), _ort(path, x)
    assert float(np.abs(a["onset"] - b["onset"]).max()) > 0.01
    assert float(np.abs(a["note"] - b["note"]).max()) < 1e-3  # the onset head only


def _saved(model, tmp_path):
    export.save_weights(model, tmp_path / "w.pt")
    return tmp_path / "w.pt"


def test_a_graph_without_basic_pitch_structure_is_refused(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g), str(path))
    with pytest.raises(WeightsError, match="not shaped like basic-pitch"):
        from_onnx(path)
