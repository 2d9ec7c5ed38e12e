"""ONNX export of the LM: logits and KV-cache parity with torch, greedy decoding identical to
transformers' own, INT8 quantization close to fp32. Tiny random models, CPU only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from midiforge.errors import MidiforgeError
from midiforge.lm.export import (
    TRACE_PAST,
    TRACE_SEQ,
    export_onnx,
    past_names,
    present_names,
    quantize_int8,
)
from midiforge.lm.onnx_lm import OnnxCausalLM

VOCAB = 300
# Lengths the export does not trace with, so a frozen mask or shape would show.
PROMPT, PREFILL, STEPS = 7, 5, 10
assert TRACE_SEQ not in (PROMPT, PREFILL) and TRACE_PAST not in (PROMPT, PREFILL)
# At the default 0.02, random weights give flat logits and greedy decoding locks onto one
# token after a few steps (3 distinct tokens in 64 for GPT-2); at 0.3 it keeps moving (44
# and 26 distinct) while the closest top-2 gap stays ~4e-4, far above fp32 export noise.
SPREAD_INIT = 0.3


def llama(hidden: int = 64, intermediate: int = 128, init: float = SPREAD_INIT):
    # 4 query heads over 2 kv heads: grouped-query attention. Head dim 16, the smallest
    # onnxruntime's GroupQueryAttention kernel takes.
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=init,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=512,
        initializer_range=SPREAD_INIT,
        # GPT-2's defaults (50256) lie outside this vocabulary.
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Models this small run fastest on one thread, and far more steadily on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def onnx_lm(path) -> OnnxCausalLM:
    return OnnxCausalLM(path, intra_op_threads=1)


# (family, graph): Llama both fused (what "auto" picks for it) and traced; GPT-2 traced.
EXPORTS = {
    "llama-fused": (llama, "auto"),
    "llama-traced": (llama, "traced"),
    "gpt2": (gpt2, "auto"),
}


@pytest.fixture(scope="module", params=sorted(EXPORTS))
def exported(request, tmp_path_factory):
    """(torch model, fp32 ONNX path) for each supported family and graph builder."""
    make, graph = EXPORTS[request.param]
    model = make()
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder / "hf")
    return model, export_onnx(folder / "hf", folder / "model.onnx", graph=graph)


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)).logits.numpy()


def prompt(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (1, n), dtype=np.int64)


def test_io_names_and_export_json(exported):
    model, path = exported
    info = json.loads((path.parent / "export.json").read_text())
    n = model.config.num_hidden_layers
    assert info["inputs"] == ["input_ids", "position_ids", *past_names(n)]
    assert info["outputs"] == ["logits", *present_names(n)]
    assert info["num_layers"] == n
    assert info["vocab_size"] == VOCAB
    assert info["opset"] == 17
    want_graph = "gqa" if path.parent.name.startswith("llama-fused") else "traced"
    assert info["graph"] == want_graph
    heads = getattr(model.config, "num_key_value_heads", model.config.num_attention_heads)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert (info["kv_heads"], info["head_dim"]) == (heads, head_dim)
    lm = onnx_lm(path)
    assert (lm.num_layers, lm.kv_heads, lm.head_dim, lm.vocab_size) == (n, heads, head_dim, VOCAB)


def test_full_forward_matches_torch(exported):
    model, path = exported
    ids = prompt(PROMPT)
    got = onnx_lm(path).logits(ids)
    assert got.shape == (1, PROMPT, VOCAB)
    np.testing.assert_allclose(got, torch_logits(model, ids), rtol=0, atol=1e-4)


def test_cached_steps_match_torch_full_sequence(exported):
    model, path = exported
    ids = prompt(PREFILL + STEPS, seed=1)
    want = torch_logits(model, ids)[0]
    lm = onnx_lm(path)
    last, cache = lm.prefill(ids[:, :PREFILL])
    got = [last]
    for k in range(PREFILL, PREFILL + STEPS):
        last, cache = lm.step(int(ids[0, k]), cache)
        got.append(last)
    # Checked after the loop: no step's logits are overwritten by a later step.
    np.testing.assert_allclose(np.stack(got), want[PREFILL - 1 :], rtol=0, atol=1e-4)
    assert cache.length == PREFILL + STEPS
    if lm.shared_cache:  # fused graph: fixed buffers, filled in place
        assert cache.arrays[0].shape() == [1, lm.kv_heads, lm.capacity, lm.head_dim]
    else:
        assert cache.arrays[0].shape == (1, lm.kv_heads, PREFILL + STEPS, lm.head_dim)


def test_two_generations_interleaved_on_one_session(exported):
    """Each cache keeps its own buffers (and, fused, its own binding): steps of two
    sequences taken in turn give each sequence's own logits."""
    model, path = exported
    a, b = prompt(PREFILL + STEPS, seed=2), prompt(PREFILL + STEPS, seed=3)
    want_a, want_b = torch_logits(model, a)[0], torch_logits(model, b)[0]
    lm = onnx_lm(path)
    _, ca = lm.prefill(a[:, :PREFILL])
    _, cb = lm.prefill(b[:, :PREFILL])
    for k in range(PREFILL, PREFILL + STEPS):
        la, ca = lm.step(int(a[0, k]), ca)
        lb, cb = lm.step(int(b[0, k]), cb)
        np.testing.assert_allclose(la, want_a[k], rtol=0, atol=1e-4)
        np.testing.assert_allclose(lb, want_b[k], rtol=0, atol=1e-4)


