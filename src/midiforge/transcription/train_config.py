"""Configs for fine-tuning a basic-pitch-shaped transcriber (`midiforge train run`).

Saved as `transcriber_config.yaml` next to every trained model, so a model says how it
was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from midiforge.config import ConfigError
from midiforge.raytrain import Resources
from midiforge.transcription.calibrate import Calibration
from midiforge.transcription.torch_model import HEADS


@dataclass
class Loss:
    """basic-pitch's losses: BCE on all three outputs with label smoothing; for onsets the
    class-balanced BCE (mean over positive cells and mean over negative cells, weighted),
    because an onset is one frame in a hundred."""

    label_smoothing: float = 0.2
    # Share of the onset loss that the positive cells carry (0.5 = both classes count the
    # same). 0.05 because 0.5 taught the fiddle model to fire onsets inside held notes:
    # validation onset-F1 fell 0.86 -> 0.58 while its loss improved; at 0.05 it rose.
    onset_positive_weight: float = 0.05
    contour: float = 1.0
    note: float = 1.0
    onset: float = 1.0


@dataclass
class Augment:
    """Applied per window at training time, never to validation."""

    gain_db: float = 6.0  # uniform in +-gain_db (the log-normalized CQT nearly cancels it,
    # but the model must not rely on that)
    noise_prob: float = 0.5
    noise_snr_db: tuple[float, float] = (15.0, 45.0)
    shift_frames: int = 8  # roll audio by k*256 samples and targets by k frames, |k| <= this

    def validate_config(self) -> None:
        lo, hi = self.noise_snr_db
        if self.gain_db < 0 or not 0 <= self.noise_prob <= 1 or self.shift_frames < 0 or lo > hi:
            raise ConfigError(
                "augment: gain_db >= 0, 0 <= noise_prob <= 1, shift_frames >= 0 and "
                f"noise_snr_db as (low, high); got {self.gain_db}, {self.noise_prob}, "
                f"{self.shift_frames}, {self.noise_snr_db}"
            )


@dataclass
class TrainSchedule:
    epochs: int = 50
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_every: int = 0  # steps between validations; 0 = once per epoch
    patience: int = 5  # validations without improvement before stopping; 0 = never
    max_minutes: float = 0.0  # wall-clock budget for the loop; 0 = none
    max_steps: int = 0  # 0 = epochs decide

    def validate_config(self) -> None:
        from midiforge.raytrain import check_schedule

        check_schedule(self, min_eval_every=0)


@dataclass
class TrainRunConfig:
    dataset: str = ""  # a `midiforge train prepare` output folder
    output: str = ""  # registry name of the trained model
    base_model: str = "stock"  # stock | registry name | folder or weights.pt path
    trainable: list[str] = field(default_factory=lambda: list(HEADS))
    val_fraction: float = 0.15  # of pieces, never of windows
    val_pieces: list[str] = field(default_factory=list)  # explicit validation pieces
    schedule: TrainSchedule = field(default_factory=TrainSchedule)
    loss: Loss = field(default_factory=Loss)
    augment: Augment = field(default_factory=Augment)
    calibrate: Calibration = field(default_factory=Calibration)  # decoding thresholds
    resources: Resources = field(default_factory=lambda: Resources(threads=2))
    storage: str = "out/transcription/runs"  # Ray Train checkpoints
    models_root: str | None = None
    style: str | None = None  # recorded in the registry entry
    seed: int = 0

    def validate_config(self) -> None:
        unknown = [h for h in self.trainable if h not in HEADS]
        if unknown or not self.trainable:
            raise ConfigError(
                f"trainable {unknown or self.trainable}: choose from {', '.join(HEADS)}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val_fraction must be between 0 and 1")
        if self.output:
            from midiforge.registry import validate_new_name

            validate_new_name(self.output)
        if not 0.0 < self.loss.onset_positive_weight < 1.0:
            raise ConfigError("loss.onset_positive_weight must be between 0 and 1")
        self.calibrate.validate_config()
