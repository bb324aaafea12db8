"""Evolution search in a low-frequency subspace of the noise (SES-style: Spectral Evolution
Search, arXiv 2602.03208; DiffSynth-Studio's ``enable_ses``).

The cross-entropy method over the ``C * band * band`` lowest-frequency coefficients of an
orthonormal 2-D DCT-II of the initial noise, per channel (``noisesearch.spectral``, through the
subspace recipes of ``noisesearch.recipes``); the rest of the noise stays as drawn from the
search's first seed. Generation 0 samples the coefficients from ``N(0, I)``, so its noises are
exactly ``N(0, I)``; each generation then refits a diagonal Gaussian (mean, std; the std floored
at ``min_std``) to its elite fraction.

Candidates are scored on cheap *previews*: solved over ``preview_steps`` levels taken evenly from
the run's grid, decoded and scored (no candidate recorded). Only the ``finalists`` best noises by
preview score are then solved on the full grid and become candidates.

Cost: ``P_total * K_preview + F * K`` for ``P_total`` previews of ``K_preview`` NFEs and ``F``
finalists of ``K`` (a full sample). Previews and full solves are charged alike; the generations
are planned from the budget so that it is never exceeded (the last generation may be smaller).
Where a preview costs as much as a full sample (``preview_steps`` >= the run's steps, or a
model's own solver, which steps along its own whole grid) the previews are skipped: every
member is a full candidate and there is no finalist stage.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import ConfigError, hookimpl
from noisesearch.recipes import SUBSPACE_TRANSFORM, subspace_grid, subspace_recipe

if TYPE_CHECKING:
    import torch

    from noisesearch import SearchContext
    from noisesearch.registry import Register


class EvolutionSearch:
    """Cross-entropy method over the noise's lowest DCT frequencies, scored on cheap previews.

    :param band: the band of ``band x band`` lowest frequencies per channel that is searched.
    :param population: noises per generation.
    :param elite_fraction: the fraction of a generation the Gaussian is refitted to, in (0, 1).
    :param preview_steps: steps of the preview grid (levels taken evenly from the run's grid).
    :param generations: at most this many generations (default: as many as the budget pays for).
    :param finalists: noises solved on the full grid at the end (default: one generation's elites).
    :param min_std: floor of the refitted standard deviation, so the search never freezes.
    """

    #: Previews are scored without a trajectory of clean predictions.
    partial_paths: ClassVar[bool] = True
    #: Under a model's own sampler it skips the previews and solves whole paths only, so a
    #: sampler that cannot start mid-path (PNDM, with --solver native) serves it.
    mid_path_solves: ClassVar[bool] = False

    def __init__(
        self,
        band: int = 4,
        population: int = 16,
        elite_fraction: float = 0.25,
        preview_steps: int = 8,
        generations: int | None = None,
        finalists: int | None = None,
        min_std: float = 0.05,
    ) -> None:
        _integer("band", band, 1)
        _integer("population", population, 2)
        if not isinstance(elite_fraction, (int, float)) or not 0.0 < elite_fraction < 1.0:
            raise ConfigError("evolution.elite_fraction", f"must be in (0, 1), got {elite_fraction!r}")
        _integer("preview_steps", preview_steps, 1)
        if generations is not None:
            _integer("generations", generations, 1)
        if finalists is not None:
            _integer("finalists", finalists, 1)
        if not isinstance(min_std, (int, float)) or not 0.0 <= min_std <= 1.0:
            raise ConfigError("evolution.min_std", f"must be in [0, 1], got {min_std!r}")
        self.band = band
        self.population = population
        self.elite_fraction = float(elite_fraction)
        self.preview_steps = preview_steps
        self.generations = generations
        self.finalists = finalists if finalists is not None else self.elites(population)
        self.min_std = float(min_std)

    def elites(self, size: int) -> int:
        """Elites of a generation of ``size`` noises (at least one)."""
        return max(1, round(self.elite_fraction * size))

    def preview_levels(self, levels: list[float]) -> list[float]:
        """``preview_steps + 1`` levels taken evenly (by index) from the run's grid, both ends kept."""
        steps = len(levels) - 1
        k = min(self.preview_steps, steps)
        return [levels[round(i * steps / k)] for i in range(k + 1)]

    def plan(self, budget_nfe: int | None, preview_nfe: int, full_nfe: int,
             candidates: int | None) -> tuple[list[int], int]:
        """Generation sizes and finalists for ``budget_nfe`` (``None``: no limit, then
        ``generations`` must be set). With full previews (``preview_nfe >= full_nfe``) members are
        candidates and there are no finalists."""
        full = preview_nfe >= full_nfe
        if budget_nfe is None:
            if self.generations is None:
                raise ValueError("evolution search needs a budget in NFEs or candidates, or `generations`")
            return [self.population] * self.generations, 0 if full else self.finalists
        if full:
            finalists, previews = 0, budget_nfe // full_nfe
            if candidates is not None:
                previews = min(previews, candidates)
        else:
            finalists = min(self.finalists, budget_nfe // full_nfe)
            if candidates is not None:
                finalists = min(finalists, candidates)
            previews = (budget_nfe - finalists * full_nfe) // preview_nfe
        if self.generations is not None:
            previews = min(previews, self.generations * self.population)
        sizes = [self.population] * (previews // self.population)
        if previews % self.population >= 2 or (full and previews % self.population):
            sizes.append(previews % self.population)
        return sizes, finalists

    def check_model(self, model: Any) -> None:
        """Refuse a latent this search cannot read, or a band wider than it: called with the
        built model before the run folder is made, so a bad ``band`` leaves nothing on disk."""
        self._grid(tuple(model.latent_shape))

    def _grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        try:
            grid = subspace_grid(shape)
        except ValueError as exc:
            raise ConfigError("evolution", str(exc)) from None
        if self.band > min(grid[1], grid[2]):
            raise ConfigError("evolution.band", f"must be at most {min(grid[1], grid[2])} for a latent "
                              f"read as {grid[1]}x{grid[2]} ({grid[0]} channels), got {self.band}")
        return grid

    def run(self, context: SearchContext) -> None:
        import torch

        shape = tuple(context.latent_shape)
        grid = self._grid(shape)
        band = (self.band, self.band)
        dims = grid[0] * self.band * self.band
        preview = self.preview_levels(context.levels)
        preview_nfe, full_nfe = context.solve_nfe(preview), context.nfe_per_candidate
        budget = context.nfe_worth  # a candidate budget pays for full samples
        sizes, finalists = self.plan(budget, preview_nfe, full_nfe, context.remaining_candidates)
        full = preview_nfe >= full_nfe
        base = context.seeds(1)[0]  # the rest of every noise: this seed's
        mean = torch.zeros(dims, dtype=torch.float64)
        std = torch.ones(dims, dtype=torch.float64)
        shell = math.sqrt(math.prod(shape))
        archive: list[tuple[tuple[bool, float], int, list[float]]] = []  # (rank, order, coefficients)
        history: list[dict[str, Any]] = []
        context.report("evolution", {  # filled in as generations end (a run stopped early keeps them)
            "transform": SUBSPACE_TRANSFORM, "layout": list(grid), "band": list(band), "dimensions": dims,
            "preview_levels": preview, "preview_nfe": preview_nfe, "full_nfe": full_nfe,
            "full_previews": full, "generation_sizes": sizes, "finalists": finalists,
            "planned_nfe": sum(sizes) * (full_nfe if full else preview_nfe) + finalists * full_nfe,
            "gaussian_shell": shell, "generations": history,
        })
        for generation, size in enumerate(sizes):
            generator = torch.Generator("cpu").manual_seed(context.seeds(1)[0])
            draws = mean + std * torch.randn((size, dims), generator=generator, dtype=torch.float64)
            recipes = [subspace_recipe(base, grid, band, row.tolist()) for row in draws]
            noises = context.noise(recipes)  # (size, *latent), as replay derives them
            if full:
                scores = [c.objective for c in context.evaluate(recipes, noises)]
            else:
                states = context.solve(context.start(recipes, noises), preview)
                scores = context.score(states.x)
            order = sorted(range(size), key=lambda i: _rank(scores[i]), reverse=True)
            elite = order[: self.elites(size)]
            offset = len(archive)
            archive.extend((_rank(scores[i]), offset + i, recipes[i]["coefficients"]) for i in range(size))
            picked = draws[elite]
            mean = picked.mean(0)
            if len(elite) > 1:  # one elite has no spread: the std stays
                std = picked.std(0, unbiased=False).clamp_min(self.min_std)
            norms = noises[elite].flatten(1).double().norm(dim=1).cpu()
            history.append(_generation_report(generation, size, len(elite), scores, order, norms, shell,
                                              mean, std))
        if finalists:
            archive.sort(key=lambda entry: (entry[0], -entry[1]), reverse=True)
            chosen = [entry[2] for entry in archive[:finalists]]
            if len(chosen) < finalists:  # no previews paid for: draw from N(0, I)
                generator = torch.Generator("cpu").manual_seed(context.seeds(1)[0])
                extra = torch.randn((finalists - len(chosen), dims), generator=generator, dtype=torch.float64)
                chosen.extend(row.tolist() for row in extra)
            context.evaluate([subspace_recipe(base, grid, band, c) for c in chosen])


def _generation_report(
    generation: int, size: int, elites: int, scores: list[float], order: list[int],
    norms: torch.Tensor, shell: float, mean: torch.Tensor, std: torch.Tensor,
) -> dict[str, Any]:
    """One generation's diagnostics: its best preview score and how far the elites' noise norms
    sit from the Gaussian shell ``sqrt(d)`` (relative: ``|z| / sqrt(d) - 1``)."""
    drift = norms / shell - 1.0
    best = scores[order[0]]
    return {
        "generation": generation, "size": size, "elites": elites,
        "best_score": best if math.isfinite(best) else None,
        "elite_norm_mean": round(float(norms.mean()), 6),
        "elite_norm_drift_mean": round(float(drift.mean()), 6),
        "elite_norm_drift_max_abs": round(float(drift.abs().max()), 6),
        "mean_norm": round(float(mean.norm()), 6), "std_mean": round(float(std.mean()), 6),
    }


def _integer(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"evolution.{name}", f"must be an integer of at least {least}, got {value!r}")


def _rank(objective: float) -> tuple[bool, float]:
    """Larger is better; a NaN or infinite objective ranks below every finite one."""
    return (True, objective) if math.isfinite(objective) else (False, 0.0)


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("evolution", EvolutionSearch)
