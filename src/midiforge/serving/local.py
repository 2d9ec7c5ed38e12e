"""`midiforge serve`: the app from serve/config.yaml on a local Ray, bound to 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

# Ray settings for a cluster that serves, read by Ray's processes when they start: a local
# Ray gets them from `midiforge serve`, k8s/rayservice.yaml sets the same on its pods (a
# test keeps the two equal). bench/serve_load.py's load (60 requests, concurrency 8) on 2
# cores, 2026-12-03, both (with a 2 MB limit) vs neither, three alternating pairs: 4.93 vs
# 4.37, 5.35 vs 4.67, 4.99 vs 4.80 req/s; 402 vs 454, 367 vs 423, 395 vs 412 ms of CPU
# per request over all processes.
SERVE_RAY_ENV = {
    # Each clip goes from the Gateway to a Transcriber as a call argument (0.88 MB for
    # 10 s). Up to 4 MiB (~47 s) it travels inside the call instead of through the
    # object store: a call with 0.88 MB took 5.4 instead of 10.7 ms between two
    # processes. Not for dataset clusters, where tasks would return blocks this size
    # inline to the driver.
    "RAY_max_direct_call_object_size": str(4 * 1024 * 1024),
    # Serve's controller reconciles 10 times a second by default: 0.45 s of CPU per 10 s
    # idle, 8-15 ms per request under load on 2 cores. Twice a second took 0.19 s and
    # 3-6 ms; autoscaling still waits its upscale/downscale delays (seconds) as before.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}

_DEPLOYMENT_KEYS = (
    "num_replicas",
    "max_ongoing_requests",
    "autoscaling_config",
    "ray_actor_options",
)


def read_app_config(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(builder args, {deployment name: .options() kwargs}) of the config's first app."""
    try:
        cfg = yaml.safe_load(Path(path).read_text())
        app = cfg["applications"][0]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as e:
        raise MidiforgeError(f"{path}: not a Serve config with an application ({e})") from None
    options = {
        d["name"]: {k: d[k] for k in _DEPLOYMENT_KEYS if k in d} for d in app.get("deployments", [])
    }
    return dict(app.get("args") or {}), options


def with_overrides(args: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Builder args with `--key=value` overrides on top, checked as ServeSettings before
    any Ray starts (a typo is a ConfigError, not a default)."""
    from midiforge import config as cfgmod
    from midiforge.serving.settings import ServeSettings

    args = {**args, **cfgmod.parse_overrides(overrides or [])}
    cfgmod.from_dict(ServeSettings, dict(args))
    return args


@contextlib.contextmanager
def serve_ray_env() -> Iterator[None]:
    """SERVE_RAY_ENV in os.environ for a local Ray started inside (its processes inherit
    it), this process's environment restored after. A value already set wins."""
    added = {k: v for k, v in SERVE_RAY_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def start(
    config: str | Path,
    port: int = 8000,
    overrides: list[str] | None = None,
    *,
    deployment_options: dict[str, dict[str, Any]] | None = None,
    blocking: bool = False,
) -> None:
    """serve/config.yaml's app on http://127.0.0.1:PORT, on a new local Ray with
    SERVE_RAY_ENV (or the Ray this process has joined); `deployment_options` go on top of
    the config's per deployment. Returns once the app is up, or blocks until interrupted."""
    from ray import serve

    from midiforge.pipeline.build import connect
    from midiforge.serving.app import build_app

    args, options = read_app_config(config)
    args = with_overrides(args, overrides)
    for name, extra in (deployment_options or {}).items():
        options.setdefault(name, {}).update(extra)
    with serve_ray_env():
        connect(None)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        args,
        gateway_options=options.get("Gateway"),
        transcriber_options=options.get("Transcriber"),
        generator_options=options.get("Generation"),
        classifier_options=options.get("Classification"),
    )
    if blocking:
        log.info("serving on http://127.0.0.1:%d (docs at /docs)", port)
    serve.run(app, name="midiforge", route_prefix="/", blocking=blocking)


def run(config: str | Path, port: int = 8000, overrides: list[str] | None = None) -> None:
    """Block serving on http://127.0.0.1:PORT until interrupted."""
    start(config, port, overrides, blocking=True)
