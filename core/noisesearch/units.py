"""The engine's unit of model work, and the dispatch seam that computes units.

A :class:`Unit` is one batch of model work with everything it needs: latents, the levels to
solve over, a stochastic solver's step seeds. :func:`compute` reads no engine state: given
the model, its prepared condition and the solver, the same unit gives the same tensors in
this process or on a worker that holds its own copy of the model. The engine keeps the
budget, the journal, the records of candidates and selection; it cuts each call into units of
``batch_size`` rows and hands them to a :class:`Dispatch`, which returns their outputs in
order. :class:`LocalDispatch` (the default) computes them here, one after the other, when the
engine asks for the next; ``noisesearch.overlap`` computes them one ahead on a thread of this
process (``--overlap``); a plugin's dispatch (the Ray executor's) sends them to
model-holding workers at once and gathers them in order. Results depend on batch
composition (by ~1e-7), so a dispatch never regroups rows: one unit, one model batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from noisesearch.faults import Owner, blamed, is_out_of_memory
from noisesearch.sampling import Solver, solve

if TYPE_CHECKING:
    import torch

#: Unit kinds: solve latents over levels; predict ``x0_hat`` at one level; decode latents;
#: sample: solve, then decode the result and the captured ``x0_hat`` (one chunk of full samples,
#: ``Engine.evaluate``: its decode runs where its solve did, so that a dispatch that computes
#: ahead denoises the next chunk while this one is scored).
SOLVE, PREDICT, DECODE, SAMPLE = "solve", "predict", "decode", "sample"


@dataclass
class Unit:
    """One batch of model work: what :func:`compute` needs besides the model, its prepared
    condition and the solver."""

    kind: str  # SOLVE, PREDICT, DECODE or SAMPLE
    x: torch.Tensor  # (B, *latent_shape): at levels[0] (solve, predict, sample), or clean (decode)
    levels: list[float] = field(default_factory=list)  # solve, sample: the levels; predict: [level]
    capture: tuple[float, ...] = ()  # solve, sample: keep x0_hat at these levels
    seeds: list[int] | None = None  # solve with a stochastic solver: one step-noise seed per row
    also: dict[float, torch.Tensor] = field(default_factory=dict)  # decode: more latents (B, ...)
    # solve, predict, sample: run the denoiser on this many rows (the last row repeated; 0: as many
    # as ``x`` has), for a model whose compiled network wants one batch shape (``static_batch``);
    # a sample's decode takes its real rows only
    pad_to: int = 0

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Output:
    """What a unit computed, as tensors (on the device it ran on)."""

    # solve, sample: (B, *latent) at levels[-1]; predict: x0_hat; decode: (B, 3, H, W) in [0, 1]
    x: torch.Tensor
    nfe: int = 0  # denoiser evaluations per row
    # solve, sample: the captured x0_hat; decode: `also` decoded
    x0: dict[float, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0  # time in the model (a sample's decode included)
    # sample only: ``x`` and ``x0`` decoded, (B, 3, H, W) in [0, 1], and the seconds that took
    images: torch.Tensor | None = None
    trajectory: dict[float, torch.Tensor] = field(default_factory=dict)
    decode_seconds: float = 0.0


def compute(
    model: Any, prepared: Any, solver: str | Solver, unit: Unit, owner: Owner | None = None
) -> Output:
    """Compute ``unit`` with ``model`` (no autograd). ``owner``: who is blamed for an exception
    of the model (``noisesearch.faults``); out-of-memory errors pass through unchanged, for the
    engine to retry with smaller batches."""
    import torch

    owner = owner or Owner.of("model", model)
    if unit.kind not in (SOLVE, PREDICT, DECODE, SAMPLE):
        raise ValueError(f"unknown unit kind {unit.kind!r}")
    start = time.perf_counter()
    # One inference_mode for the whole unit (a sample's decode included): entering one per step
    # cost a small model ~5% at N = 16, and no_grad instead leaves every op on autograd's
    # dispatch path (~4%).
    with torch.inference_mode():
        if unit.kind == DECODE:
            images, decoded = _decode(model, unit.x, unit.also, owner)
            return Output(images, 0, decoded, time.perf_counter() - start)
        rows = unit.rows
        x, seeds = _padded(unit)  # (max(rows, pad_to), *latent): only the first `rows` are kept
        if unit.kind == PREDICT:
            x0 = _call(owner, model.denoise, x, unit.levels[0], prepared)[:rows]
            return Output(x0, 1, {}, time.perf_counter() - start)
        result = solve(_denoiser(model, prepared, owner), x, model.schedule, unit.levels, solver,
                       unit.capture, seeds)
        captured = result.x0 if x is unit.x else {level: x0[:rows] for level, x0 in result.x0.items()}
        solved = time.perf_counter()
        images, trajectory = (None, {}) if unit.kind == SOLVE else \
            _decode(model, result.x[:rows], captured, owner)
    done = time.perf_counter()
    # A solve's states leave as ordinary tensors (a copy made outside inference mode), as they did
    # when only the denoiser ran in it: a strategy may update them in place. A sample's final
    # state goes to the journal only, as it is.
    x = result.x[:rows] if unit.kind == SAMPLE else result.x[:rows].clone()
    return Output(x, result.nfe, captured, done - start, images, trajectory,
                  done - solved if images is not None else 0.0)


def _denoiser(model: Any, prepared: Any, owner: Owner) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """``model.denoise`` with its exceptions blamed on ``owner``; per step: no context manager."""

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        try:
            return model.denoise(x, sigma, prepared)
        except Exception as error:
            failure = blamed(owner, error, keep=is_out_of_memory)
            if failure is error:
                raise
            raise failure from error

    return denoise


def _call(owner: Owner, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, a model's call, with its exceptions blamed on ``owner``."""
    try:
        return fn(*args)
    except Exception as error:
        failure = blamed(owner, error, keep=is_out_of_memory)
        if failure is error:
            raise
        raise failure from error


