"""A verifier-free stochastic sampler: the control for paths and SMC at equal NFEs.

Paths and SMC re-noise along the path *and* choose by a verifier. This sampler does the first
without the second: it runs the rounds of search over paths (``noisesearch_builtin.search.paths``:
solve N noises to ``start_level``, then per round re-noise each path into ``children`` children
and solve them down) but keeps a uniformly random ``N`` of each round's children, scores no
``x0_hat`` and finishes one random path. Nothing the verifier says reaches the winner, so
the gap between paths (or SMC) and this sampler at equal NFEs is what the verifier buys; its
gap to one plain sample is what re-noising alone buys.

Cost: ``N * K_start + sum over rounds of N * M * K_round`` (no scoring NFEs). Left unset,
``N`` is the largest the budget pays for. The random choices are drawn from the run seed.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from noisesearch import hookimpl
from noisesearch.recipes import seed_recipe
from noisesearch_builtin.search.paths import SearchOverPaths

if TYPE_CHECKING:
    from noisesearch import SearchContext
    from noisesearch.registry import Register


class StochasticSampler(SearchOverPaths):
    """Verifier-free control: paths' re-noising rounds, but a random child kept (no verifier).

    :param paths: N, paths kept after every round (default: as many as the budget pays for).
    :param children: M, children drawn per path in every round.
    :param start_level: the level the first N noises are solved down to.
    :param forward: how far up each round re-noises (in levels).
    :param backward: how far down each round then solves; must exceed ``forward``.
    :param preset: ``"paper"`` sets start_level, forward and backward to the paper's values.
    """

    name = "stochastic"

    def nfe_cost(self, context: SearchContext, paths: int) -> int:
        levels = context.levels
        total = paths * context.solve_nfe(context.grid(levels[0], self.start_level))
        for _, up, down in self.rounds(levels[-1]):
            total += paths * self.children * context.solve_nfe(context.grid(up, down))
        return total

    def run(self, context: SearchContext) -> None:
        end = context.levels[-1]
        paths = self._paths(context)
        if paths == 0 or self.start_level <= end:  # too small a budget: one plain sample
            if (context.affordable() or 0) > 0:
                context.evaluate([seed_recipe(seed) for seed in context.seeds(1)])
            return
        chooser = random.Random(context.seeds(1)[0])
        states = context.start([seed_recipe(seed) for seed in context.seeds(paths)])
        states = context.solve(states, context.grid(context.levels[0], self.start_level))
        for _, up, down in self.rounds(end):
            family = states.select([i for i in range(len(states)) for _ in range(self.children)])
            family = context.solve(context.renoise(family, up), context.grid(up, down))
            states = family.select(sorted(chooser.sample(range(len(family)), paths)))
        context.finish(states.select([chooser.randrange(len(states))]))

    def _paths(self, context: SearchContext) -> int:
        # A budget in candidates caps the paths (as it caps paths' N), though one finishes.
        largest = context.largest_affordable(lambda n: self.nfe_cost(context, n), limit=self.paths)
        return (self.paths or 1) if largest is None else largest


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("stochastic", StochasticSampler)
