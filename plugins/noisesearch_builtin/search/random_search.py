"""Random search (best-of-N): Ma et al. 2025, "Inference-Time Scaling for Diffusion Models
beyond Scaling Denoising Steps", section 3.2.

Draw i.i.d. Gaussian noises, generate each with the search sampler, score, keep the best.
Cost: ``N * K`` NFEs for ``N`` candidates with a ``K``-NFE sampler. The most prone of the
paper's algorithms to verifier hacking, since its search space is unconstrained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from noisesearch import hookimpl
from noisesearch.recipes import seed_recipe

if TYPE_CHECKING:
    from noisesearch import SearchContext
    from noisesearch.registry import Register


#: Model batches per ``evaluate`` call. More than one, so that the next batch can be denoised
#: while this one is scored (``--overlap``); a few only, so that a call's noises and candidates
#: stay small however large the budget. The batches, seeds and results are the same for any
#: value: the engine cuts each call into batches of ``batch_size`` in order.
BATCHES_PER_CALL = 4


class RandomSearch:
    """Best-of-N: sample independent noises until the budget is spent, keep the best."""

    def run(self, context: SearchContext) -> None:
        while True:
            affordable = context.affordable()
            if affordable is None:
                raise ValueError("random search needs a budget in candidates or NFEs")
            if affordable <= 0:
                return
            seeds = context.seeds(min(affordable, context.batch_size * BATCHES_PER_CALL))
            context.evaluate([seed_recipe(seed) for seed in seeds])


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("random", RandomSearch)
