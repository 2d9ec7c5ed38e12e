"""`midiforge serve`: the app from serve/config.yaml on a local Ray, bound to 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from midiforge.errors import MidiforgeError

log = logging.getLogger(__name__)

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


def run(config: str | Path, port: int = 8000, overrides: list[str] | None = None) -> None:
    """Block serving on http://127.0.0.1:PORT until interrupted."""
    from ray import serve

    from midiforge.pipeline.build import connect
    from midiforge.serving.app import build_app

    args, options = read_app_config(config)
    args = with_overrides(args, overrides)
    connect(None)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        args,
        gateway_options=options.get("Gateway"),
        transcriber_options=options.get("Transcriber"),
        generator_options=options.get("Generation"),
        classifier_options=options.get("Classification"),
    )
    log.info("serving on http://127.0.0.1:%d (docs at /docs)", port)
    serve.run(app, name="midiforge", route_prefix="/", blocking=True)
