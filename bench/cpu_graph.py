"""basic-pitch per window, as shipped vs with its graph rewritten for CPUs (`cpu_graph`).

One single-threaded session each, a window per call (what a Serve replica runs), on the
same windows of the demo corpus, measured in alternating rounds; prints CPU ms per window,
the ratio, and the largest output difference. OpenVINO is measured too where its
onnxruntime plugin runs (Intel CPUs).

    .venv/bin/python bench/cpu_graph.py [--rounds 5] [--windows 28]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def windows(n: int) -> np.ndarray:
    from midiforge import audio
    from midiforge.transcription.runner import windows as frame
    from serve_load import clips  # a sibling script: bench/ is on sys.path

    decoded = [audio.load_for_transcription(c, audio.AudioLimits()) for c in clips()]
    return np.concatenate([frame(c) for c in decoded])[:n]


def session(device: str, rewritten: bool):
    from midiforge import registry
    from midiforge.transcription.runner import OnnxTranscriber

    os.environ["MIDIFORGE_CPU_GRAPH"] = "1" if rewritten else "0"
    try:
        return OnnxTranscriber(
            registry.stock_model_path(), device, batch_windows=1, intra_op_threads=1
        )
    finally:
        del os.environ["MIDIFORGE_CPU_GRAPH"]


def per_window(runner, win: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    t0 = time.process_time()
    out = runner.run_windows(win)
    return (time.process_time() - t0) / len(win) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--windows", type=int, default=28)
    args = ap.parse_args()
    from midiforge.transcription.polyphase import channel_block
    from midiforge.transcription.sessions import openvino_device

    win = windows(args.windows)
    devices = ["cpu"]
    try:
        openvino_device()
        devices.append("openvino")
    except RuntimeError as e:
        print(f"openvino: not measured ({e})")
    print(f"{len(win)} windows, one thread, {args.rounds} alternating rounds; "
          f"channel block on this CPU: {channel_block()}")  # fmt: skip
    for device in devices:
        shipped, split = session(device, False), session(device, True)
        per_window(shipped, win[:2]), per_window(split, win[:2])  # warm-up
        a, b, diff = [], [], 0.0
        for _ in range(args.rounds):
            ta, ref = per_window(shipped, win)
            tb, out = per_window(split, win)
            a.append(ta)
            b.append(tb)
            diff = max(diff, *(float(np.abs(out[k] - ref[k]).max()) for k in ref))
        ratio = float(np.median(np.array(b) / np.array(a)))
        print(f"{device:8s} as shipped {np.median(a):5.1f} ms/window, rewritten "
              f"{np.median(b):5.1f} ms/window: {ratio:.2f} of the time; "
              f"largest output difference {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
