"""Transcription throughput in audio-seconds per wall-second, three ways, one run:

1. baseline: basic-pitch's own `predict()`, file by file (decode, windows of 1, decoding);
2. ceiling:  the ONNX model alone on pre-decoded windows, batched (no I/O, no decoding),
   on the provider the pipeline picks (`--device`, default auto: OpenVINO on x86 CPUs),
   the better of one session on all cores and one single-threaded session per core in
   as many processes (the pipeline's layout); onnxruntime's own CPU kernels (one session)
   are printed for reference;
3. pipeline: this project's Ray Data path end to end (read, decode, batched ONNX across
   files, note decoding, validation, tokenization, work files), Ray already started;
   measured warm (Ray Data's cluster-wide actors already up, as for every job after a
   cluster's first) and cold (the first Ray Data job on a new Ray).

Targets on 2 cores: pipeline >= 1.2x baseline and >= 0.8x ceiling. Every figure is
measured in each of `--rounds` rounds, back to back, and the ratios are the medians of
the rounds' own ratios (this machine's speed drifts for seconds to minutes at a time).

    .venv/bin/python bench/transcribe_throughput.py [--audio out/demo/corpus/audio] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _files(audio_dir: str | None) -> list[Path]:
    if audio_dir and Path(audio_dir).is_dir():
        return sorted(Path(audio_dir).rglob("*.wav"))
    from midiforge.corpus_render import RenderConfig, render_corpus

    out = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    render_corpus(RenderConfig(per_style=3, seconds=15.0, out=str(out)))
    return sorted((out / "audio").rglob("*.wav"))


def baseline(files: list[Path], model_path: str) -> float:
    from basic_pitch.inference import Model, predict

    model = Model(model_path)
    predict(str(files[0]), model)  # warm-up: imports, JIT in resampy/librosa
    t0 = time.perf_counter()
    for f in files:
        predict(str(f), model)
    return time.perf_counter() - t0


def _ceiling_worker(wins: np.ndarray, session: tuple, passes: int, barrier, out) -> None:
    from midiforge.transcription.runner import OnnxTranscriber

    runner = OnnxTranscriber(*session)  # model, device, batch_windows, intra_op_threads
    batch = runner.batch_windows
    # Warm-up on a full batch and on the last, shorter one: OpenVINO prepares each new
    # input shape on its first run.
    runner.run_windows(wins[: 2 * batch])
    runner.run_windows(wins[: len(wins) % batch or batch])
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(passes):
        runner.run_windows(wins)
    out.put((t0, time.perf_counter(), runner.provider))


def layouts() -> list[int]:
    """The `procs` a ceiling is measured with: one session on every core, and one
    single-threaded session per core. On 2 cores either can win, so a ceiling is the
    better of the two."""
    return sorted({1, os.cpu_count() or 1})


def ceiling(
    clips: list[np.ndarray], model_path: str, batch: int, device: str, *, procs: int, passes: int
):
    """(seconds, provider) for the model alone on every window, `passes` times over: `procs`
    processes with one session each, the windows split between them, every core in use (1
    process: one session on all cores; N: N single-threaded sessions, the layout the
    pipeline uses). From the moment all are ready to the last one's end."""
    import multiprocessing as mp

    from midiforge.transcription.runner import windows

    wins = np.concatenate([windows(c) for c in clips])
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    threads = 0 if procs == 1 else 1
    parts = np.array_split(wins, procs)
    session = (model_path, device, batch, threads)
    workers = [
        ctx.Process(target=_ceiling_worker, args=(part, session, passes, barrier, out))
        for part in parts
    ]
    for w in workers:
        w.start()
    spans = [out.get() for _ in workers]
    for w in workers:
        w.join()
    return max(e for _, e, _ in spans) - min(s for s, _, _ in spans), spans[0][2]


def _wait_for_map_workers_to_exit(timeout_s: float = 30.0) -> None:
    """A Ray Data run ends by killing its actors, and their processes take a second or
    two to exit (~0.5 CPU-s of teardown each): the warm run starts on a quiet machine, as
    a job after another's end would, not beside the cold run's teardown."""
    import psutil  # installed with peft

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs = psutil.process_iter(["cmdline"])
        if not any("ray::MapWorker" in " ".join(p.info["cmdline"] or []) for p in procs):
            return
        time.sleep(0.1)


def pipeline(files: list[Path], batch: int, device: str, overrides: list[str]) -> list[float]:
    """Seconds from submitting the Ray Data pipeline to its last work file, twice on one
    Ray: first cold (Ray Data also starts its cluster-wide actors: stats, autoscaling,
    actor locations), then warm (those actors are up, as for any job after a cluster's
    first). Each run starts its own model actors (onnxruntime, miditok, music21 imports)
    and writes into its own new output folder, so nothing resumes."""
    import ray

    from midiforge import config as cfgmod
    from midiforge.pipeline.build import _start_checks, connect, process_inputs
    from midiforge.pipeline.config import DatasetConfig
    from midiforge.pipeline.inputs import list_inputs

    connect(None)
    times = []
    for _ in range(2):
        _wait_for_map_workers_to_exit()
        out = tempfile.mkdtemp(prefix="bench-pipeline-")
        cfg = cfgmod.load(DatasetConfig, None, [*overrides, f"--batch_windows={batch}"],
                          audio=[str(f) for f in files], style_from_folder=True, out=out,
                          device=device)  # fmt: skip
        inputs = list_inputs(cfg.audio, [], style=None, style_from_folder=True, tier_midi=3)
        checks = _start_checks(cfg)
        t0 = time.time()
        process_inputs(cfg, inputs, checks)
        times.append(time.time() - t0)
    ray.shutdown()
    return times


