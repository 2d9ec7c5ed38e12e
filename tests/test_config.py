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
