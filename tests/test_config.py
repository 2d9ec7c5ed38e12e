from dataclasses import dataclass, field

import pytest

from midiforge import config


@dataclass
class Inner:
    rate: float = 0.5
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    steps: int = 10
    flag: bool = False
    path: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 20\ninner:\n  rate: 0.25\n")
    cfg = config.load(Outer, f, ["--inner.names=x,y", "--flag=true"], steps=30)
    assert cfg.steps == 30  # explicit flag beats the file
    assert cfg.inner.rate == 0.25  # from the file
    assert cfg.inner.names == ["x", "y"]  # override, comma list
    assert cfg.flag is True
    assert cfg.path is None


def test_unknown_keys_are_rejected_by_name(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("stpes: 20\n")
    with pytest.raises(config.ConfigError, match="stpes"):
        config.load(Outer, f)
    with pytest.raises(config.ConfigError, match=r"inner\.rat"):
        config.load(Outer, None, ["--inner.rat=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--steps=abc", "steps"),
        ("--steps=1.5", "steps"),
        ("--flag=maybe", "flag"),
        ("steps", "form"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(Outer, None, [override])


def test_save_load_round_trip(tmp_path):
    cfg = config.load(Outer, None, ["--steps=7", "--inner.names=p,q", "--path=/x"])
    config.save(cfg, tmp_path / "cfg.yaml")
    assert config.load(Outer, tmp_path / "cfg.yaml") == cfg


def test_dataset_device_is_checked_with_the_config():
    from midiforge.pipeline.config import DatasetConfig

    assert config.load(DatasetConfig, None, ["--device=openvino"], audio=["a.wav"]).device == (
        "openvino"
    )
    with pytest.raises(config.ConfigError, match="expected one of auto, cpu, cuda, openvino"):
        config.load(DatasetConfig, None, ["--device=tpu"], audio=["a.wav"])


@pytest.mark.parametrize(
    ("cls", "override", "message"),
    [
        ("lm.PretrainConfig", "--schedule.eval_every=0", "eval_every must be >= 1"),
        ("lm.PretrainConfig", "--schedule.max_minutes=-5", "max_minutes must be >= 0"),
        ("lm.PretrainConfig", "--resources.num_workers=0", "num_workers must be >= 1"),
        ("lm.PretrainConfig", "--out=stock", "reserved"),
        ("lm.FinetuneConfig", "--out=my model", "invalid model name"),
        ("lm.FinetuneConfig", "--lora.rank=0", "rank >= 1"),
        ("tx.TrainRunConfig", "--resources.num_workers=0", "num_workers must be >= 1"),
        ("tx.TrainRunConfig", "--output=a/b", "invalid model name"),
        ("tx.TrainRunConfig", "--schedule.patience=-1", "patience must be >= 0"),
        ("tx.TrainRunConfig", "--augment.shift_frames=-2", "shift_frames >= 0"),
        ("pipe.DatasetConfig", "--notes.frame_threshold=-0.1", "frame_threshold must lie"),
        ("pipe.DatasetConfig", "--notes.minimum_note_ms=inf", "minimum_note_ms must be"),
        ("pipe.DatasetConfig", "--seed=-1", "seed must be >= 0"),
        ("pipe.DatasetConfig", "--tokenizer.pitch_range=[30,100]", "reaches outside"),
        ("style.StyleConfig", "--out=my style", "invalid model name"),
        ("drums.DrumSweepConfig", "--drums.out=a/b", "invalid model name"),
    ],
)
def test_training_and_decoding_settings_are_refused_when_read(cls, override, message):
    """Values that used to fail only later (a division by zero at the first step, a push
    after the whole run, a note decoder that never finished) are refused with the config."""
    from midiforge.classifiers.drums import sweep as drums
    from midiforge.classifiers.style import run as style
    from midiforge.lm import config as lm
    from midiforge.pipeline import config as pipe
    from midiforge.transcription import train_config as tx

    module, name = cls.split(".")
    modules = {"lm": lm, "tx": tx, "pipe": pipe, "style": style, "drums": drums}
    target = getattr(modules[module], name)
    from midiforge.errors import MidiforgeError

    with pytest.raises(MidiforgeError, match=message):  # ConfigError, or RegistryError for names
        config.load(target, None, [override], **({"audio": ["a.wav"]} if module == "pipe" else {}))


def test_transcription_flags_beat_the_yaml_file(tmp_path, monkeypatch):
    """`train run --config c.yaml --epochs 2 --workers 2`: flags over the file, as the
    command's docstring says (they used to be defaults the file overrode)."""
    from midiforge.transcription import train_command

    from .conftest import config_from_command

    (tmp_path / "c.yaml").write_text("schedule: {epochs: 50, max_minutes: 60}\n")
    argv = ["--config", str(tmp_path / "c.yaml"), "--epochs", "2", "--max-minutes", "5",
            "--workers", "2", "--output", "m"]  # fmt: skip
    cfg = config_from_command(
        monkeypatch, "midiforge.transcription.train:run",
        (train_command.add_run, train_command.run_run), argv,
    )  # fmt: skip
    assert (cfg.schedule.epochs, cfg.schedule.max_minutes) == (2, 5.0)
    assert cfg.resources.num_workers == 2


def test_the_transcriber_job_passes_its_train_flags_to_the_style_recipe(monkeypatch):
    """jobs/finetune_transcriber.py --style fiddle --gpu --workers 4 --epochs 3: the flags
    reach the recipe's training (they were dropped: one CPU worker, 50 epochs)."""
    from midiforge.transcription import train_command

    from .conftest import config_from_command

    argv = ["--style", "fiddle", "--gpu", "--workers", "4", "--epochs", "3", "--output", "fx"]
    cfg = config_from_command(
        monkeypatch, "midiforge.transcription.prebuilt:build",
        (train_command.add_job, train_command.run_job), argv,
    )  # fmt: skip
    assert (cfg.train.resources.use_gpu, cfg.train.resources.num_workers) == (True, 4)
    assert (cfg.train.schedule.epochs, cfg.train.output) == (3, "fx")
