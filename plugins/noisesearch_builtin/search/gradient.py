"""Gradient ascent on the initial noise (ReNO-style: Eyring et al. 2024, "ReNO: Enhancing One-step
Text-to-Image Models through Reward-based Noise Optimization").

Each candidate starts from a fresh Gaussian noise ``z_0`` (the run's next seed) and takes
``iterations`` steps of gradient ascent on

    J(z) = sum_i w_i s_i(decode(solve(z))) + lambda * log chi_d(||z||)
         = sum_i w_i s_i(...) - lambda * (||z||^2 / 2 - (d - 1) log ||z||) + const,

where ``solve`` is a few-step sampler (``steps`` steps, 1-4, of the run's solver on a sub-grid of
the run's grid), ``s_i`` are differentiable verifiers (``differentiable = True``: their
``score_with_grad``) with weights ``w_i`` (default: the objective verifier alone), ``d`` the
noise's dimension, and ``log chi_d`` the log-density of the norm of a ``d``-dimensional standard
Gaussian, whose mode ``||z|| = sqrt(d - 1)`` is the Gaussian shell: the regulariser keeps the
optimised noise where the model was trained (ReNO's norm regulariser), ``lambda`` = ``regulariser``.

The step: each row's gradient is clipped to norm ``max_grad_norm``, then Nesterov momentum
``mu``: ``v <- mu v + g``, ``z <- z + lr (g + mu v)``. Gradients are computed by the engine
(``SearchContext.gradient``) with autograd through the solver, the decoder and the verifiers,
checkpointed per denoiser call. The final noise ``z_T`` of every restart is then generated on the
run's whole grid and recorded as a candidate; the engine keeps the best over restarts.

Cost: ``restarts * (iterations * (F + B) + K)`` NFEs, with ``F`` the sub-grid's forward NFEs,
``B = BACKWARD_NFE_FACTOR * F`` the backward pass (``noisesearch.gradients``) and ``K`` one full
sample. The plan is made from the remaining budget before anything is spent: ``restarts`` (left
unset: as many as the budget pays for) is lowered to what fits, and if not even one restart fits,
``iterations`` is; a budget too small for one gradient step and one sample is spent on plain
samples (random search).

Recipes: the start is ``{"kind": "gradient", "seed": s, ...}`` with the optimisation's settings
(levels, lr, iterations, regulariser, momentum, max_grad_norm, weights, and the rows optimised
together and this row), which determine ``z_T`` bit for bit on the CPU (:func:`reoptimise` re-runs
it). ``z_T`` itself is saved with the winner (``best_noise.safetensors``), so ``noisesearch replay``
needs no optimisation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import ConfigError, hookimpl
from noisesearch.recipes import initial_noise, seed_recipe

if TYPE_CHECKING:
    import torch

    from noisesearch import SearchContext
    from noisesearch.registry import Register

#: The few-step sampler's step counts that the strategy takes.
MAX_STEPS = 4
KIND = "gradient"


class GradientSearch:
    """Gradient ascent on the initial noise through a few-step sampler (ReNO-style), with restarts.

    :param lr: learning rate, > 0.
    :param iterations: gradient steps per restart, >= 1.
    :param restarts: how many noises to optimise from fresh seeds (default: as many as the budget
        pays for); the best is kept.
    :param steps: steps of the few-step sampler the gradients go through (1-4), on a sub-grid of
        the run's grid (all of it if it has fewer steps).
    :param regulariser: lambda, weight of the norm regulariser ``-log chi_d(||z||)``; 0 disables it.
    :param momentum: Nesterov momentum, in [0, 1).
    :param max_grad_norm: each row's gradient is clipped to this norm (``null``: no clipping).
    :param batch: candidates optimised at once (halved by the engine on out-of-memory).
    :param weights: ``{verifier: weight}`` over the run's verifiers, all differentiable (default:
        the objective verifier, weight 1).
    """

    #: Planning refuses verifiers without a differentiable score, and the native solver.
    needs_gradients: ClassVar[bool] = True

    def __init__(
        self,
        lr: float = 1.0,
        iterations: int = 8,
        restarts: int | None = None,
        steps: int = 2,
        regulariser: float = 0.01,
        momentum: float = 0.9,
        max_grad_norm: float | None = 1.0,
        batch: int = 8,
        weights: dict[str, float] | None = None,
    ) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError("gradient.lr", f"the learning rate must be a number > 0, got {lr!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ConfigError("gradient.iterations", f"must be an integer >= 1, got {iterations!r}")
        if restarts is not None and (isinstance(restarts, bool) or not isinstance(restarts, int)
                                     or restarts < 1):
            raise ConfigError("gradient.restarts", f"must be an integer >= 1, got {restarts!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ConfigError("gradient.steps", f"the few-step sampler takes 1 to {MAX_STEPS} steps, "
                              f"got {steps!r}")
        if not isinstance(regulariser, (int, float)) or not math.isfinite(regulariser) or regulariser < 0:
            raise ConfigError("gradient.regulariser", f"must be a number >= 0, got {regulariser!r}")
        if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ConfigError("gradient.momentum", f"must be in [0, 1), got {momentum!r}")
        if max_grad_norm is not None and (not isinstance(max_grad_norm, (int, float))
                                          or not math.isfinite(max_grad_norm) or max_grad_norm <= 0):
            raise ConfigError("gradient.max_grad_norm", f"must be > 0 or null, got {max_grad_norm!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError("gradient.batch", f"must be an integer >= 1, got {batch!r}")
        if weights is not None and (not isinstance(weights, dict) or not weights or not all(
                isinstance(w, (int, float)) and math.isfinite(w) for w in weights.values())):
            raise ConfigError("gradient.weights", f"must be a table {{verifier: weight}} of finite "
                              f"numbers, got {weights!r}")
        self.lr = float(lr)
        self.iterations = iterations
        self.restarts = restarts
        self.steps = steps
        self.regulariser = float(regulariser)
        self.momentum = float(momentum)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.batch = batch
        self.weights = None if weights is None else {str(k): float(v) for k, v in weights.items()}

    # -- planning ---------------------------------------------------------------------------------
    def sub_grid(self, levels: list[float]) -> list[float]:
        """``steps + 1`` levels of the run's grid, evenly spaced by index, both ends included."""
        last = len(levels) - 1
        if last <= self.steps:
            return list(levels)
        return [levels[round(i * last / self.steps)] for i in range(self.steps + 1)]

    @staticmethod
    def nfe_cost(step_nfe: int, nfe_per_candidate: int, iterations: int, restarts: int) -> int:
        """NFEs of ``restarts`` restarts of ``iterations`` steps costing ``step_nfe`` each
        (forward + backward), each finished by one full sample."""
        return restarts * (iterations * step_nfe + nfe_per_candidate)

    def plan(self, context: SearchContext, step_nfe: int) -> tuple[int, int]:
        """(restarts, iterations) that fit what is left of the budget; (0, 0) if nothing does."""
        full = context.nfe_per_candidate
        # a candidate budget pays for that many full samples' NFEs, as for every strategy
        nfe, candidates = context.nfe_worth, context.remaining_candidates
        iterations = self.iterations
        if nfe is None and candidates is None:
            return self.restarts or 1, iterations
        fits = [self.restarts] if self.restarts is not None else []
        if candidates is not None:
            fits.append(candidates)
        if nfe is not None:
            fits.append(nfe // self.nfe_cost(step_nfe, full, iterations, 1))
        restarts = min(fits)
        if restarts >= 1:
            return restarts, iterations
        if candidates is not None and candidates < 1:
            return 0, 0
        if nfe is not None and nfe >= full + step_nfe:
            return 1, (nfe - full) // step_nfe
        # not one gradient step: the budget goes to plain samples (random search)
        return (nfe // full if candidates is None else min(candidates, nfe // full)), 0

    # -- running ------------------------------------------------------------------------------------
    def run(self, context: SearchContext) -> None:
        levels = self.sub_grid(context.levels)
        weights = self.weights or {context.verifier_names[0]: 1.0}
        forward, backward = context.gradient_nfe(levels)
        restarts, iterations = self.plan(context, forward + backward)
        history: list[list[float]] = []
        done = 0
        while done < restarts:
            rows = min(self.batch, restarts - done)
            seeds = context.seeds(rows)
            if iterations == 0:  # plain samples of the seeds' noises
                context.evaluate([seed_recipe(seed) for seed in seeds])
                done += rows
                continue
            noises = self.optimise(context, seeds, levels, weights, iterations, history)
            recipes = [self.recipe(seed, levels, weights, iterations, rows, row)
                       for row, seed in enumerate(seeds)]
            context.evaluate(recipes, noises)
            done += rows
        context.report("gradient", {
            "levels": levels, "restarts": restarts, "iterations": iterations,
            "forward_nfe_per_step": forward, "backward_nfe_per_step": backward,
            # the weighted objective at every iteration, averaged over each batch's rows
            "objective_by_iteration": history,
        })

    def optimise(
        self,
        context: SearchContext,
        seeds: list[int],
        levels: list[float],
        weights: dict[str, float],
        iterations: int,
        history: list[list[float]] | None = None,
    ) -> torch.Tensor:
        """The noises ``(len(seeds), *latent)`` after ``iterations`` steps from the seeds' noises."""
        import torch

        z = torch.stack([initial_noise(seed_recipe(s), context.latent_shape) for s in seeds])
        return self.ascend(context, z, levels, weights, iterations, history)

    def ascend(
        self,
        context: SearchContext,
        z: torch.Tensor,
        levels: list[float],
        weights: dict[str, float],
        iterations: int,
        history: list[list[float]] | None = None,
    ) -> torch.Tensor:
        """Gradient ascent on ``J`` (module docstring) from ``z`` ``(N, *latent)``, on the CPU in
        float32, where the update is exact and the same on every device."""
        import torch

        z = z.detach().float().cpu().clone()  # (N, *latent)
        velocity = torch.zeros_like(z)
        dims = z[0].numel()
        trace = []
        for _ in range(iterations):
            result = context.gradient(z, levels, weights)
            trace.append(float(result.objective.mean()))
            grad = result.grad.detach().float().cpu()
            if self.regulariser:
                grad = grad + self.regulariser * norm_log_likelihood_grad(z, dims)
            if self.max_grad_norm is not None:
                norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12)  # (N,)
                scale = (self.max_grad_norm / norms).clamp(max=1.0)
                grad = grad * scale.view(-1, *([1] * (grad.dim() - 1)))
            velocity = self.momentum * velocity + grad
            z = z + self.lr * (grad + self.momentum * velocity)
        if history is not None:
            history.append(trace)
        return z

    def recipe(
        self, seed: int, levels: list[float], weights: dict[str, float], iterations: int,
        rows: int, row: int,
    ) -> dict[str, Any]:
        return {
            "kind": KIND, "seed": int(seed), "levels": list(levels), "lr": self.lr,
            "iterations": iterations, "regulariser": self.regulariser, "momentum": self.momentum,
            "max_grad_norm": self.max_grad_norm, "weights": dict(weights), "rows": rows, "row": row,
        }


def norm_log_likelihood_grad(z: torch.Tensor, dims: int) -> torch.Tensor:
    """The gradient of ``log chi_d(||z||) = (d - 1) log ||z|| - ||z||^2 / 2`` per row of ``z``
    ``(N, *latent)``: ``((d - 1) / ||z||^2 - 1) z``, zero on the shell ``||z|| = sqrt(d - 1)``."""
    squared = z.flatten(1).square().sum(dim=1).clamp(min=1e-12)  # (N,)
    factor = (dims - 1) / squared - 1.0
    return z * factor.view(-1, *([1] * (z.dim() - 1)))


def reoptimise(context: SearchContext, start: dict[str, Any]) -> torch.Tensor:
    """Re-run the optimisation a ``gradient`` recipe start records; returns its noise
    ``(*latent)``: bit for bit the run's on the CPU. The row is put back at its place in a batch
    of as many rows as it was optimised with (copies of it around it: rows never mix, but
    kernels depend on the batch size and row)."""
    if start.get("kind") != KIND:
        raise ValueError(f"not a {KIND!r} recipe start: {start.get('kind')!r}")
    strategy = GradientSearch(lr=start["lr"], iterations=start["iterations"],
                              regulariser=start["regulariser"], momentum=start["momentum"],
                              max_grad_norm=start["max_grad_norm"], weights=start["weights"])
    noise = initial_noise(seed_recipe(start["seed"]), context.latent_shape)
    z = noise.expand(int(start["rows"]), *noise.shape).clone()
    out = strategy.ascend(context, z, list(start["levels"]), dict(start["weights"]), start["iterations"])
    return out[int(start["row"])]


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("gradient", GradientSearch)
