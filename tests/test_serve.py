"""The Serve app on 127.0.0.1 with real HTTP: parity with the library, model switching,
bad uploads answered with JSON 4xx (and the next good request still right), auth."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import soundfile as sf
import yaml

from midiforge import audio, midi_io, registry
from midiforge.registry import Registry
from midiforge.transcription.notes import NoteDecoding, decode_notes
from midiforge.transcription.runner import OnnxTranscriber

from .conftest import free_port

TOKEN = "s3cret-token"  # noqa: S105 - a test-only token
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def halved_onsets(src, dst) -> None:
    """A second, different transcription model: basic-pitch with onsets scaled by 0.5."""
    m = onnx.load(str(src))
    name = "StatefulPartitionedCall:2"  # the onset output
    for node in m.graph.node:
        node.output[:] = ["onset_raw" if o == name else o for o in node.output]
        node.input[:] = ["onset_raw" if i == name else i for i in node.input]
    m.graph.initializer.append(onnx.helper.make_tensor("half", onnx.TensorProto.FLOAT, [], [0.5]))
    m.graph.node.append(onnx.helper.make_node("Mul", ["onset_raw", "half"], [name]))
    onnx.save(m, str(dst))


def library_notes(path, model_path) -> np.ndarray:
    clip = audio.load_for_transcription(path.read_bytes(), audio.AudioLimits(min_seconds=0))
    return decode_notes(OnnxTranscriber(model_path)([clip])[0], NoteDecoding())


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    from ray import serve

    from midiforge.serving.app import build_app

    root = tmp_path_factory.mktemp("models")
    variant = root / "variant.onnx"
    halved_onsets(registry.stock_model_path(), variant)
    Registry(str(root / "reg")).push(variant, "half-onsets", kind="transcriber")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        {"models_root": str(root / "reg"), "max_upload_bytes": 12_000_000, "max_audio_seconds": 30},
        gateway_options={
            "ray_actor_options": {
                "num_cpus": 0.1,
                "runtime_env": {"env_vars": {"MIDIFORGE_API_TOKEN": TOKEN}},
            }
        },
        transcriber_options={"ray_actor_options": {"num_cpus": 0.5}},
        generator_options={"ray_actor_options": {"num_cpus": 0.1}},
        classifier_options={"ray_actor_options": {"num_cpus": 0.05}},
    )
    serve.run(app, name="midiforge", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        yield client, root / "reg", variant
    serve.shutdown()


def post(client, path, data: bytes, name="clip.wav", headers=AUTH, **params):
    return client.post(f"/v1/{path}", files={"audio": (name, data)}, params=params, headers=headers)


def test_json_notes_equal_the_library(server, tiny_corpus):
    client, _, _ = server
    wav = next((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
    r = post(client, "transcribe", wav.read_bytes(), format="json")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "stock" and abs(body["duration_s"] - sf.info(wav).duration) < 1e-3
    got = np.array([(n["start"], n["end"], n["pitch"], n["velocity"]) for n in body["notes"]])
    want = library_notes(wav, registry.stock_model_path())
    assert got.shape == want.shape and len(got) > 10
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_midi_response_and_thresholds(server, tiny_corpus):
    client, _, _ = server
    wav = next((tiny_corpus / "audio" / "quartet").glob("*.wav"))
    r = post(client, "transcribe", wav.read_bytes())
    assert r.status_code == 200 and r.headers["content-type"] == "audio/midi"
    got = midi_io.notes_array(midi_io.load_midi(r.content))
    want = library_notes(wav, registry.stock_model_path())
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:, :2], want[:, :2], atol=2e-3)  # MIDI ticks at 480 ppq
    strict = post(client, "transcribe", wav.read_bytes(), format="json", onset_threshold=0.9)
    assert 0 < len(strict.json()["notes"]) < len(want)


def test_switch_models_by_name(server, tiny_corpus):
    client, _, variant = server
    wav = next((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
    stock = post(client, "transcribe", wav.read_bytes(), format="json").json()["notes"]
    half = post(client, "transcribe", wav.read_bytes(), format="json", model="half-onsets").json()
    assert half["model"] == "half-onsets"
    want = library_notes(wav, variant)
    assert len(half["notes"]) == len(want) != len(stock)
    models = client.get("/v1/models", headers=AUTH).json()
    assert {"stock", "half-onsets"} <= set(models["transcriber"]["loaded"])
    assert {"stock", "half-onsets"} <= {m["name"] for m in models["registry"]}


def _wav(x: np.ndarray, sr: int, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, subtype=subtype, format="WAV")
    return buf.getvalue()


# The dataset job's broken-inputs folder, as uploads: what the service answers for each.
UPLOAD_ANSWERS = {
    "empty.wav": (400, "empty_upload"),
    "truncated.wav": (422, "corrupt_audio"),
    "random.wav": (415, "unsupported_media_type"),
    "text.wav": (415, "unsupported_media_type"),
    "nan.wav": (422, "invalid_samples"),
    "notes.txt": (415, "unsupported_media_type"),
    "empty.mid": (400, "empty_upload"),
    "corrupt.mid": (415, "unsupported_media_type"),
    "noteless.mid": (415, "unsupported_media_type"),
    "good.mid": (415, "unsupported_media_type"),  # MIDI is not audio
    # valid audio, odd formats: transcribed (silence and a 0.25 s clip give few notes)
    "silence.wav": (200, None),
    "short.wav": (200, None),
    "six-channel-96k.wav": (200, None),
    "mono-8k.wav": (200, None),
    "Ünïcødé façade tune.wav": (200, None),
    "  spaced   name  .wav": (200, None),
}


def test_bad_requests_get_json_errors_and_the_service_survives(server, tiny_corpus, broken_inputs):
    client, _, _ = server
    wav = next((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
    good = wav.read_bytes()
    want = len(library_notes(wav, registry.stock_model_path()))
    assert {p.name for p in broken_inputs.iterdir()} == set(UPLOAD_ANSWERS)
    for path in sorted(broken_inputs.iterdir()):
        status, code = UPLOAD_ANSWERS[path.name]
        r = post(client, "transcribe", path.read_bytes(), name=path.name, format="json")
        assert r.status_code == status, (path.name, r.text)
        if code:
            assert r.json()["error"] == code and r.json()["detail"], (path.name, r.text)
        after = post(client, "transcribe", good, format="json")  # the next good request
        assert after.status_code == 200 and len(after.json()["notes"]) == want
    _, sr = sf.read(wav, dtype="float32")
    for data, status, code in [
        (_wav(np.zeros(sr * 31, np.float32), sr), 422, "audio_too_long"),
        (b"\0" * 12_000_001, 413, "upload_too_large"),
    ]:
        r = post(client, "transcribe", data)
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
    for params, status, code in [
        ({"model": "../etc"}, 400, "invalid_model_name"),
        ({"model": "nope"}, 404, "unknown_model"),
        ({"format": "wav"}, 422, "invalid_request"),
        ({"onset_threshold": 2}, 422, "invalid_request"),
    ]:
        r = post(client, "transcribe", good, **params)
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert client.post("/v1/transcribe", headers=AUTH).json()["error"] == "invalid_request"
    silent = post(client, "transcribe", _wav(np.zeros(sr * 2, np.float32), sr), format="json")
    assert silent.status_code == 200 and silent.json()["notes"] == []
    r = post(client, "transcribe", good, format="json")  # the replica is still fine
    assert r.status_code == 200 and len(r.json()["notes"]) > 10
    for r in (post(client, "classify", good), client.post("/v1/generate", headers=AUTH)):
        assert (r.status_code, r.json()["error"]) == (503, "not_configured")


def _flac(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="FLAC")
    return buf.getvalue()


def test_audio_limits_are_json_4xx_before_the_work(server, tiny_corpus):
    """Too long by its header (refused before decoding), too short to transcribe, too big
    to read, thresholds out of range: each a JSON 4xx, the service still fine after."""
    client, _, _ = server
    # An hour of silence: 90 kB of FLAC, 115 MB once decoded.
    r = post(client, "transcribe", _flac(np.zeros(3600 * 8_000, np.int16), 8_000))
    assert (r.status_code, r.json()["error"]) == (422, "audio_too_long"), r.text
    assert "header declares 3600.0 s" in r.json()["detail"]
    # 4 s of 8 channels at 384 kHz: within the length, but 12.3M samples, over 30 s of
    # 192 kHz stereo (11.5M).
    r = post(client, "transcribe", _flac(np.zeros((4 * 384_000, 8), np.int16), 384_000))
    assert (r.status_code, r.json()["error"]) == (413, "audio_too_large"), r.text
    # 100 samples: at 22,050 Hz, and at 1 MHz (about 2 samples once resampled).
    for sr in (22_050, 1_000_000):
        tone = 0.3 * np.sin(np.arange(100) / 5).astype(np.float32)
        r = post(client, "transcribe", _wav(tone, sr), format="json")
        assert (r.status_code, r.json()["error"]) == (422, "audio_too_short"), (sr, r.text)
        assert "minimum 0.1 s" in r.json()["detail"]
    # Over the limit by more than any multipart framing: refused on Content-Length alone.
    r = post(client, "transcribe", b"\0" * 13_000_000)
    assert (r.status_code, r.json()["error"]) == (413, "upload_too_large"), r.text
    assert "request body" in r.json()["detail"]

    def chunks():  # no Content-Length: sent chunked, counted as it arrives
        yield b'{"model": "rules", "style": "'
        for _ in range(14):
            yield b"x" * 1_000_000
        yield b'"}'

    json_type = {**AUTH, "content-type": "application/json"}
    r = client.post("/v1/generate", content=chunks(), headers=json_type)
    assert (r.status_code, r.json()["error"]) == (413, "upload_too_large"), r.text
    good = next((tiny_corpus / "audio" / "fiddle").glob("*.wav")).read_bytes()
    for value in ("inf", "1e309", "10001", "-1"):
        r = post(client, "transcribe", good, min_note_ms=value)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), (value, r.text)
    r = post(client, "transcribe", good, format="json", min_note_ms=10_000)
    assert r.status_code == 200 and r.json()["notes"] == []  # no note lasts 10 s
    r = post(client, "transcribe", good, format="json")
    assert r.status_code == 200 and len(r.json()["notes"]) > 10


def test_unknown_model_detail_names_it_without_a_remote_traceback(server, tiny_corpus):
    client, _, _ = server
    good = next((tiny_corpus / "audio" / "fiddle").glob("*.wav")).read_bytes()
    for r in (
        post(client, "transcribe", good, model="nosuch"),
        client.post("/v1/generate", json={"model": "nosuch"}, headers=AUTH),
    ):
        assert (r.status_code, r.json()["error"]) == (404, "unknown_model"), r.text
        detail = r.json()["detail"]
        assert "nosuch" in detail and "Traceback" not in detail and "pid=" not in detail
        assert "\n" not in detail


def _random_lm(models_root: str, name: str) -> None:
    """A tiny untrained language model, exported and registered exactly as `midiforge lm
    export` leaves a trained one: the service's generation path does not care about skill."""
    import tempfile

    from midiforge.lm.config import PRESETS
    from midiforge.lm.export import export_onnx
    from midiforge.lm.model import build
    from midiforge.lm.vocab import LMVocab
    from midiforge.symbolic.tokenize import TokenizerSettings, make_tokenizer, save_tokenizer

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / name
        tok = make_tokenizer(TokenizerSettings())
        vocab = LMVocab.for_tokenizer(tok, ["fiddle", "folk"])
        build(PRESETS["debug"][0], vocab).save_pretrained(folder / "hf")
        vocab.save(folder / "vocab.json")
        save_tokenizer(tok, folder / "tokenizer.json")
        export_onnx(folder / "hf", folder / "model.onnx")
        Registry(models_root).push(folder, name, kind="lm")


