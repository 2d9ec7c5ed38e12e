"""Constants of elementwise ops given their operand's shape, for onnxruntime's CPU kernels.

onnxruntime's CPU provider broadcasts a constant of lower rank than its operand, or one
that repeats along the operand's last axis, element by element: basic-pitch's batch
normalization, x * [a] + [b] on a (1, 172, 309, 1) tensor, took ~1 ms per op, and the same
op with its constant shaped (1, 1, 1, 1) 0.016 ms (onnxruntime 1.32, one thread). Its CQT
scaling, (1, 172, 309, 2) * (1, 1, 309, 1), likewise. Reshaping a constant to its operand's
rank, and repeating it along a last axis it would be broadcast over, computes the same
numbers (they are the same multiplications) by the fast path: ~10% of a window's time.

`cpu_graph` applies `rewrite` to a model before a CPU session loads it.
"""

from __future__ import annotations

import numpy as np

OPS = ("Add", "Sub", "Mul", "Div")


def _pairs(model):
    """(node, constant input, other input) of the elementwise ops with one constant."""
    inits = {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in OPS and len(n.input) == 2:
            constant = [i for i in n.input if i in inits]
            if len(constant) == 1:
                other = n.input[1] if n.input[0] == constant[0] else n.input[0]
                yield n, constant[0], other


def operands(model) -> list[str]:
    """The tensors whose shapes `rewrite` needs."""
    return sorted({other for _, _, other in _pairs(model)})


def shaped(value: np.ndarray, operand: tuple[int, ...]) -> np.ndarray:
    """`value` as the operand broadcasts it on the fast path: at the operand's rank, and
    repeated along the last axis when it has more than one element but a last axis of 1
    where the operand's is longer. Unchanged when neither applies."""
    if value.ndim > len(operand):
        return value
    out = value.reshape((1,) * (len(operand) - value.ndim) + value.shape)
    if value.size > 1 and out.shape[-1] == 1 and operand[-1] > 1:
        out = np.repeat(out, operand[-1], axis=-1)
    return out


def rewrite(model, shapes: dict[str, tuple[int, ...]]) -> int:
    """Reshapes `model`'s elementwise constants in place (as new constants: the old ones
    stay for `cpu_graph.rewrite` to drop), given the shapes of
    `operands(model)` for a batch of 1; returns how many ops now read a new constant."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    changed = 0
    for node, name, other in list(_pairs(model)):
        if other not in shapes:
            continue
        value = numpy_helper.to_array(inits[name])
        new = shaped(value, shapes[other])
        if new.shape == value.shape:
            continue
        renamed = f"{name}/broadcast/{node.output[0]}"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(new), renamed))
        node.input[list(node.input).index(name)] = renamed
        changed += 1
    return changed
