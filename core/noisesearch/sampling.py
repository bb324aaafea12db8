"""Noise levels, schedules, ODE solvers and the re-noising kernel.

Convention for the whole project: a *noise level* ``sigma`` in [0, 1]; 1 is pure noise, 0 is
clean data, whatever the model's own timestep units. A schedule says how a level mixes data
and noise, ``x_sigma = a(sigma) * x0 + b(sigma) * eps``; models translate levels into their own
timesteps. With a *denoiser* ``D(x, sigma) -> x0_hat`` (Karras et al. 2022; k-diffusion's
single interface for eps-, v- and x-prediction networks) every solver here works for every
model, between any two levels, so that searches can stop half-way, re-noise and continue.
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

#: ``D(x, sigma) -> x0_hat``: a model's clean prediction at one level for a batch ``x``.
Denoiser = Callable[["torch.Tensor", float], "torch.Tensor"]

#: Solver names a run may ask for. ``native``: the model's own sampler (:class:`Solver`), for
#: models that declare one (trait ``native_solver``), e.g. a diffusers pipeline's scheduler.
SOLVERS = ("ddim", "heun", "native")
#: The solvers this module implements itself, for every model.
CORE_SOLVERS = ("ddim", "heun")

#: Distance in training steps within which a level counts as sitting on a knot of a discrete schedule.
_KNOT_TOLERANCE = 1e-9


class Schedule(ABC):
    """How a noise level mixes data and noise: ``x = a(sigma) x0 + b(sigma) eps``."""

    @abstractmethod
    def scales(self, sigma: float) -> tuple[float, float]:
        """``(a, b)`` at level ``sigma``."""

    @abstractmethod
    def derivatives(self, sigma: float, toward: float | None = None) -> tuple[float, float]:
        """``(da/dsigma, db/dsigma)``, used by second-order solvers.

        :param toward: the other end of the step being taken; where ``a`` or ``b`` has a kink at
            ``sigma`` the one-sided derivative on that side is returned (the side the step
            integrates over). ``None``: the side above (noisier).
        """

    @abstractmethod
    def levels(self, steps: int) -> list[float]:
        """The default grid of ``steps + 1`` levels from 1 down to 0."""


@dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """``x = (1 - sigma) x0 + sigma eps`` (Liu et al. 2022; SD3, FLUX).

    :param shift: time shift of the default grid, ``shift*s / (1 + (shift-1)*s)`` as in SD3
        (Esser et al. 2024); 1 keeps the grid uniform.
    """

    shift: float = 1.0

    def scales(self, sigma: float) -> tuple[float, float]:
        return 1.0 - sigma, sigma

    def derivatives(self, sigma: float, toward: float | None = None) -> tuple[float, float]:
        return -1.0, 1.0

    def levels(self, steps: int) -> list[float]:
        return list(_flow_levels(self.shift, steps))  # a copy: callers may change theirs


@functools.lru_cache(maxsize=64)
def _flow_levels(shift: float, steps: int) -> tuple[float, ...]:
    """Asked several times by every search (planning, the engine): made once per grid."""
    uniform = [round(1.0 - i / steps, 12) for i in range(steps + 1)]
    return tuple(shift * s / (1.0 + (shift - 1.0) * s) for s in uniform)


@dataclass(frozen=True)
class VariancePreserving(Schedule):
    """DDPM's ``x = sqrt(abar) x0 + sqrt(1 - abar) eps`` from a discrete ``alphas_cumprod``.

    Level ``sigma`` is the continuous timestep ``t = sigma * T`` divided by the number of
    training steps ``T``: training step ``i`` (0-based, as in diffusers) sits at
    ``t = i + 1`` and ``t = 0`` is clean (``abar = 1``). Between knots ``log(abar)`` is
    interpolated linearly. So a model's timestep for level sigma is ``sigma * T - 1``.
    """

    alphas_cumprod: tuple[float, ...]
    _log_abar: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.alphas_cumprod)
        if not values or any(not 0.0 < v <= 1.0 for v in values):
            raise ValueError("alphas_cumprod must be non-empty and in (0, 1]")
        object.__setattr__(self, "alphas_cumprod", values)
        object.__setattr__(self, "_log_abar", (0.0, *(math.log(v) for v in values)))

    @classmethod
    def from_betas(cls, betas: Sequence[float]) -> VariancePreserving:
        abar, product = [], 1.0
        for beta in betas:
            product *= 1.0 - float(beta)
            abar.append(product)
        return cls(tuple(abar))

    @classmethod
    def scaled_linear(
        cls, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000
    ) -> VariancePreserving:
        """Stable Diffusion's schedule (diffusers' ``beta_schedule="scaled_linear"``)."""
        lo, hi = math.sqrt(beta_start), math.sqrt(beta_end)
        return cls.from_betas([(lo + (hi - lo) * i / (steps - 1)) ** 2 for i in range(steps)])

    @property
    def train_steps(self) -> int:
        return len(self.alphas_cumprod)

    def _log_abar_and_slope(self, sigma: float, toward: float | None = None) -> tuple[float, float]:
        t = min(max(sigma, 0.0), 1.0) * self.train_steps
        knot = round(t)
        if abs(t - knot) <= _KNOT_TOLERANCE:
            # On a knot (up to rounding: level grids are usually made of training steps) the slope
            # jumps; take the segment on the side of ``toward``, the one a step from here covers.
            t = float(knot)
            i = knot - 1 if toward is not None and toward < sigma else knot
        else:
            i = int(t)
        i = min(max(i, 0), self.train_steps - 1)
        slope = self._log_abar[i + 1] - self._log_abar[i]  # per unit t
        return self._log_abar[i] + slope * (t - i), slope * self.train_steps

    def scales(self, sigma: float) -> tuple[float, float]:
        log_abar, _ = self._log_abar_and_slope(sigma)
        abar = math.exp(log_abar)
        return math.sqrt(abar), math.sqrt(max(1.0 - abar, 0.0))

    def derivatives(self, sigma: float, toward: float | None = None) -> tuple[float, float]:
        log_abar, slope = self._log_abar_and_slope(sigma, toward)
        abar = math.exp(log_abar)
        a, b = math.sqrt(abar), math.sqrt(max(1.0 - abar, 0.0))
        if b == 0.0:
            raise ValueError("the derivative of b is unbounded at the clean end (b = 0)")
        return 0.5 * slope * a, -0.5 * slope * abar / b

    def levels(self, steps: int) -> list[float]:
        return [round(1.0 - i / steps, 12) for i in range(steps + 1)]

    def timestep(self, sigma: float) -> float:
        """The model's (diffusers') timestep for a level: ``sigma * T - 1``."""
        return sigma * self.train_steps - 1.0


@runtime_checkable
class Solver(Protocol):
    """A sampler a model brings along (``model.native_solver()``), used where a solver name is.

    It integrates along its own grid of levels only (``levels(steps)``); ``solve`` may start and
    end at any two levels of that grid. ``stochastic`` solvers draw step noise, per row, from
    ``noise_seeds`` (one seed per row), so that a recorded seed replays a row bit for bit.
    """

    name: str
    stochastic: bool

    def levels(self, steps: int) -> list[float]:
        """The grid of ``steps`` steps, from noise to clean (``steps + 1`` levels)."""

    def nfe(self, levels: Sequence[float]) -> int:
        """Denoiser evaluations per row of ``solve`` over ``levels``."""

    def solve(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        levels: Sequence[float],
        capture: Sequence[float] = (),
        noise_seeds: Sequence[int] | None = None,
    ) -> SolveResult:
        """Like :func:`solve`; ``x`` is at ``levels[0]``."""


def resolve_solver(model: Any, solver: str | Solver, steps: int) -> str | Solver:
    """A run's solver: a core solver's name as is, ``native`` as the model's own :class:`Solver`
    for ``steps`` steps (``model.native_solver(steps)``)."""
    if solver != "native":
        return solver
    make = getattr(model, "native_solver", None)
    if not callable(make):
        raise ValueError(f"{type(model).__name__} has no native solver; use ddim or heun")
    return make(steps)


def is_stochastic(solver: str | Solver) -> bool:
    """Whether ``solver`` draws step noise (then each solve needs one seed per row)."""
    return not isinstance(solver, str) and bool(solver.stochastic)


@dataclass
class SolveResult:
    """The end state of a solve and what was seen on the way."""

    x: torch.Tensor  # state at the last level, shape of the input
    nfe: int  # denoiser evaluations per sample (one batched call counts once per row)
    x0: dict[float, torch.Tensor] = field(default_factory=dict)  # captured x0_hat by level


def solver_nfe(schedule: Schedule, levels: Sequence[float], solver: str | Solver) -> int:
    """NFEs per sample of ``solve`` over ``levels``: DDIM one per step; Heun two per step,
    except a step that ends at ``b = 0`` (clean), which is an Euler step, as in k-diffusion;
    a model's own solver says for itself."""
    if not isinstance(solver, str):
        return solver.nfe(levels)
    _check_solver(solver)
    steps = len(levels) - 1
    if solver == "ddim":
        return steps
    return sum(1 if schedule.scales(end)[1] == 0.0 else 2 for end in levels[1:])


