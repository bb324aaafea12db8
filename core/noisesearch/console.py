"""The ``noisesearch`` console script: Ctrl-C while the CLI is still loading (typer, rich, the
plugins: about half a second) exits with code 130 and one line, not an import traceback."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _quit_while_loading(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("Interrupted before a run folder was created; nothing to resume.\n")
    sys.exit(130)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _quit_while_loading)
    from noisesearch.cli import main as cli_main

    signal.signal(signal.SIGINT, previous)  # a running search handles Ctrl-C itself
    cli_main()
