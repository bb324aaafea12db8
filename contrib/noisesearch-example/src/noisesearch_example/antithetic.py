"""Random search with antithetic pairs: every seed's noise ``z`` is evaluated with its mirror ``-z``.

Antithetic variates (Hammersley and Morton 1956) make the sample symmetric around the mean of
the Gaussian: half as many seeds cover both sides of each direction. Otherwise this is random
search (best-of-N, Ma et al. 2025, section 3.2): evaluate until the budget is spent, the engine
keeps the best.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from noisesearch.sampling import draw_noise

if TYPE_CHECKING:
    from noisesearch import SearchContext


class AntitheticSearch:
    """Random search over antithetic pairs: each seed's noise z is also tried as -z."""

    def run(self, context: SearchContext) -> None:
        import torch

        per_round = context.batch_size + context.batch_size % 2  # whole pairs per round
        while True:
            affordable = context.affordable()
            if affordable is None:
                raise ValueError("antithetic search needs a budget in candidates or NFEs")
            if affordable <= 0:
                return
            n = min(affordable, per_round)  # odd only at the very end of the budget
            seeds = context.seeds((n + 1) // 2)
            noise = draw_noise(seeds, context.latent_shape)  # (S, *latent_shape), as a seed recipe's
            pairs = torch.stack([noise, -noise], dim=1)  # (S, 2, *latent_shape): z, -z
            recipes: list[dict[str, Any]] = [
                {"kind": "antithetic", "seed": seed, "sign": sign} for seed in seeds for sign in (1, -1)
            ]
            context.evaluate(recipes[:n], pairs.flatten(0, 1)[:n])
