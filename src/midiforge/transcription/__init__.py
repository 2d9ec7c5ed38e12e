"""basic-pitch transcription: ONNX runner (windows batched across files), note decoding."""
