"""A Llama-family decoder written straight into ONNX around onnxruntime's fused kernels.

The traced export (lm.export) reproduces transformers' Python: per layer it carries the
rotary slicing, the mask arithmetic and the shape bookkeeping of the eager code, about 270
nodes for a 4-layer model. For a model as small as midiforge's `small` preset, running
those nodes one token at a time costs more than the matrix products. This builder emits
the same computation as ~15 nodes per layer, using contrib operators that onnxruntime's CPU
provider implements natively:

    SimplifiedLayerNormalization   RMSNorm
    MatMul                         q, k and v packed into one projection
    GroupQueryAttention            rotary embedding, causal mask, cache write, attention

The input and output names are the traced graph's (see lm.export); the cache is held
differently. Each layer's past and present are one buffer of fixed capacity (the model's
max_position_embeddings, at most MAX_CAPACITY), bound as both input and output, which
GroupQueryAttention fills in place (onnxruntime's shared past/present buffer mode). A
decoding step then copies nothing but the new token's keys and values, where the traced
graph copies the whole cache into a grown one, and the caller copies it out again. The
lengths come from `position_ids`: the new tokens sit at those positions, and attention
sees everything before them. The model's metadata says so (midiforge.kv_cache = shared);
lm.onnx_lm reads it and binds the buffers.

The weights are read from the loaded torch modules, and the rotary tables from the
model's own rotary embedding, so scaled rotary variants (linear, llama3, yarn) come out as
transformers computes them. What this builder does not cover raises GqaUnsupportedError;
lm.export then falls back to tracing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from midiforge.errors import MidiforgeError

# Rotary variants whose tables depend on the position only; "dynamic" and "longrope"
# rescale with the sequence length, which fixed tables cannot follow.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
OPSET = 17
MS_DOMAIN = "com.microsoft"
# Model metadata that tells lm.onnx_lm how to hold the cache (the traced graph has none).
CACHE_KIND, SHARED = "midiforge.kv_cache", "shared"
CACHE_CAPACITY = "midiforge.kv_cache_capacity"
# Positions a cache buffer holds at most. The runtime allocates the whole capacity per
# generation: a hub model's 131072 positions would be gigabytes per layer, while
# midiforge's generator and perplexity never run past the training window (256 for the
# presets). Longer contexts: `lm export --graph traced`, whose cache grows as needed.
MAX_CAPACITY = 4096
CAPACITY_AXIS = "capacity"


class GqaUnsupportedError(MidiforgeError):
    """The model uses something the fused builder does not emit."""


def _rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return (params or {}).get("rope_type", (params or {}).get("type", "default"))


def check_supported(model) -> None:
    cfg = model.config
    problems = []
    if cfg.model_type != "llama":
        problems.append(f"model type {cfg.model_type!r} (only llama)")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        problems.append(f"activation {cfg.hidden_act!r}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        problems.append("projection biases")
    if _rope_type(cfg) not in STATIC_ROPE_TYPES:
        problems.append(f"rope type {_rope_type(cfg)!r}")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim % 16:
        # onnxruntime's CPU kernel works in 16-wide blocks
        problems.append(f"head dim {head_dim} (GroupQueryAttention needs a multiple of 16)")
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        problems.append(f"pretraining_tp {cfg.pretraining_tp}")
    if problems:
        raise GqaUnsupportedError("fused export does not cover " + ", ".join(problems))


def _rotary_tables(model, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (positions, head_dim / 2) from the model's own rotary module. transformers
    lays each table out as two equal halves (rotate_half); GroupQueryAttention takes one."""
    import torch

    rotary = model.model.rotary_emb
    positions = torch.arange(max_positions)[None]
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(probe, positions)
    cos, sin = cos[0].numpy(), sin[0].numpy()
    half = cos.shape[-1] // 2
    halves_equal = all(np.array_equal(t[:, :half], t[:, half:]) for t in (cos, sin))
    if not halves_equal:
        raise GqaUnsupportedError("rotary tables are not in rotate_half layout")
    return cos[:, :half], sin[:, :half]


class _Graph:
    """Nodes and initializers under construction; every helper returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []

    def weight(self, name: str, array) -> str:
        from onnx import numpy_helper

        arr = np.ascontiguousarray(array)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(
        self, op_type: str, inputs: list[str], out: str, domain: str = "", more_outputs=(), **attrs
    ) -> str:
        from onnx import helper

        outputs, name = [out, *more_outputs], f"{out}/{op_type}"
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name, domain=domain, **attrs))
        return out


def _linear(module) -> np.ndarray:
    """A torch Linear's weight as the right-hand side of x @ W."""
    return module.weight.detach().float().numpy().T


def _lengths(g: _Graph) -> None:
    """GroupQueryAttention's lengths, from the positions of the new tokens (the cache
    buffers are all capacity, so their shape says nothing): seqlens_k, each row's last
    position, and total_sequence_length, the scalar longest row + 1."""
    from onnx import TensorProto

    g.weight("last", np.array([-1], np.int64))
    g.weight("axis1", np.array([1], np.int64))
    g.weight("one", np.array(1, np.int64))
    last = g.op("Squeeze", [g.op("Gather", ["position_ids", "last"], "last_pos", axis=1),
                            "axis1"], "last_per_row")  # fmt: skip
    g.op("Cast", [last], "seqlens_k", to=TensorProto.INT32)
    total = g.op("Add", [g.op("ReduceMax", [last], "longest", keepdims=0), "one"], "total")
    g.op("Cast", [total], "total_sequence_length", to=TensorProto.INT32)


