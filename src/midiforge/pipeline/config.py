"""The dataset job's config. Compute sizing lives here (and in YAML), never in stage code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from midiforge.audio import AudioLimits
from midiforge.symbolic.augment import AugmentConfig
from midiforge.symbolic.tokenize import TokenizerSettings
from midiforge.symbolic.validate import ValidateConfig
from midiforge.transcription.notes import NoteDecoding


@dataclass
class StageCompute:
    """How one map_batches call is sized: rows per batch, actors (model stages), resources."""

    batch_size: int | None = 4  # None: whole blocks as they come
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int = 1  # class stages (models, augmentation): a fixed-size actor pool
    max_actors: int = 0  # >actors turns on autoscaling of the pool up to this size
    # Function stages: tasks at once; 0 = one per CPU the cluster has at the start (at
    # least 2). Uncapped, Ray Data runs 1/num_cpus tasks per CPU, each in its own worker
    # process, and on 2 cores starting those cost ~10 s of a 45 s run. Decoding takes ~10
    # ms per file, so even 2 tasks outpace the model stages.
    max_tasks: int = 0
    threads: int = 0  # model stages: torch/onnxruntime threads; 0 = num_cpus (at least 1)

    @property
    def pool_size(self) -> int:
        """The most actors a class stage runs at once."""
        return max(self.actors, self.max_actors)


@dataclass
class Compute:
    """Defaults fit a 2-core machine. Actors hold their CPUs for the whole run, so the
    actors' fractions must leave room for the task stage (decode), or nothing
    moves. Two single-threaded sessions: on onnxruntime's CPU provider they beat one
    two-threaded session on 2 cores (90 vs 61 audio-s per s, 2026-11-21); on OpenVINO
    the two are even (~40 ms per window each vs ~21 ms, 2026-12-02), and two actors
    keep post-processing off the model's path. On a bigger node raise
    transcribe.actors, on a GPU node set transcribe.num_gpus (e.g. 0.25 per actor)."""

    decode: StageCompute = field(default_factory=lambda: StageCompute(batch_size=2, num_cpus=0.2))
    separate: StageCompute = field(
        default_factory=lambda: StageCompute(batch_size=1, num_cpus=0.3, threads=1)
    )
    transcribe: StageCompute = field(
        default_factory=lambda: StageCompute(batch_size=8, num_cpus=0.6, actors=2, threads=1)
    )
    postprocess: StageCompute = field(
        default_factory=lambda: StageCompute(batch_size=4, num_cpus=0.3)
    )
    augment: StageCompute = field(default_factory=lambda: StageCompute(batch_size=4))
    # With no GPU for transcription, post-processing runs inside the transcription actors,
    # and so does decoding when nothing is separated: Ray Data fuses a task stage into the
    # actor stage after it when their resources match, so decoding gets the actors'
    # resources (with separation, decoding feeds the Demucs actors instead). On 2
    # cores every extra worker process costs ~1.5 CPU-s of imports (ray.data, pandas) at
    # start, while all of these processes start at once, and the model outputs (~150 kB
    # per audio-second) need no object-store trip.
    fuse_cpu_stages: bool = True
    # Per-input stages start once each actor pool's `actors` are up; after this long
    # the job stops with an error naming the sizes asked for and the cluster's (an
    # autoscaling cluster may need minutes to add nodes). <= 0: start with whichever
    # actor is up first, and wait for the others indefinitely.
    wait_for_actors_s: int = 600


# What a work row (OUT/_work) is made from: a re-run reuses rows only under the same
# values. Seed, split, augmentation and sizing act in the final phase, which every run
# redoes, so they may change between runs; device and batching change outputs by float
# rounding only.
WORK_FIELDS = (
    "style", "style_from_folder", "tier_midi", "separator", "stem", "transcriber",
    "reference_midi", "segment_s", "limits", "max_input_bytes", "notes", "validate",
    "tokenizer",
)  # fmt: skip


@dataclass
class DatasetConfig:
    audio: list[str] = field(default_factory=list)  # files or folders, local or any URI
    midi: list[str] = field(default_factory=list)
    out: str = "out/dataset"
    style: str | None = None  # one style for every input...
    style_from_folder: bool = False  # ...or each file's parent folder name
    tier_midi: int = 3  # MIDI inputs: 1 gold, 3 bulk/synthetic (audio is always tier 2)
    separator: str = "none"  # none | htdemucs (any Demucs name) | DIR:NAME
    stem: str = "other"
    transcriber: str = "stock"  # registry name
    models_root: str | None = None  # registry root; default $MIDIFORGE_MODELS
    reference_midi: list[str] = field(default_factory=list)  # matched to audio by file stem
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    augment_splits: list[str] = field(default_factory=lambda: ["train"])
    # Model stages: auto | cpu | cuda | openvino (transcription.sessions). Demucs (torch)
    # runs on CUDA for auto/cuda when the actor has a GPU, else on the CPU.
    device: str = "auto"
    batch_windows: int = 16  # basic-pitch windows per onnxruntime call (OpenVINO: 1)
    segment_s: float | None = None  # Demucs segment length; None = the model's own
    limits: AudioLimits = field(default_factory=AudioLimits)
    # Inputs are read whole into a worker's memory: a larger file is rejected (too_large)
    # from its size, before a byte is read. 2 GiB passes 20 minutes (limits.max_seconds)
    # of 6-channel 48 kHz 24-bit WAV (~1.0 GB); lower it where workers have less memory.
    max_input_bytes: int = 2 * 1024**3
    notes: NoteDecoding = field(default_factory=NoteDecoding)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    compute: Compute = field(default_factory=Compute)

    def work_settings(self) -> dict[str, Any]:
        """The settings a work row is made under (WORK_FIELDS), as plain data."""
        from midiforge.config import to_dict

        d = to_dict(self)
        return {k: d[k] for k in WORK_FIELDS}

    def validate_config(self) -> None:
        from midiforge.config import ConfigError

        if not self.audio and not self.midi:
            raise ConfigError("give audio inputs (--audio), MIDI inputs (--midi), or both")
        from midiforge.transcription.sessions import DEVICES

        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if self.tier_midi not in (1, 3):
            raise ConfigError(f"tier_midi must be 1 (gold) or 3 (bulk), not {self.tier_midi}")
        if self.style and self.style_from_folder:
            raise ConfigError("--style and --style-from-folder exclude each other")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) < 0:
            raise ConfigError(
                f"split must be three non-negative fractions summing to 1: {self.split}"
            )
        lo, hi = self.tokenizer.pitch_range  # MidiTok's: inclusive at both ends
        a_lo, a_hi = self.augment.pitch_range  # exclusive at the top
        if a_lo < lo or a_hi > hi + 1:
            # Copies planned there would be rejects of the tokenizer, dropped after the work
            raise ConfigError(
                f"augment.pitch_range {list(self.augment.pitch_range)} reaches outside "
                f"tokenizer.pitch_range {list(self.tokenizer.pitch_range)} (pitches "
                f"{lo}-{hi}); set both"
            )
        if self.seed < 0:  # numpy's seeding takes non-negative integers only
            raise ConfigError(f"seed must be >= 0, not {self.seed}")
        if self.max_input_bytes <= 0:
            raise ConfigError(f"max_input_bytes must be positive, not {self.max_input_bytes}")
        bad = set(self.augment_splits) - {"train", "val", "test"}
        if bad:
            raise ConfigError(f"augment_splits may name train, val, test; not {sorted(bad)}")
