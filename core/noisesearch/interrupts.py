"""Ctrl-C that is never lost: the command line records it before Python raises
``KeyboardInterrupt``, so that a library which swallows the exception (a lazy import caught by a
broad ``except``, leaving a half-imported module behind) cannot turn it into "ignored" or into a
failed run with an unrelated error.

Only the console script installs the handler (:func:`install`); code calling the API from
Python keeps its own Ctrl-C handling, and :func:`requested` stays false there.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

_state = {"requested": False, "installed": False}


def install() -> None:
    """Record every Ctrl-C of this process, then raise ``KeyboardInterrupt`` as usual."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # ignored (nohup) or handled by someone else: leave it so
    signal.signal(signal.SIGINT, _record)
    _state["installed"] = True


def _record(signum: int, frame: FrameType | None) -> None:
    _state["requested"] = True
    raise KeyboardInterrupt


def requested() -> bool:
    """Whether Ctrl-C was pressed since :func:`install` (or :func:`reset`)."""
    return _state["requested"]


def reset() -> None:
    _state["requested"] = False


class Checkpoint:
    """An engine listener that stops the run after the batch in which Ctrl-C was pressed, if
    the ``KeyboardInterrupt`` itself was swallowed on the way."""

    def on_candidates(self, candidates: Sequence[Any], usage: Any) -> None:
        if requested():
            raise KeyboardInterrupt
