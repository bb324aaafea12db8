"""Zero-order search (ZO-N): Ma et al. 2025, "Inference-Time Scaling for Diffusion Models
beyond Scaling Denoising Steps", section 3.2.

Start from a random pivot noise; each iteration draws ``N`` neighbours of the pivot, generates
and scores them, and moves the pivot to the best. Choices the paper leaves open, as in the
first author's reference code: neighbours lie on the pivot's *same-norm sphere* at cosine
similarity ``c`` (``noisesearch.recipes.same_norm_neighbour``); the pivot may compete with its
neighbours (its score is known, so that costs nothing); when no neighbour beats it the pivot
stays; after ``restart_after`` rounds without improvement a fresh random pivot is drawn.

Cost: ``K * (1 + iterations * N)`` NFEs for a ``K``-NFE sampler (the pivot, then ``N``
neighbours per iteration; each restart adds one pivot). Under a budget the last iteration
draws fewer neighbours, so that every affordable sample is spent: ``floor(budget / K)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from noisesearch import ConfigError, hookimpl
from noisesearch.recipes import initial_noise, neighbour_noise, neighbour_recipe, seed_recipe

if TYPE_CHECKING:
    import torch

    from noisesearch import Candidate, SearchContext
    from noisesearch.registry import Register


class ZeroOrderSearch:
    """Zero-order search: move a pivot noise to its best same-norm neighbour, round by round.

    :param neighbours: N, neighbours drawn per iteration.
    :param cosine: cosine similarity between the pivot and each neighbour, in (0, 1).
    :param iterations: at most this many iterations (default: until the budget is spent).
    :param pivot_competes: the pivot keeps its place unless a neighbour scores higher; if
        false the pivot always moves to the best neighbour.
    :param restart_after: draw a fresh random pivot after this many iterations without
        improvement of the best score (default: never).
    """

    def __init__(
        self,
        neighbours: int = 4,
        cosine: float = 0.95,
        iterations: int | None = None,
        pivot_competes: bool = True,
        restart_after: int | None = None,
    ) -> None:
        if neighbours < 1:
            raise ConfigError("zero-order.neighbours", f"must be at least 1, got {neighbours}")
        if not 0.0 < cosine < 1.0:
            raise ConfigError("zero-order.cosine", f"must be in (0, 1), got {cosine}")
        if iterations is not None and iterations < 0:
            raise ConfigError("zero-order.iterations", f"must be non-negative, got {iterations}")
        if restart_after is not None and restart_after < 1:
            raise ConfigError("zero-order.restart_after", f"must be at least 1, got {restart_after}")
        self.neighbours = neighbours
        self.cosine = cosine
        self.iterations = iterations
        self.pivot_competes = pivot_competes
        self.restart_after = restart_after

    @staticmethod
    def nfe_cost(nfe_per_candidate: int, neighbours: int, iterations: int, restarts: int = 0) -> int:
        """NFEs of a run with this many iterations and restarts."""
        return nfe_per_candidate * (1 + restarts + iterations * neighbours)

    def run(self, context: SearchContext) -> None:
        import torch

        pivot, pivot_noise = self._new_pivot(context)
        if pivot is None:
            return
        best_score, stale, done = pivot.objective, 0, 0
        while self.iterations is None or done < self.iterations:
            affordable = context.affordable()
            if affordable is not None and affordable < 1:
                return
            count = self.neighbours if affordable is None else min(self.neighbours, affordable)
            seeds = context.seeds(count)
            recipes = [neighbour_recipe(pivot.recipe["start"], seed, self.cosine) for seed in seeds]
            noises = [neighbour_noise(pivot_noise, seed, self.cosine) for seed in seeds]
            challengers = context.evaluate(recipes, torch.stack(noises))
            done += 1
            leader = max(range(count), key=lambda i: _rank(challengers[i].objective))
            if not self.pivot_competes or _rank(challengers[leader].objective) > _rank(pivot.objective):
                pivot, pivot_noise = challengers[leader], noises[leader]
            if _rank(challengers[leader].objective) > _rank(best_score):
                best_score, stale = challengers[leader].objective, 0
            else:
                stale += 1
            if self.restart_after is not None and stale >= self.restart_after:
                fresh, fresh_noise = self._new_pivot(context)
                if fresh is None:
                    return
                pivot, pivot_noise, stale = fresh, fresh_noise, 0
                best_score = max(best_score, fresh.objective, key=_rank)

    @staticmethod
    def _new_pivot(context: SearchContext) -> tuple[Candidate | None, torch.Tensor | None]:
        """A fresh random pivot, evaluated, with its noise (on the CPU, where moves are made)."""
        affordable = context.affordable()
        if affordable is not None and affordable < 1:
            return None, None
        recipe = seed_recipe(context.seeds(1)[0])
        noise = initial_noise(recipe, context.latent_shape)
        return context.evaluate([recipe], noise[None])[0], noise


def _rank(objective: float) -> tuple[bool, float]:
    """Larger is better; a NaN or infinite objective ranks below every finite one."""
    return (True, objective) if math.isfinite(objective) else (False, 0.0)


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("zero-order", ZeroOrderSearch)
