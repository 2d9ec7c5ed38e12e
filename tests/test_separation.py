"""Separation through demucs's real loader and apply_model, on a tiny random debug model."""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs

from midiforge.separation import (
    DEBUG_SOURCES,
    DemucsSeparator,
    SeparationError,
    check_available,
    load_model,
    make_debug_repo,
    parse_spec,
)

SR = 44_100


@pytest.fixture(autouse=True)
def hub_dir(tmp_path, monkeypatch):
    """Never touch the network, and never see weights a developer has cached at home."""
    monkeypatch.setenv("MIDIFORGE_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    yield tmp_path / "torch-hub"
    torch.hub.set_dir(previous)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run as a 1-CPU Ray actor does; two intra-op threads on a shared 2-core runner stall
    in oneDNN's spin-waits (seconds per call instead of tenths)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_debug_repo(tmp_path_factory.mktemp("demucs"), name="debug", seed=0)


@pytest.fixture(scope="module")
def mix() -> np.ndarray:
    """3 s of stereo: a bass line, a chord and a hi-hat-like noise burst every half second."""
    t = np.arange(3 * SR) / SR
    rng = np.random.default_rng(0)
    bass = 0.4 * np.sin(2 * np.pi * 55 * t)
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    hats = 0.2 * rng.standard_normal(t.size) * (np.mod(t, 0.5) < 0.03)
    return np.stack([bass + chord + hats, bass + 0.5 * chord + hats]).astype(np.float32)


@pytest.fixture(scope="module")
def separator(repo) -> DemucsSeparator:
    return DemucsSeparator(f"{repo}:debug", stem="other", device="cpu")


def test_parse_spec():
    assert parse_spec("none") == ("none", None, None)
    assert parse_spec("htdemucs") == ("pretrained", "htdemucs", None)
    assert parse_spec("/models/demucs:debug") == ("local", "debug", "/models/demucs")
    assert parse_spec("rel/dir:my_model-2") == ("local", "my_model-2", "rel/dir")
    for bad in ("", "   ", ":debug", "/models:", "dir:a/b", "hf://adefossez/HTDemucs"):
        with pytest.raises(SeparationError):
            parse_spec(bad)


def test_debug_repo_round_trips_through_demucs_loader(tmp_path, repo):
    model = load_model(f"{repo}:debug")
    assert isinstance(model, HTDemucs)
    assert not model.training
    assert model.sources == DEBUG_SOURCES
    assert (model.samplerate, model.audio_channels) == (SR, 2)
    assert sum(p.numel() for p in model.parameters()) < 200_000

    package = torch.load(repo / "debug.th", weights_only=False)
    assert set(package) == {"klass", "args", "kwargs", "state"}

    same = load_model(f"{make_debug_repo(tmp_path / 'same', seed=0)}:debug").state_dict()
    other = load_model(f"{make_debug_repo(tmp_path / 'other', seed=1)}:debug").state_dict()
    state = model.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    changed = [
        k for k in state if state[k].is_floating_point() and not torch.equal(state[k], other[k])
    ]
    assert len(changed) > len(state) // 2


def test_local_bag_yaml_loads_as_bag_of_models(repo):
    (repo / "pair.yaml").write_text("models: ['debug', 'debug']\n")
    check_available(f"{repo}:pair")
    bag = load_model(f"{repo}:pair")
    assert isinstance(bag, BagOfModels)
    assert len(bag.models) == 2
    assert bag.sources == DEBUG_SOURCES

    (repo / "broken.yaml").write_text("models: ['debug', 'absent']\n")
    with pytest.raises(SeparationError, match=r"absent\.th"):
        check_available(f"{repo}:broken")


def test_separator_output_shape_dtype_and_finite(separator, mix):
    assert (separator.samplerate, separator.audio_channels) == (SR, 2)
    assert separator.sources == DEBUG_SOURCES
    out = separator(mix)
    assert out.shape == mix.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert np.abs(out).max() > 1e-4  # a real signal, not silence


def test_separator_runs_the_model(repo, separator, mix):
    out = separator(mix)
    # Deterministic with shifts=0: the same input gives bit-identical output.
    np.testing.assert_array_equal(out, separator(mix))
    # Not a passthrough: the stem is far from the mix.
    assert np.abs(out - mix).max() > 0.1 * np.abs(mix).max()
    # Each stem is a different output channel of the model.
    drums = DemucsSeparator(f"{repo}:debug", stem="drums")(mix)
    assert np.abs(drums - out).max() > 1e-4
    # Inputs are standardised before the model and restored after, so the stem scales with
    # the mix: a 4x louder mix gives a 4x louder stem.
    np.testing.assert_allclose(separator(4 * mix), 4 * out, atol=1e-5 * np.abs(4 * out).max())


def test_separator_accepts_mono(separator, mix):
    mono = mix.mean(0, keepdims=True)
    out = separator(mono)
    assert out.shape == mono.shape
    assert out.dtype == np.float32
    # Mono is the model run on both channels equal to it, averaged back.
    stereo = separator(np.repeat(mono, 2, axis=0))
    np.testing.assert_allclose(out[0], stereo.mean(0), atol=1e-6)


def test_separator_rejects_bad_audio_shape(separator):
    with pytest.raises(SeparationError, match="samples"):
        separator(np.zeros((3, 100), dtype=np.float32))
    with pytest.raises(SeparationError, match="samples"):
        separator(np.zeros(100, dtype=np.float32))
    assert separator(np.zeros((2, 0), dtype=np.float32)).shape == (2, 0)


def test_invalid_stem_fails_at_construction_listing_valid_ones(repo):
    with pytest.raises(SeparationError, match="drums, bass, other, vocals"):
        DemucsSeparator(f"{repo}:debug", stem="piano")
    with pytest.raises(SeparationError, match="segment"):
        DemucsSeparator(f"{repo}:debug", segment=60.0)


def test_check_available_none_and_local(tmp_path, repo):
    check_available("none")
    check_available(f"{repo}:debug")
    with pytest.raises(SeparationError, match="does not exist"):
        check_available(f"{tmp_path / 'nowhere'}:debug")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeparationError, match=r"neither missing\.th nor missing\.yaml"):
        check_available(f"{tmp_path / 'empty'}:missing")
    with pytest.raises(SeparationError, match="none"):
        load_model("none")


