"""What a search strategy sees of the engine: :class:`SearchContext` and
:class:`Trajectories`, batches of partial samples with their recipes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from noisesearch import recipes as rec
from noisesearch.sampling import solver_nfe
from noisesearch.types import Candidate

if TYPE_CHECKING:
    import torch

    from noisesearch.engine import Engine
    from noisesearch.gradients import Gradients


@dataclass
class Trajectories:
    """A batch of partial trajectories at one level, with each row's recipe so far."""

    x: torch.Tensor  # (N, *latent_shape)
    level: float
    recipes: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.recipes)

    def select(self, indices: Sequence[int]) -> Trajectories:
        """Rows ``indices`` (repeats allowed: resampling), recipes copied, not aliased."""
        import torch

        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.x.device)
        picked = [rec.with_op(self.recipes[i]) for i in indices]
        return Trajectories(self.x.index_select(0, index), self.level, picked)


class SearchContext:
    """What a strategy sees: the budget, noise drawing, candidate evaluation and partial
    trajectories. Every call that computes is charged to the budget first and raises
    :class:`BudgetExhausted` (computing nothing) when the budget cannot pay for it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- what the search can see -----------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """How many rows the engine computes at once; propose in multiples of it."""
        return self._engine.batch_size

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self._engine.model.latent_shape)

    @property
    def levels(self) -> list[float]:
        """The search sampler's grid, from noise (``levels[0]``) to clean (``levels[-1]``)."""
        return list(self._engine.levels)

    @property
    def nfe_per_candidate(self) -> int:
        """NFEs one full sample costs with the search sampler."""
        return self._engine.nfe_per_candidate

    @property
    def remaining_nfe(self) -> int | None:
        return self._engine.remaining_nfe

    @property
    def remaining_candidates(self) -> int | None:
        return self._engine.remaining_candidates

    @property
    def nfe_worth(self) -> int | None:
        """The NFEs what is left of the budget is worth (``None``: no limit). A budget in
        candidates pays for that many full samples, so strategies whose candidates cost more
        or less than one (gradient steps, cheap previews) spend the same compute as random
        search would at the same N."""
        nfe = self.remaining_nfe
        if self.remaining_candidates is not None:
            worth = self.remaining_candidates * self.nfe_per_candidate
            nfe = worth if nfe is None else min(nfe, worth)
        return nfe

    def affordable(self, nfe_each: int | None = None) -> int | None:
        """How many more candidates the budget allows (``None``: no limit at all)."""
        nfe_each = self.nfe_per_candidate if nfe_each is None else nfe_each
        limits = []
        if self.remaining_candidates is not None:
            limits.append(self.remaining_candidates)
        if self.remaining_nfe is not None:
            limits.append(self.remaining_nfe // max(nfe_each, 1))
        return min(limits) if limits else None

    def largest_affordable(
        self,
        nfe_cost: Callable[[int], int],
        finished: Callable[[int], int] = lambda n: n,
        limit: int | None = None,
    ) -> int | None:
        """The largest size ``n`` (up to ``limit``) of a search whose NFE cost ``nfe_cost(n)``
        and ``finished(n)`` candidates fit what is left of the budget; 0 if none does, ``None``
        if the budget has no limit at all (the strategy then picks its own size)."""
        nfe, candidates = self.remaining_nfe, self.remaining_candidates
        if nfe is None and candidates is None:
            return None
        n = 0
        while limit is None or n < limit:
            if (nfe is not None and nfe_cost(n + 1) > nfe) or (
                candidates is not None and finished(n + 1) > candidates
            ):
                break
            n += 1
        return n

    def solve_nfe(self, levels: Sequence[float]) -> int:
        """NFEs per row of solving over ``levels`` with the run's solver: what :meth:`solve`
        charges (a model's own solver steps along the run's grid between the two ends)."""
        return solver_nfe(self._engine.model.schedule, self._engine.on_grid(levels), self._engine.solver)

    def grid(self, start: float, end: float) -> list[float]:
        """The run's grid between two levels (both included), for partial solves."""
        inner = [level for level in self._engine.levels if end + 1e-9 < level < start - 1e-9]
        return [start, *inner, end]

    # -- noise ------------------------------------------------------------------------------
    def seeds(self, n: int) -> list[int]:
        """The next ``n`` seeds of this run: deterministic given the run seed."""
        return self._engine.next_seeds(n)

    def noise(self, noise_recipes: Sequence[dict[str, Any]]) -> torch.Tensor:
        """The initial noise ``(len(recipes), *latent_shape)`` that derivable recipes describe."""
        return self._engine._noise_for(noise_recipes)

    # -- full samples -------------------------------------------------------------------------
    def plain_samples(self) -> list[Candidate]:
        """Spend what is left of the budget on plain samples of fresh seeds (random search): what
        a strategy does when its smallest search (one path, two particles, a pruning stage) costs
        more than the budget, so that a budget of one sample still gives a candidate."""
        affordable = self.affordable() or 0
        return self.evaluate([rec.seed_recipe(seed) for seed in self.seeds(affordable)])

    def evaluate(
        self, noise_recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> list[Candidate]:
        """Generate, score and record one candidate per noise recipe; returns them in order.

        Derivable recipes (``noisesearch.recipes``: seed, neighbour, subspace) need no ``noises``; other
        kinds pass the noise tensor ``(len(recipes), *latent_shape)`` they describe. No
        recipes: nothing is computed and the result is ``[]``.
        """
        return self._engine.evaluate(noise_recipes, noises)

    def best(self) -> Candidate | None:
        """The best candidate so far (a finite objective beats any NaN or infinity)."""
        return self._engine.selection.best()

    # -- partial trajectories -------------------------------------------------------------------
    def start(
        self, noise_recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> Trajectories:
        """Trajectories at the grid's first level from their initial noises (free)."""
        return self._engine.start(noise_recipes, noises)

    def solve(self, states: Trajectories, levels: Sequence[float]) -> Trajectories:
        """Solve from ``states.level`` (= ``levels[0]``) down to ``levels[-1]``."""
        return self._engine.solve(states, levels)[0]

    def renoise(self, states: Trajectories, to_level: float) -> Trajectories:
        """The forward kernel up to a noisier level, fresh seeded noise per row (free)."""
        return self._engine.renoise(states, to_level)

    def predict(self, states: Trajectories) -> torch.Tensor:
        """The clean predictions ``x0_hat`` ``(N, *latent_shape)`` at the rows' level (1 NFE each)."""
        return self._engine.predict(states)

    def score(self, x0: torch.Tensor) -> list[float]:
        """The objective of clean latents (e.g. ``predict``'s), decoded; no candidate recorded.

        Pooled objectives (ensembles) rank within these rows.
        """
        engine = self._engine
        scores = engine.score_latents(x0)
        rows = [{name: values[i] for name, values in scores.items()} for i in range(x0.shape[0])]
        return engine.scorer.objectives(rows)

    def finish(self, states: Trajectories) -> list[Candidate]:
        """Record trajectories that reached the grid's last level as candidates."""
        return self._engine.finish(states)

    # -- gradients (gradient strategies; noisesearch.gradients) ---------------------------------
    @property
    def verifier_names(self) -> list[str]:
        """The run's verifiers, the objective first (what ``gradient`` may weight)."""
        return list(self._engine.scorer.verifiers)

    def gradient_nfe(self, levels: Sequence[float]) -> tuple[int, int]:
        """(forward, backward) NFEs per row of :meth:`gradient` over ``levels``."""
        return self._engine.gradient_nfe(levels)

    def gradient(
        self,
        noises: torch.Tensor,
        levels: Sequence[float],
        weights: dict[str, float] | None = None,
    ) -> Gradients:
        """The differentiable objective ``sum_i w_i s_i`` of ``noises`` ``(N, *latent_shape)``
        solved over ``levels`` (default weights: the objective verifier alone) and its gradient
        with respect to the noises, with autograd on through the solve, the decoder and the
        verifiers' ``score_with_grad``. Charged ``N * (forward + backward)`` NFEs first; records
        no candidate (finish with :meth:`evaluate`)."""
        names = self.verifier_names
        return self._engine.gradient(noises, levels, weights or {names[0]: 1.0})

    @property
    def gradient_rows(self) -> int | None:
        """Rows per differentiable chunk after an out-of-memory back-off (``None``: all at once)."""
        return self._engine.gradient_rows

    def report(self, key: str, value: Any) -> None:
        """Attach a JSON-able diagnostic to the run (e.g. SMC's effective sample sizes)."""
        self._engine.report[key] = value
