"""Latency of a 16-bar generation, three ways, one run, same model, same grammar:

1. torch:       transformers `generate()` with use_cache=False (every step re-reads the
                whole sequence), the grammar applied as a LogitsProcessor;
2. onnx-fp32:   midiforge's generator on onnxruntime with the KV cache;
3. onnx-int8:   the same with the INT8 (dynamic) model;
4. (Llama models) the INT8 model of the traced graph (`lm export --graph traced`),
   exported here into a temporary folder: what the fused GroupQueryAttention graph
   that `lm export` writes by default gains over tracing transformers' forward.

Targets on 2 cores: onnx + KV cache >= 5x faster than uncached torch, and a 16-bar melody
in < 0.5 s with the `small` preset.

    .venv/bin/python bench/generate.py --model lm-fiddle [--models-root DIR] [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def torch_generate(gen, req) -> tuple[float, int]:
    """(seconds, generated tokens) for transformers' generate() without a cache."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria

    from midiforge.lm.grammar import nearest_tempo_token

    grammar = gen.grammar
    start = grammar.start(
        req.bars,
        time_signature=req.time_signature,
        tempo_token=nearest_tempo_token(gen.tokenizer, req.bpm),
        programs=req.programs or gen.vocab.programs.get(req.style),
    )
    state = {"s": start, "n0": None}

    class Grammar(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if state["n0"] is None:
                state["n0"] = input_ids.shape[1]
            elif input_ids.shape[1] > state["n0"]:
                state["s"] = grammar.advance(state["s"], int(input_ids[0, -1]))
                state["n0"] = input_ids.shape[1]
            mask = torch.from_numpy(grammar.mask(state["s"]))
            return scores.masked_fill(~mask[: scores.shape[-1]], float("-inf"))

    class Done(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            s = state["s"]
            if input_ids.shape[1] > (state["n0"] or 0):
                s = grammar.advance(s, int(input_ids[0, -1]))
            return torch.tensor([grammar.finished(s)])

    prefix = torch.tensor([gen.vocab.prefix(req.style, req.key)])
    torch.manual_seed(req.seed)
    t0 = time.perf_counter()
    out = gen.torch_model.generate(
        prefix, do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=0,
        max_new_tokens=4096, use_cache=False, logits_processor=LogitsProcessorList([Grammar()]),
        stopping_criteria=[Done()], pad_token_id=gen.vocab.pad,
    )  # fmt: skip
    return time.perf_counter() - t0, int(out.shape[1] - prefix.shape[1])


def traced_int8(folder, tmp, name: str):
    """A generator over the traced-graph INT8 export of the same weights, built in `tmp`."""
    import shutil

    from midiforge.lm.export import export_onnx, quantize_int8
    from midiforge.lm.generate import NeuralGenerator

    for f in ("vocab.json", "tokenizer.json", "lm_config.yaml"):
        shutil.copy(folder / f, tmp / f)
    export_onnx(folder / "hf", tmp / "model.onnx", graph="traced")
    quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx")
    return NeuralGenerator(tmp, name, int8=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="lm-fiddle")
    ap.add_argument("--models-root")
    ap.add_argument("--style", default="fiddle")
    ap.add_argument("--bars", type=int, default=16)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--program", type=int, action="append", help="default: the style's")
    args = ap.parse_args()

    import os
    import tempfile
    from pathlib import Path

    import torch

    from midiforge import registry
    from midiforge.lm.generate import GenerateRequest, NeuralGenerator
    from midiforge.lm.model import load_hf

    torch.set_num_threads(args.torch_threads)
    folder = registry.Registry(args.models_root).fetch(args.model)
    fp32 = NeuralGenerator(folder, args.model)
    int8 = NeuralGenerator(folder, args.model, int8=True)
    fp32.torch_model = load_hf(folder / "hf").eval()
    style = fp32.style_for(args.style)
    reqs = [GenerateRequest(style=style, key="D major", bpm=120, bars=args.bars, seed=s,
                            programs=args.program) for s in range(args.runs)]  # fmt: skip
    print(f"{args.model}: {sum(p.numel() for p in fp32.torch_model.parameters()):,} parameters, "
          f"{args.bars} bars, {args.runs} runs, {os.cpu_count()} CPUs")  # fmt: skip
    rows = {}
    with torch.no_grad():
        torch_generate(fp32, reqs[0])  # warm-up
        rows["torch generate(), no cache"] = [torch_generate(fp32, r) for r in reqs]
    onnx_rows = [("onnx fp32 + KV cache", fp32), ("onnx int8 + KV cache", int8)]
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        if json.loads((folder / "export.json").read_text()).get("graph") == "gqa":
            traced = traced_int8(folder, Path(tmp), args.model)
            onnx_rows.append(("onnx int8, traced graph", traced))
        for name, gen in onnx_rows:
            gen.generate(reqs[0])  # warm-up
            rows[name] = [(res.seconds, res.n_tokens) for res in (gen.generate(r) for r in reqs)]
    med = {k: statistics.median(s for s, _ in v) for k, v in rows.items()}
    for k, v in rows.items():
        toks = np.median([n for _, n in v])
        per_tok = statistics.median(s / max(1, n) for s, n in v) * 1000
        print(f"{k:28s} median {med[k]:7.3f} s  ({toks:.0f} tokens, {per_tok:.2f} ms/token)")
    base = med["torch generate(), no cache"]
    for k in ("onnx fp32 + KV cache", "onnx int8 + KV cache"):
        print(f"{k} vs uncached torch: {base / med[k]:.1f}x faster (target >= 5)")
    if "onnx int8, traced graph" in med:
        gain = med["onnx int8, traced graph"] / med["onnx int8 + KV cache"]
        print(f"fused graph vs traced graph (int8): {gain:.2f}x faster")
    print(f"16-bar melody with onnx int8: {med['onnx int8 + KV cache']:.3f} s (target < 0.5 s)")


if __name__ == "__main__":
    main()
