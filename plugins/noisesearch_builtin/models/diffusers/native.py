"""A diffusers pipeline's own scheduler as the run's solver (``--solver native``).

With ``native``, candidates are sampled by a diffusers scheduler (the pipeline's own, or the one
named by the model option ``scheduler``, with ``scheduler_options`` as its configuration on top of
the pipeline's), called exactly as the pipeline calls it: ``set_timesteps`` with the pipeline's
arguments, ``scale_model_input``, the network, ``step``. The network is reached through the core's
denoiser ``D(x, level) -> x0_hat``; its output is recovered from ``x0_hat`` in the scheduler's
``prediction_type`` (eps, v, or the flow velocity), which costs float32 rounding only.

State. The core keeps every state in its variance-preserving (or flow) convention. Schedulers that
work on ``x0 + sigma eps`` (Euler, Euler ancestral, Heun, LMS, ...: ``init_noise_sigma`` is not 1)
are converted at a solve's ends with their own ``sigmas``: ``state = x * sqrt(sigma^2 + 1)``. At the
grid's first level the state is the noise times ``init_noise_sigma``, as the pipeline scales its
``latents=`` (for Euler with "trailing"/"linspace" spacing that is ``sigma_max``, not
``sqrt(sigma_max^2 + 1)``: the pipeline's own quirk, kept).

Grid. The levels are the scheduler's distinct timesteps (VP: ``(t + 1) / T``; flow: its sigmas),
then a final level (VP: 0, whatever the scheduler's last step reaches; flow: its last sigma).
A second-order scheduler (Heun) evaluates the network twice per level: ``nfe`` counts both.

Restarts (paths, SMC, pruning solve from mid-path states). Each ``solve`` uses a fresh scheduler:
``set_timesteps`` as for the whole run, ``set_begin_index`` at the first level's step, and an empty
history (DPM-Solver's ``model_outputs`` and ``lower_order_nums``, UniPC's ``last_sample``, Heun's
``dt``). So the first step after a restart is first order, as at the start of a run. For single-step
schedulers (DDIM, Euler, flow-match Euler) a solve split in two equals the uninterrupted solve (up to
float32 rounding); for multistep ones (DPM-Solver++ 2M, UniPC) it cannot: the second part starts
without the history of the first. Schedulers without ``set_begin_index`` whose step keeps state
(PNDM) are refused while planning with strategies that solve from mid-path (the model's
``native_restartable`` trait, :func:`restartable`), and here, as a backstop, for a solve that does
not start at the grid's first level.

Step noise. A stochastic scheduler (ancestral, SDE variants, DDPM, flow-match Euler with
``stochastic_sampling``) gets one CPU ``torch.Generator`` per row seeded from the row's recorded
``noise_seed`` (diffusers' ``randn_tensor`` takes a list of generators, one per row): replay is
bit-exact, and a row's noise does not depend on the other rows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from noisesearch.errors import ConfigError
from noisesearch.sampling import Denoiser, SolveResult

if TYPE_CHECKING:
    import torch

#: Schedulers diffusers lists as compatible that cannot run here, and why.
UNSUPPORTED = {
    "EDMEulerScheduler": "it preconditions the network for EDM's own sigma schedule",
    "EDMDPMSolverMultistepScheduler": "it preconditions the network for EDM's own sigma schedule",
    "DPMSolverSDEScheduler": "its Brownian-tree noise is seeded by its configuration, not per row",
}
#: Short names users know from other tools (case-insensitive), to diffusers' class names.
ALIASES = {
    "euler-a": "EulerAncestralDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}
#: Suffixes a short class name may leave out: "Euler", "UniPC", "DPMSolver", "Heun".
_SUFFIXES = ("", "Scheduler", "DiscreteScheduler", "MultistepScheduler")
#: Schedulers that draw noise at every step whatever their configuration.
_ALWAYS_STOCHASTIC = ("EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DDPMScheduler",
                      "LCMScheduler", "TCDScheduler")
#: Schedulers without ``set_begin_index`` whose ``step`` needs nothing but the timestep.
_STATELESS = ("DDIMScheduler", "DDPMScheduler")
#: Configuration keys that would contradict the network (the pipeline's own values are kept).
_FIXED_OPTIONS = ("prediction_type", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                  "trained_betas")


def restartable(cls: type) -> bool:
    """Whether a scheduler class can start a solve part-way along its grid (paths, SMC, pruning):
    it has ``set_begin_index``, or its ``step`` keeps no history (DDIM, DDPM). PNDM cannot."""
    return hasattr(cls, "set_begin_index") or cls.__name__ in _STATELESS


def compatible_schedulers(pipeline_scheduler: str) -> dict[str, type]:
    """Scheduler classes diffusers marks compatible with ``pipeline_scheduler`` (itself
    included), by class name, less those that cannot run here."""
    import diffusers

    base = getattr(diffusers, pipeline_scheduler, None)
    if base is None:
        return {}
    found = {cls.__name__: cls for cls in base._get_compatibles()}
    return {name: cls for name, cls in sorted(found.items()) if name not in UNSUPPORTED}


def scheduler_class(pipeline_scheduler: str, name: str | None) -> type:
    """The scheduler class ``name`` (case-insensitive; the ``Scheduler``, ``DiscreteScheduler`` or
    ``MultistepScheduler`` suffix optional, or an alias), checked against the pipeline's;
    ``None``: the pipeline's own."""
    compatible = compatible_schedulers(pipeline_scheduler)
    wanted = pipeline_scheduler if name is None else str(name)
    wanted = ALIASES.get(wanted.lower(), wanted)
    for candidate in (wanted + suffix for suffix in _SUFFIXES):
        for known, cls in compatible.items():
            if known.lower() == candidate.lower():
                return cls
    if wanted in UNSUPPORTED or wanted + "Scheduler" in UNSUPPORTED:
        key = wanted if wanted in UNSUPPORTED else wanted + "Scheduler"
        raise ConfigError("scheduler", f"{key} cannot be the native solver: {UNSUPPORTED[key]}")
    raise ConfigError("scheduler", f"{wanted!r} is not a scheduler compatible with this pipeline's "
                      f"{pipeline_scheduler}; compatible: {', '.join(compatible) or 'none'}")


