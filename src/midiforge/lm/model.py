"""Build or load the causal language model (transformers), with its vocabulary beside it.

A model folder (what the registry stores for kind "lm") holds:
    hf/             the transformers model (config.json + model.safetensors)
    vocab.json      conditioning-token layout (lm.vocab.LMVocab)
    tokenizer.json  the dataset's MidiTok tokenizer
    lm_config.yaml  the config it was trained with
    metrics.json    training and validation figures
and, after `midiforge lm export`, model.onnx (+ model.int8.onnx) and export.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

from midiforge.lm.config import Architecture
from midiforge.lm.vocab import LMVocab

log = logging.getLogger(__name__)


def build(arch: Architecture, vocab: LMVocab, seed: int = 0):
    """A fresh Llama-style decoder sized by `arch` for `vocab`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=arch.max_positions,
        attention_dropout=arch.dropout,
        bos_token_id=vocab.bos,
        eos_token_id=vocab.eos,
        pad_token_id=vocab.pad,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_hf(folder: str | Path, vocab_size: int | None = None):
    """Any local Hugging Face causal-LM folder; the embedding is resized to our vocabulary
    when a user's checkpoint was trained on another one (new rows are learned in training)."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    if vocab_size and model.get_input_embeddings().num_embeddings != vocab_size:
        log.warning(
            "resizing %s's embeddings %d -> %d to fit midiforge's vocabulary",
            folder,
            model.get_input_embeddings().num_embeddings,
            vocab_size,
        )
        model.resize_token_embeddings(vocab_size)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
