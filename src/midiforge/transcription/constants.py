"""basic-pitch's framing, derived from its constants so a custom model stays compatible.

Only `basic_pitch.constants` is imported: its `models`, `nn`, `train` modules pull in
TensorFlow, which midiforge never installs.
"""

import logging

# basic_pitch/__init__ warns on the root logger that TensorFlow, TFLite and CoreML are
# missing; midiforge uses none of them, so every Ray worker would log noise.
logging.disable(logging.WARNING)
try:
    from basic_pitch.constants import (
        ANNOT_N_FRAMES,  # 172 output frames per 2 s training window
        ANNOTATIONS_FPS,  # 86 output frames per second (22050 // 256)
        AUDIO_N_SAMPLES,  # 43,844 samples (2 s - one hop) per model window
        AUDIO_SAMPLE_RATE,  # 22,050 Hz
        FFT_HOP,  # 256 samples between output frames
    )
finally:
    logging.disable(logging.NOTSET)

# basic-pitch overlaps windows by 30 output frames and drops 15 from each side of every
# window's output, so no frame comes from a window edge.
N_OVERLAP_FRAMES = 30
OVERLAP_SAMPLES = N_OVERLAP_FRAMES * FFT_HOP
HOP_SAMPLES = AUDIO_N_SAMPLES - OVERLAP_SAMPLES
FRAMES_PER_WINDOW = 172  # model output frames per window

# Output tensors of the shipped nmp.onnx; custom models are exported with the same names.
INPUT_NAME = "serving_default_input_2:0"
OUTPUT_NAMES = {
    "note": "StatefulPartitionedCall:1",
    "onset": "StatefulPartitionedCall:2",
    "contour": "StatefulPartitionedCall:0",
}

__all__ = [
    "ANNOTATIONS_FPS",
    "ANNOT_N_FRAMES",
    "AUDIO_N_SAMPLES",
    "AUDIO_SAMPLE_RATE",
    "FFT_HOP",
    "FRAMES_PER_WINDOW",
    "HOP_SAMPLES",
    "INPUT_NAME",
    "N_OVERLAP_FRAMES",
    "OUTPUT_NAMES",
    "OVERLAP_SAMPLES",
]
