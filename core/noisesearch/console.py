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
    try:
        cli_main()
    except SystemExit as done:
        _exit_without_teardown(done.code)
        raise
    _exit_without_teardown(0)


def _exit_without_teardown(code: object) -> None:
    """End a process that imported torch without the interpreter's teardown of its modules,
    which takes ~0.4 s of a 2.3 s ``run --model digits`` here (``docs/performance.md``).

    What a normal exit does that matters still happens: the ``atexit`` handlers (logging's
    flush, ``weakref.finalize`` clean-ups, libraries' own) and the flush of stdout and stderr.
    Only when the main thread is the last one (a normal exit would wait for the others) and
    the exit code is an integer or None; otherwise the caller exits as usual."""
    import threading

    if "torch" not in sys.modules or threading.active_count() != 1:
        return
    if code is not None and not isinstance(code, int):
        return
    import atexit
    import os

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: a normal exit would not print either
        pass
    os._exit(code or 0)