def check_scheduler_options(cls: type, options: dict[str, Any]) -> None:
    """``scheduler_options`` must be configuration parameters of ``cls`` that leave the network's
    training schedule alone."""
    if not isinstance(options, dict):
        raise ConfigError("scheduler_options", f"must be a mapping of configuration values, e.g. "
                          f'{{"use_karras_sigmas": true}}, got {options!r}')
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key in options:
        if key in _FIXED_OPTIONS:
            raise ConfigError("scheduler_options", f"{key!r} is the network's training setting and "
                              f"comes from the pipeline; it cannot be changed")
        if key not in accepted:
            raise ConfigError("scheduler_options", f"{key!r} is not a configuration option of "
                              f"{cls.__name__}; options: {', '.join(sorted(accepted - set(_FIXED_OPTIONS)))}")


class NativeSolver:
    """A diffusers scheduler stepping along its own grid (see the module docstring).

    :param make: a fresh scheduler with the run's configuration.
    :param timesteps_kwargs: ``set_timesteps`` arguments for a number of steps, as the pipeline's.
    :param level_of: the core level of step ``i`` of a scheduler after ``set_timesteps``
        (``i = len(timesteps)``: the final level).
    :param to_output: the scheduler's ``model_output`` from ``(model input, x0_hat, level)``.
    :param first: the grid index runs start at (img2img's ``t_start``; the levels above it are
        not part of the run's grid).
    """

    name = "native"

    def __init__(
        self,
        make: Callable[[], Any],
        steps: int,
        timesteps_kwargs: Callable[[int], dict[str, Any]],
        level_of: Callable[[Any, int], float],
        to_output: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
        first: int = 0,
    ) -> None:
        self._make = make
        self.first = int(first)
        self._kwargs = timesteps_kwargs
        self._level_of = level_of
        self._to_output = to_output
        self.steps = int(steps)
        probe = make()
        config = dict(probe.config)
        cls_name = type(probe).__name__
        self.scheduler_name = cls_name
        self.stochastic = (
            cls_name in _ALWAYS_STOCHASTIC
            or "sde" in str(config.get("algorithm_type", ""))
            or bool(config.get("stochastic_sampling"))
        )
        self._restartable = restartable(type(probe))  # planning refuses the rest (a backstop)
        self._grid, self._starts, self._count = self._build(self.steps)

    def __repr__(self) -> str:
        return f"NativeSolver({self.scheduler_name}, steps={self.steps})"

    # -- the grid ------------------------------------------------------------------------------
    def _scheduler(self, steps: int) -> Any:
        scheduler = self._make()
        try:
            scheduler.set_timesteps(**self._kwargs(steps))
        except ValueError as exc:  # more steps than training timesteps (planning refuses them first)
            raise ConfigError("steps", f"{self.scheduler_name} cannot run {steps} steps: "
                              f"{_first_line(exc)}") from None
        return scheduler

    def _build(self, steps: int) -> tuple[list[float], list[int], int]:
        """``(levels, start index of each level but the last, number of timesteps)``."""
        scheduler = self._scheduler(steps)
        timesteps = [float(t) for t in scheduler.timesteps.tolist()]
        starts: list[int] = []
        for i, t in enumerate(timesteps):  # a repeated timestep (Heun) starts at its last copy
            if starts and timesteps[starts[-1]] == t:
                starts[-1] = i
            else:
                starts.append(i)
        levels = [self._level_of(scheduler, i) for i in starts] + [self._level_of(scheduler, len(timesteps))]
        if levels[0] > 1.0 + 1e-9:  # a VP timestep >= T ("leading" spacing plus steps_offset)
            raise ConfigError("steps", f"{self.scheduler_name} at {steps} steps starts at timestep "
                              f"{timesteps[0]:g}, outside the network's training timesteps; "
                              f"choose fewer steps")
        if any(b >= a for a, b in zip(levels, levels[1:])):
            raise ConfigError("steps", f"{self.scheduler_name} at {steps} steps gives repeated or "
                              f"increasing levels {levels}; choose another number of steps")
        return levels, starts, len(timesteps)

    def levels(self, steps: int) -> list[float]:
        return list(self._grid[self.first:]) if steps == self.steps else self._build(steps)[0][self.first:]

    def _span(self, levels: Sequence[float]) -> tuple[int, int]:
        """Grid indices ``(j, k)`` of a solve over ``levels``: the grid levels nearest to its ends
        (the engine moves a strategy's levels onto the grid; see ``Engine.on_grid``)."""
        levels = [float(level) for level in levels]
        if not levels or any(b >= a for a, b in zip(levels, levels[1:])):
            raise ValueError(f"levels must be strictly decreasing, got {levels}")
        grid = self._grid
        j = _nearest(range(len(grid)), grid, levels[0])
        k = _nearest(range(len(grid)), grid, levels[-1])
        return j, k

    def _index(self, k: int) -> int:
        """Scheduler step index at which grid level ``k`` starts (the count of timesteps for the last)."""
        return self._starts[k] if k < len(self._starts) else self._count

    def nfe(self, levels: Sequence[float]) -> int:
        j, k = self._span(levels)
        return self._index(k) - self._index(j)

    # -- solving -------------------------------------------------------------------------------
    def solve(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        levels: Sequence[float],
        capture: Sequence[float] = (),
        noise_seeds: Sequence[int] | None = None,
    ) -> SolveResult:
        import torch

        j, k = self._span(levels)
        begin, end = self._index(j), self._index(k)
        if begin == end:
            return SolveResult(x=x, nfe=0, x0={})
        if begin > 0 and not self._restartable:
            raise ValueError(f"{self.scheduler_name} keeps a step history it cannot restart from "
                             f"mid-path; use it with strategies that solve whole paths (random, "
                             f"zero-order) or choose another scheduler")
        scheduler = self._scheduler(self.steps)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        step_kwargs: dict[str, Any] = {}
        if self.stochastic:
            if noise_seeds is None or len(noise_seeds) != x.shape[0]:
                raise ValueError(f"{self.scheduler_name} draws step noise: give one seed per row")
            step_kwargs["generator"] = [torch.Generator("cpu").manual_seed(int(s)) for s in noise_seeds]
        init = getattr(scheduler, "init_noise_sigma", 1.0)  # flow schedulers have none: unscaled
        sigma_space = float(init) != 1.0  # the state is x0 + sigma eps (Euler & co)
        if begin == 0:
            state = x * init if sigma_space else x  # as the pipeline scales its latents=
        elif sigma_space:
            state = x * _sigma_scale(scheduler, begin)
        else:
            state = x
        wanted = {self._starts[_nearest(range(j, k), self._grid, level)] for level in capture}
        captured: dict[float, torch.Tensor] = {}
        for i in range(begin, end):
            t = scheduler.timesteps[i]
            level = self._level_of(scheduler, i)
            scale = getattr(scheduler, "scale_model_input", None)  # flow schedulers have none
            model_input = state if scale is None else scale(state, t)  # the VP (or flow) state
            x0 = denoiser(model_input, level)
            if i in wanted:
                captured[level] = x0
            output = self._to_output(model_input, x0, level)
            state = scheduler.step(output, t, state, **step_kwargs, return_dict=False)[0]
        if sigma_space:
            state = state / _sigma_scale(scheduler, end)
        return SolveResult(x=state, nfe=end - begin, x0=captured)


def _sigma_scale(scheduler: Any, index: int) -> torch.Tensor:
    """``sqrt(sigma^2 + 1)`` at step ``index``: from the VP state to ``x0 + sigma eps``, computed
    as the schedulers' ``scale_model_input`` does."""
    sigma = scheduler.sigmas[index]
    return (sigma**2 + 1) ** 0.5


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _nearest(indices: Sequence[int], grid: Sequence[float], target: float) -> int:
    return min(indices, key=lambda i: abs(grid[i] - target))