def _rms_norm(g: _Graph, x: str, weight, eps: float, name: str) -> str:
    w = g.weight(f"{name}.weight", weight.detach().float().numpy())
    return g.op("SimplifiedLayerNormalization", [x, w], name, axis=-1, epsilon=eps, stash_type=1)


def _decoder_layer(g: _Graph, x: str, i: int, layer, cfg, *, cache: tuple[str, ...]) -> str:
    """One pre-norm block: x + attention(norm(x)), then + mlp(norm(.)). `cache`: this
    layer's past key, past value, present key, present value names."""
    attn, mlp, eps = layer.self_attn, layer.mlp, float(cfg.rms_norm_eps)
    p = f"layers.{i}"
    h = _rms_norm(g, x, layer.input_layernorm.weight, eps, f"{p}.input_norm")
    qkv = np.concatenate([_linear(attn.q_proj), _linear(attn.k_proj), _linear(attn.v_proj)], 1)
    packed = g.op("MatMul", [h, g.weight(f"{p}.qkv", qkv)], f"{p}.qkv_out")
    past_k, past_v, present_k, present_v = cache
    # Packed q|k|v in the query slot, key and value left empty: one GEMM per layer.
    gqa_inputs = [packed, "", "", past_k, past_v, "seqlens_k", "total_sequence_length"]
    attended = g.op(
        "GroupQueryAttention",
        [*gqa_inputs, "cos_cache", "sin_cache"],
        f"{p}.attn",
        domain=MS_DOMAIN,
        more_outputs=(present_k, present_v),
        num_heads=cfg.num_attention_heads,
        kv_num_heads=cfg.num_key_value_heads,
        scale=float(attn.scaling),
        do_rotary=1,
        rotary_interleaved=0,
    )
    o = g.op("MatMul", [attended, g.weight(f"{p}.o", _linear(attn.o_proj))], f"{p}.o_out")
    x = g.op("Add", [x, o], f"{p}.resid_attn")
    h = _rms_norm(g, x, layer.post_attention_layernorm.weight, eps, f"{p}.post_norm")
    gate = g.op("MatMul", [h, g.weight(f"{p}.gate", _linear(mlp.gate_proj))], f"{p}.gate_out")
    up = g.op("MatMul", [h, g.weight(f"{p}.up", _linear(mlp.up_proj))], f"{p}.up_out")
    # silu(gate) * up; onnxruntime fuses x * sigmoid(x) into one kernel.
    sig = g.op("Sigmoid", [gate], f"{p}.gate_sig")
    act = g.op("Mul", [g.op("Mul", [gate, sig], f"{p}.gate_silu"), up], f"{p}.mlp_act")
    down = g.op("MatMul", [act, g.weight(f"{p}.down", _linear(mlp.down_proj))], f"{p}.down_out")
    return g.op("Add", [x, down], f"{p}.resid_mlp")


def build_gqa_graph(model, max_capacity: int = MAX_CAPACITY):
    """The ModelProto for `model` (a LlamaForCausalLM in eval mode, float32)."""
    from onnx import TensorProto, helper

    from midiforge.lm.export import past_names, present_names

    check_supported(model)
    cfg = model.config
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_layers = cfg.num_hidden_layers
    pasts, presents = past_names(n_layers), present_names(n_layers)
    lm_head = model.get_output_embeddings().weight.detach().float().numpy()
    g = _Graph()
    capacity = min(int(cfg.max_position_embeddings), max_capacity)
    cos, sin = _rotary_tables(model, capacity)
    g.weight("cos_cache", cos)
    g.weight("sin_cache", sin)
    _lengths(g)
    embed = model.get_input_embeddings().weight.detach().float().numpy()
    x = g.op("Gather", [g.weight("embed_tokens", embed), "input_ids"], "embedded", axis=0)
    for i, layer in enumerate(model.model.layers):
        cache = (*pasts[2 * i : 2 * i + 2], *presents[2 * i : 2 * i + 2])
        x = _decoder_layer(g, x, i, layer, cfg, cache=cache)
    h = _rms_norm(g, x, model.model.norm.weight, float(cfg.rms_norm_eps), "final_norm")
    g.op("MatMul", [h, g.weight("lm_head", lm_head.T)], "logits")

    def tensor(name, dims):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        *(tensor(n, ["batch", kv_heads, CAPACITY_AXIS, head_dim]) for n in pasts),
    ]
    outputs = [
        tensor("logits", ["batch", "seq", lm_head.shape[0]]),
        *(tensor(n, ["batch", kv_heads, CAPACITY_AXIS, head_dim]) for n in presents),
    ]
    graph = helper.make_graph(g.nodes, "midiforge_lm_gqa", inputs, outputs, g.inits)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    )
    helper.set_model_props(proto, {CACHE_KIND: SHARED, CACHE_CAPACITY: str(capacity)})
    return proto


def write_gqa_onnx(model, out_path: str | Path, ir_version: int) -> Path:
    import onnx

    proto = build_gqa_graph(model)
    proto.ir_version = ir_version
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Past 2 GB a protobuf cannot hold the weights; they go to one file beside the graph.
    large = sum(t.ByteSize() for t in proto.graph.initializer) > 1_800_000_000
    onnx.save(proto, str(out_path), save_as_external_data=large,
              location=out_path.name + ".data" if large else None)  # fmt: skip
    return out_path
