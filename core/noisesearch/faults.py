"""Whose fault: an exception raised inside a plugin's model, verifier or strategy is reported
as ``strategy 'NAME' (plugin DIST) failed: ...``, and the run fails (exit code 1), no traceback.

The engine runs each plugin call inside :func:`blame`. Errors the core raises on purpose
(:class:`NoiseSearchError`: budget refusals, journal mismatches) and out-of-memory errors (the
engine retries those with smaller batches) pass through unchanged, as do Ctrl-C and exits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from noisesearch.errors import NoiseSearchError


class RunFailed(NoiseSearchError):
    """A run that began work and could not finish: the CLI exits with code 1, not 2."""

    exit_code = 1


@dataclass(frozen=True)
class Owner:
    """A plugin object, as a user can find it: its kind, registered name and distribution."""

    kind: str  # "model", "verifier" or "strategy"
    name: str
    distribution: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} (plugin {self.distribution})"

    @classmethod
    def of(cls, kind: str, thing: object, name: str | None = None) -> Owner:
        """A fallback for objects built outside a plan: the class name and top-level package."""
        kind_of = type(thing)
        return cls(kind, name or kind_of.__name__, kind_of.__module__.split(".")[0])


class RecordingFailed(RunFailed):
    """A scored batch failed half-recorded (the evaluator ran out of memory on a single image, a
    listener did): the engine cannot retry it with a smaller batch, as it does an out-of-memory
    error of the model or the verifiers, without recording candidates twice."""

    is_out_of_memory = False


class NothingSelectable(RunFailed):
    """Every candidate's objective is non-finite (NaN, infinite): none can win. Its scores are in
    the run's journal, so a resume would replay them and fail alike (``resumable`` false): the
    run starts again once the verifier is fixed."""

    resumable = False


class NoCandidate(RunFailed):
    """A strategy ended without evaluating a candidate although the budget paid for one (it
    asked for more than was left, or for nothing): the strategy's fault, not the budget's."""


class PluginFailed(RunFailed):
    """A model, verifier or strategy raised an exception during a run."""

    def __init__(self, owner: Owner, error: BaseException) -> None:
        self.owner = owner
        self.error = error
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        super().__init__(f"{owner} failed: {type(error).__name__}" + (f": {detail}" if detail else ""))


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA (or any accelerator) out-of-memory, or an error a model flags with
    ``is_out_of_memory = True``; an error that says ``is_out_of_memory = False`` is not, whatever
    its message (:class:`RecordingFailed`: nothing may retry it)."""
    flag = getattr(error, "is_out_of_memory", None)
    if flag is not None:
        return bool(flag)
    message = str(error).lower()
    return (
        type(error).__name__ == "OutOfMemoryError"
        or "out of memory" in message
        or "can't allocate memory" in message  # the CPU allocator's wording
    )


def empty_accelerator_cache() -> None:
    """Give an accelerator's cached blocks back before a retry at a smaller size."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class blame:  # noqa: N801 - used as a function: ``with blame(owner):``
    """Re-raise an exception of the code inside as :class:`PluginFailed` of ``owner``,
    unless it is the core's own (:class:`NoiseSearchError`) or ``keep(error)`` is true.

    A class, not a generator-based context manager: the engine enters one around every plugin
    call, and a generator's setup cost a 5 ms search ~1 us a call."""

    __slots__ = ("owner", "keep")

    def __init__(self, owner: Owner, keep: Callable[[BaseException], bool] = lambda error: False) -> None:
        self.owner = owner
        self.keep = keep

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> bool:
        if error is None or not isinstance(error, Exception):
            return False  # nothing raised, or Ctrl-C and exits: pass through
        failure = blamed(self.owner, error, self.keep)
        if failure is error:
            return False
        raise failure from error


def blamed(
    owner: Owner, error: Exception, keep: Callable[[BaseException], bool] = lambda error: False
) -> Exception:
    """What :func:`blame` raises for ``error``: ``error`` itself (the core's own, or kept),
    else a :class:`PluginFailed` of ``owner``. For a hot path (a denoiser step) that can't
    afford a context manager's entry and exit: ``try: ... except Exception as e:``, then
    raise ``e`` unchanged when this returns it, else this ``from e``."""
    if isinstance(error, NoiseSearchError) or keep(error):
        return error
    return PluginFailed(owner, error)
