"""Varied training renders: FluidSynth effects, the additive synth, augmentation, pairs.

Everything is rendered for real (FluidSynth, numpy); clips are a few seconds long.
"""

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

from midiforge import corpus, midi_io, render
from midiforge.transcription import synth, variety

SR = 22_050
FLUIDR3 = variety.SF2_DIR / "FluidR3_GM.sf2"


def one_note(pitch=69, start=0.5, end=1.0, program=40):
    return midi_io.midi_from_notes(np.array([[start, end, pitch, 100]]), program=program)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def synth_params(**changes):
    base = synth.SynthParams(
        rolloff=1.0,
        even_gain=0.6,
        formants=((450.0, 6.0, 2.0), (2500.0, 8.0, 3.0)),
        attack_s=0.03,
        decay_s=0.1,
        sustain=0.8,
        release_s=0.3,
        bow_noise=0.01,
        noise_hz=2500.0,
        detune_cents=10.0,
        velocity_gamma=1.5,
        vibrato=None,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def held_out():
    return {c.piece_id for c in corpus.select("fiddle", 0)[:2]}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, held_out):
    """Two fiddle pieces x two variants, seed 0, with the first two candidates held out."""
    out = tmp_path_factory.mktemp("pairs")
    kw = {"variants_per_piece": 2, "skip_pieces": held_out, "max_transpose": 2}
    manifest = variety.build_pairs("fiddle", 2, 5.0, out, seed=0, **kw)
    return out, manifest, kw


# --- FluidSynth effects ----------------------------------------------------------------


def test_no_effects_is_the_dry_render():
    pm = one_note()
    dry = render.render_midi(pm, sample_rate=SR)
    np.testing.assert_array_equal(dry, render.render_midi(pm, sample_rate=SR, effects=None))
    silent_fx = render.FluidEffects(reverb_level=0.0, chorus_nr=0)
    np.testing.assert_array_equal(dry, render.render_midi(pm, sample_rate=SR, effects=silent_fx))


def test_reverb_lengthens_the_decay_after_note_off():
    pm = one_note(start=0.1, end=0.5)
    fx = render.FluidEffects(reverb_room_size=0.9, reverb_level=0.8, reverb_send=100)
    dry = render.render_midi(pm, sample_rate=SR, tail_s=1.5)
    wet = render.render_midi(pm, sample_rate=SR, tail_s=1.5, effects=fx)
    late = slice(int(0.8 * SR), int(1.5 * SR))  # 0.3-1.0 s after the note-off
    assert rms(dry[late]) < 1e-3
    assert rms(wet[late]) > 10 * max(rms(dry[late]), 1e-4)


# --- the additive synthesizer ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synth_pitch_is_a4_within_the_detune_bound(seed):
    audio = synth.synth_render(
        one_note(start=0.2, end=2.2), SR, synth_params(), np.random.default_rng(seed)
    )
    steady = audio[int(0.7 * SR) : int(2.1 * SR)]
    n = 16 * steady.size  # zero-padded: ~0.05 Hz bins
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.size), n=n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    band = (freqs > 380) & (freqs < 500)
    f0 = freqs[band][np.argmax(spectrum[band])]
    bound = 440.0 * (2 ** (10 / 1200) - 1)  # 10 cents: 2.55 Hz
    assert abs(f0 - 440.0) <= bound + 0.3


def test_synth_is_silent_before_the_note_and_its_release_decays():
    params = synth_params(release_s=0.3)
    audio = synth.synth_render(one_note(start=0.5, end=1.0), SR, params, np.random.default_rng(0))
    assert audio.dtype == np.float32 and len(audio) == round((1.0 + synth.TAIL_S) * SR)
    assert 0.85 < np.max(np.abs(audio)) <= 0.9
    assert rms(audio[: int(0.49 * SR)]) < 1e-6
    during = rms(audio[int(0.7 * SR) : int(1.0 * SR)])
    tail = [rms(audio[int(t * SR) : int((t + 0.05) * SR)]) for t in (1.0, 1.1, 1.2)]
    assert during * 0.02 < tail[0] < during  # audible after note-off ...
    assert tail[0] > tail[1] > tail[2]  # ... and decaying
    assert rms(audio[int(1.5 * SR) :]) < during * 1e-3  # -60 dB by the end of the release