def test_continuing_from_an_earlier_cache_rewinds(exported):
    """A cache kept from before the last steps continues as if they never happened (for the
    fused graph, by overwriting them in its buffers)."""
    model, path = exported
    ids = prompt(PREFILL + 3, seed=4)
    lm = onnx_lm(path)
    _, early = lm.prefill(ids[:, :PREFILL])
    _, late = lm.forward(ids[:, PREFILL:], early)
    assert (early.length, late.length) == (PREFILL, PREFILL + 3)
    other = (int(ids[0, PREFILL]) + 1) % VOCAB
    got, _ = lm.step(other, early)
    want = torch_logits(model, np.concatenate([ids[:, :PREFILL], [[other]]], axis=1))[0, -1]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_fused_graph_caps_its_cache_at_max_capacity(tmp_path):
    from midiforge.lm.export_gqa import MAX_CAPACITY

    model = llama()
    model.config.max_position_embeddings = 131072  # a hub Llama's
    model.save_pretrained(tmp_path / "hf")
    lm = onnx_lm(export_onnx(tmp_path / "hf", tmp_path / "model.onnx"))
    assert lm.capacity == MAX_CAPACITY == 4096
    assert lm.empty_cache().arrays[0].shape() == [1, lm.kv_heads, 4096, lm.head_dim]


def test_fused_graph_refuses_to_run_past_its_capacity(tmp_path):
    model = llama()
    model.config.max_position_embeddings = 16
    model.save_pretrained(tmp_path / "hf")
    lm = onnx_lm(export_onnx(tmp_path / "hf", tmp_path / "model.onnx"))
    assert (lm.shared_cache, lm.capacity) == (True, 16)
    _, cache = lm.prefill(prompt(15))
    _, cache = lm.step(1, cache)  # the 16th position fits
    with pytest.raises(MidiforgeError, match="17 positions exceed the cache's 16"):
        lm.step(2, cache)


def onnx_greedy(lm: OnnxCausalLM, ids: np.ndarray, n: int) -> list[int]:
    logits, cache = lm.prefill(ids)
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits, cache = lm.step(out[-1], cache)
    return out


