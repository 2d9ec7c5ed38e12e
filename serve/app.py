"""Entry point for `serve run serve.app:build_app` from the repository root; the
application lives in the library (midiforge.serving.app), as serve/config.yaml names it."""

from midiforge.serving.app import build_app

__all__ = ["build_app"]
