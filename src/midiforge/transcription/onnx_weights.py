"""Read basic-pitch's weights out of an ONNX graph shaped like the shipped `nmp.onnx`.

Constants are found by the role their node plays, not by TensorFlow's generated names:
the CQT kernel pair is the only (36, 1, 1, 256) convolution weight (the imaginary one
feeds a Neg), the low-pass filter the only (1, 1, 1, 256), the filter-length scale the
only (309, 1, 1) multiplier, the front BatchNorm the only one-element Mul/Add pair, the
log10 factor the scalar Mul after the Log, and each head convolution has a weight shape
of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from midiforge.errors import MidiforgeError
from midiforge.transcription.torch_model import (
    BINS_PER_OCTAVE,
    HEADS,
    KERNEL,
    N_CQT_BINS,
    BasicPitch,
    FrontEndConstants,
)

_HEAD_BY_SHAPE = {shape: name for name, (shape, _) in HEADS.items()}


class WeightsError(MidiforgeError, ValueError):
    """The graph does not have basic-pitch's structure."""


def _conv_role(node, w: np.ndarray, consumers) -> str | None:
    shape = tuple(w.shape)
    if shape == (BINS_PER_OCTAVE, 1, 1, KERNEL):
        feeds_neg = any(c.op_type == "Neg" for c in consumers.get(node.output[0], []))
        return "cqt_imag" if feeds_neg else "cqt_real"
    if shape == (1, 1, 1, KERNEL):
        return "lowpass"
    return _HEAD_BY_SHAPE.get(shape)


def _scalar_role(node, w: np.ndarray, producers, consumers) -> str | None:
    if w.dtype != np.float32 or node.op_type not in ("Mul", "Add"):
        return None
    mul = node.op_type == "Mul"
    if w.shape == (1,):
        return "bn_scale" if mul else "bn_shift"
    if mul and w.shape == (N_CQT_BINS, 1, 1):
        return "length_scale"
    if w.shape == () and mul and producers.get(node.input[0]) == "Log":
        return "log10_factor"
    if w.shape == () and not mul and any(c.op_type == "Log" for c in consumers[node.output[0]]):
        return "log_eps"
    return None


def read_onnx(path: str | Path) -> tuple[FrontEndConstants, dict[str, torch.Tensor]]:
    """(front-end constants, state-dict entries for the trainable parameters)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {out: n.op_type for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    found: dict[str, np.ndarray] = {}
    state: dict[str, torch.Tensor] = {}
    for node in graph.node:
        w = init.get(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            continue
        if node.op_type == "Conv":
            role = _conv_role(node, w, consumers)
            if role in HEADS:
                bias = init.get(node.input[2]) if len(node.input) > 2 else None
                state[f"{role}.weight"] = torch.from_numpy(w.copy())
                state[f"{role}.bias"] = torch.from_numpy(
                    np.zeros(w.shape[0], np.float32) if bias is None else bias.copy()
                )
            elif role:
                found[role] = w.reshape(w.shape[0], -1) if role.startswith("cqt") else w.ravel()
        elif role := _scalar_role(node, w, producers, consumers):
            found.setdefault(role, w)
    found.setdefault("log_eps", np.float32(0.0))
    needed = ("cqt_real", "cqt_imag", "lowpass", "length_scale", "log10_factor",
              "bn_scale", "bn_shift")  # fmt: skip
    missing = [k for k in needed if k not in found] + [
        f"head {h}" for h in HEADS if f"{h}.weight" not in state
    ]
    if missing:
        raise WeightsError(f"{path} is not shaped like basic-pitch: no {', '.join(missing)}")
    front = FrontEndConstants(
        found["cqt_real"], found["cqt_imag"], found["lowpass"], found["length_scale"].ravel(),
        float(found["log10_factor"]), float(found["log_eps"]),
    )  # fmt: skip
    state["bn_scale"] = torch.from_numpy(found["bn_scale"].copy())
    state["bn_shift"] = torch.from_numpy(found["bn_shift"].copy())
    return front, state


def from_onnx(path: str | Path) -> BasicPitch:
    front, state = read_onnx(path)
    model = BasicPitch(front)
    model.load_head_state(state)
    return model
