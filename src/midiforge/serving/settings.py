"""Limits and defaults of the HTTP service. Replica counts and resources live in
serve/config.yaml; these are per-request rules."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ServeSettings:
    models_root: str | None = None  # registry root; None = $MIDIFORGE_MODELS or ~/.midiforge/models
    default_model: str = "stock"
    # /v1/generate's model when a request names none: "rules" or an exported LM in the
    # registry. None = 503 for such requests until one is configured.
    generator_model: str | None = None
    # /v1/classify's style classifier when a request names none (a registry name of kind
    # style-classifier). None = 503 for such requests until one is configured.
    classifier_model: str | None = None
    max_upload_bytes: int = 50 * 1024 * 1024  # 413 above this
    max_audio_seconds: float = 600.0  # 422 above this
    request_timeout_s: float = 60.0  # 504 when a transcription takes longer
    # The name of the variable holding the token (auth is on when it is set), not a secret.
    token_env: str = "MIDIFORGE_API_TOKEN"  # noqa: S105
    # Requests whose windows share one model call: at most the Transcriber's
    # max_ongoing_requests (serve/config.yaml), which is all a replica is ever sent.
    batch_max_size: int = 4
    batch_wait_timeout_s: float = 0.02
    threads: int = 1  # onnxruntime threads per replica (replicas scale out instead)
    # basic-pitch windows per onnxruntime call. One on a single CPU thread: in calls of 16
    # a window took 15% longer (24 vs 28 ms, bench/cpu_graph.py's windows), its layers'
    # outputs no longer fitting in cache. More for GPU replicas.
    batch_windows: int = 1
    # Uploads one Gateway replica decodes at once; the rest wait their turn. Each may hold
    # ~0.75 GB while it is decoded and resampled (600 s of 192 kHz stereo: its samples
    # averaged to mono block by block, then the resampler's buffers).
    max_concurrent_decodes: int = 2

    def validate_config(self) -> None:
        from midiforge.config import ConfigError

        positive = {
            "max_upload_bytes": self.max_upload_bytes,
            "max_audio_seconds": self.max_audio_seconds,
            "request_timeout_s": self.request_timeout_s,
            "batch_max_size": self.batch_max_size,
            "threads": self.threads,
            "batch_windows": self.batch_windows,
            "max_concurrent_decodes": self.max_concurrent_decodes,
        }
        for name, value in positive.items():
            # inf too: a limit that never binds would reach int() in the decoder
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"serve setting {name} must be finite and > 0, not {value}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(
                f"serve setting batch_wait_timeout_s must be >= 0, not {self.batch_wait_timeout_s}"
            )
        if not self.default_model:
            raise ConfigError("serve setting default_model is empty")
