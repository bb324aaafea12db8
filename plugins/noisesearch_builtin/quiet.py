"""Loading models without diffusers' and transformers' progress bars and advice.

A pipeline's "Loading pipeline components" and "Loading weights" bars and the hint to install
accelerate would be most of what ``noisesearch run`` prints; while a model loads, the run's own
status line ("loading model NAME...", ``noisesearch.progress``) says so instead. ``--verbose``
(the environment variable ``NOISESEARCH_VERBOSE=1``) keeps the libraries' own output. Downloads
keep their bars either way (huggingface_hub's, not these libraries').
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

#: Set (to anything but "" or "0") by ``noisesearch run --verbose``: keep the libraries' output.
VERBOSE_ENV = "NOISESEARCH_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextmanager
def quiet_loading(quiet: bool = True) -> Iterator[None]:
    """No progress bars or info/warning logs from diffusers and transformers inside the block;
    both libraries' settings are restored afterwards. Imports neither unless ``quiet``; never
    quiet with ``--verbose``."""
    if not quiet or verbose():
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bar in saved:
            lib.set_verbosity(level)
            if bar:
                lib.enable_progress_bar()
