"""Sequential Monte Carlo steering: Feynman-Kac steering of diffusion models, Singhal et al.
2025, "A General Framework for Inference-time Scaling and Steering of Diffusion Models".

``K`` particles move down the run's grid together. Every ``resample_every`` steps each
particle's clean prediction ``x0_hat`` is scored by the verifier (``r``) and its weight is
multiplied by a potential ``G``; when the effective sample size ``ESS = (sum w)^2 / sum w^2``
falls below ``ess_threshold * K`` the particles are resampled (systematic resampling) and the
weights reset. Potentials, with temperature ``lambda``:

- ``difference``: ``G = exp(lambda (r_t - r_prev))`` (the previous score of the same lineage,
  0 at the first scoring);
- ``max``: ``G = exp(lambda (m_t - m_prev))`` with ``m`` the running maximum of ``r``;
- ``immediate``: ``G = exp(lambda r_t)``.

Steps are stochastic so that duplicated particles diverge: a step from ``s`` to ``s'`` first
re-noises to ``s + churn (s - s')`` (capped at 1) with fresh seeded noise, then solves to
``s'``, which costs what a deterministic step costs. The first step (from pure noise) is
deterministic. The final ``K`` particles become candidates.

Cost: ``K * (NFE of the grid + R)`` where ``R`` is the number of scorings (one ``x0_hat`` NFE
each; none at the clean end, where the final images are scored). Left unset, ``K`` is the
largest the budget pays for. The effective sample size at every scoring is reported in
``run.json`` (``strategy_report.ess``).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, ClassVar

from noisesearch import ConfigError, hookimpl
from noisesearch.recipes import seed_recipe

if TYPE_CHECKING:
    from noisesearch import SearchContext
    from noisesearch.registry import Register

POTENTIALS = ("difference", "max", "immediate")
DEFAULT_PARTICLES = 8


class SequentialMonteCarlo:
    """SMC / Feynman-Kac steering: particles resampled by verifier potentials on x0_hat.

    :param particles: K particles (default: as many as the budget pays for, or 8).
    :param potential: difference, max or immediate (see the module docstring).
    :param temperature: lambda, how sharply potentials favour high scores.
    :param resample_every: score (and maybe resample) every this many grid steps.
    :param ess_threshold: resample when ESS < ess_threshold * K; 1 resamples at every scoring.
    :param churn: size of the stochastic re-noising before each step, as a fraction of it.
    """

    #: Samples are finished from partial paths (no single trajectory of clean predictions).
    partial_paths: ClassVar[bool] = True
    #: It solves from re-noised, resampled or partly solved states (a model's own sampler must
    #: be able to start mid-path: planning refuses PNDM with --solver native).
    mid_path_solves: ClassVar[bool] = True

    def __init__(
        self,
        particles: int | None = None,
        potential: str = "difference",
        temperature: float = 10.0,
        resample_every: int = 2,
        ess_threshold: float = 0.5,
        churn: float = 0.5,
    ) -> None:
        if particles is not None and particles < 1:
            raise ConfigError("smc.particles", f"must be at least 1, got {particles}")
        if potential not in POTENTIALS:
            raise ConfigError("smc.potential", f"must be one of {', '.join(POTENTIALS)}, got {potential!r}")
        if temperature < 0:
            raise ConfigError("smc.temperature", f"must be non-negative, got {temperature}")
        if resample_every < 1:
            raise ConfigError("smc.resample_every", f"must be at least 1, got {resample_every}")
        if not 0.0 <= ess_threshold <= 1.0:
            raise ConfigError("smc.ess_threshold", f"must be in [0, 1], got {ess_threshold}")
        if churn < 0:
            raise ConfigError("smc.churn", f"must be non-negative, got {churn}")
        self.particles = particles
        self.potential = potential
        self.temperature = temperature
        self.resample_every = resample_every
        self.ess_threshold = ess_threshold
        self.churn = churn

    def scoring_steps(self, steps: int) -> list[int]:
        """Indices ``i`` of the steps after which particles are scored (never the last)."""
        return [i for i in range(steps - 1) if (i + 1) % self.resample_every == 0]

    def nfe_cost(self, context: SearchContext, particles: int) -> int:
        levels = context.levels
        steps = len(levels) - 1
        per_particle = sum(
            context.solve_nfe([self._churned(levels, i), levels[i + 1]]) for i in range(steps)
        )
        return particles * (per_particle + len(self.scoring_steps(steps)))

    def _churned(self, levels: list[float], i: int) -> float:
        if i == 0 or self.churn == 0:
            return levels[i]
        return min(levels[i] + self.churn * (levels[i] - levels[i + 1]), 1.0)

    def _particles(self, context: SearchContext) -> int:
        largest = context.largest_affordable(lambda k: self.nfe_cost(context, k), limit=self.particles)
        return (self.particles or DEFAULT_PARTICLES) if largest is None else largest

    def run(self, context: SearchContext) -> None:
        k = self._particles(context)
        if k == 0:  # too small a budget for one particle's run: spend it on plain samples instead
            context.plain_samples()
            return
        levels = context.levels
        steps = len(levels) - 1
        scoring = set(self.scoring_steps(steps))
        resampler = random.Random(context.seeds(1)[0])
        states = context.start([seed_recipe(seed) for seed in context.seeds(k)])
        log_w = [0.0] * k
        previous: list[float | None] = [None] * k  # last score / running max of each lineage
        history = []
        for i in range(steps):
            start = self._churned(levels, i)
            if start > levels[i]:
                states = context.renoise(states, start)
            states = context.solve(states, [start, levels[i + 1]])
            if i not in scoring:
                continue
            rewards = finite_rewards(context.score(context.predict(states)))
            log_w, previous = self._reweight(log_w, previous, rewards)
            ess = effective_sample_size(log_w)
            resampled = ess < self.ess_threshold * k
            if resampled:
                picks = systematic_resample(log_w, resampler.random())
                states = states.select(picks)
                previous = [previous[j] for j in picks]
                log_w = [0.0] * k
            history.append({"level": levels[i + 1], "ess": round(ess, 4), "resampled": resampled})
        context.report("ess", history)
        context.finish(states)

    def _reweight(
        self, log_w: list[float], previous: list[float | None], rewards: list[float]
    ) -> tuple[list[float], list[float | None]]:
        """Multiply each weight by its potential; ``previous`` is each lineage's last score
        (difference) or running maximum (max), ``None`` before its first scoring, when the
        potential is ``exp(lambda r)``."""
        lam = self.temperature
        if self.potential == "immediate":
            return [w + lam * r for w, r in zip(log_w, rewards)], previous
        if self.potential == "difference":
            current: list[float | None] = list(rewards)
        else:
            current = [r if p is None else max(r, p) for r, p in zip(rewards, previous)]
        return [
            w + lam * (c - (0.0 if p is None else p)) for w, c, p in zip(log_w, current, previous)
        ], current


def finite_rewards(rewards: list[float]) -> list[float]:
    """NaN and infinite rewards (a failing verifier) become the worst finite one: such a
    particle is never favoured, and the weights stay numbers."""
    finite = [r for r in rewards if math.isfinite(r)]
    floor = min(finite) if finite else 0.0
    return [r if math.isfinite(r) else floor for r in rewards]


def effective_sample_size(log_weights: list[float]) -> float:
    """``(sum w)^2 / sum w^2``, computed stably from log-weights: K for equal weights, 1 when
    one particle holds all the weight."""
    top = max(log_weights)
    w = [math.exp(lw - top) for lw in log_weights]
    return sum(w) ** 2 / sum(x * x for x in w)


def systematic_resample(log_weights: list[float], u: float) -> list[int]:
    """Systematic resampling (Kitagawa 1996): indices of ``K`` particles, drawn with one
    uniform ``u`` in [0, 1), proportionally to the weights, with low variance."""
    k = len(log_weights)
    top = max(log_weights)
    w = [math.exp(lw - top) for lw in log_weights]
    total = sum(w)
    picks, cumulative, j = [], w[0] / total, 0
    for i in range(k):
        position = (u + i) / k
        while position > cumulative and j < k - 1:
            j += 1
            cumulative += w[j] / total
        picks.append(j)
    return picks


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("smc", SequentialMonteCarlo)
