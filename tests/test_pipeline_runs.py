"""The dataset job as users run it: killed and resumed, and submitted to a Ray head with
`ray job submit`. Both start real processes on 127.0.0.1 and clean them up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from midiforge import config as cfgmod
from midiforge.config import ConfigError
from midiforge.pipeline import work
from midiforge.pipeline.build import build_dataset
from midiforge.pipeline.config import DatasetConfig
from midiforge.pipeline.inputs import piece_id

from .ray_nodes import BIN, kill_group, ray_env, start_head, stop, wait_http

ROOT = Path(__file__).resolve().parents[1]


def rows(out: Path) -> list[tuple]:
    table = pads.dataset(out / "dataset", format="parquet", partitioning="hive").to_table()
    return sorted(
        (r["piece_id"], r["split"], r["augmentation"], tuple(r["tokens"]), r["midi"])
        for r in table.to_pylist()
    )


def rejects(out: Path) -> list[tuple]:
    return sorted(tuple(r.values()) for r in pq.read_table(out / "rejects.parquet").to_pylist())


@pytest.mark.usefixtures("ray_local")
def test_killed_run_resumes_to_the_same_dataset(tiny_corpus, tmp_path):
    common = ["--audio", str(tiny_corpus / "audio"), "--midi", str(tiny_corpus / "midi"),
              "--style-from-folder", "--seed", "5"]  # fmt: skip
    one_at_a_time = [f"--compute.{s}.batch_size=1" for s in ("decode", "transcribe", "postprocess")]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(BIN / "midiforge"), "dataset", "build", *common, "--out", str(killed), *one_at_a_time],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes its local Ray too
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    deadline = time.monotonic() + 240
    while not work.work_files(str(killed)):
        assert proc.poll() is None, "the run ended before any input finished"
        assert time.monotonic() < deadline, "no input finished in time"
        time.sleep(0.2)
    kill_group(proc)
    # Workers already inside a batch when the driver died finish writing it (for well
    # under a second), then exit: wait for the folder to go quiet before resuming.
    finished, quiet_since = work.work_files(str(killed)), time.monotonic()
    while time.monotonic() - quiet_since < 3:
        time.sleep(0.2)
        now = work.work_files(str(killed))
        if now != finished:
            finished, quiet_since = now, time.monotonic()
    before = {p: Path(p).read_bytes() for p in finished}
    assert not (killed / "report.json").exists()  # it really died midway

    cfg = {"audio": [str(tiny_corpus / "audio")], "midi": [str(tiny_corpus / "midi")],
           "style_from_folder": True, "seed": 5}  # fmt: skip
    rep = build_dataset(DatasetConfig(out=str(killed), **cfg))
    for p, data in before.items():  # finished inputs were not redone
        assert Path(p).read_bytes() == data
    ids = pq.read_table(killed / work.WORK_DIR, columns=["piece_id"]).column("piece_id").to_pylist()
    assert len(ids) == len(set(ids)) == rep["inputs"]

    fresh = tmp_path / "fresh"
    rep_fresh = build_dataset(DatasetConfig(out=str(fresh), **cfg))
    assert {k: v for k, v in rep.items() if k != "elapsed_seconds"} == {
        k: v for k, v in rep_fresh.items() if k != "elapsed_seconds"
    }
    assert rows(killed) == rows(fresh)
    assert rejects(killed) == rejects(fresh)


@pytest.mark.usefixtures("ray_local")
def test_rerun_after_an_input_is_removed_equals_a_fresh_run(tiny_corpus, tmp_path):
    """Work rows of an input since removed, and a second row of a piece processed twice
    (what a killed run can leave), stay out of the dataset: a re-run into the same folder
    builds what a fresh run on the remaining inputs builds."""
    d = tmp_path / "midi"
    shutil.copytree(tiny_corpus / "midi", d)
    out = tmp_path / "out"
    cfg = {"style_from_folder": True, "seed": 2}
    first = build_dataset(DatasetConfig(midi=[str(d)], out=str(out), **cfg))
    assert first["inputs"] == 6
    accepted = {r[0] for r in rows(out)}
    gone = next(p for p in sorted(d.rglob("*.mid")) if piece_id(str(p)) in accepted)
    gone.unlink()
    for i, p in enumerate(work.work_files(str(out))):
        shutil.copy(p, Path(p).with_name(f"part-zzzz-copy-{i}.parquet"))

    again = build_dataset(DatasetConfig(midi=[str(d)], out=str(out), **cfg))
    fresh = tmp_path / "fresh"
    rep_fresh = build_dataset(DatasetConfig(midi=[str(d)], out=str(fresh), **cfg))
    assert again["inputs"] == again["accepted"] + again["rejected"] == 5
    assert {k: v for k, v in again.items() if k != "elapsed_seconds"} == {
        k: v for k, v in rep_fresh.items() if k != "elapsed_seconds"
    }
    assert rows(out) == rows(fresh)
    assert rejects(out) == rejects(fresh)
    assert piece_id(str(gone)) not in {r[0] for r in rows(out)}

    # Work rows are reused only under the settings that made them; the dataset stays.
    changed = cfgmod.load(DatasetConfig, None, ["--validate.max_polyphony=3"],
                          midi=[str(d)], out=str(out), **cfg)  # fmt: skip
    with pytest.raises(ConfigError, match=r"validate\.max_polyphony: 1 then, 3 now"):
        build_dataset(changed)
    assert rows(out) == rows(fresh)


def test_ray_job_submit_from_a_laptop(tiny_corpus, tmp_path):
    # Ray >= 2.52 makes `ray start` require a token (written to ~/.ray/auth_token); the
    # client sends it only in token mode.
    env = ray_env(RAY_AUTH_MODE="token")
    head, ports = start_head(env)
    try:
        address = f"http://127.0.0.1:{ports['dash']}"
        wait_http(f"{address}/api/version", head, 120)
        out = tmp_path / "out"
        wavs = sorted((tiny_corpus / "audio" / "fiddle").glob("*.wav"))
        submit = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                address,
                "--runtime-env",
                "cluster/runtime-env.yaml",
                "--",
                "python",
                "jobs/build_dataset.py",
                "--audio",
                *map(str, wavs),
                "--style",
                "fiddle",
                "--out",
                str(out),
                "--seed",
                "1",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
            check=False,
        )
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout
        rep = json.loads((out / "report.json").read_text())
        assert rep["inputs"] == len(wavs)
        assert rep["accepted"] + rep["rejected"] == rep["inputs"]
        assert "dataset:" in submit.stdout  # the job's own summary came back in its logs
    finally:
        stop(head)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.usefixtures("ray_local")
def test_rerun_after_a_file_changed_in_place_equals_a_fresh_run(tiny_corpus, tmp_path):
    """A file rewritten under its name since its work row was made is redone (its size or
    modification time differs); the old row, reused by path, used to stay in the dataset."""
    d = tmp_path / "midi"
    shutil.copytree(tiny_corpus / "midi", d)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    cfg = {"style_from_folder": True, "seed": 2}
    build_dataset(DatasetConfig(midi=[str(d)], out=str(out), **cfg))
    accepted = {r[0] for r in rows(out)}
    changed = next(p for p in sorted(d.rglob("*.mid")) if piece_id(str(p)) in accepted)
    changed.write_bytes(b"MThd, then nothing a MIDI reader can use")

    again = build_dataset(DatasetConfig(midi=[str(d)], out=str(out), **cfg))
    rep_fresh = build_dataset(DatasetConfig(midi=[str(d)], out=str(fresh), **cfg))
    assert piece_id(str(changed)) not in {r[0] for r in rows(out)}
    assert str(changed) in {r[0] for r in rejects(out)}
    assert {k: v for k, v in again.items() if k != "elapsed_seconds"} == {
        k: v for k, v in rep_fresh.items() if k != "elapsed_seconds"
    }
    assert rows(out) == rows(fresh)
    assert rejects(out) == rejects(fresh)


def test_rerun_with_a_file_listed_as_another_kind_equals_a_fresh_run(tiny_corpus, tmp_path):
    """MIDI files given under --audio only are rejects (unsupported_extension); the same
    folder re-run with --midi too accepts them, as a fresh run does. Their old rejects
    used to be kept, since a work row counted as done whatever it was made as."""
    d = tmp_path / "fiddle"
    shutil.copytree(tiny_corpus / "midi" / "fiddle", d)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    first = build_dataset(DatasetConfig(audio=[str(d)], style="fiddle", out=str(out)))
    assert first["accepted"] == 0 and first["rejected"] == first["inputs"] > 0
    cfg = {"audio": [str(d)], "midi": [str(d)], "style": "fiddle"}
    again = build_dataset(DatasetConfig(out=str(out), **cfg))
    rep_fresh = build_dataset(DatasetConfig(out=str(fresh), **cfg))
    assert again["accepted"] == rep_fresh["accepted"] > 0
    assert {k: v for k, v in again.items() if k != "elapsed_seconds"} == {
        k: v for k, v in rep_fresh.items() if k != "elapsed_seconds"
    }
    assert rows(out) == rows(fresh)
    assert rejects(out) == rejects(fresh)
