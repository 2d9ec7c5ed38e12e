"""Genre generation: a MIDI transformer, LoRA fine-tuning, ONNX export, generation, evaluation."""