def solve(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    levels: Sequence[float],
    solver: str | Solver = "ddim",
    capture: Sequence[float] = (),
    noise_seeds: Sequence[int] | None = None,
) -> SolveResult:
    """Integrate the probability-flow ODE from ``levels[0]`` down to ``levels[-1]``.

    ``ddim``: DDIM with eta = 0 (Song et al. 2021), ``x' = a' x0_hat + b' eps_hat``; for a
    rectified flow this is exactly the Euler step of FLUX/SD3. ``heun``: Heun's second-order
    method on ``dx/dsigma = a'(sigma) x0_hat + b'(sigma) eps_hat`` (Karras et al. 2022, Alg. 1),
    with a first-order last step when it reaches ``b = 0``.

    :param levels: decreasing noise levels; ``x`` is at ``levels[0]``.
    :param capture: levels at which to keep ``x0_hat``; each is taken at the step start
        nearest to it (the exact level used is the key in ``SolveResult.x0``).
    :param solver: a core solver's name, or a model's own :class:`Solver` (which then solves).
    :param noise_seeds: one seed per row, for stochastic solvers only.
    """
    if not isinstance(solver, str):
        return solver.solve(denoiser, x, levels, capture, noise_seeds)
    _check_solver(solver)
    levels = [float(s) for s in levels]
    if len(levels) < 2 or any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels must be at least two strictly decreasing values, got {levels}")
    wanted = {_nearest(levels[:-1], level) for level in capture}
    captured: dict[float, torch.Tensor] = {}
    if solver == "ddim":  # the hot loop of a small model: nothing per step but the step
        scales = [schedule.scales(level) for level in levels]  # (a, b) per level
        for sigma, (a, b), (a_next, b_next) in zip(levels, scales, scales[1:]):
            x0 = denoiser(x, sigma)
            if wanted and sigma in wanted:
                captured[sigma] = x0
            eps = (x - a * x0) / b
            x = a_next * x0 + b_next * eps
        return SolveResult(x=x, nfe=len(levels) - 1, x0=captured)
    nfe = 0
    for sigma, sigma_next in zip(levels, levels[1:]):
        x0 = denoiser(x, sigma)
        nfe += 1
        if sigma in wanted:
            captured[sigma] = x0
        a, b = schedule.scales(sigma)
        a_next, b_next = schedule.scales(sigma_next)
        eps = (x - a * x0) / b
        if b_next == 0.0:  # the last step to a clean level: Euler (DDIM)
            x = a_next * x0 + b_next * eps
            continue
        slope = _velocity(schedule, sigma, x0, eps, toward=sigma_next)
        x_euler = x + (sigma_next - sigma) * slope
        x0_next = denoiser(x_euler, sigma_next)
        nfe += 1
        eps_next = (x_euler - a_next * x0_next) / b_next
        slope_next = _velocity(schedule, sigma_next, x0_next, eps_next, toward=sigma)
        x = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
    return SolveResult(x=x, nfe=nfe, x0=captured)


