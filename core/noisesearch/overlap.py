"""``--overlap``: the engine's units computed one ahead on a worker thread of this process.

While the engine's thread journals, scores and selects one unit's output (the verifiers, the
evaluator, ``candidates.jsonl``), the worker computes the next unit of the same engine call:
a chunk of full samples (``units.SAMPLE``: solve, then decode) is denoised while the chunk
before it is scored. Torch releases the GIL inside its ops, so the two threads run at once on
a CPU (a core each) and on an accelerator (kernel launches and host work overlap).

Nothing about the result changes: the units are the engine's own (same rows, same order),
computed one after the other by one thread, and used in order by the engine, which alone
touches its state (budget, journal, selection). Only timing moves. A unit that fails stops
the worker there (nothing after it is computed, as with ``LocalDispatch``); its error is
raised when the engine reaches its output. When the engine drops the outputs (an error, an
out-of-memory halving, Ctrl-C) the worker is told to stop and joined: it finishes the unit in
hand, if any, and computes nothing more.

On CUDA both threads use the device's default stream (no second stream): kernels stay in
issue order, so a unit's outputs are complete before the engine's kernels read them and the
caching allocator never hands a block to one thread while the other still uses it. What
overlaps is host work (Python, kernel launches, verifiers and decoders that run on the
CPU) with device work.

Memory: one more unit's output is alive (the one computed ahead), and on one device the
denoiser's working memory and the verifiers' are needed at the same time. A denoiser that runs
out is halved and retried as ever (``Engine._in_batches``); a verifier that runs out fails the
run, as without overlap, so a batch size near the device's limit may need halving by hand.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from noisesearch.faults import Owner
from noisesearch.sampling import Solver
from noisesearch.units import LocalDispatch, Output, Unit, compute

#: Units the worker may have computed beyond the one the engine is using.
AHEAD = 1


class OverlapDispatch:
    """A :class:`noisesearch.units.Dispatch` that computes each call's units on a worker thread,
    at most ``ahead`` beyond the output the engine holds. A call of one unit is computed here
    (there is nothing to overlap it with)."""

    def __init__(self, ahead: int = AHEAD) -> None:
        self.ahead = max(1, ahead)
        self._local = LocalDispatch()
        self._job: tuple[Any, Any, str | Solver, Owner] | None = None

    def open(self, model: Any, prepared: Any, solver: str | Solver, owner: Owner) -> None:
        self._local.open(model, prepared, solver, owner)
        self._job = (model, prepared, solver, owner)

    def map(self, units: Sequence[Unit]) -> Iterator[Output]:
        if self._job is None:
            raise RuntimeError("OverlapDispatch.map before open")
        if len(units) < 2:
            return self._local.map(units)
        return self._ahead(list(units))

    def _ahead(self, units: list[Unit]) -> Iterator[Output]:
        model, prepared, solver, owner = self._job  # type: ignore[misc]
        done: queue.Queue[tuple[bool, Any]] = queue.Queue()
        # Unit k + ahead + 1 may start once the engine asks for output k + 1 (it is done with k).
        may_start = threading.Semaphore(self.ahead + 1)
        stop = threading.Event()

        def work() -> None:  # torch's intra-op thread count is the process's: the same as here
            for unit in units:
                may_start.acquire()
                if stop.is_set():
                    return
                try:
                    output = compute(model, prepared, solver, unit, owner)
                except BaseException as error:  # noqa: BLE001 - handed to the engine's thread
                    done.put((False, error))
                    return
                done.put((True, output))

        worker = threading.Thread(target=work, name="noisesearch-overlap", daemon=True)
        worker.start()
        try:
            for index in range(len(units)):
                if index:
                    may_start.release()
                ok, value = done.get()
                if not ok:
                    raise value
                yield value
        finally:  # dropped (error, out of memory, Ctrl-C) or finished: nothing more is computed
            stop.set()
            may_start.release()  # a worker waiting for its turn wakes up and sees `stop`
            worker.join()
