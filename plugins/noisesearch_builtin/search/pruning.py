"""Early pruning by successive halving (Jamieson & Talwalkar 2016; applied to diffusion
sampling as in Ma et al. 2025's discussion of early-stopping verifiers).

Start ``N0`` candidates from random noise; at each checkpoint level solve them down to it,
score their clean predictions ``x0_hat`` (one NFE each), and continue only the best
``keep`` fraction (at least one). The survivors are solved to the clean end and become
candidates. Compute goes to noises that already look promising, instead of finishing every
sample: at equal NFEs it starts more candidates than random search.

Cost: ``sum_j N_j * (K_j + 1) + N_last * K_end`` where ``N_{j+1} = max(1, ceil(keep N_j))``,
``K_j`` the solver's NFEs from the previous checkpoint to checkpoint ``j`` and ``K_end`` from
the last checkpoint to the end (:meth:`EarlyPruning.nfe_cost`). Left unset, ``N0`` is the
largest the budget pays for.

It pays only where ``x0_hat`` early on ranks the final scores well, with one early hard cut:
on digits ``checkpoints=0.95, keep=1/16`` beats random search's final score at half its NFEs;
the gentle defaults do not, and on ``shapes`` one step's ``x0_hat`` ranks too poorly for that cut
(docs/strategies.md, "Pruning that pays"; ``benchmarks/compare_pruning.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from noisesearch import ConfigError, hookimpl
from noisesearch.recipes import seed_recipe

if TYPE_CHECKING:
    from noisesearch import SearchContext
    from noisesearch.registry import Register

DEFAULT_INITIAL = 32


class EarlyPruning:
    """Successive halving: score x0_hat part-way, finish only the most promising candidates.

    :param initial: N0, candidates started (default: as many as the budget pays for, or 32).
    :param checkpoints: decreasing levels at which candidates are scored and pruned (one level:
        a single cut there).
    :param keep: fraction of candidates continued at each checkpoint, in (0, 1] (1 - the cut).
    """

    #: Samples are finished from partial paths (no single trajectory of clean predictions).
    partial_paths: ClassVar[bool] = True
    #: It solves from re-noised, resampled or partly solved states (a model's own sampler must
    #: be able to start mid-path: planning refuses PNDM with --solver native).
    mid_path_solves: ClassVar[bool] = True

    def __init__(
        self,
        initial: int | None = None,
        checkpoints: float | Sequence[float] = (0.6, 0.3),
        keep: float = 0.5,
    ) -> None:
        if initial is not None and (not _is_integer(initial) or initial < 1):
            raise ConfigError("pruning.initial", f"must be a whole number of at least 1, got {initial!r}")
        if _is_number(checkpoints):  # one early level: a single hard cut
            checkpoints = [checkpoints]
        if isinstance(checkpoints, (str, bytes)) or not isinstance(checkpoints, Sequence) or not all(
            _is_number(c) for c in checkpoints
        ):
            raise ConfigError("pruning.checkpoints",
                              f"must be a level or a list of levels, got {checkpoints!r}")
        checkpoints = [float(c) for c in checkpoints]
        if not checkpoints or any(not 0.0 < c < 1.0 for c in checkpoints) or any(
            b >= a for a, b in zip(checkpoints, checkpoints[1:])
        ):
            raise ConfigError("pruning.checkpoints", f"must decrease within (0, 1), got {checkpoints}")
        if not _is_number(keep) or not 0.0 < keep <= 1.0:
            raise ConfigError("pruning.keep", f"must be a fraction in (0, 1], got {keep!r}")
        self.initial = None if initial is None else int(initial)
        self.checkpoints = checkpoints
        self.keep = float(keep)

    def sizes(self, initial: int) -> list[int]:
        """How many candidates are alive before each checkpoint, then at the end."""
        sizes = [initial]
        for _ in self.checkpoints:
            sizes.append(max(1, math.ceil(self.keep * sizes[-1])))
        return sizes

    def stages(self, context: SearchContext) -> list[list[float]]:
        bounds = [context.levels[0], *self._checkpoints(context), context.levels[-1]]
        return [context.grid(a, b) for a, b in zip(bounds, bounds[1:])]

    def _checkpoints(self, context: SearchContext) -> list[float]:
        end, first = context.levels[-1], context.levels[0]
        return [c for c in self.checkpoints if end < c < first]

    def nfe_cost(self, context: SearchContext, initial: int) -> int:
        stages = self.stages(context)
        sizes = self.sizes(initial)[: len(stages)]
        total = 0
        for j, (grid, alive) in enumerate(zip(stages, sizes)):
            scoring = 1 if j < len(stages) - 1 else 0
            total += alive * (context.solve_nfe(grid) + scoring)
        return total

    def _initial(self, context: SearchContext) -> int:
        finishing = len(self.stages(context)) - 1
        largest = context.largest_affordable(
            lambda n: self.nfe_cost(context, n), lambda n: self.sizes(n)[finishing], limit=self.initial
        )
        return (self.initial or DEFAULT_INITIAL) if largest is None else largest

    def run(self, context: SearchContext) -> None:
        initial = self._initial(context)
        if initial == 0:  # too small a budget for the stages: spend it on plain samples instead
            context.plain_samples()
            return
        stages = self.stages(context)
        sizes = self.sizes(initial)
        states = context.start([seed_recipe(seed) for seed in context.seeds(initial)])
        for j, grid in enumerate(stages[:-1]):
            states = context.solve(states, grid)
            scores = context.score(context.predict(states))
            ranked = sorted(range(len(scores)), key=lambda i: _rank_key(scores[i], i))
            states = states.select(ranked[: sizes[j + 1]])
        context.finish(context.solve(states, stages[-1]))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: object) -> bool:
    return _is_number(value) and float(value).is_integer()  # type: ignore[arg-type]


def _rank_key(score: float, i: int) -> tuple[bool, float, int]:
    """Best first; NaN and infinite scores rank below every finite one (never kept over one)."""
    finite = math.isfinite(score)
    return (not finite, -score if finite else 0.0, i)


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("pruning", EarlyPruning)
