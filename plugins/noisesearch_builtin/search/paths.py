"""Search over paths (Paths-N): Ma et al. 2025, "Inference-Time Scaling for Diffusion Models
beyond Scaling Denoising Steps", section 3.2.

1. Sample ``N`` initial noises and solve each down to the start level ``sigma``.
2. For each of the ``N`` paths draw ``M`` children: re-noise from the current level ``s`` up
   to ``s + forward`` with the forward kernel (fresh noise per child).
3. Solve each child down to ``s + forward - backward`` (``backward > forward``: net progress),
   score it on its clean prediction ``x0_hat`` (one extra NFE; verifiers are not made for
   noisy input), keep the best ``N``. Repeat 2-3 until the clean end of the grid.
4. The last round's ``N * M`` children reach the clean end: all become candidates (their
   best is the best of the final ``N``), so the last round needs no ``x0_hat`` NFE.

Levels are in the project's convention (0 = clean, 1 = noise). The paper reports
``sigma = 0.11, forward = 0.78, backward = 0.81``; we read them in this same convention (the only
reading in which ``sigma + forward <= 1``), so each round goes ``s -> s + 0.78 -> s - 0.03``,
and the preset ``paper`` sets them. A round's target is clamped at the grid's last level; the
last round's children are scored on their final images. Solves use the run's grid
between the two levels (``SearchContext.grid``), so per-round NFEs follow the grid's density.

Cost (DDIM, one NFE per grid step): ``N * K_start + sum over rounds of N * M * (K_round + 1)``,
minus ``N * M`` for the last round (scored on final images), where ``K_start`` and
``K_round`` are the solver's NFEs over those spans (:meth:`SearchOverPaths.nfe_cost`). If the
budget cannot pay for ``N`` paths, ``N`` is lowered to the largest that fits; left unset,
``N`` is the largest the budget pays for. A budget too small for one path is spent on plain
samples (random search).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from noisesearch import ConfigError, hookimpl
from noisesearch.recipes import seed_recipe

if TYPE_CHECKING:
    from noisesearch import SearchContext
    from noisesearch.registry import Register

#: The paper's reported values (Ma et al. 2025), in this project's convention.
DEFAULT_PATHS = 4
PRESETS = {"paper": {"start_level": 0.11, "forward": 0.78, "backward": 0.81}}


class SearchOverPaths:
    """Search over paths: re-noise the best partial samples, branch, re-solve, keep the best.

    :param paths: N, paths kept after every round (default: as many as the budget pays for,
        or 4 with no budget).
    :param children: M, children drawn per path in every round.
    :param start_level: the level the first N noises are solved down to.
    :param forward: how far up each round re-noises (in levels).
    :param backward: how far down each round then solves; must exceed ``forward``.
    :param preset: ``"paper"`` sets start_level, forward and backward to the paper's values.
    """

    #: Samples are finished from partial paths (no single trajectory of clean predictions).
    partial_paths: ClassVar[bool] = True
    #: It solves from re-noised, resampled or partly solved states (a model's own sampler must
    #: be able to start mid-path: planning refuses PNDM with --solver native).
    mid_path_solves: ClassVar[bool] = True
    #: The registered name, in messages about options (a subclass registered apart sets its own).
    name: ClassVar[str] = "paths"

    def __init__(
        self,
        paths: int | None = None,
        children: int = 2,
        start_level: float = 0.5,
        forward: float = 0.2,
        backward: float = 0.3,
        preset: str | None = None,
    ) -> None:
        name = self.name
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"{name}.preset", f"unknown preset {preset!r}; choose {sorted(PRESETS)}")
            values = PRESETS[preset]
            start_level, forward, backward = values["start_level"], values["forward"], values["backward"]
        if (paths is not None and paths < 1) or children < 1:
            raise ConfigError(f"{name}.paths", f"paths and children must be >= 1, got {paths}, {children}")
        if not 0.0 < start_level < 1.0:
            raise ConfigError(f"{name}.start_level", f"must be in (0, 1), got {start_level}")
        if not 0.0 < forward < backward:
            raise ConfigError(f"{name}.backward", f"need 0 < forward < backward, got {forward}, {backward}")
        if start_level + forward > 1.0:
            reach = start_level + forward
            raise ConfigError(f"{name}.forward", f"start_level + forward must be <= 1: {reach}")
        self.paths = paths
        self.children = children
        self.start_level = start_level
        self.forward = forward
        self.backward = backward

    def rounds(self, end_level: float) -> list[tuple[float, float, float]]:
        """The (from, up-to, down-to) levels of every round until ``end_level``."""
        spans, level = [], self.start_level
        while level > end_level + 1e-9:
            up = min(level + self.forward, 1.0)
            down = level + self.forward - self.backward
            if down <= end_level + 1e-9:  # snap: 0.11 + 0.78 - 0.81 is 5.55e-17, not 0
                down = end_level
            spans.append((level, up, down))
            level = down
        return spans

    def nfe_cost(self, context: SearchContext, paths: int) -> int:
        """NFEs this search spends on ``context``'s grid with ``paths`` paths."""
        levels = context.levels
        total = paths * context.solve_nfe(context.grid(levels[0], self.start_level))
        for _, up, down in self.rounds(levels[-1]):
            children = paths * self.children
            scoring = 0 if down <= levels[-1] + 1e-9 else children
            total += children * context.solve_nfe(context.grid(up, down)) + scoring
        return total

    def run(self, context: SearchContext) -> None:
        end = context.levels[-1]
        if self.start_level <= end:
            raise ConfigError(f"{self.name}.start_level", f"must be above the grid's last level {end}")
        paths = self._paths(context)
        if paths == 0:  # too small a budget for one path: spend it on plain samples instead
            context.plain_samples()
            return
        states = context.start([seed_recipe(seed) for seed in context.seeds(paths)])
        states = context.solve(states, context.grid(context.levels[0], self.start_level))
        for _, up, down in self.rounds(end):
            family = states.select([i for i in range(len(states)) for _ in range(self.children)])
            family = context.solve(context.renoise(family, up), context.grid(up, down))
            if down <= end + 1e-9:
                states = family
                break
            scores = context.score(context.predict(family))
            states = family.select(_top(scores, paths))
        context.finish(states)

    def _paths(self, context: SearchContext) -> int:
        """N: as given if affordable, else (or if not given) the most the budget pays for."""
        largest = context.largest_affordable(
            lambda n: self.nfe_cost(context, n), lambda n: n * self.children, limit=self.paths
        )
        return (self.paths or DEFAULT_PATHS) if largest is None else largest


def _top(scores: list[float], k: int) -> list[int]:
    """The ``k`` best rows; NaN and infinite scores rank below every finite one."""
    def key(i: int) -> tuple[bool, float, int]:
        finite = math.isfinite(scores[i])
        return (not finite, -scores[i] if finite else 0.0, i)

    return sorted(range(len(scores)), key=key)[:k]


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("paths", SearchOverPaths)
