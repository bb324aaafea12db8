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

_lock = threading.Lock()
_depth = 0  # searches running in this process (threads, nested): only the outermost freezes


class search_objects_only:  # noqa: N801 - used as a function: ``with search_objects_only():``
    """Collections inside the block walk only objects made inside it (see the module). Leaves
    the collector alone where the process froze objects itself (``gc.get_freeze_count()``) or
    runs with the collector off."""

    __slots__ = ("frozen",)

    def __enter__(self) -> None:
        global _depth
        with _lock:
            outermost = _depth == 0
            self.frozen = outermost and gc.isenabled() and gc.get_freeze_count() == 0
            _depth += 1
            if self.frozen:
                gc.freeze()

    def __exit__(self, *exc: object) -> None:
        global _depth
        with _lock:
            _depth -= 1
            if self.frozen:
                gc.unfreeze()