def test_greedy_decoding_matches_transformers_generate(exported):
    model, path = exported
    ids = prompt(PROMPT, seed=2)
    with torch.no_grad():
        ref = model.generate(
            torch.from_numpy(ids),
            attention_mask=torch.ones_like(torch.from_numpy(ids)),
            do_sample=False,
            max_new_tokens=64,
            min_new_tokens=64,  # with min_new_tokens, an eos id cannot end it early
            use_cache=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    ref_tokens = ref[0, PROMPT:].tolist()
    assert len(ref_tokens) == 64
    assert len(set(ref_tokens)) >= 16  # a sequence that moves, not one token repeated
    assert onnx_greedy(onnx_lm(path), ids, 64) == ref_tokens


def test_int8_is_smaller_and_close_to_fp32(tmp_path):
    # Wider than the parity models so the projections, not the embeddings, hold most weights.
    model = llama(hidden=64, intermediate=256, init=0.02)
    model.save_pretrained(tmp_path / "hf")
    fp32 = export_onnx(tmp_path / "hf", tmp_path / "model.onnx")
    int8 = quantize_int8(fp32, tmp_path / "model.int8.onnx")
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size  # measured 0.39 (fused graph)
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}

    ids = prompt(200, seed=3)
    ref, lm8 = onnx_lm(fp32).logits(ids)[0], onnx_lm(int8)
    got = lm8.logits(ids)[0]
    # Teacher-forced top-1 agreement measured 0.975 (0.92-0.975 across the sizes and init
    # scales tried); a random model's logits are nearly flat, so near-ties flip under INT8
    # noise far more than a trained model's would. 0.85 leaves margin without hiding a
    # broken quantization, which lands near chance (1/300).
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.85
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99  # measured 0.9998
    # The quantized graph keeps the cache interface, in-place buffers included.
    assert (lm8.shared_cache, lm8.capacity) == (True, 512)
    assert len(onnx_greedy(lm8, ids[:, :PREFILL], 8)) == 8


def test_int8_in_another_folder_gets_its_own_export_json(exported, tmp_path):
    _, path = exported
    int8 = quantize_int8(path, tmp_path / "q" / "lm.int8.onnx")
    info = json.loads((tmp_path / "q" / "export.json").read_text())
    assert info["files"] == {"int8": "lm.int8.onnx"}
    assert info["quantized_from"] == str(path.resolve())
    assert "int8" not in json.loads((path.parent / "export.json").read_text())["files"]
    assert onnx_lm(int8).logits(prompt(3)).shape == (1, 3, VOCAB)


def test_unsupported_family_is_refused(tmp_path):
    transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32).save_pretrained(tmp_path)
    with pytest.raises(MidiforgeError, match="supports model types llama, gpt2, not 'mistral'"):
        export_onnx(tmp_path, tmp_path / "model.onnx")


def test_fused_graph_is_a_fraction_of_the_traced_one(tmp_path):
    import onnx

    llama().save_pretrained(tmp_path / "hf")
    sizes = {}
    for graph in ("gqa", "traced"):
        path = export_onnx(tmp_path / "hf", tmp_path / graph / "model.onnx", graph=graph)
        nodes = onnx.load(str(path)).graph.node
        sizes[graph] = len(nodes)
        if graph == "gqa":
            assert sum(n.op_type == "GroupQueryAttention" for n in nodes) == 2  # one per layer
    # 2 layers: 35 nodes fused, 542 traced (onnxruntime's own optimizer halves that at load)
    assert sizes["gqa"] * 3 < sizes["traced"]


def test_fused_graph_is_refused_for_what_it_does_not_build(tmp_path):
    from midiforge.lm.export_gqa import GqaUnsupportedError

    gpt2().save_pretrained(tmp_path / "hf")
    with pytest.raises(GqaUnsupportedError, match="model type 'gpt2'"):
        export_onnx(tmp_path / "hf", tmp_path / "model.onnx", graph="gqa")
    narrow = llama(hidden=32)  # head dim 8
    narrow.save_pretrained(tmp_path / "narrow")
    with pytest.raises(GqaUnsupportedError, match="head dim 8"):
        export_onnx(tmp_path / "narrow", tmp_path / "model.onnx", graph="gqa")
    # "auto" falls back to tracing, which handles any head dim.
    path = export_onnx(tmp_path / "narrow", tmp_path / "auto" / "model.onnx")
    info = json.loads((path.parent / "export.json").read_text())
    assert info["graph"] == "traced"


def test_not_a_model_folder_is_refused(tmp_path):
    with pytest.raises(MidiforgeError, match=r"no config\.json"):
        export_onnx(tmp_path, tmp_path / "model.onnx")


def test_other_graphs_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10
    onnx.save(proto, tmp_path / "other.onnx")
    with pytest.raises(MidiforgeError, match="not a midiforge LM export"):
        OnnxCausalLM(tmp_path / "other.onnx")
