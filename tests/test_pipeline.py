"""The dataset job on a local Ray (one per test session): end to end, broken inputs,
the tiny-Demucs path and fail-fast start-up checks."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from midiforge import cli, midi_io
from midiforge.pipeline import schema, work
from midiforge.pipeline.build import _start_checks, balanced_blocks, build_dataset, plan_inputs
from midiforge.pipeline.config import DatasetConfig
from midiforge.pipeline.inputs import list_inputs

pytestmark = pytest.mark.usefixtures("ray_local")


def read_dataset(out: Path):
    return pads.dataset(out / "dataset", format="parquet", partitioning="hive").to_table()


def check_contracts(out: Path, rep: dict) -> None:
    assert rep["accepted"] + rep["rejected"] == rep["inputs"]
    for name in ("rejects.parquet", "tokenizer.json", "config.yaml", "report.json", "report.md"):
        assert (out / name).is_file(), name
    assert pq.read_schema(out / "rejects.parquet").names == schema.REJECTS.names
    assert len(pq.read_table(out / "rejects.parquet")) == rep["rejected"]
    assert json.loads((out / "report.json").read_text()) == rep


@pytest.fixture(scope="module")
def built(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    argv = [
        "dataset", "build",
        "--audio", str(tiny_corpus / "audio"),
        "--midi", str(tiny_corpus / "midi"),
        "--style-from-folder",
        "--reference-midi", str(tiny_corpus / "midi"),
        "--out", str(out),
        "--seed", "3",
        "--compute.transcribe.batch_size=4",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_end_to_end_contracts(built, capsys):
    out, rep = built
    check_contracts(out, rep)
    assert rep["inputs"] == 12  # 6 renders + their 6 MIDI files as tier 3
    assert set(rep["transcription"]) == {"fiddle", "folk", "quartet"}
    assert rep["transcription"]["fiddle"]["f1"] > 0.8  # basic-pitch on TimGM6mb violin
    assert rep["by_tier"]["2"]["inputs"] == 6 and rep["by_tier"]["3"]["inputs"] == 6
    table = read_dataset(out)
    assert set(table.column("split").to_pylist()) <= {"train", "val", "test"}
    names = set(table.schema.names)
    assert set(schema.DATASET.names) <= names
    assert len(table) == rep["rows"]
    for r in table.slice(0, 20).to_pylist():
        assert r["tokens"] and midi_io.load_midi(r["midi"]).instruments
        applied = json.loads(r["augmentation"])
        assert set(applied) == {"transpose", "tempo_scale", "velocity_delta", "octave"}
        assert json.loads(r["models"])["transcriber"]["name"] == "stock"


def test_every_transcription_actor_gets_an_equal_share(built):
    """12 inputs, batches of at most 4, 2 actors: 4 blocks of 3 (a multiple of the pool),
    one batch each, written as one work file each, not 3 batches of 4."""
    out, _ = built
    sizes = [pq.read_metadata(p).num_rows for p in work.work_files(str(out))]
    assert sorted(sizes) == [3, 3, 3, 3]


@pytest.mark.parametrize(
    ("n", "pool", "batch", "blocks"),
    [(120, 2, 8, 16), (128, 2, 8, 16), (129, 2, 8, 18), (6, 2, 8, 2), (1, 2, 8, 1),
     (0, 2, 8, 1), (12, 2, 4, 4), (12, 3, 4, 3), (30, 4, 4, 8), (5, 1, 2, 3)],
)  # fmt: skip
def test_balanced_blocks(n, pool, batch, blocks):
    assert balanced_blocks(n, pool, batch) == blocks
    if n >= pool:
        assert blocks % pool == 0 and -(-n // blocks) <= batch


def test_splits_and_augmentation(built):
    out, _rep = built
    table = read_dataset(out).to_pylist()
    split_of: dict[str, set[str]] = {}
    for r in table:
        split_of.setdefault(r["piece_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())  # no piece crosses splits
    train = [r for r in table if r["split"] == "train"]
    augmented = [r for r in train if json.loads(r["augmentation"])["transpose"] != 0]
    assert augmented
    others = [r for r in table if r["split"] != "train"]
    assert all(json.loads(r["augmentation"]) == {"transpose": 0, "tempo_scale": 1.0,
               "velocity_delta": 0, "octave": 0} for r in others)  # fmt: skip
    for r in augmented[:5]:
        base = next(b for b in table if b["piece_id"] == r["piece_id"]
                    and json.loads(b["augmentation"])["transpose"] == 0
                    and json.loads(b["augmentation"])["octave"] == 0)  # fmt: skip
        aug = json.loads(r["augmentation"])
        shift = aug["transpose"] + 12 * aug["octave"]
        assert r["pitch_min"] == base["pitch_min"] + shift


def test_a_render_and_its_midi_share_a_split(built, tiny_corpus, tmp_path):
    """Each render (tier 2) and its MIDI (tier 3, also its reference) are one song. A
    re-run of the built job's work, with val and test shares large enough to split the
    two quartets (the one style whose songs all pass validation), puts both files of
    every song in one split: one quartet in val, the other in test."""
    out, _ = built
    shutil.copytree(out, tmp_path / "ds")
    cfg = DatasetConfig(
        audio=[str(tiny_corpus / "audio")],
        midi=[str(tiny_corpus / "midi")],
        style_from_folder=True,
        reference_midi=[str(tiny_corpus / "midi")],
        out=str(tmp_path / "ds"),
        seed=3,
        split=(0.34, 0.33, 0.33),
    )
    build_dataset(cfg)
    songs: dict[tuple[str, str], set[str]] = {}
    for r in read_dataset(tmp_path / "ds").to_pylist():
        songs.setdefault((r["style"], Path(r["source_uri"]).stem), set()).add(r["split"])
    assert {st for st, _ in songs} == {"fiddle", "folk", "quartet"}
    assert all(len(s) == 1 for s in songs.values()), songs
    assert sorted(s.pop() for (st, _), s in songs.items() if st == "quartet") == ["test", "val"]


def test_same_seed_same_dataset_with_separate_stages(built, tiny_corpus, tmp_path):
    """Same seed, same rows; also with post-processing in its own actors (the GPU layout)
    instead of fused into the transcription actors (the CPU default)."""
    out, _ = built
    cfg = json.loads((out / "report.json").read_text())
    ds_cfg = DatasetConfig(
        audio=[str(tiny_corpus / "audio")],
        midi=[str(tiny_corpus / "midi")],
        style_from_folder=True,
        reference_midi=[str(tiny_corpus / "midi")],
        out=str(tmp_path),
        seed=3,
    )
    ds_cfg.compute.fuse_cpu_stages = False
    again = build_dataset(ds_cfg)
    assert again["by_split"] == cfg["by_split"]
    a = sorted(
        (r["piece_id"], r["split"], r["augmentation"]) for r in read_dataset(out).to_pylist()
    )
    b = sorted(
        (r["piece_id"], r["split"], r["augmentation"]) for r in read_dataset(tmp_path).to_pylist()
    )
    assert a == b


def _physical_plan(cfg: DatasetConfig) -> str:
    checks = _start_checks(cfg)
    inputs = list_inputs(cfg.audio, [], style=None, style_from_folder=True, tier_midi=3)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        plan_inputs(cfg, inputs, checks).explain()
    return buf.getvalue().split("Physical Plan (Optimized)")[1]


def test_cpu_stages_run_inside_the_model_actors(tiny_corpus, tmp_path):
    """CPU-only: decoding fuses into the transcription actors (one operator, no task
    workers); with fuse_cpu_stages off, each stage is its own operator."""
    cfg = DatasetConfig(audio=[str(tiny_corpus / "audio")], style_from_folder=True,
                        out=str(tmp_path))  # fmt: skip
    plan = _physical_plan(cfg)
    assert (
        "ActorPoolMapOperator[MapBatches(load_inputs)->MapBatches(TranscribeAndPostprocess)]"
        in plan
    )
    assert "TaskPoolMapOperator" not in plan
    cfg.compute.fuse_cpu_stages = False
    plan = _physical_plan(cfg)
    assert "TaskPoolMapOperator[MapBatches(load_inputs)]" in plan
    assert "ActorPoolMapOperator[MapBatches(Transcribe)]" in plan
    assert "ActorPoolMapOperator[MapBatches(Postprocess)]" in plan


def test_broken_inputs_are_rejected_and_counted(broken_inputs, tmp_path):
    bad = broken_inputs
    files = {p.name: p for p in bad.iterdir()}
    out = tmp_path / "out"
    # The quartet profile's lenient polyphony/range rules keep this test about decoding:
    # the valid odd formats must come through and pass, whatever their musical content.
    rep = build_dataset(
        DatasetConfig(audio=[str(bad)], midi=[str(bad)], style="quartet", out=str(out))
    )
    check_contracts(out, rep)
    # MIDI files are listed once (as MIDI); the .txt file once, as unsupported.
    assert rep["inputs"] == len(files)
    rejects = {
        Path(r["source_uri"]).name: r for r in pq.read_table(out / "rejects.parquet").to_pylist()
    }
    expected = {
        "empty.wav": "empty",
        "truncated.wav": "truncated",
        "random.wav": "not_audio",
        "text.wav": "not_audio",
        "nan.wav": "nan_or_inf",
        "silence.wav": "silence",
        "short.wav": "too_short",
        "notes.txt": "unsupported_extension",
        "empty.mid": "midi_unreadable",
        "corrupt.mid": "midi_unreadable",
        "noteless.mid": "too_few_notes",
    }
    for name, reason in expected.items():
        assert rejects[name]["reason"] == reason, (name, rejects.get(name))
    accepted = {
        "six-channel-96k.wav",
        "mono-8k.wav",
        "Ünïcødé façade tune.wav",
        "  spaced   name  .wav",
        "good.mid",
    }
    assert not accepted & set(rejects), {n: rejects[n]["reason"] for n in accepted & set(rejects)}
    assert rep["accepted"] == len(accepted)


def test_tiny_demucs_through_the_real_loader(tiny_corpus, tmp_path):
    from midiforge.separation import make_debug_repo

    repo = make_debug_repo(tmp_path / "demucs", name="debug")
    out = tmp_path / "out"
    wavs = sorted((tiny_corpus / "audio" / "fiddle").glob("*.wav"))[:1]
    cfg = DatasetConfig(
        audio=[str(w) for w in wavs],
        style="fiddle",
        out=str(out),
        separator=f"{repo}:debug",
        stem="other",
    )
    # The models column names the separator from the config: the plan shows it runs.
    assert "MapBatches(Separate)" in _physical_plan(cfg)
    rep = build_dataset(cfg)
    check_contracts(out, rep)
    assert rep["inputs"] == 1
    models = json.loads(pq.read_table(out / "_work").column("models")[0].as_py())
    assert models["separator"] == {"name": f"{repo}:debug", "stem": "other"}
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    # A random Demucs outputs noise-like audio: the job must finish with the row accounted
    # for, accepted or rejected by validation, never failing in separation itself.
    assert all(r["stage"] != "separate" for r in rejects)


def test_offline_separator_name_fails_fast(tmp_path, monkeypatch, tiny_corpus):
    import huggingface_hub.constants

    monkeypatch.setenv("MIDIFORGE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # demucs 4.1 looks in the Hugging Face cache first: empty that too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    started = time.monotonic()
    argv = ["dataset", "build", "--audio", str(tiny_corpus / "audio"), "--out", str(tmp_path / "o"),
            "--separator", "htdemucs"]  # fmt: skip
    assert cli.main(argv) == 2
    assert time.monotonic() - started < 15
    assert not (tmp_path / "o" / "_work").exists()  # nothing was scheduled


def test_bad_stem_and_unknown_transcriber_fail_fast(tmp_path, tiny_corpus, capsys):
    argv = ["dataset", "build", "--audio", str(tiny_corpus / "audio"), "--out", str(tmp_path / "o"),
            "--transcriber", "no-such-model"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "no model named 'no-such-model'" in capsys.readouterr().err
    assert cli.main(["dataset", "build", "--out", str(tmp_path / "o")]) == 2
    assert "give audio inputs" in capsys.readouterr().err


def test_model_actors_that_cannot_start_stop_the_job_with_the_sizes(tmp_path, tiny_corpus, capsys):
    """Actors asking for more CPUs than the cluster has: an error naming what was asked
    and what there is, after compute.wait_for_actors_s, not a job waiting forever."""
    argv = ["dataset", "build", "--audio", str(tiny_corpus / "audio"), "--style-from-folder",
            "--out", str(tmp_path / "o"), "--compute.transcribe.num_cpus=64",
            "--compute.wait_for_actors_s=3"]  # fmt: skip
    t0 = time.monotonic()
    assert cli.main(argv) == 2
    assert time.monotonic() - t0 < 60
    err = capsys.readouterr().err
    assert "did not all start within compute.wait_for_actors_s=3 s" in err
    assert "transcribe 2 x (64 CPU, 0 GPU)" in err and "'CPU': " in err