def _decode(
    model: Any, x: torch.Tensor, also: dict[float, torch.Tensor], owner: Owner
) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
    """Latents ``x`` ``(B, *latent)`` and ``also`` decoded to images ``(B, 3, H, W)`` in [0, 1]
    (in the caller's inference mode)."""
    images = _call(owner, _images, model, x)  # (B, 3, H, W)
    decoded = {level: _call(owner, _images, model, x0) for level, x0 in also.items()}
    return images, decoded


def _images(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``model.decode(x)`` as float images in [0, 1] (a decode that returns no tensor is the model's
    fault, blamed by the caller)."""
    return model.decode(x).float().clamp(0, 1)


def _padded(unit: Unit) -> tuple[torch.Tensor, list[int] | None]:
    """A solve or predict unit's rows padded to ``pad_to`` by repeating the last row (and a
    stochastic solver's last step seed: rows never share step noise, so a padding row changes no
    real row). A row's result depends on the batch size and its place in the batch, not on the
    other rows' content (``noisesearch.recipes``), so replay's zero padding gives the same."""
    import torch

    missing = unit.pad_to - unit.rows
    if missing <= 0 or unit.rows == 0:
        return unit.x, unit.seeds
    x = torch.cat([unit.x, unit.x[-1:].expand(missing, *unit.x.shape[1:])])  # (pad_to, *latent)
    seeds = None if unit.seeds is None else [*unit.seeds, *[unit.seeds[-1]] * missing]
    return x, seeds


class Dispatch(Protocol):
    """Computes one search's units. ``open`` once the engine has prepared the condition;
    ``map`` yields each unit's output in the units' order (an error raised by a unit's compute
    is raised when its output is reached; the engine then drops the iterator)."""

    def open(self, model: Any, prepared: Any, solver: str | Solver, owner: Owner) -> None: ...

    def map(self, units: Sequence[Unit]) -> Iterator[Output]: ...


class LocalDispatch:
    """In this process: each unit computed when the engine asks for its output, so a failing
    unit stops the work there (out of memory: nothing after it was computed)."""

    def __init__(self) -> None:
        self._job: tuple[Any, Any, str | Solver, Owner] | None = None

    def open(self, model: Any, prepared: Any, solver: str | Solver, owner: Owner) -> None:
        self._job = (model, prepared, solver, owner)

    def map(self, units: Sequence[Unit]) -> Iterator[Output]:
        if self._job is None:
            raise RuntimeError("LocalDispatch.map before open")
        model, prepared, solver, owner = self._job
        for unit in units:
            yield compute(model, prepared, solver, unit, owner)