def _velocity(
    schedule: Schedule, sigma: float, x0: torch.Tensor, eps: torch.Tensor, toward: float
) -> torch.Tensor:
    da, db = schedule.derivatives(sigma, toward)
    return da * x0 + db * eps


def renoise(
    x: torch.Tensor,
    schedule: Schedule,
    from_level: float,
    to_level: float,
    noise: torch.Tensor,
) -> torch.Tensor:
    """The forward kernel from level ``s`` to a noisier ``s'``.

    ``x_{s'} = r x_s + sqrt(b_{s'}^2 - r^2 b_s^2) eps'`` with ``r = a_{s'} / a_s``: the
    marginal of ``x_{s'}`` given ``x0`` is then ``N(a_{s'} x0, b_{s'}^2 I)``, as if noised
    directly (Ma et al. 2025, search over paths).
    """
    if not to_level > from_level:
        raise ValueError(f"re-noising goes to a noisier level: {to_level} <= {from_level}")
    a, b = schedule.scales(from_level)
    a_to, b_to = schedule.scales(to_level)
    if a == 0.0:
        raise ValueError(f"cannot re-noise from level {from_level}: it holds no signal")
    ratio = a_to / a
    return ratio * x + math.sqrt(max(b_to**2 - (ratio * b) ** 2, 0.0)) * noise