def test_synth_renders_a_whole_fiddle_tune():
    """A real tune comes out whole and sounding (speed belongs in bench/, not in tests)."""
    pm, _ = corpus.score_to_midi(corpus.select("fiddle", 0)[0], 8.0)
    params = synth.sample_synth_params(np.random.default_rng(3))
    audio = synth.synth_render(pm, SR, params, np.random.default_rng(0))
    assert np.isfinite(audio).all() and len(audio) == round((pm.get_end_time() + 1.0) * SR)
    notes = midi_io.notes_array(pm)
    # Sound under every note's first 50 ms, and louder there than after the release.
    for start in notes[:, 0]:
        assert rms(audio[int(start * SR) : int((start + 0.05) * SR)]) > 1e-3, start
    assert rms(audio[-int(0.05 * SR) :]) < rms(audio[: int(pm.get_end_time() * SR)]) * 0.1


# --- vibrato, transposition, timbre draws --------------------------------------------------


def test_vibrato_bends_leave_the_ground_truth_alone():
    pm = midi_io.midi_from_notes(np.array([[0.1, 0.9, 69, 100], [1.0, 2.0, 72, 90]]), 40)
    before = midi_io.notes_array(pm)
    vib = synth.Vibrato(rate_hz=6.0, depth_cents=30.0, delay_s=0.2)
    bends = variety.vibrato_bends(pm.instruments[0], vib, np.random.default_rng(0))
    by_time = {round(b.time, 6): b.pitch for b in bends}
    assert by_time[0.1] == 0 and by_time[1.0] == 0  # each note starts at pitch
    assert max(abs(b.pitch) for b in bends) <= round(30 / 200 * 8192)
    assert max(b.time for b in bends) < 2.0  # within the notes: the render keeps its length
    timbre = variety.Timbre("soundfont", render.default_soundfont(), (40, 40, 40), vib)
    wobbly = variety.render_soundfont(pm, timbre, SR, np.random.default_rng(0))
    straight = render.render_midi(pm, render.default_soundfont(), SR, tail_s=synth.TAIL_S)
    assert wobbly.shape == straight.shape and not np.allclose(wobbly, straight, atol=1e-3)
    np.testing.assert_array_equal(midi_io.notes_array(pm), before)
    assert not pm.instruments[0].pitch_bends


def test_render_variant_returns_the_transposed_midi_it_rendered():
    pm = midi_io.midi_from_notes(np.array([[0.1, 0.6, 60, 100], [0.6, 1.2, 64, 100]]), 40)
    for seed in range(6):
        var = variety.render_variant(pm, np.random.default_rng(seed), "fiddle", max_transpose=3)
        shift = var.description["transpose"]
        assert abs(shift) <= 3
        np.testing.assert_allclose(
            midi_io.notes_array(var.midi)[:, 2], midi_io.notes_array(pm)[:, 2] + shift
        )
        assert not any(inst.pitch_bends for inst in var.midi.instruments)
        assert len(var.audio) >= round(pm.get_end_time() * SR)
    np.testing.assert_array_equal(midi_io.notes_array(pm)[:, 2], [60, 64])  # input untouched


def test_timbres_vary_with_the_seed_and_repeat_with_it():
    draws = [variety.sample_timbre(np.random.default_rng(s), "fiddle") for s in range(40)]
    again = [variety.sample_timbre(np.random.default_rng(s), "fiddle") for s in range(40)]
    assert draws == again
    assert {t.source for t in draws} == {"soundfont", "synth"}
    assert len({t.soundfont for t in draws if t.soundfont}) == len(variety.training_soundfonts())
    assert len({t.programs for t in draws if t.source == "soundfont"}) >= 4
    json.dumps([t.describe() for t in draws])  # manifest-ready


def test_quartet_parts_get_programs_by_register():
    pm = midi_io.midi_from_notes(np.array([[0, 1, 76, 90]]))
    for pitch in (60, 45):
        pm.instruments.append(midi_io.midi_from_notes(np.array([[0, 1, pitch, 90]])).instruments[0])
    programs = variety.sample_programs(np.random.default_rng(0), "quartet")
    variety.apply_programs(pm, programs)
    assert [i.program for i in pm.instruments] == list(programs)
    assert programs[0] in dict(variety.QUARTET_PROGRAMS[0])
    assert programs[2] in dict(variety.QUARTET_PROGRAMS[2])


def test_the_training_pool_never_holds_fluidr3():
    pool = variety.training_soundfonts()
    assert pool
    for p in pool:
        assert "fluidr3" not in p.resolve().name.lower()
        assert "musescore" not in p.resolve().name.lower()
    with pytest.raises(ValueError, match="evaluation soundfont"):
        variety.check_pool([*pool, FLUIDR3])
    default_gm = variety.SF2_DIR / "default-GM.sf2"  # Debian's symlink to FluidR3
    if default_gm.exists() and "fluidr3" in default_gm.resolve().name.lower():
        with pytest.raises(ValueError, match="evaluation soundfont"):
            variety.sample_timbre(np.random.default_rng(0), "fiddle", [default_gm])


