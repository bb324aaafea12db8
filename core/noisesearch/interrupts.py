"""Ctrl-C that is never lost: the command line records it before Python raises
``KeyboardInterrupt``, so that a library which swallows the exception (a lazy import caught by a
broad ``except``, leaving a half-imported module behind) cannot turn it into "ignored" or into a
failed run with an unrelated error.

Only the console script installs the handler (:func:`install`); code calling the API from
Python keeps its own Ctrl-C handling, and :func:`requested` stays false there.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

try:  # the C functions that signal's own wrap, without their enum conversions (per batch: deferred)
    from _signal import getsignal as _getsignal
    from _signal import signal as _setsignal
except ImportError:  # pragma: no cover - an interpreter without CPython's _signal
    from signal import getsignal as _getsignal
    from signal import signal as _setsignal

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


class deferred:  # noqa: N801 - used as a function: ``with deferred():``
    """Hold a Ctrl-C that arrives inside the block until the block is done, then raise it.

    The engine records a scored batch in several places (usage, the selection, the listeners
    that write ``candidates.jsonl``); a ``KeyboardInterrupt`` between two of them left a run
    folder whose ``run.json`` counted candidates that ``candidates.jsonl`` never got. Only the
    main thread's own Ctrl-C handlers (ours or Python's default) are swapped; a handler someone
    else installed is left alone. A class, not a generator: entered once per recorded batch."""

    __slots__ = ("previous", "held")

    def __enter__(self) -> None:
        self.previous: Any = None
        self.held: list[int] = []
        if threading.current_thread() is not threading.main_thread():
            return
        previous = _getsignal(signal.SIGINT)
        if previous is not _record and previous is not signal.default_int_handler:
            return
        held = self.held

        def hold(signum: int, frame: FrameType | None) -> None:
            if previous is _record:
                _state["requested"] = True
            held.append(signum)

        _setsignal(signal.SIGINT, hold)
        self.previous = previous

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if self.previous is None:
            return
        _setsignal(signal.SIGINT, self.previous)
        if self.held and error is None:
            raise KeyboardInterrupt


def import_torch() -> None:
    """Import torch, a Ctrl-C held until the import is done: torch's import runs Python code from
    C++ (its operator registrations), where the ``KeyboardInterrupt`` of a Ctrl-C cannot unwind and
    ends the process (``terminate called after throwing ... error_already_set``: no message, no
    exit code 130). Held, it is raised right after the import, as anywhere else."""
    if "torch" in sys.modules:
        return
    with deferred():
        import torch  # noqa: F401


class Checkpoint:
    """An engine listener that stops the run after the batch in which Ctrl-C was pressed, if
    the ``KeyboardInterrupt`` itself was swallowed on the way."""

    def on_candidates(self, candidates: Sequence[Any], usage: Any) -> None:
        if requested():
            raise KeyboardInterrupt
