"""Loading small local models without diffusers' and transformers' progress bars and advice.

A 32 px pipeline loads in a fraction of a second; its "Loading weights" bars and the hint to
install accelerate would be most of what ``noisesearch run`` prints. Large downloads keep them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_loading(quiet: bool = True) -> Iterator[None]:
    """No progress bars or info/warning logs from diffusers and transformers inside the block;
    both libraries' settings are restored afterwards. Imports neither unless ``quiet``."""
    if not quiet:
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
