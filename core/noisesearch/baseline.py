"""The baseline: what the user would have got without search.

That is the plain sampler's output (the run's solver over the run's grid) from the run's
first seed, for every strategy. Random and zero-order search evaluate exactly that sample as
their first candidate, which is then reused; strategies whose finished candidates were already
steered (paths, SMC, pruning) get it generated separately, outside the budget, its NFEs
reported as ``usage.baseline_nfe`` (``run.json``'s ``baseline_origin`` says which).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from noisesearch.recipes import initial_noise, seed_recipe, solve_op
from noisesearch.sampling import is_stochastic, solve
from noisesearch.types import Candidate

if TYPE_CHECKING:
    from noisesearch.engine import Engine

#: ``baseline_origin`` values: a searched candidate was the plain sample, or it was made apart.
FROM_SEARCH = "candidate"
EXTRA = "extra"


def step_noise_seed(seed: int) -> int:
    """A stochastic solver's step-noise seed for a whole sample from noise ``seed``: a hash of it
    (not ``seed`` itself, whose generator's first draw is the initial noise)."""
    digest = hashlib.blake2b(f"{int(seed)}:step-noise".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def plain_recipe(seed: int, levels: Sequence[float], noise_seed: int | None = None) -> dict[str, Any]:
    """The recipe of one plain sample of noise ``seed`` over ``levels``, alone in its batch;
    ``noise_seed``: a stochastic solver's step-noise seed (``step_noise_seed(seed)``)."""
    return {
        "start": seed_recipe(seed),
        "ops": [solve_op(levels, 1, 0, noise_seed)],
        "decode": {"batch": 1, "row": 0},
    }


def is_plain(
    recipe: dict[str, Any], seed: int, levels: Sequence[float], noise_seed: int | None = None
) -> bool:
    """Whether ``recipe`` is a plain sample of noise ``seed`` over ``levels`` (in a batch of
    any size: batching changes results by ~1e-7 only), with step noise ``noise_seed``."""
    ops = recipe.get("ops") or []
    return (
        recipe.get("start") == seed_recipe(seed)
        and len(ops) == 1
        and ops[0].get("op") == "solve"
        and _same_levels(ops[0].get("levels", []), levels)
        and ops[0].get("noise_seed") == noise_seed
    )


def _same_levels(recorded: Sequence[float], levels: Sequence[float]) -> bool:
    """Level lists equal as numbers (asked of a search's first candidates: converting 2 x 21
    levels first cost a small search ~1%, where the lists are nearly always equal as they are)."""
    if recorded == levels:
        return True
    return [float(level) for level in recorded] == [float(level) for level in levels]


def generate(engine: Engine, seed: int) -> Candidate:
    """The plain sample of noise ``seed``, made with ``engine``'s model, grid, solver and
    scorer, outside its budget and its record of candidates (``index`` -1)."""
    import torch

    step_seed = step_noise_seed(seed) if is_stochastic(engine.solver) else None
    recipe = plain_recipe(seed, engine.levels, step_seed)
    noise = initial_noise(recipe["start"], tuple(engine.model.latent_shape), "cpu", engine.dtype)
    x = noise[None].to(device=engine.device, dtype=engine.dtype or noise.dtype)  # (1, *latent)
    x = engine.initial_state(x)  # img2img: the noised image
    scorer, usage = engine.scorer, engine.usage
    start = time.perf_counter()
    with torch.inference_mode():
        result = solve(engine.denoiser(), x, engine.model.schedule, engine.levels, engine.solver,
                       scorer.trajectory_levels, None if step_seed is None else [step_seed])
    usage.model_seconds += time.perf_counter() - start
    usage.baseline_nfe += result.nfe
    image = engine._decode(result.x)  # (1, 3, H, W)
    trajectory = {level: engine._decode(x0) for level, x0 in result.x0.items()}
    scores = scorer.score(image, engine.condition, trajectory or None, usage)
    row = {name: values[0] for name, values in scores.items()}
    # A pooled objective ranks the baseline among every searched candidate.
    pool = [c.scores for c in engine.selection.all] if scorer.pooled else []
    objective = scorer.objectives([*pool, row])[-1]
    return Candidate(index=-1, recipe=recipe, scores=row, objective=objective, nfe=result.nfe,
                     image=image[0].cpu(), noise=noise)
