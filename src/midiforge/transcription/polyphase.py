"""Narrow convolutions rewritten as polyphase ones, for CPU kernels that work in blocks.

onnxruntime's CPU provider runs a 2-D convolution in blocks of output channels (mlas's
NCHWc layout: 16 channels per block with AVX-512, 8 with AVX2) and pads a layer with
fewer channels up to a block; OpenVINO's CPU kernels block channels likewise. basic-pitch
has such layers: its widest, a (3, 39) kernel from 8 harmonics into 8 channels, was 45%
of a window's time with half of every block padding, and its contour and note heads have
one output channel, so 15 of 16 lanes computed nothing.

A convolution is P interleaved ones along an axis, one per output phase q (columns
P*j + q). Splitting the input's columns into P phases, as channels, makes them one
convolution of co*P output channels over ci*P input channels with ceil(kernel/P) taps,
whose outputs are interleaved back: the padding becomes real work. On basic-pitch this
takes ~35% off a window's time on onnxruntime's CPU provider and ~20% on OpenVINO (AVX-512,
one thread); the outputs move by float summation order only (under 2e-6).

Strided layers are left as they are: basic-pitch's are the CQT's anti-alias filters, whose
outputs pass through a log, where the new summation order moved outputs by 6e-5.

`cpu_graph` applies `rewrite` to a model before a CPU session loads it.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PHASES = (1, 2, 4, 8, 16, 32)
# Rewrite a layer only where its multiply-adds, output channels counted in whole blocks,
# fall to this share or less: splitting and interleaving copy its input and output.
MAX_COST_SHARE = 0.6
# The ops written take their shapes and pads as inputs from opset 13 (Pad's from 11).
MIN_OPSET = 13


@cache
def channel_block() -> int | None:
    """Output channels per block of onnxruntime's NCHWc convolutions on this CPU (mlas:
    16 with AVX-512F, 8 with AVX2); None where it has no NCHWc kernels (not x86-64)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    if "avx512f" in words:
        return 16
    return 8 if "avx2" in words else None


