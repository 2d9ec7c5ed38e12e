"""The ONNX runner with windows batched across files equals basic-pitch's own predict()."""

import platform
import sys
from pathlib import Path

import numpy as np
import pytest

from midiforge import audio, registry
from midiforge.transcription import constants as bp
from midiforge.transcription.notes import NoteDecoding, decode_notes
from midiforge.transcription.runner import OnnxTranscriber, unwrap, windows


def test_windows_cover_the_clip_like_basic_pitch():
    x = np.arange(100_000, dtype=np.float32)
    w = windows(x)
    assert w.shape[1:] == (bp.AUDIO_N_SAMPLES, 1)
    assert w.shape[0] == int(np.ceil((len(x) + bp.OVERLAP_SAMPLES // 2) / bp.HOP_SAMPLES))
    assert np.all(w[0, : bp.OVERLAP_SAMPLES // 2, 0] == 0)  # basic-pitch's half-overlap pad
    assert w[0, bp.OVERLAP_SAMPLES // 2, 0] == 0 and w[0, bp.OVERLAP_SAMPLES // 2 + 1, 0] == 1
    frames = unwrap(np.zeros((w.shape[0], bp.FRAMES_PER_WINDOW, 88), np.float32), len(x))
    assert frames.shape == (int(len(x) * bp.ANNOTATIONS_FPS / bp.AUDIO_SAMPLE_RATE), 88)


# Where pyproject installs the OpenVINO plugin (its wheels: x86-64 Linux and Windows),
# which offers Intel CPUs only (sessions' module doc).
X86 = (sys.platform, platform.machine()) in (("linux", "x86_64"), ("win32", "AMD64"))


def _intel_cpu() -> bool:
    if sys.platform != "linux":
        return "intel" in platform.processor().lower()
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return any(ln.split(":")[-1].strip() == "GenuineIntel" for ln in lines if "vendor_id" in ln)


OPENVINO = X86 and _intel_cpu()
ON_OPENVINO = pytest.mark.skipif(
    not OPENVINO, reason="no OpenVINO plugin wheel for this platform, or not an Intel CPU"
)


@pytest.mark.parametrize(
    ("onset", "frame", "device"),
    [(0.5, 0.3, "cpu"), (0.6, 0.4, "cpu"), pytest.param(0.5, 0.3, "openvino", marks=ON_OPENVINO)],
)
def test_notes_equal_basic_pitch_predict(tiny_corpus, onset, frame, device):
    from basic_pitch.inference import Model, predict

    files = sorted((tiny_corpus / "audio").rglob("*.wav"))[:4]
    runner = OnnxTranscriber(registry.stock_model_path(), device=device, batch_windows=7)
    assert runner.provider == f"{'CPU' if device == 'cpu' else 'OpenVINO'}ExecutionProvider"
    clips = [audio.load_for_transcription(f.read_bytes(), audio.AudioLimits()) for f in files]
    outputs = runner(clips)  # all four files' windows in shared batches of 7
    model = Model(str(registry.stock_model_path()))
    cfg = NoteDecoding(onset_threshold=onset, frame_threshold=frame)
    for f, out in zip(files, outputs, strict=True):
        theirs_out, _, events = predict(str(f), model, onset_threshold=onset, frame_threshold=frame)
        for k in ("note", "onset", "contour"):
            np.testing.assert_allclose(out[k], theirs_out[k], atol=1e-5)
        ours = decode_notes(out, cfg)
        theirs = np.array(sorted((s, e, p, round(127 * a)) for s, e, p, a, _ in events))
        theirs = theirs[np.lexsort((theirs[:, 2], theirs[:, 0]))]
        assert len(ours) > 10
        np.testing.assert_array_equal(ours, theirs)


@ON_OPENVINO
def test_openvino_reuses_its_compiled_model_with_the_same_outputs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    win = rng.standard_normal((3, bp.AUDIO_N_SAMPLES, 1)).astype(np.float32)

    def outputs(cache: str) -> dict[str, np.ndarray]:
        monkeypatch.setenv("MIDIFORGE_OPENVINO_CACHE", cache)
        runner = OnnxTranscriber(registry.stock_model_path(), device="openvino")
        return runner.run_windows(win)

    fresh = outputs("")  # cache off: compiled in this session
    cache = tmp_path / "ov"
    first = outputs(str(cache))
    blobs = list(cache.iterdir())
    assert len(blobs) == 1 and blobs[0].stat().st_size > 100_000
    mtime = blobs[0].stat().st_mtime_ns
    second = outputs(str(cache))  # loaded from the blob, not compiled again
    assert [(b.name, b.stat().st_mtime_ns) for b in cache.iterdir()] == [(blobs[0].name, mtime)]
    (tmp_path / "file").write_text("")
    unusable = outputs(str(tmp_path / "file" / "ov"))  # cannot be created: cache off
    for k in fresh:
        for other in (first, second, unusable):
            np.testing.assert_array_equal(other[k], fresh[k])


@ON_OPENVINO
def test_openvino_takes_one_window_per_call_with_the_same_outputs():
    rng = np.random.default_rng(1)
    win = rng.standard_normal((5, bp.AUDIO_N_SAMPLES, 1)).astype(np.float32)
    ov = OnnxTranscriber(registry.stock_model_path(), device="openvino", batch_windows=16)
    cpu = OnnxTranscriber(registry.stock_model_path(), device="cpu", batch_windows=16)
    assert (ov.fixed_batch, ov.batch_windows) == (1, 1)  # the open batch fixed at 1
    assert (cpu.fixed_batch, cpu.batch_windows) == (None, 16)
    got, ref = ov.run_windows(win), cpu.run_windows(win)
    for k in ref:
        assert got[k].shape == ref[k].shape == (5, bp.FRAMES_PER_WINDOW, got[k].shape[2])
        np.testing.assert_allclose(got[k], ref[k], atol=1e-5)


def test_a_model_of_fixed_batch_gets_its_last_windows_padded(tmp_path):
    import onnx

    model = onnx.load(registry.stock_model_path())
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4  # as an exporter may fix it
    onnx.save(model, tmp_path / "batch4.onnx")
    rng = np.random.default_rng(2)
    win = rng.standard_normal((6, bp.AUDIO_N_SAMPLES, 1)).astype(np.float32)
    fixed = OnnxTranscriber(tmp_path / "batch4.onnx", device="cpu", batch_windows=16)
    open_ = OnnxTranscriber(registry.stock_model_path(), device="cpu", batch_windows=16)
    assert (fixed.fixed_batch, fixed.batch_windows) == (4, 4)
    got, ref = fixed.run_windows(win), open_.run_windows(win)  # 4 + 2 padded to 4
    for k in ref:
        assert got[k].shape == ref[k].shape
        np.testing.assert_allclose(got[k], ref[k], atol=1e-5)


def test_not_a_basic_pitch_model_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # onnx 1.23 writes IR 14; onnxruntime 1.31 reads up to 13
    onnx.save(model, tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not a basic-pitch-shaped model"):
        OnnxTranscriber(tmp_path / "other.onnx")


def test_devices():
    from midiforge.transcription.sessions import create_session

    with pytest.raises(ValueError, match="expected one of auto, cpu, cuda, openvino"):
        create_session(registry.stock_model_path(), "tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="no CUDA provider"):
            create_session(registry.stock_model_path(), "cuda")
        expected = "OpenVINOExecutionProvider" if OPENVINO else "CPUExecutionProvider"
        assert create_session(registry.stock_model_path(), "auto")[1] == expected
        if not OPENVINO:  # asked for by name, it says why it cannot be had
            with pytest.raises(RuntimeError, match="OpenVINO provider is not usable here"):
                create_session(registry.stock_model_path(), "openvino")
    else:  # the GPU image: auto and cuda both take CUDA
        for device in ("auto", "cuda"):
            assert create_session(registry.stock_model_path(), device)[1] == (
                "CUDAExecutionProvider"
            )