# --- the recording chain -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_augment_keeps_length_and_never_clips(seed):
    rng = np.random.default_rng(seed)
    audio = (1.5 * np.sin(np.linspace(0, 2000, 3 * SR))).astype(np.float32)
    out = synth.augment_audio(audio, SR, rng)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and np.max(np.abs(out)) <= 1.0
    again = synth.augment_audio(audio, SR, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, again)


def test_augment_adds_the_noise_and_room_asked_for():
    audio = np.zeros(2 * SR, np.float32)
    audio[: SR // 2] = np.sin(np.arange(SR // 2) * 2 * np.pi * 440 / SR)
    params = synth.AugmentParams((200, 0), (4000, 0), (1000, 0, 1), 1.0, 0.5, None, "pink", 0)
    room = synth.augment_audio(audio, SR, np.random.default_rng(0), params)
    assert rms(room[int(0.7 * SR) : int(0.9 * SR)]) > 1e-3  # reverb tail after the tone
    noisy = dataclasses.replace(params, reverb_rt60_s=None, snr_db=30.0)
    out = synth.augment_audio(audio, SR, np.random.default_rng(0), noisy)
    assert 1e-3 < rms(out[SR:]) < 0.05  # noise in the silence, well below the tone


# --- training pairs and the evaluation set -------------------------------------------------


def test_build_pairs_skips_held_out_pieces_and_pairs_by_stem(pairs, held_out):
    out, manifest, _ = pairs
    pieces = {p["piece"] for p in manifest["pairs"]}
    assert len(pieces) == 2 and not pieces & held_out
    assert set(manifest["skipped_held_out"]) == held_out
    audio = {p.stem for p in (out / "audio").glob("*.wav")}
    midi = {p.stem for p in (out / "midi").glob("*.mid")}
    assert audio == midi and len(audio) == 4
    assert all("__v" in s and s.split("__v")[0] in pieces for s in audio)
    for entry in manifest["pairs"]:
        pm = midi_io.load_midi(out / entry["midi"])
        assert len(midi_io.notes_array(pm)) == entry["n_notes"] > 0
        x, sr = sf.read(out / entry["audio"], dtype="float32")
        assert sr == SR and len(x) / SR >= pm.get_end_time()
        assert entry["timbre"]["source"] in ("soundfont", "synth")
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert all("fluidr3" not in s["name"].lower() for s in manifest["pool"])


def test_build_pairs_is_reproducible_and_seed_dependent(pairs, tmp_path, held_out):
    out, manifest, kw = pairs
    again = variety.build_pairs("fiddle", 2, 5.0, tmp_path / "a", seed=0, **kw)
    assert again == manifest
    for entry in manifest["pairs"]:  # samples, not bytes: float WAVs carry a PEAK timestamp
        a, _ = sf.read(tmp_path / "a" / entry["audio"], dtype="float32")
        np.testing.assert_array_equal(a, sf.read(out / entry["audio"], dtype="float32")[0])
    other = variety.build_pairs("fiddle", 1, 5.0, tmp_path / "b", seed=1, **kw)
    assert {p["piece"] for p in other["pairs"]}.isdisjoint(held_out)
    timbres = [json.dumps(p["timbre"], sort_keys=True) for p in manifest["pairs"]]
    assert not {json.dumps(p["timbre"], sort_keys=True) for p in other["pairs"]} & set(timbres)


def test_render_eval_set_is_plain_with_the_given_soundfont(tmp_path, held_out):
    piece = sorted(held_out)[0]
    manifest = variety.render_eval_set("fiddle", [piece], 4.0, tmp_path, render.default_soundfont())
    (entry,) = manifest["pairs"]
    assert entry["piece"] == piece and entry["timbre"]["programs"] == [corpus.VIOLIN]
    assert manifest["soundfont"]["name"] == "TimGM6mb.sf2"
    pm = midi_io.load_midi(tmp_path / entry["midi"])
    x, _ = sf.read(tmp_path / entry["audio"], dtype="float32")
    assert len(x) == round((pm.get_end_time() + 0.25) * SR)  # render.py's dry default tail
    assert (tmp_path / "audio" / f"{piece}__v0.wav").is_file()