@dataclass(frozen=True)
class Layer:
    """A stride-1 Conv node's shape: weights (co, ci, kh, kw), input (h, w), pads."""

    co: int
    ci: int
    kh: int
    kw: int
    h: int
    w: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right

    @property
    def w_out(self) -> int:
        return self.w + self.pads[1] + self.pads[3] - self.kw + 1

    @property
    def h_out(self) -> int:
        return self.h + self.pads[0] + self.pads[2] - self.kh + 1

    def taps(self, p: int) -> int:
        """Taps along W of each phase channel with p phases."""
        return (p + self.kw - 2) // p + 1

    def cost(self, p: int, block: int) -> int:
        """Multiply-adds with p phases along W, output channels counted in whole blocks."""
        per_row = -(-self.co * p // block) * block * self.ci * self.kh * self.h_out
        return per_row * p * self.taps(p) * -(-self.w_out // p)

    def transposed(self) -> Layer:
        """The same convolution with H and W swapped."""
        top, left, bottom, right = self.pads
        return Layer(self.co, self.ci, self.kw, self.kh, self.w, self.h, (left, top, right, bottom))


def polyphase_weights(w: np.ndarray, p: int) -> np.ndarray:
    """(co, ci, kh, kw) -> (co*p, ci*p, kh, taps): output channel o*p+q is phase q of o;
    input channel i*p+s holds columns p*m+s of i; tap m of phase q is tap p*m + s - q."""
    co, ci, kh, kw = w.shape
    taps = (p + kw - 2) // p + 1
    out = np.zeros((co * p, ci * p, kh, taps), w.dtype)
    for q in range(p):
        for s in range(p):
            for m in range(taps):
                k = p * m + s - q
                if 0 <= k < kw:
                    out[q::p, s::p, :, m] = w[:, :, :, k]
    return out


@dataclass(frozen=True)
class Plan:
    """How one Conv node is rewritten: the layer as split (W the split axis), phases."""

    layer: Layer
    phases: int
    axis: str  # "w", or "h": the input is transposed, split along W, transposed back
    weights: np.ndarray  # as the node has them, (co, ci, kh, kw)
    bias: np.ndarray | None


def plan_layer(layer: Layer, weights: np.ndarray, bias, block: int) -> Plan | None:
    """The cheapest phases along W or H, or None when no split costs at most
    MAX_COST_SHARE of the layer as it is."""
    as_is = layer.cost(1, block)
    options = [
        (seen.cost(p, block), p, axis, seen)
        for axis, seen in (("w", layer), ("h", layer.transposed()))
        for p in PHASES[1:]
    ]
    cost, p, axis, seen = min(options, key=lambda o: o[:3])
    return Plan(seen, p, axis, weights, bias) if cost <= MAX_COST_SHARE * as_is else None


def _conv_layer(node, weights: np.ndarray, shape) -> Layer | None:
    """The Layer of a Conv node this module can rewrite, else None."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if weights.ndim != 4 or shape is None or len(shape) != 4 or shape[1] != weights.shape[1]:
        return None
    if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    if any(list(attrs.get(a, [1, 1])) != [1, 1] for a in ("strides", "dilations")):
        return None
    co, ci, kh, kw = weights.shape
    pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
    return Layer(co, ci, kh, kw, shape[2], shape[3], (pads[0], pads[1], pads[2], pads[3]))


def _replace(graph, node, plan: Plan) -> list:
    """The nodes computing `node`'s output by `plan`, their constants added to `graph`."""
    from onnx import helper, numpy_helper

    prefix = f"{node.output[0]}/polyphase{plan.phases}{plan.axis}"
    nodes: list = []

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, f"{prefix}/const/{name}"))
        return f"{prefix}/const/{name}"

    def ints(*v: int) -> np.ndarray:
        return np.array(v, np.int64)

    def add(op: str, inputs: list[str], name: str, **attrs) -> str:
        out = node.output[0] if name == "out" else f"{prefix}/{name}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    lo, p, along_h = plan.layer, plan.phases, plan.axis == "h"
    taps, outs = lo.taps(p), -(-lo.w_out // p)
    cols = p * (outs + taps - 1)  # input columns, padding included, the phases cover
    right = cols - lo.w - lo.pads[1]  # >= pads[3]: past it, zeros for outputs cut off below
    x = node.input[0]
    if along_h:
        x = add("Transpose", [x], "swapped", perm=[0, 1, 3, 2])
    x = add("Pad", [x, const("pads", ints(0, 0, 0, lo.pads[1], 0, 0, 0, right))], "padded")
    x = add("Reshape", [x, const("split", ints(0, lo.ci, lo.h, cols // p, p))], "split")
    x = add("Transpose", [x], "phases_first", perm=[0, 1, 4, 2, 3])
    x = add("Reshape", [x, const("phased", ints(0, lo.ci * p, lo.h, cols // p))], "phases")
    weights = plan.weights.transpose(0, 1, 3, 2) if along_h else plan.weights
    conv_in = [x, const("weights", polyphase_weights(weights, p))]
    if plan.bias is not None:
        conv_in.append(const("bias", np.repeat(plan.bias, p)))
    pads = [lo.pads[0], 0, lo.pads[2], 0]
    x = add("Conv", conv_in, "conv", kernel_shape=[lo.kh, taps], pads=pads)
    x = add("Reshape", [x, const("grouped", ints(0, lo.co, p, lo.h_out, outs))], "grouped")
    x = add("Transpose", [x], "phases_last", perm=[0, 1, 3, 4, 2])
    exact = outs * p == lo.w_out
    joined = const("joined", ints(0, lo.co, lo.h_out, outs * p))
    x = add("Reshape", [x, joined], "out" if exact and not along_h else "interleaved")
    if not exact:
        ends = [const("start", ints(0)), const("end", ints(lo.w_out)), const("axis", ints(3))]
        x = add("Slice", [x, *ends], "out" if not along_h else "cut")
    if along_h:
        add("Transpose", [x], "out", perm=[0, 1, 3, 2])
    return nodes


def convolutions(model) -> list[str]:
    """Input tensors of the Conv nodes with constant weights: the shapes `rewrite` needs."""
    inits = {i.name for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    return sorted({n.input[0] for n in convs})


def rewrite(model, shapes: dict[str, tuple[int, ...]], block: int | None = None) -> int:
    """Rewrites `model` (a ModelProto) in place where a narrow convolution gains (the old
    weights stay for `cpu_graph.rewrite` to drop), given
    the shapes of `convolutions(model)` for a batch of 1; returns how many were rewritten.
    `block`: output channels per block, default this CPU's (none: nothing is rewritten)."""
    from onnx import numpy_helper

    block = block or channel_block()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if block is None or opset < MIN_OPSET:
        return 0
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    plans = {}
    for n in graph.node:
        if n.op_type != "Conv" or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        layer = _conv_layer(n, w, shapes.get(n.input[0]))
        has_bias = len(n.input) > 2 and n.input[2]
        if has_bias and n.input[2] not in inits:  # a bias computed at run time
            continue
        bias = numpy_helper.to_array(inits[n.input[2]]) if has_bias else None
        plan = plan_layer(layer, w, bias, block) if layer else None
        if plan:
            plans[n.output[0]] = plan
    if not plans:
        return 0
    nodes = []
    for n in graph.node:
        plan = plans.get(n.output[0]) if n.op_type == "Conv" else None
        nodes += _replace(graph, n, plan) if plan else [n]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(plans)
