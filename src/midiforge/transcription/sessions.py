"""onnxruntime sessions for the transcription models, on the fastest provider at hand.

`device` is one of:
- `auto`: CUDA when onnxruntime has it, else OpenVINO when its plugin loads, else `cpu`;
- `cuda`, `openvino`: that provider or a clear error;
- `cpu`: onnxruntime's own CPU kernels (the reference the parity tests compare against).

OpenVINO comes as onnxruntime's plugin execution provider (the `onnxruntime-ep-openvino`
wheel; x86-64 Linux and Windows). On the basic-pitch model it ran 1.20-1.35x faster than
onnxruntime's CPU kernels on the same 2 cores (`bench/transcribe_throughput.py` prints
both), and its outputs stay within 1e-5 of theirs.

OpenVINO compiles the model for the CPU when a session is created (~0.2 s of a 0.3 s
start on the basic-pitch model, paid by every Ray Data actor and Serve replica). It keeps
the compiled blob in `openvino_cache_dir()`, keyed by the model's content and the device
settings, so later sessions on the same machine load it instead (~0.1 s); its outputs are
bit-identical to a fresh compile.

The plugin (1.8) offers Intel CPUs only (onnxruntime PR 31981 would lift that); on other
CPUs `auto` takes onnxruntime's CPU provider and `openvino` raises.

On CPUs both providers run the model with its graph rewritten (`cpu_graph`): narrow
convolutions as polyphase ones, elementwise constants shaped for onnxruntime's fast
broadcasting. On basic-pitch, ~40% less time per window (`bench/cpu_graph.py`), outputs
within 2e-6.

OpenVINO sessions take one window per call: a batch dimension left open makes OpenVINO
compile shape-generic kernels, and fixing it to 1 ran basic-pitch 8-11% faster on one
thread (31.7 vs 34.4-35.6 ms per window, 12 alternating rounds). Their outputs move by
under 3e-7.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "openvino")
_OPENVINO_REGISTRATION = "midiforge-openvino"
_lock = threading.Lock()
_openvino: dict[str, Any] = {}  # per process: {"device": OrtEpDevice} or {"error": text}


def openvino_device() -> Any:
    """OpenVINO's CPU device for onnxruntime, registering the plugin once per process.

    Raises RuntimeError saying why when the plugin is missing or does not load."""
    import onnxruntime as ort

    with _lock:
        if not _openvino:
            try:
                import onnxruntime_ep_openvino as plugin

                ort.register_execution_provider_library(
                    _OPENVINO_REGISTRATION, plugin.get_library_path()
                )
                cpus = [
                    d
                    for d in ort.get_ep_devices()
                    if d.ep_name == plugin.get_ep_name() and d.ep_metadata.get("ov_device") == "CPU"
                ]
                if not cpus:
                    raise RuntimeError("the OpenVINO plugin found no CPU it runs on: Intel's only")
                _openvino["device"] = cpus[0]
            except Exception as e:  # not installed, failing to load, or no CPU it runs on
                _openvino["error"] = f"{type(e).__name__}: {e}"
                if isinstance(e, ImportError):
                    _openvino["hint"] = (
                        "; on x86-64 Linux or Windows, `pip install onnxruntime-ep-openvino`"
                    )
        if "error" in _openvino:
            raise RuntimeError(
                "onnxruntime's OpenVINO provider is not usable here "
                f"({_openvino['error']}){_openvino.get('hint', '')}"
            )
        return _openvino["device"]


def cache_dir(env: str, name: str) -> str | None:
    """A cache folder: $`env` (empty turns the cache off), else `registry.cache_home()`/
    `name` (~/.cache/midiforge). None when it is off or cannot be created or written."""
    from midiforge.registry import cache_home

    value = os.environ.get(env)
    if value == "":
        return None
    path = Path(value) if value is not None else cache_home() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.info("%s cache off: %s", name, e)
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        log.info("%s cache off: %s is not writable", name, path)
        return None
    return str(path)


def openvino_cache_dir() -> str | None:
    """The folder for OpenVINO's compiled models ($MIDIFORGE_OPENVINO_CACHE, see
    `cache_dir`). None when it is off or unusable: OpenVINO then compiles each time (with
    a folder it cannot create it would fail the session instead)."""
    return cache_dir("MIDIFORGE_OPENVINO_CACHE", "openvino")


def _openvino_options(threads: int) -> dict[str, str]:
    cpu = {
        # On CPUs with AMX or AVX512-BF16 OpenVINO computes in bfloat16 by default, which
        # moves basic-pitch's outputs by ~0.09 and changes the notes.
        "INFERENCE_PRECISION_HINT": "f32",
        # Its default pins threads to the first cores: two actors on one node would then
        # share a core and leave the other idle.
        "ENABLE_CPU_PINNING": "NO",
    }
    if threads > 0:
        cpu["INFERENCE_NUM_THREADS"] = str(threads)
    cache = openvino_cache_dir()
    if cache:
        cpu["CACHE_DIR"] = cache
    return {"load_config": json.dumps({"CPU": cpu})}


def _open_batch_dim(model_path: str | Path) -> str | None:
    """The name of the model's batch dimension when the file leaves it open (each
    exporter names it its own way), else None. Read through an unoptimized CPU session,
    which loads in milliseconds."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    probe = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    batch = probe.get_inputs()[0].shape[0]
    return batch if isinstance(batch, str) and batch else None


