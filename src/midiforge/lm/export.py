"""Export a Hugging Face causal LM to ONNX with an explicit KV cache, and quantize it to INT8.

The graph takes the cache as flat tensors and returns the grown cache, so a runtime without
torch (lm.onnx_lm.OnnxCausalLM) can decode one token per call:

    inputs   input_ids                  int64   [batch, seq]
             position_ids               int64   [batch, seq]
             past_key_values.{i}.key    float32 [batch, kv_heads, past_seq, head_dim]
             past_key_values.{i}.value  float32 [batch, kv_heads, past_seq, head_dim]
    outputs  logits                     float32 [batch, seq, vocab]
             present.{i}.key            float32 [batch, kv_heads, past_seq + seq, head_dim]
             present.{i}.value          float32 [batch, kv_heads, past_seq + seq, head_dim]

The first call passes past tensors with past_seq = 0. There is no attention_mask input: the
causal mask is built inside the graph from the lengths of the past and of input_ids, which
is all that unpadded sequences need. Left-padded batches would need a mask input; generation
here runs one unpadded sequence at a time. (The fused graph below holds the cache in
fixed-capacity buffers instead; lm.onnx_lm runs both.)

Two ways to build that graph. Llama models are written directly around onnxruntime's fused
GroupQueryAttention kernel with the cache in fixed buffers written in place
(lm.export_gqa): a quarter of the nodes, and a 16-bar melody from the `small` model takes
about half the time on 2 cores (bench/generate.py). Everything else is traced from
transformers' forward: the families whose cache is a plain per-layer DynamicCache and that
the tests check for parity, Llama (GQA included) and GPT-2. Every export is checked
against torch at lengths other than the trace's before it is accepted, so a mask or a
shape frozen into the trace, or a wrong fused layout, fails the export instead of
generation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "gpt2")
# The IR version onnxruntime 1.31 loads; onnx 1.23 stamps 14 on everything it writes.
IR_VERSION = 10
# Trace lengths. The past must be non-empty: an empty one sends each cache layer down its
# lazy-initialization branch, which the trace freezes (the graph then fails on any real
# past). Lengths differ from each other and from the batch size so that one frozen as a
# constant cannot pass the parity check by coincidence.
TRACE_BATCH, TRACE_SEQ, TRACE_PAST = 1, 3, 4
# fp32 ONNX and eager torch agree to ~1e-7 on small models; 1e-3 leaves room for deep ones
# while still catching a wrong mask, which moves logits by whole units.
VERIFY_ATOL = 1e-3
EXPORT_INFO = "export.json"
GRAPHS = ("auto", "gqa", "traced")


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def load_for_export(model_dir: str | Path):
    """The model in eval mode, float32, with eager attention: sdpa's `is_causal` shortcut is a
    Python branch on the query length, which a trace would freeze."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MidiforgeError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise MidiforgeError(
            f"{model_dir}: ONNX export supports model types {', '.join(SUPPORTED_MODEL_TYPES)}, "
            f"not {model_type!r}"
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    return model.float().eval()


