"""A transcription model as CPUs run it fastest: exact rewrites of its ONNX graph.

Two rewrites, each a module of its own: narrow convolutions as polyphase ones
(`polyphase`), and elementwise constants shaped for the fast broadcasting path
(`broadcast`). Both need tensor shapes that exporters leave to be found at run time, so
the model runs once on zeros to read them (`tensor_shapes`).

`for_cpu` keeps what it wrote in a cache folder, keyed by the model's content, this CPU's
channel block and `VERSION`: rewriting imports onnx and probes the model (~1 s in a new
process), which every Ray Data actor and Serve replica would pay at start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from midiforge.transcription import broadcast, polyphase

log = logging.getLogger(__name__)
# Bump when a rewrite changes what it writes: cached models are keyed by it.
VERSION = 1


def tensor_shapes(model, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the named tensors for a batch of 1, read by running the unoptimized
    model on zeros in batches of 1 and 2. Only tensors whose other axes do not change with
    the batch are given; none when the model's input is not of fixed size."""
    import onnxruntime as ort

    dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
    if not names or not all(d.HasField("dim_value") for d in dims):
        return {}
    probe = type(model)()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in names:
        if name not in outputs:
            probe.graph.output.add().name = name
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name

    def run(batch: int) -> list[tuple[int, ...]]:
        x = np.zeros((batch, *(d.dim_value for d in dims)), np.float32)
        return [o.shape for o in sess.run(names, {feed: x})]

    one, two = run(1), run(2)
    return {
        n: a
        for n, a, b in zip(names, one, two, strict=True)
        if len(a) == len(b) and a[1:] == b[1:] and (a[:1], b[:1]) == ((1,), (2,))
    }


def rewrite(model_bytes: bytes, block: int | None = None) -> tuple[bytes, dict[str, int]] | None:
    """(the rewritten model, layers changed by each rewrite), or None when neither changes
    anything. `block`: output channels per convolution block, default this CPU's."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    shapes = tensor_shapes(
        model, sorted({*polyphase.convolutions(model), *broadcast.operands(model)})
    )
    if not shapes:
        return None
    read = _read_by_nodes(model)
    changed = {
        "polyphase": polyphase.rewrite(model, shapes, block),
        "broadcast": broadcast.rewrite(model, shapes),
    }
    if not any(changed.values()):
        return None
    # Constants the rewrites stopped reading (replaced weights and shapes).
    unread = read - _read_by_nodes(model)
    kept = [i for i in model.graph.initializer if i.name not in unread]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model.SerializeToString(), changed


def _read_by_nodes(model) -> set[str]:
    return {i for n in model.graph.node for i in n.input}


def for_cpu(model_bytes: bytes, cache: str | None = None) -> str | bytes | None:
    """`rewrite(model_bytes)`'s model, or None when nothing changes. With a `cache`
    folder, the path of the rewritten model kept there (sessions then load a file, as
    they would the original: OpenVINO's compiled-model cache is keyed by it); else its
    bytes."""
    block = polyphase.channel_block()
    key = f"{hashlib.sha256(model_bytes).hexdigest()[:40]}-v{VERSION}-block{block}"
    done = Path(cache) / f"{key}.onnx" if cache else None
    unchanged = Path(cache) / f"{key}.unchanged" if cache else None
    if done and done.is_file():
        return str(done)
    if unchanged and unchanged.is_file():
        return None
    rewritten = rewrite(model_bytes, block)
    if rewritten:
        log.info("model rewritten for CPUs: %s", rewritten[1])
    if not cache:
        return rewritten[0] if rewritten else None
    if not rewritten:
        _write_atomically(unchanged, b"")
        return None
    return str(done) if _write_atomically(done, rewritten[0]) else rewritten[0]


def _write_atomically(path: Path, data: bytes) -> bool:
    """Whole or not at all (actors starting together may write the same file); whether
    it was written."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    except OSError as e:
        log.info("cpu_graph cache: %s not written (%s)", path, e)
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        Path(tmp).replace(path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        log.info("cpu_graph cache: %s not written (%s)", path, e)
        return False
    return True
