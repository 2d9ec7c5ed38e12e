"""Shared fixtures. Servers bind to 127.0.0.1; everything is cleaned up by the fixtures."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep the registry default and the model and compiled-model caches out of the
    user's home."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MIDIFORGE_MODELS", str(home / "models"))
    monkeypatch.setenv("MIDIFORGE_CACHE", str(home / "cache"))
    monkeypatch.setenv("MIDIFORGE_OPENVINO_CACHE", str(home / "openvino"))
    monkeypatch.setenv("MIDIFORGE_CPU_GRAPH_CACHE", str(home / "cpu_graph"))


def config_from_command(monkeypatch, target: str, command, argv, *, overrides=()):
    """The config a command (its (add_flags, run) pair) builds from `argv`, caught where
    `target` ("module:function", the library call it makes) would start the work."""
    import argparse
    import importlib

    module, attr = target.split(":")
    add, run = command

    seen = {}

    def capture(cfg):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module(module), attr, capture)
    parser = argparse.ArgumentParser()
    add(parser)
    with pytest.raises(SystemExit):
        run(parser.parse_args(argv), list(overrides))
    return seen["cfg"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto's server mode) in its own process."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    assert exe, "moto_server is not installed (dev extra)"
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Real music with exact ground truth: 2 fiddle, 2 folk, 2 quartet pieces of 8 s."""
    from midiforge.corpus_render import RenderConfig, render_corpus

    out = tmp_path_factory.mktemp("tiny-corpus")
    render_corpus(
        RenderConfig(styles=["fiddle", "folk", "quartet"], per_style=2, seconds=8.0, out=str(out))
    )
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session, bound to 127.0.0.1."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def broken_inputs(tiny_corpus, tmp_path_factory):
    """A folder of bad (and oddly valid) inputs, shared by the dataset job's and the
    service's tests: each must be rejected with its reason, or accepted."""
    import io

    import librosa
    import numpy as np
    import soundfile as sf

    from midiforge import midi_io

    def wav(x, sr, subtype="PCM_16"):
        buf = io.BytesIO()
        sf.write(buf, x.T if x.ndim == 2 else x, sr, subtype=subtype, format="WAV")
        return buf.getvalue()

    good_wav = next((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
    good_mid = next((tiny_corpus / "midi" / "fiddle").glob("*.mid"))
    x, sr = sf.read(good_wav, dtype="float32")
    full = wav(x, sr)
    files = {
        "empty.wav": b"",
        "truncated.wav": full[: len(full) // 3],
        "random.wav": np.random.default_rng(1).bytes(20_000),
        "text.wav": b"not audio at all\n" * 100,
        "nan.wav": wav(
            np.where(np.arange(len(x)) == 500, np.nan, x).astype(np.float32), sr, "FLOAT"
        ),
        "silence.wav": wav(np.zeros(sr * 3, np.float32), sr),
        "short.wav": wav(x[: sr // 4], sr),
        "six-channel-96k.wav": wav(
            np.tile(librosa.resample(x, orig_sr=sr, target_sr=96_000), (6, 1)), 96_000
        ),
        "mono-8k.wav": wav(librosa.resample(x, orig_sr=sr, target_sr=8_000), 8_000),
        "Ünïcødé façade tune.wav": full,
        "  spaced   name  .wav": full,
        "notes.txt": b"hello",
        "empty.mid": b"",
        "corrupt.mid": np.random.default_rng(2).bytes(300),
        "noteless.mid": midi_io.midi_bytes(midi_io.midi_from_notes(np.zeros((0, 4)))),
        "good.mid": good_mid.read_bytes(),
    }
    folder = tmp_path_factory.mktemp("broken") / "inputs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder
