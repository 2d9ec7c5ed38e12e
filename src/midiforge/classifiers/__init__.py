"""Audio classifiers that sit beside transcription: the drum-hit filter and the style
classifier, each trained on corpus renders and served as ONNX."""
