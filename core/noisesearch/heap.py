"""The cyclic garbage collector during a search: it skips what was alive before the search.

A search makes a few small objects per candidate (its recipe, the ``Candidate``) and keeps them
until the strategy's batch returns, so they outlive the young generations and count towards
CPython's full collection. A full collection walks every tracked object of the process: torch,
diffusers and the loaded model are ~190k objects, ~80 ms a walk on these CPUs, and at
N = 4096 one came every third search of the embedded model (``gc.callbacks`` timings,
docs/performance.md): half of what the engine cost beyond a hand-written loop.

While a search runs, :func:`search_objects_only` moves the objects that existed before it into
CPython's permanent generation (``gc.freeze``), so a collection walks only what the search made,
and moves them back when it ends (``gc.unfreeze``). Nothing is freed later than it would be
otherwise but for the objects that were alive when the search began and became cyclic garbage
during it: those wait for the first collection after it. The search's own garbage (an
out-of-memory error's traceback holding a batch's tensors) is collected as usual.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # searches running in this process (threads, nested): only the outermost freezes


@contextmanager
def search_objects_only() -> Iterator[None]:
    """Collections inside the block walk only objects made inside it (see the module). Leaves
    the collector alone where the process froze objects itself (``gc.get_freeze_count()``) or
    runs with the collector off."""
    global _depth
    with _lock:
        outermost = _depth == 0
        frozen = outermost and gc.isenabled() and gc.get_freeze_count() == 0
        _depth += 1
        if frozen:
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if frozen:
                gc.unfreeze()