def cache_shape(model) -> dict[str, int]:
    """Layers, kv heads and head dim as the model's own cache lays them out (config field
    names differ between families; one token through the model does not)."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 1), dtype=torch.long), use_cache=True)
    cache = out.past_key_values
    if not isinstance(cache, DynamicCache) or any(
        type(layer) is not DynamicLayer for layer in cache.layers
    ):
        raise MidiforgeError(
            f"{type(model).__name__} keeps a {type(cache).__name__} with "
            f"{sorted({type(layer).__name__ for layer in cache.layers})}; "
            "ONNX export needs plain per-layer DynamicCache entries"
        )
    _, kv_heads, _, head_dim = cache.layers[0].keys.shape
    return {
        "num_layers": len(cache.layers),
        "kv_heads": int(kv_heads),
        "head_dim": int(head_dim),
        "vocab_size": int(out.logits.shape[-1]),
    }


def _cache_wrapper(model, num_layers: int):
    """A module whose forward takes and returns the cache as flat tensors (what a graph can
    carry), building the DynamicCache that transformers 5 models expect in between."""
    import torch
    from transformers import DynamicCache

    class FlatCacheLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, position_ids, *past):
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(num_layers)])
            out = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = [
                t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)
            ]
            return (out.logits, *present)

    # The exporter restores the wrapper's train/eval flag afterwards, recursively: a wrapper
    # left in train mode would switch the model's dropout back on after export.
    return FlatCacheLM().eval()


def export_onnx(
    model_dir: str | Path,
    out_path: str | Path,
    opset: int = 17,
    verify: bool = True,
    graph: str = "auto",
) -> Path:
    """Export `model_dir` (a save_pretrained folder) to `out_path`, write export.json beside
    it, and (with `verify`) check the graph against torch with and without a cache.

    `graph`: "gqa" builds the fused graph (lm.export_gqa), "traced" traces transformers'
    forward, "auto" takes gqa where the model allows it and traces otherwise."""
    from midiforge.lm.export_gqa import OPSET as GQA_OPSET
    from midiforge.lm.export_gqa import GqaUnsupportedError, check_supported, write_gqa_onnx

    if graph not in GRAPHS:
        raise MidiforgeError(f"graph must be one of {', '.join(GRAPHS)}, not {graph!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    model = load_for_export(model_dir)
    shape = cache_shape(model)
    n_layers = shape["num_layers"]
    if graph != "traced":
        try:
            check_supported(model)
            graph = "gqa"
        except GqaUnsupportedError as e:
            if graph == "gqa":
                raise
            log.info("%s: %s; tracing instead", model_dir, e)
            graph = "traced"
    if graph == "gqa":
        if opset != GQA_OPSET:
            raise MidiforgeError(f"the gqa graph is written at opset {GQA_OPSET}, not {opset}")
        write_gqa_onnx(model, out_path, IR_VERSION)
    else:
        _trace(model, shape, out_path, opset)

    info = {
        "format": "midiforge-lm-onnx/1",
        "source_model": str(model_dir.resolve()),
        "model_type": model.config.model_type,
        "graph": graph,
        # shared: fixed-capacity buffers written in place (lm.export_gqa); grown: returned
        # as new, longer tensors
        "kv_cache": "shared" if graph == "gqa" else "grown",
        "opset": opset,
        "ir_version": IR_VERSION,
        "inputs": ["input_ids", "position_ids", *past_names(n_layers)],
        "outputs": ["logits", *present_names(n_layers)],
        **shape,
        "files": {"fp32": out_path.name},
        "attention_mask": False,
    }
    if verify:
        err = check_parity(model, out_path)
        log.info("exported %s -> %s (max |dlogits| %.2e vs torch)", model_dir, out_path, err)
    # Written last, so a graph that failed its check has no export.json vouching for it.
    (out_path.parent / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out_path


def _trace(model, shape: dict[str, int], out_path: Path, opset: int) -> None:
    import warnings

    import onnx
    import torch

    n_layers, kv_heads, head_dim = shape["num_layers"], shape["kv_heads"], shape["head_dim"]
    wrapper = _cache_wrapper(model, n_layers)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (TRACE_BATCH, TRACE_SEQ), generator=g)
    positions = torch.arange(TRACE_PAST, TRACE_PAST + TRACE_SEQ).expand(TRACE_BATCH, -1)
    past = [
        torch.randn(TRACE_BATCH, kv_heads, TRACE_PAST, head_dim, generator=g)
        for _ in range(2 * n_layers)
    ]
    inputs = ["input_ids", "position_ids", *past_names(n_layers)]
    outputs = ["logits", *present_names(n_layers)]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "position_ids": {0: "batch", 1: "seq"},
        "logits": {0: "batch", 1: "seq"},
    }
    axes |= {name: {0: "batch", 2: "past_seq"} for name in past_names(n_layers)}
    axes |= {name: {0: "batch", 2: "total_seq"} for name in present_names(n_layers)}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (deprecated, but it traces straight through the cache's
        # Python-side bookkeeping with plain dynamic_axes) warns about that bookkeeping;
        # the parity check below, not the warnings, decides whether the trace holds.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (ids, positions, *past),
            str(out_path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    # Loaded without external data so a large model's weight files stay as the exporter wrote them.
    proto = onnx.load(str(out_path), load_external_data=False)
    proto.ir_version = IR_VERSION
    onnx.save(proto, str(out_path))


def check_parity(model, onnx_path: str | Path, atol: float = VERIFY_ATOL) -> float:
    """Max |logits| difference between the graph and torch over a 6-token prefill from an
    empty cache and a 2-token continuation from that cache; raises above `atol`."""
    import numpy as np
    import torch

    from midiforge.lm.onnx_lm import OnnxCausalLM

    lm = OnnxCausalLM(onnx_path)
    ids = np.random.default_rng(1).integers(0, lm.vocab_size, (1, 8), dtype=np.int64)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    first, cache = lm.forward(ids[:, :6], lm.empty_cache())
    rest, _ = lm.forward(ids[:, 6:], cache)
    err = float(np.abs(np.concatenate([first, rest], axis=1) - want).max())
    if not err <= atol:
        raise MidiforgeError(
            f"{onnx_path}: ONNX logits differ from torch by {err:.3g} (> {atol}); "
            "the trace froze something it should not have"
        )
    return err


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Dynamic INT8 quantization of the weight MatMuls/Gemms (activations stay float and are
    quantized per call). Records the file in export.json when one lies beside `onnx_path`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # No pre-processing pass: every projection is a MatMul against an initializer, which is
    # all quantize_dynamic looks for.
    # The attention MatMuls (query x key, weights x value) have no initializer and stay float.
    # onnxruntime.quantization logs to the root logger: a line per tensor, and a warning
    # recommending the pre-processing pass that the comment above explains away.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(
            onnx_path,
            out_path,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            # onnx's shape inference stops at contrib operators (GroupQueryAttention),
            # leaving the tensors after them untyped; every float here is float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    proto = onnx.load(str(out_path), load_external_data=False)
    if proto.ir_version != IR_VERSION:
        proto.ir_version = IR_VERSION
        onnx.save(proto, str(out_path))

    src_info = onnx_path.parent / EXPORT_INFO
    if src_info.is_file():
        info: dict[str, Any] = json.loads(src_info.read_text())
        dst_info = out_path.parent / EXPORT_INFO
        if dst_info.resolve() == src_info.resolve():
            info["files"] = {**info.get("files", {}), "int8": out_path.name}
        else:
            info["files"] = {"int8": out_path.name}
            info["quantized_from"] = str(onnx_path.resolve())
        dst_info.write_text(json.dumps(info, indent=2) + "\n")
    return out_path
