"""The shared body of the scripts in jobs/: parse a command's flags plus --key=value
overrides, set up logging, run, exit with the command's status."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path


def parser_for(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    argv: list[str] | None = None,
) -> tuple[argparse.Namespace, list[str]]:
    """A command's flags and its --key=value overrides from argv (default sys.argv)."""
    # No prefix matching: a --key=value override like --work=... must not become --workers.
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--") and "=" in a]
    if len(overrides) != len(rest):
        parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
    return args, overrides


def run_job(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, list[str]], int],
) -> None:
    from midiforge.errors import run_reporting_errors

    args, overrides = parser_for(description, add_arguments)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_reporting_errors(lambda: run(args, overrides), prog=Path(sys.argv[0]).name))
