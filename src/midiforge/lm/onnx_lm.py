"""Run an LM exported by lm.export with onnxruntime, one token per call through its KV cache.

Everything the runtime needs (layers, kv heads, head dim, vocabulary, how the cache is
held) is read from the graph's own inputs, outputs and metadata, so an INT8 copy works
without its export.json. Sequences are unpadded and run one at a time (batch 1): the graph
has no attention mask.

Two cache layouts. A traced graph takes the past and returns a grown copy (numpy arrays
here). A fused graph (lm.export_gqa) keeps one fixed-capacity buffer per layer that it
writes in place; the buffers are OrtValues bound as both input and output, and a KVCache
is those buffers plus how many positions are filled. Continuing from a shorter KVCache of
the same buffers rewinds: the new tokens overwrite what followed, so only the latest
continuation of a buffer stays valid. empty_cache() starts a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midiforge.errors import MidiforgeError
from midiforge.lm.export import past_names, present_names
from midiforge.lm.export_gqa import CACHE_CAPACITY, CACHE_KIND, SHARED
from midiforge.transcription.sessions import providers_for


@dataclass(frozen=True)
class KVCache:
    """The present tensors of the last call (or, for a fused graph, the buffers it wrote),
    in past_key_values.* input order, and how many positions they cover (the next token's
    position id)."""

    arrays: tuple
    length: int
    # Fused graphs: the io binding of these buffers (_CacheBinding), made on first use and
    # shared by every KVCache of the same buffers.
    binding: Any = field(default=None, compare=False, repr=False)


class _CacheBinding:
    """An io binding with one cache's buffers bound once (as past and present) and a
    one-position logits buffer: a decoding step rebinds only its token and position,
    instead of all 2 x layers buffers and a fresh logits output."""

    def __init__(self, lm: OnnxCausalLM, buffers: tuple) -> None:
        self.session = lm.session
        self.io = lm.session.io_binding()
        for past, present, buf in zip(lm.past_names, lm.present_names, buffers, strict=True):
            self.io.bind_ortvalue_input(past, buf)
            self.io.bind_ortvalue_output(present, buf)
        self.step_logits = np.zeros((1, 1, lm.vocab_size), np.float32)
        self.step_bound = False

    def run(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        self.io.bind_cpu_input("input_ids", ids)
        self.io.bind_cpu_input("position_ids", positions)
        step = ids.shape[1] == 1
        if step and not self.step_bound:
            buf = self.step_logits
            self.io.bind_output("logits", "cpu", 0, np.float32, buf.shape, buf.ctypes.data)
        elif not step:
            self.io.bind_output("logits")  # onnxruntime allocates (n positions)
        self.step_bound = step
        self.session.run_with_iobinding(self.io)
        if step:
            return self.step_logits.copy()  # the buffer is rewritten by the next step
        return self.io.get_outputs()[-1].numpy()  # outputs come back in binding order


class OnnxCausalLM:
    """One onnxruntime session over an exported causal LM."""

    def __init__(
        self,
        onnx_path: str | Path,
        device: str = "cpu",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # 0 lets onnxruntime use every core it is given; a Ray actor or a benchmark sets less.
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers_for(device))
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        n_layers = sum(name.startswith("past_key_values.") for name in inputs) // 2
        self.past_names = past_names(n_layers)
        self.present_names = present_names(n_layers)
        expected_in = {"input_ids", "position_ids", *self.past_names}
        expected_out = {"logits", *self.present_names}
        if n_layers == 0 or set(inputs) != expected_in or set(outputs) != expected_out:
            raise MidiforgeError(
                f"{self.path} is not a midiforge LM export: inputs {sorted(inputs)}, "
                f"outputs {sorted(outputs)}"
            )
        _, kv_heads, _, head_dim = inputs[self.past_names[0]].shape
        vocab = outputs["logits"].shape[-1]
        if not all(isinstance(d, int) for d in (kv_heads, head_dim, vocab)):
            raise MidiforgeError(f"{self.path}: kv heads, head dim and vocab must be fixed sizes")
        self.num_layers, self.kv_heads, self.head_dim = n_layers, kv_heads, head_dim
        self.vocab_size = vocab
        self._outputs = ["logits", *self.present_names]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.shared_cache = meta.get(CACHE_KIND) == SHARED
        # Positions a shared buffer holds; a grown cache is bounded by the model alone.
        self.capacity = int(meta[CACHE_CAPACITY]) if self.shared_cache else None

    def empty_cache(self) -> KVCache:
        if self.shared_cache:
            from onnxruntime import OrtValue

            # Zeroed, though attention never reads past the filled length: stale memory in
            # an unread slot could still hold NaN bit patterns, and zeros cost nothing
            # (calloc'd pages). The OrtValue wraps the array and keeps it alive.
            shape = (1, self.kv_heads, self.capacity, self.head_dim)
            buffers = (
                OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in self.past_names
            )
            return KVCache(tuple(buffers), 0)
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
        return KVCache(tuple(empty for _ in self.past_names), 0)

    def forward(self, ids: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """ids (1, n) int64 following the cache -> logits (1, n, vocab) and the cache after
        them."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
            raise ValueError(f"ids must have shape (1, n) with n >= 1, got {ids.shape}")
        n = ids.shape[1]
        positions = np.arange(cache.length, cache.length + n, dtype=np.int64)[None]
        if self.shared_cache:
            return self._forward_in_place(ids, positions, cache)
        feed = {
            "input_ids": ids,
            "position_ids": positions,
            **dict(zip(self.past_names, cache.arrays, strict=True)),
        }
        logits, *present = self.session.run(self._outputs, feed)
        return logits, KVCache(tuple(present), cache.length + n)

    def _forward_in_place(self, ids, positions, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        end = cache.length + ids.shape[1]
        if end > self.capacity:
            raise MidiforgeError(f"{self.path}: {end} positions exceed the cache's {self.capacity}")
        # A binding per cache (per generation): one session may serve several at once.
        binding = cache.binding or _CacheBinding(self, cache.arrays)
        logits = binding.run(ids, positions)
        return logits, KVCache(cache.arrays, end, binding)

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, KVCache]:
        """A prompt (1, n) -> the last position's logits (vocab,) and the cache after it."""
        logits, cache = self.forward(ids, self.empty_cache())
        return logits[0, -1], cache

    def step(self, token_id: int, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """One token after `cache` -> its logits (vocab,) and the cache including it."""
        logits, cache = self.forward(np.array([[token_id]], dtype=np.int64), cache)
        return logits[0, -1], cache

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Every position's logits (1, n, vocab) in one pass from an empty cache."""
        return self.forward(ids, self.empty_cache())[0]
