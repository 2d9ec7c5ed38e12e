"""Rewritten for CPUs, a model computes what it did: polyphase convolutions, broadcast constants."""

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from midiforge import registry
from midiforge.transcription import broadcast, cpu_graph, polyphase
from midiforge.transcription import constants as bp
from midiforge.transcription.sessions import ModelFileError, cpu_model, create_session


def conv_model(co, ci, kernel, hw, pads, *, bias=True, seed=0) -> bytes:
    """One Conv (and a Relu after it) on a (1, ci, h, w) input, as exporters write them."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((co, ci, *kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(co).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [
        helper.make_node("Conv", inputs, ["y"], kernel_shape=list(kernel), pads=list(pads)),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", ci, *hw])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "conv", [x], [z], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def convs(model: bytes) -> list[tuple[int, ...]]:
    m = onnx.load_from_string(model)
    inits = {i.name: tuple(i.dims) for i in m.graph.initializer}
    return [inits[n.input[1]] for n in m.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize(
    ("co", "ci", "kernel", "hw", "pads", "bias", "split"),
    [
        (8, 8, (3, 39), (20, 264), (1, 19, 1, 19), True, (16, 16, 3, 20)),  # basic-pitch's
        (8, 3, (3, 15), (9, 37), (1, 7, 1, 7), False, (16, 6, 3, 8)),  # odd width: cut back
        (1, 8, (5, 5), (12, 50), (2, 2, 2, 2), True, None),  # any split, checked below
        (1, 6, (7, 3), (30, 11), (3, 1, 3, 1), True, None),  # long in H: split along H
        (2, 4, (3, 9), (6, 40), (0, 4, 2, 0), True, None),  # uneven pads
    ],
)
def test_a_rewritten_convolution_equals_the_original(co, ci, kernel, hw, pads, bias, split):  # noqa: PLR0917 - pytest passes parameters by name
    model = conv_model(co, ci, kernel, hw, pads, bias=bias)
    rewritten, changed = cpu_graph.rewrite(model, block=16)
    assert changed == {"polyphase": 1, "broadcast": 0}
    (shape,) = convs(rewritten)
    if split:
        assert shape == split  # co*p outputs over ci*p inputs, ceil(kernel/p) taps
    assert shape[0] % 16 == 0 or shape[0] > co  # the block filled, or more of it
    x = np.random.default_rng(1).standard_normal((3, ci, *hw)).astype(np.float32)
    got, want = run(rewritten, x), run(model, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_the_split_follows_the_longer_kernel():
    wide = polyphase.plan_layer(polyphase.Layer(1, 32, 3, 9, 172, 88, (1, 4, 1, 4)), None, None, 16)
    tall = polyphase.plan_layer(polyphase.Layer(1, 32, 9, 3, 172, 88, (4, 1, 4, 1)), None, None, 16)
    assert (wide.axis, tall.axis) == ("w", "h")
    assert wide.layer.kw == 9 and tall.layer.kw == 9  # the split axis is the plan's W


def test_layers_that_fill_their_blocks_or_stride_are_left_alone():
    assert cpu_graph.rewrite(conv_model(32, 8, (5, 5), (20, 60), (2, 2, 2, 2)), block=16) is None
    # Blocks of 8 (AVX2): 8 channels already fill one.
    assert cpu_graph.rewrite(conv_model(8, 8, (3, 39), (20, 264), (1, 19, 1, 19)), block=8) is None
    strided = onnx.load_from_string(conv_model(1, 8, (5, 5), (20, 60), (2, 2, 2, 2)))
    strided.graph.node[0].attribute.append(helper.make_attribute("strides", [1, 2]))
    assert cpu_graph.rewrite(strided.SerializeToString(), block=16) is None
    old = onnx.load_from_string(conv_model(1, 8, (5, 5), (20, 60), (2, 2, 2, 2)))
    old.opset_import[0].version = 11  # Pad, Slice and Reshape of the rewrite not all there
    assert cpu_graph.rewrite(old.SerializeToString(), block=16) is None


def test_basic_pitch_rewritten_for_cpus_gives_the_same_outputs():
    stock = registry.stock_model_path()
    rewritten, changed = cpu_graph.rewrite(stock.read_bytes(), block=16)
    shapes = convs(rewritten)
    # The (3, 39) harmonic layer in 2 phases; the contour and note heads (1 channel) split;
    # the CQT's scaling, its log's and the batch normalization's constants reshaped.
    assert changed == {"polyphase": 3, "broadcast": 6}
    assert (16, 16, 3, 20) in shapes and (8, 8, 3, 39) not in shapes
    assert not any(s[0] == 1 and s[2:] in ((5, 5), (7, 3)) for s in shapes)
    rng = np.random.default_rng(2)
    win = (0.1 * rng.standard_normal((3, bp.AUDIO_N_SAMPLES, 1))).astype(np.float32)
    a = ort.InferenceSession(rewritten, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(stock), providers=["CPUExecutionProvider"])
    got, want = a.run(None, {bp.INPUT_NAME: win}), b.run(None, {bp.INPUT_NAME: win})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_cpu_sessions_take_the_rewritten_model_unless_turned_off(tmp_path, monkeypatch):
    stock = registry.stock_model_path()
    # Its constants are reshaped on any CPU; the rewritten model is kept in the cache.
    got = cpu_model(stock)
    [kept] = Path(os.environ["MIDIFORGE_CPU_GRAPH_CACHE"]).glob("*.onnx")
    assert got == str(kept)
    monkeypatch.setenv("MIDIFORGE_CPU_GRAPH", "0")
    assert cpu_model(stock) == str(stock)
    monkeypatch.delenv("MIDIFORGE_CPU_GRAPH")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert cpu_model(junk) == str(junk)  # onnxruntime then says what is wrong with it
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        create_session(junk, "cpu")


def test_constants_take_their_operands_rank_and_last_axis():
    assert broadcast.shaped(np.ones(1), (1, 172, 309, 1)).shape == (1, 1, 1, 1)
    assert broadcast.shaped(np.ones(()), (1, 172, 309)).shape == (1, 1, 1)
    assert broadcast.shaped(np.arange(3.0).reshape(3, 1, 1), (1, 3, 7, 2)).shape == (1, 3, 1, 2)
    assert broadcast.shaped(np.ones((1, 1, 4)), (1, 4)).shape == (1, 1, 4)  # not its to change
    assert broadcast.shaped(np.ones((1, 3)), (2, 3)).shape == (1, 3)


def elementwise_model(reshape_by_batch: bool = False) -> bytes:
    """x * [a] + [b], then * c of shape (5, 1): batch normalization and CQT scaling alike."""
    inits = [
        numpy_helper.from_array(np.array([1.7], np.float32), "a"),
        numpy_helper.from_array(np.array([-0.3], np.float32), "b"),
        numpy_helper.from_array(np.linspace(0.5, 2, 5, dtype=np.float32).reshape(5, 1), "c"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["t"]),
        helper.make_node("Add", ["b", "t"], ["u"]),
        helper.make_node("Mul", ["u", "c"], ["z"]),
    ]
    if reshape_by_batch:  # the last axis grows with the batch: (1, batch * 2)
        inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))
        nodes[2:] = [
            helper.make_node("Reshape", ["u", "flat"], ["f"]),
            helper.make_node("Mul", ["f", "a"], ["z"]),
        ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 5, 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "elementwise", [x], [z], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def test_reshaped_constants_give_identical_outputs():
    model = elementwise_model()
    rewritten, changed = cpu_graph.rewrite(model, block=16)
    assert changed == {"polyphase": 0, "broadcast": 3}
    m = onnx.load_from_string(rewritten)
    shapes = sorted(tuple(i.dims) for i in m.graph.initializer)
    assert shapes == [(1, 1, 1, 1), (1, 1, 1, 1), (1, 1, 5, 2)]  # the old constants gone
    x = np.random.default_rng(3).standard_normal((4, 3, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(run(rewritten, x), run(model, x))  # the same products


def test_a_shape_that_changes_with_the_batch_is_not_relied_on():
    model = elementwise_model(reshape_by_batch=True)
    rewritten, changed = cpu_graph.rewrite(model, block=16)
    assert changed == {"polyphase": 0, "broadcast": 2}  # the reshaped tensor's op left alone
    x = np.random.default_rng(4).standard_normal((3, 3, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(run(rewritten, x), run(model, x))


def test_rewritten_models_are_kept_by_content(tmp_path):
    stock = registry.stock_model_path().read_bytes()
    rewritten = cpu_graph.for_cpu(stock, None)  # no cache: the bytes
    assert isinstance(rewritten, bytes) and rewritten != stock
    kept = cpu_graph.for_cpu(stock, str(tmp_path))  # the file kept, for sessions to load
    assert [Path(kept)] == list(tmp_path.glob("*.onnx")) and list(tmp_path.glob(".tmp-*")) == []
    assert Path(kept).read_bytes() == rewritten
    Path(kept).write_bytes(b"what the cache holds")  # read back, not rewritten again
    assert Path(cpu_graph.for_cpu(stock, str(tmp_path))).read_bytes() == b"what the cache holds"
    plain = conv_model(32, 8, (5, 5), (20, 60), (2, 2, 2, 2))  # nothing to rewrite
    assert cpu_graph.for_cpu(plain, str(tmp_path)) is None
    assert len(list(tmp_path.glob("*.unchanged"))) == 1
    assert cpu_graph.for_cpu(plain, None) is None