def one_round(files, clips, model_path: str, many: list[Path], args, *, total: float) -> dict:
    """Every figure once, back to back: audio-s per wall-s, and the provider's name."""
    n, batch = args.repeat, args.batch_windows
    fig = {"baseline": total / baseline(files, model_path)}
    # The ceiling is the better of the layouts(); the single-threaded one is what the
    # pipeline's actors run. Each runs over as much audio as the pipeline (--repeat passes).
    for procs in layouts():
        t, fig["provider"] = ceiling(clips, model_path, batch, args.device, procs=procs, passes=n)
        fig[f"layout{procs}"] = n * total / t
    fig["ceiling"] = max(v for k, v in fig.items() if k.startswith("layout"))
    runs = pipeline(many, batch, args.device, [*args.overrides, *args.extra])
    fig["cold"], fig["warm"] = (n * total / t for t in runs)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--audio", default="out/demo/corpus/audio", help="folder of WAVs (rendered if missing)"
    )
    ap.add_argument("--batch-windows", type=int, default=16)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | openvino")
    ap.add_argument(
        "--repeat",
        type=int,
        default=10,
        help="list the audio this many times (pipeline); the ceiling runs as many passes",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure everything this many times, back to back; ratios are per round",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        help="pipeline config overrides, e.g. --compute.transcribe.num_cpus=2",
    )
    args, args.extra = ap.parse_known_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    from midiforge import audio, registry

    files = _files(args.audio)
    model_path = str(registry.stock_model_path())
    clips = [audio.load_for_transcription(f.read_bytes(), audio.AudioLimits()) for f in files]
    total = sum(len(c) for c in clips) / audio.TRANSCRIPTION_SR
    print(f"{len(files)} files, {total:.1f} s of audio, {os.cpu_count()} CPUs")
    links = Path(tempfile.mkdtemp(prefix="bench-copies-"))
    many = []
    for k in range(args.repeat):  # distinct files, so each copy is its own input
        for f in files:
            many.append(links / f"{k}-{f.parent.name}-{f.name}")
            shutil.copyfile(f, many[-1])
    # This machine's speed drifts by 20% and more, for seconds to minutes at a time: a
    # ratio of two figures measured minutes apart says more about the drift than about
    # the pipeline. So every figure is measured in each round, back to back, and each
    # ratio is taken within a round; the medians over rounds are the result.
    rounds = [
        one_round(files, clips, model_path, many, args, total=total) for _ in range(args.rounds)
    ]
    size = f"{args.repeat} x {total:.0f} s of audio per figure"
    print(f"{len(rounds)} rounds, {size}; audio-s per wall-s (model actors' start-up included)")
    cols = ("baseline", "ceiling", "layout1", f"layout{os.cpu_count()}", "warm", "cold")
    ratios = (("warm", "baseline"), ("warm", "ceiling"), ("cold", "baseline"), ("cold", "ceiling"))
    print("round " + " ".join(f"{c:>9s}" for c in cols)
          + "".join(f" {a}/{b[:4]:>4s}" for a, b in ratios))  # fmt: skip
    for i, f in enumerate(rounds, 1):
        print(f"{i:5d} " + " ".join(f"{f.get(c, float('nan')):9.1f}" for c in cols)
              + "".join(f" {f[a] / f[b]:9.2f}" for a, b in ratios))  # fmt: skip

    def med(a: str, b: str | None = None) -> float:
        return float(np.median([f[a] / (f[b] if b else 1.0) for f in rounds]))

    ort_cpu = (
        args.repeat
        * total
        / ceiling(clips, model_path, args.batch_windows, "cpu", procs=1, passes=args.repeat)[0]
    )
    provider = rounds[0]["provider"]
    print("medians over the rounds:")
    print(f"baseline  basic_pitch.predict, file by file   {med('baseline'):8.1f}")
    print(f"ceiling   ONNX model alone, batched windows   {med('ceiling'):8.1f} ({provider}, "
          "each round's better layout)")  # fmt: skip
    print(f"          same, onnxruntime's CPU provider    {ort_cpu:8.1f} (once, after the rounds)")
    print(f"pipeline  Ray Data path, end to end, warm     {med('warm'):8.1f}")
    print(f"          same, cold (Ray Data's first job)   {med('cold'):8.1f}")
    for name in ("warm", "cold"):
        print(
            f"{name}: pipeline / baseline = {med(name, 'baseline'):.2f}x (target >= 1.2), "
            f"pipeline / ceiling = {med(name, 'ceiling'):.2f} (target >= 0.8); "
            "medians of the rounds' ratios"
        )


if __name__ == "__main__":
    main()