def test_generate_answers_with_registry_models_and_the_rule_baseline(server):
    import base64

    client, reg, _ = server
    _random_lm(str(reg), "tiny-lm")
    bar_s = 4 * 60 / 150
    for model in ("rules", "tiny-lm"):
        body = {"model": model, "style": "fiddle", "key": "G", "bpm": 150, "bars": 4, "seed": 3}
        r = client.post("/v1/generate", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/midi"
        pm = midi_io.load_midi(r.content)
        assert pm.get_end_time() == pytest.approx(4 * bar_s, abs=0.01)
        again = client.post("/v1/generate", json=body, headers=AUTH)
        assert again.content == r.content  # same seed, same MIDI
    prompt = base64.b64encode(r.content).decode()
    r = client.post("/v1/generate", json={**body, "bars": 6, "prompt_midi": prompt}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert midi_io.load_midi(r.content).get_end_time() == pytest.approx(6 * bar_s, abs=0.01)
    # A continuation plays the asked-for programs (they used to be dropped with a prompt).
    asked = {**body, "bars": 8, "prompt_midi": prompt, "programs": [73]}
    r = client.post("/v1/generate", json=asked, headers=AUTH)
    assert r.status_code == 200, r.text
    after = [(i.program, n) for i in midi_io.load_midi(r.content).instruments for n in i.notes
             if n.start >= 4 * bar_s - 1e-3]  # fmt: skip
    assert after and {program for program, _ in after} == {73}
    for body, status, code in [
        # The rules write one fresh line: a prompt or a second program is refused, not dropped.
        ({"model": "rules", "prompt_midi": prompt}, 422, "invalid_request"),
        ({"model": "rules", "programs": [40, 41]}, 422, "invalid_request"),
        ({"model": "tiny-lm", "style": "techno"}, 422, "invalid_request"),
        ({"model": "rules", "key": "H major"}, 422, "invalid_request"),
        ({"model": "nope"}, 404, "unknown_model"),
        ({"model": "rules", "bars": 0}, 422, "invalid_request"),
        ({"model": "rules", "prompt_midi": "%%%"}, 400, "invalid_prompt"),
        # Drawn beat by beat, this one would run for hours in a thread nothing can stop.
        ({"model": "rules", "time_signature": "1000000000/4", "bars": 256}, 422, "invalid_request"),
        ({"model": "rules", "time_signature": "13/8"}, 422, "invalid_request"),
    ]:
        r = client.post("/v1/generate", json=body, headers=AUTH, timeout=30)
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
        assert "Traceback" not in r.json()["detail"]
    for meter in ("12/8", "3/1"):  # x/1 is in the tokenizer's range: it used to be a 422
        body = {"model": "rules", "time_signature": meter, "bars": 2}
        r = client.post("/v1/generate", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        ts = midi_io.load_midi(r.content).time_signature_changes[0]
        assert f"{ts.numerator}/{ts.denominator}" == meter
    # Least recently used first, as Serve's LRU holds them; "nope" (404) evicted nothing.
    models = client.get("/v1/models", headers=AUTH).json()
    assert models["generator"]["loaded"] == ["tiny-lm", "rules"]
    _random_lm(str(reg), "tiny-lm-2")
    body = {"model": "tiny-lm-2", "style": "fiddle", "bars": 2}
    assert client.post("/v1/generate", json=body, headers=AUTH).status_code == 200
    models = client.get("/v1/models", headers=AUTH).json()
    assert models["generator"]["loaded"] == ["rules", "tiny-lm-2"]  # tiny-lm was evicted


def test_token_auth(server):
    client, _, _ = server
    assert client.get("/healthz").status_code == 200  # no token needed
    assert client.get("/v1/healthz").status_code == 401  # only /healthz itself
    assert client.get("/v1/models").status_code == 401
    assert (
        client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]
        == "unauthorized"
    )
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert post(client, "transcribe", b"x", headers={}).status_code == 401


def test_config_yaml_is_a_valid_serve_deploy_config():
    from pathlib import Path

    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load((Path(__file__).parents[1] / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    [app] = schema.applications
    assert app.import_path == "midiforge.serving.app:build_app"
    names = {d.name for d in app.deployments}
    assert names == {"Gateway", "Transcriber", "Generation", "Classification"}
    auto = next(d for d in app.deployments if d.name == "Transcriber").autoscaling_config
    assert auto["min_replicas"] >= 1 and auto["max_replicas"] > auto["min_replicas"]


def test_midiforge_serve_command(tiny_corpus, tmp_path):
    """`midiforge serve` as a user runs it: its own local Ray, 127.0.0.1, the repo's YAML."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    port = free_port()
    exe = Path(sys.executable).parent / "midiforge"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MIDIFORGE_API_TOKEN")}
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            "--port",
            str(port),
            "--config",
            str(Path(__file__).parents[1] / "serve" / "config.yaml"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.5)
            wav = next((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
            r = post(client, "transcribe", wav.read_bytes(), headers={}, format="json")
            assert r.status_code == 200 and len(r.json()["notes"]) > 10
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class _SlowRunner:
    """The stock model, slowed down: a stand-in for a model too slow for the timeout."""

    def __init__(self, delay_s: float) -> None:
        self.runner = OnnxTranscriber(registry.stock_model_path())
        self.delay_s = delay_s

    def __call__(self, clips):
        import time

        time.sleep(self.delay_s)
        return self.runner(clips)


def _slow_loader(name: str) -> _SlowRunner:
    return _SlowRunner(delay_s=3.0)


def test_request_timeout_is_a_json_504(server, tiny_corpus):
    from ray import serve

    from midiforge.serving.app import build_app

    client, _, _ = server
    app = build_app(
        {"request_timeout_s": 1.0},
        loader=_slow_loader,
        gateway_options={"name": "SlowGateway", "ray_actor_options": {"num_cpus": 0.1}},
        transcriber_options={"name": "SlowTranscriber", "ray_actor_options": {"num_cpus": 0.2}},
        generator_options={"name": "SlowGeneration", "ray_actor_options": {"num_cpus": 0.05}},
        classifier_options={"name": "SlowClassification", "ray_actor_options": {"num_cpus": 0.05}},
    )
    serve.run(app, name="slow", route_prefix="/slow")
    try:
        wav = next((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
        r = client.post("/slow/v1/transcribe", files={"audio": ("a.wav", wav.read_bytes())})
        assert (r.status_code, r.json()["error"]) == (504, "timeout"), r.text
        r = post(
            client, "transcribe", wav.read_bytes(), format="json"
        )  # the main app is unaffected
        assert r.status_code == 200 and len(r.json()["notes"]) > 10
    finally:
        serve.delete("slow")


def test_registry_listing_survives_an_unreadable_manifest(tmp_path):
    """One broken manifest used to make /v1/models a 500; it is listed apart now."""
    from midiforge.serving.app import registry_listing

    reg = Registry(str(tmp_path / "reg"))
    reg.push(registry.stock_model_path(), "good", kind="transcriber")
    reg.push(registry.stock_model_path(), "broken", kind="transcriber")
    (tmp_path / "reg" / "broken" / registry.MANIFEST).write_text("{not json")
    listing = registry_listing(str(tmp_path / "reg"))
    assert [m["name"] for m in listing["models"]] == ["stock", "good"]
    [bad] = listing["unreadable"]
    assert bad["name"] == "broken" and bad["detail"]
