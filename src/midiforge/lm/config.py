"""Configs of the MIDI language model: architecture presets, pretraining, LoRA fine-tuning.

Every trained model folder holds its resolved config (lm_config.yaml), so a run can be
repeated from the folder alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from midiforge.config import ConfigError
from midiforge.raytrain import Resources


@dataclass
class Architecture:
    """A Llama-style decoder built from a transformers LlamaConfig (no download)."""

    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 1024
    dropout: float = 0.1

    def validate_config(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError("hidden_size must divide by num_heads, num_heads by num_kv_heads")


@dataclass
class Schedule:
    """Optimisation; a run stops at max_steps, at max_minutes, or after `epochs`."""

    epochs: int = 1
    max_steps: int = 0  # 0 = no step limit
    max_minutes: float = 0.0  # 0 = no time limit; checked between steps
    batch_size: int = 16  # windows per worker per step
    seq_len: int = 256  # tokens per training window, conditioning prefix included
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between validation + checkpoint
    patience: int = 0  # evaluations without val improvement before stopping; 0 = never

    def validate_config(self) -> None:
        from midiforge.raytrain import check_schedule

        check_schedule(self, min_eval_every=1)
        if self.seq_len < 2:
            raise ConfigError(f"schedule.seq_len must be >= 2, not {self.seq_len}")


PRESETS: dict[str, tuple[Architecture, Schedule]] = {
    # Seconds on a laptop: the tests' path through the real code.
    "debug": (
        Architecture(
            hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
            intermediate_size=64, max_positions=512, dropout=0.0,
        ),
        Schedule(epochs=1, max_steps=12, batch_size=4, seq_len=96, lr=3e-3, warmup_steps=2,
                 eval_every=6),
    ),
    # Under an hour on a 2-core CPU; small enough for < 0.5 s per 16 bars on ONNX.
    "small": (
        Architecture(),
        Schedule(epochs=50, max_minutes=40.0, batch_size=16, seq_len=256, lr=1.5e-3,
                 warmup_steps=100, eval_every=150),
    ),
    # For a GPU node.
    "base": (
        Architecture(
            hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8,
            intermediate_size=1408, max_positions=2048,
        ),
        Schedule(epochs=20, batch_size=32, seq_len=1024, lr=6e-4, warmup_steps=500,
                 eval_every=500),
    ),
}  # fmt: skip


@dataclass
class PretrainConfig:
    dataset: str = "out/lm/dataset"  # the dataset job's OUT (holding dataset/ and tokenizer.json)
    out: str = "lm-base"  # registry name of the trained model
    preset: str = "small"
    exclude_styles: list[str] = field(default_factory=lambda: ["fiddle"])
    styles: list[str] = field(default_factory=list)  # empty = every style not excluded
    init_from: str | None = None  # a local Hugging Face causal-LM folder to start from
    architecture: Architecture = field(default_factory=lambda: PRESETS["small"][0])
    schedule: Schedule = field(default_factory=lambda: PRESETS["small"][1])
    resources: Resources = field(default_factory=Resources)
    models_root: str | None = None  # registry root; default $MIDIFORGE_MODELS
    storage: str = "out/lm/runs"  # Ray Train storage: checkpoints, TensorBoard, results
    seed: int = 0

    def validate_config(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        _check_out(self.out)


def _check_out(name: str) -> None:
    """The output name is pushed after training: checked before it starts."""
    from midiforge.registry import validate_new_name

    validate_new_name(name)


def preset_defaults(preset: str | None) -> dict:
    """The preset's architecture and schedule as config defaults: a YAML file and
    --key=value overrides then change single fields of the preset, not of the code defaults."""
    from midiforge.config import to_dict

    name = preset or "small"
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r}; choose from {', '.join(PRESETS)}")
    arch, sched = PRESETS[name]
    return {"preset": name, "architecture": to_dict(arch), "schedule": to_dict(sched)}


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


def _finetune_schedule() -> Schedule:
    return Schedule(epochs=30, max_minutes=15.0, batch_size=16, seq_len=256, lr=2e-4,
                    warmup_steps=20, eval_every=50, patience=4)  # fmt: skip


@dataclass
class FinetuneConfig:
    base: str = "lm-base"  # registry name, or a local Hugging Face folder
    dataset: str = "out/lm/dataset"
    style: str = "fiddle"
    out: str = "lm-fiddle"
    lora: LoraSettings = field(default_factory=LoraSettings)
    schedule: Schedule = field(default_factory=_finetune_schedule)
    resources: Resources = field(default_factory=Resources)
    models_root: str | None = None
    storage: str = "out/lm/runs"
    seed: int = 0

    def validate_config(self) -> None:
        _check_out(self.out)
        if self.lora.rank < 1 or self.lora.alpha <= 0 or not 0 <= self.lora.dropout < 1:
            raise ConfigError("lora: rank >= 1, alpha > 0 and 0 <= dropout < 1")
