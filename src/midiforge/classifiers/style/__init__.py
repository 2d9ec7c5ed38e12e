"""Audio -> style (chorale, fiddle, folk, quartet, or a user's own) with probabilities.

A small CNN on log-mel clips, trained on corpus pieces rendered with varied instruments
and soundfonts so it learns the music rather than the patch, split by piece so no piece
is heard on both sides. Modules: `data` (renders, user folders, the piece split),
`features` (the one log-mel used everywhere), `model`, `train`, `onnx_export`,
`classifier` (the torch-free ONNX loader that Serve uses), `evaluate`, `run` (the
train-export-evaluate-push sequence) and `command` (CLI flags).
"""
