"""Arrow schemas of the dataset job's outputs: the data contracts in DESIGN.md."""

import pyarrow as pa

# What validation measures about a piece; carried by work rows and dataset rows alike.
STATS = [
    pa.field("key", pa.string()),
    pa.field("bpm", pa.float32()),
    pa.field("time_signature", pa.string()),
    pa.field("n_notes", pa.int32()),
    pa.field("pitch_min", pa.int16()),
    pa.field("pitch_max", pa.int16()),
    pa.field("out_of_key_ratio", pa.float32()),
    pa.field("max_polyphony", pa.int16()),
]

# One row per (piece, augmentation): what the training jobs read.
DATASET = pa.schema(
    [
        ("piece_id", pa.string()),
        ("source_uri", pa.string()),
        ("tier", pa.int8()),
        ("style", pa.string()),
        ("split", pa.string()),
        *STATS,
        ("augmentation", pa.string()),  # JSON: transpose, tempo_scale, velocity_delta, octave
        ("midi", pa.binary()),
        ("tokens", pa.list_(pa.int32())),
        ("models", pa.string()),  # JSON: separator / transcriber names and versions
    ]
)

REJECTS = pa.schema(
    [
        ("source_uri", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

# Per-input results kept under OUT/_work/ so a re-run resumes where the last one stopped.
WORK = pa.schema(
    [
        ("piece_id", pa.string()),
        ("source_uri", pa.string()),
        ("source_stamp", pa.string()),  # size:mtime_ns when listed (Input.stamp)
        ("kind", pa.string()),
        ("tier", pa.int8()),
        ("style", pa.string()),
        ("status", pa.string()),  # ok | rejected
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        *STATS,
        ("midi", pa.binary()),
        ("tokens", pa.list_(pa.int32())),
        ("models", pa.string()),
        ("audio_seconds", pa.float32()),
        ("ref_precision", pa.float32()),  # NaN where no reference MIDI was given
        ("ref_recall", pa.float32()),
        ("ref_f1", pa.float32()),
        ("ref_f1_offset", pa.float32()),
    ]
)