def providers_for(device: str) -> list[str]:
    """onnxruntime's built-in providers for device 'auto' | 'cpu' | 'cuda' (no plugins)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError("device 'cuda' asked for, but onnxruntime has no CUDA provider here")
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def cpu_model(model_path: str | Path) -> str | bytes:
    """The model as a CPU runs it fastest (`cpu_graph`: exact rewrites of its graph), or
    its path where nothing gains ($MIDIFORGE_CPU_GRAPH=0 turns the rewrites off). A file
    the rewrites cannot read is passed on as it is, for onnxruntime to say what is wrong.
    Rewritten models are kept in $MIDIFORGE_CPU_GRAPH_CACHE (see `cache_dir`)."""
    from midiforge.transcription import cpu_graph

    if os.environ.get("MIDIFORGE_CPU_GRAPH", "1") == "0":
        return str(model_path)
    cache = cache_dir("MIDIFORGE_CPU_GRAPH_CACHE", "cpu_graph")
    try:
        rewritten = cpu_graph.for_cpu(Path(model_path).read_bytes(), cache)
    except Exception as e:  # not ONNX, an unreadable graph: onnxruntime's error says which
        log.info("%s: graph left as it is (%s: %s)", model_path, type(e).__name__, e)
        return str(model_path)
    return str(model_path) if rewritten is None else rewritten


class ModelFileError(MidiforgeError, ValueError):
    """A file onnxruntime cannot load as a model (not ONNX, cut short, an unknown op)."""


def create_session(model_path: str | Path, device: str = "auto", threads: int = 0):
    """(onnxruntime.InferenceSession, provider name) for `device` (see the module doc).

    threads: intra-op threads; 0 lets the provider use every core it is given.
    ModelFileError when the file is no loadable model."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    names = ("Fail", "InvalidArgument", "InvalidProtobuf", "InvalidGraph", "NoSuchFile",
             "NotImplemented")  # fmt: skip
    unloadable = tuple(getattr(ort_state, n) for n in names)
    try:
        return _create_session(model_path, device, threads)
    except unloadable as e:
        first = (str(e).splitlines() or [""])[0][:300]
        raise ModelFileError(f"{model_path}: not a loadable ONNX model ({first})") from e


def _create_session(model_path: str | Path, device: str, threads: int):
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads

    def builtin(providers: list[str]):
        on_gpu = providers[0] == "CUDAExecutionProvider"
        model = str(model_path) if on_gpu else cpu_model(model_path)
        return ort.InferenceSession(model, opts, providers=providers), providers[0]

    if device != "openvino":
        providers = providers_for(device)
        if device == "cpu" or providers[0] == "CUDAExecutionProvider":
            return builtin(providers)
    # `openvino`, or `auto` where onnxruntime has no CUDA.
    try:
        ov = openvino_device()
    except RuntimeError as e:
        if device == "openvino":
            raise
        log.info("%s; using onnxruntime's CPU provider", e)
        return builtin(["CPUExecutionProvider"])
    batch = _open_batch_dim(model_path)
    if batch:
        opts.add_free_dimension_override_by_name(batch, 1)
    # Nodes OpenVINO cannot take run on onnxruntime's CPU provider, added after it.
    opts.add_provider_for_devices([ov], _openvino_options(threads))
    return ort.InferenceSession(cpu_model(model_path), sess_options=opts), ov.ep_name
