"""Helpers for tests that start the command line in a child process and press Ctrl-C."""

from __future__ import annotations

import signal


def with_default_ctrl_c() -> None:
    """``preexec_fn`` for a child that the test interrupts with SIGINT.

    A shell starts background jobs with SIGINT ignored (``cmd &``, ``nohup``), and children
    inherit that; Python then installs no ``KeyboardInterrupt`` handler, and noisesearch rightly
    leaves an ignored Ctrl-C ignored. Restoring the default in the child makes these tests test
    Ctrl-C wherever the suite itself was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