def test_check_available_pretrained_offline_fails_fast_with_how_to(hub_dir):
    start = time.monotonic()
    with pytest.raises(SeparationError) as info:
        check_available("htdemucs")
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert "offline" in message
    assert "--separator DIR:NAME" in message
    assert "--separator none" in message
    assert str(hub_dir / "checkpoints") in message
    assert "955717e8-8726e21a.th" in message  # htdemucs's one checkpoint, per demucs's list


def test_check_available_pretrained_counts_every_checkpoint_of_a_bag(hub_dir):
    checkpoints = hub_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    # htdemucs_ft is a bag of four models: three cached files are not enough.
    for name in ("f7e0c4bc-ba3fe64a.th", "d12395a8-e57c48e6.th", "92cfc3b6-ef3bcb9c.th"):
        (checkpoints / name).touch()
    with pytest.raises(SeparationError, match=r"missing: 04573f0d-f3cf25b2\.th\)"):
        check_available("htdemucs_ft")
    (checkpoints / "04573f0d-f3cf25b2.th").touch()
    check_available("htdemucs_ft")


def test_unknown_pretrained_name_lists_known_ones():
    with pytest.raises(SeparationError, match="htdemucs_ft"):
        check_available("htdemucs_typo")


def test_cached_pretrained_loads_from_the_cache_and_verifies_it(hub_dir):
    # A truncated download in the cache: loading must use the cache (no network, even though
    # demucs's get_model would try the HuggingFace hub first) and refuse the bad file.
    checkpoints = hub_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "955717e8-8726e21a.th").write_bytes(b"truncated")
    check_available("htdemucs")
    start = time.monotonic()
    with pytest.raises(SeparationError, match="checksum"):
        load_model("htdemucs")
    assert time.monotonic() - start < 2