def draw_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise, one sample per seed, shape ``(len(seeds), *shape)``.

    Drawn on the CPU with a seeded ``torch.Generator`` (as diffusers does), so a seed gives
    the same noise on every device; then moved to ``device`` and cast to ``dtype``.
    """
    import torch

    drawing = _drawing(len(seeds), tuple(shape))
    reseed = drawing.generator.manual_seed  # re-seeded per row: the same numbers as a fresh one
    generator = drawing.generator
    # Each row's view filled in place: the numbers of torch.randn(shape, generator=...), which
    # is empty(shape).normal_(generator=...), in a third less time (per-row dispatch dominates).
    for row, seed in zip(drawing.rows, seeds):
        reseed(int(seed))
        row.normal_(generator=generator)
    noise = drawing.buffer  # (N, *shape)
    if (dtype is not None and dtype is not torch.float32) or not _is_cpu(device):
        return noise.to(device=device, dtype=dtype or torch.float32)  # a copy
    # A kept buffer is filled again by the next draw: the caller gets a copy (and no no-op .to()
    # call, which costs a small search more than its work).
    return noise.clone() if drawing is getattr(_drawings, "last", None) else noise


def _is_cpu(device: str | torch.device | None) -> bool:
    if device is None or device == "cpu":  # (None: where .to() leaves a tensor)
        return True
    import torch

    return (device if isinstance(device, torch.device) else torch.device(device)).type == "cpu"


class _Drawing:
    """One thread's means of :func:`draw_noise`: a CPU generator and a buffer of ``(N, *shape)``
    with its row views, kept from one draw to the next of the same size. Making N views and
    freeing them again cost a search of 16 small candidates more than drawing their numbers."""

    def __init__(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None) -> None:
        import torch

        self.key = (n, shape)
        self.generator = generator or torch.Generator("cpu")
        with torch.inference_mode(False):  # filled in and out of inference mode alike
            self.buffer = torch.empty((n, *shape), dtype=torch.float32)
            self.rows = self.buffer.unbind(0)


_drawings = threading.local()


def _drawing(n: int, shape: tuple[int, ...]) -> _Drawing:
    """This thread's :class:`_Drawing` for ``n`` rows of ``shape``: the one kept (a search draws
    its batches at one size, but for the last), or, for noise of more than ``KEPT_NUMBERS``
    numbers, a new one that is not kept (its views cost nothing beside its numbers)."""
    drawing = getattr(_drawings, "last", None)
    if drawing is not None and drawing.key == (n, shape):
        return drawing
    generator = drawing.generator if drawing is not None else None
    if n * math.prod(shape) > KEPT_NUMBERS:
        return _Drawing(n, shape, generator)
    drawing = _drawings.last = _Drawing(n, shape, generator)
    return drawing


#: The largest noise (in numbers) whose buffer :func:`draw_noise` keeps for the next draw (1 MB).
KEPT_NUMBERS = 1 << 18


def _nearest(levels: Sequence[float], target: float) -> float:
    ordered = sorted(levels)
    i = bisect.bisect_left(ordered, target)
    options = ordered[max(i - 1, 0) : i + 1]
    return min(options, key=lambda level: abs(level - target))


def _check_solver(solver: str) -> None:
    if solver == "native":
        raise ValueError("the native solver is the model's own: pass resolve_solver(model, 'native')")
    if solver not in CORE_SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(CORE_SOLVERS)}")
