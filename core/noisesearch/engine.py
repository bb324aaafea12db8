"""The search engine: runs a strategy within a budget, batches, scores and keeps the best.

Strategies talk to the engine only through :class:`SearchContext`; the engine owns the model
calls, NFE accounting, verifier calls, top-k selection and events. Memory does not grow with
the number of candidates: only the top-k keep their images, every candidate's scores stream
out through listeners (``candidates.jsonl``).
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from noisesearch.errors import BudgetExhausted
from noisesearch.sampling import SolveResult, draw_noise, solve, solver_nfe
from noisesearch.types import Candidate, Condition

if TYPE_CHECKING:
    import torch

    from noisesearch.types import Model, SearchStrategy, Verifier


def derive_seed(run_seed: int, index: int) -> int:
    """An independent 63-bit seed for draw number ``index`` of a run seeded ``run_seed``.

    Hashing (rather than ``run_seed + index``) keeps runs with neighbouring seeds from sharing
    candidates.
    """
    digest = hashlib.blake2b(f"{run_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class Budget:
    """At most ``candidates`` final samples and at most ``nfe`` denoiser evaluations
    (summed over candidates); ``None`` means no limit of that kind."""

    candidates: int | None = None
    nfe: int | None = None


@dataclass
class Usage:
    """What a run spent, reported beside the result."""

    nfe: int = 0
    candidates: int = 0
    verifier_calls: int = 0
    verifier_seconds: float = 0.0
    model_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "nfe": self.nfe,
            "candidates": self.candidates,
            "verifier_calls": self.verifier_calls,
            "verifier_seconds": round(self.verifier_seconds, 4),
            "model_seconds": round(self.model_seconds, 4),
        }


class Listener(Protocol):
    """Receives engine events; every method is optional."""

    def on_candidates(self, candidates: Sequence[Candidate], usage: Usage) -> None: ...


class Scorer:
    """Runs the verifiers and the (optional) evaluator on a batch of images.

    The first verifier is the objective: selection ranks by its score. The others, and the
    evaluator, are recorded on every candidate but never steer the search.
    """

    def __init__(
        self,
        verifiers: Mapping[str, Verifier],
        evaluator: tuple[str, Verifier] | None = None,
    ) -> None:
        if not verifiers:
            raise ValueError("at least one verifier is needed to search")
        self.verifiers = dict(verifiers)
        self.objective_name = next(iter(self.verifiers))
        self.evaluator = evaluator

    @property
    def trajectory_levels(self) -> tuple[float, ...]:
        members = [*self.verifiers.values(), *([self.evaluator[1]] if self.evaluator else [])]
        levels: set[float] = set()
        for verifier in members:
            if "trajectory" in getattr(verifier, "requires", ()):
                levels.update(getattr(verifier, "trajectory_levels", ()))
        return tuple(sorted(levels))

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, torch.Tensor] | None,
        usage: Usage,
    ) -> dict[str, list[float]]:
        members = dict(self.verifiers)
        if self.evaluator is not None:
            members[self.evaluator[0]] = self.evaluator[1]
        scores: dict[str, list[float]] = {}
        for name, verifier in members.items():
            start = time.perf_counter()
            values = verifier.score(images, condition, trajectory=trajectory)
            usage.verifier_seconds += time.perf_counter() - start
            usage.verifier_calls += 1
            if tuple(values.shape) != (images.shape[0],):
                raise ValueError(
                    f"verifier {name!r} returned scores of shape {tuple(values.shape)}, "
                    f"expected ({images.shape[0]},)"
                )
            scores[name] = [float(v) for v in values.detach().float().cpu()]
        return scores


@dataclass
class EngineResult:
    """The outcome of :meth:`Engine.run`: the best candidates (with images) and the usage."""

    top: list[Candidate]  # best first
    baseline: Candidate | None  # the first candidate: what a user gets without search
    usage: Usage
    history: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)
    # (NFEs spent so far, objective, all scores) for every candidate, in evaluation order

    @property
    def best(self) -> Candidate:
        return self.top[0]


class Engine:
    """Evaluates candidates for a strategy. One engine serves one search."""

    def __init__(
        self,
        model: Model,
        condition: Condition,
        scorer: Scorer,
        budget: Budget,
        levels: Sequence[float],
        solver: str = "ddim",
        batch_size: int = 16,
        seed: int = 0,
        top_k: int = 8,
        listeners: Sequence[Listener] = (),
    ) -> None:
        self.model = model
        self.condition = condition
        self.scorer = scorer
        self.budget = budget
        self.levels = list(levels)
        self.solver = solver
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.top_k = max(1, top_k)
        self.listeners = list(listeners)
        self.usage = Usage()
        self.nfe_per_candidate = solver_nfe(model.schedule, self.levels, solver)
        self._prepared: Any = None
        self._draws = 0
        self._heap: list[tuple[float, int, Candidate]] = []  # min-heap of the top-k
        self._baseline: Candidate | None = None
        self._history: list[tuple[int, float, dict[str, float]]] = []

    # -- running -------------------------------------------------------------------------
    def run(self, strategy: SearchStrategy) -> EngineResult:
        start = time.perf_counter()
        self._prepared = self.model.prepare(self.condition)
        self.usage.model_seconds += time.perf_counter() - start
        strategy.run(SearchContext(self))
        if not self._heap:
            raise BudgetExhausted(
                f"the strategy evaluated no candidate: one costs {self.nfe_per_candidate} NFEs "
                f"and the budget is {self.budget}"
            )
        top = [entry[2] for entry in sorted(self._heap, key=lambda e: (-e[0], e[1]))]
        return EngineResult(top, self._baseline, self.usage, self._history)

    def next_seeds(self, n: int) -> list[int]:
        seeds = [derive_seed(self.seed, self._draws + i) for i in range(n)]
        self._draws += n
        return seeds

    def check_affordable(self, candidates: int, nfe: int) -> None:
        remaining_candidates = self.remaining_candidates
        remaining_nfe = self.remaining_nfe
        if remaining_candidates is not None and candidates > remaining_candidates:
            raise BudgetExhausted(
                f"{candidates} more candidates asked, {remaining_candidates} left in the budget"
            )
        if remaining_nfe is not None and nfe > remaining_nfe:
            raise BudgetExhausted(f"{nfe} more NFEs asked, {remaining_nfe} left in the budget")

    @property
    def remaining_nfe(self) -> int | None:
        return None if self.budget.nfe is None else self.budget.nfe - self.usage.nfe

    @property
    def remaining_candidates(self) -> int | None:
        if self.budget.candidates is None:
            return None
        return self.budget.candidates - self.usage.candidates

    def denoiser(self) -> Callable[[torch.Tensor, float], torch.Tensor]:
        import torch

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            with torch.inference_mode():
                return self.model.denoise(x, sigma, self._prepared)

        return denoise

    def solve(
        self, x: torch.Tensor, levels: Sequence[float], capture: Sequence[float] = ()
    ) -> SolveResult:
        """Solve a batch between two levels, charging its NFEs to the budget first."""
        cost = solver_nfe(self.model.schedule, levels, self.solver) * x.shape[0]
        self.check_affordable(0, cost)
        start = time.perf_counter()
        result = solve(self.denoiser(), x, self.model.schedule, levels, self.solver, capture)
        self.usage.model_seconds += time.perf_counter() - start
        self.usage.nfe += result.nfe * x.shape[0]
        return result

    def evaluate(
        self, recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> list[Candidate]:
        """Generate and score one candidate per recipe from pure noise, in batches."""
        n = len(recipes)
        self.check_affordable(n, n * self.nfe_per_candidate)
        if noises is None:
            noises = self.noise_for(recipes)
        candidates: list[Candidate] = []
        for lo in range(0, n, self.batch_size):
            hi = min(lo + self.batch_size, n)
            candidates += self._evaluate_batch(recipes[lo:hi], noises[lo:hi])
        return candidates

    def noise_for(self, recipes: Sequence[dict[str, Any]]) -> torch.Tensor:
        seeds = []
        for recipe in recipes:
            if recipe.get("kind") != "seed":
                raise ValueError(f"pass noises for recipes of kind {recipe.get('kind')!r}")
            seeds.append(recipe["seed"])
        return draw_noise(seeds, self.model.latent_shape, self._device(), self._dtype())

    def _device(self) -> Any:
        return getattr(self.model, "device", "cpu")

    def _dtype(self) -> Any:
        return getattr(self.model, "dtype", None)

    def _evaluate_batch(
        self, recipes: Sequence[dict[str, Any]], noise: torch.Tensor
    ) -> list[Candidate]:
        capture = self.scorer.trajectory_levels
        result = self.solve(noise, self.levels, capture)
        decode_start = time.perf_counter()
        images = self.model.decode(result.x).float().clamp(0, 1)  # (B, 3, H, W)
        trajectory = {
            level: self.model.decode(x0).float().clamp(0, 1) for level, x0 in result.x0.items()
        }
        self.usage.model_seconds += time.perf_counter() - decode_start
        scores = self.scorer.score(images, self.condition, trajectory or None, self.usage)
        objective = scores[self.scorer.objective_name]
        candidates = []
        for row, recipe in enumerate(recipes):
            self.usage.candidates += 1
            row_scores = {name: values[row] for name, values in scores.items()}
            candidate = Candidate(
                index=self.usage.candidates - 1,
                recipe=dict(recipe),
                scores=row_scores,
                objective=objective[row],
                nfe=result.nfe,
            )
            self._history.append((self._nfe_at(row, len(recipes), result.nfe), candidate.objective,
                                  row_scores))
            self._keep(candidate, images[row], noise[row])
            candidates.append(candidate)
        for listener in self.listeners:
            handler = getattr(listener, "on_candidates", None)
            if handler is not None:
                handler(candidates, self.usage)
        return candidates

    def _nfe_at(self, row: int, batch: int, nfe_each: int) -> int:
        """NFEs spent up to and including this row, as if the batch ran one by one."""
        return self.usage.nfe - (batch - row - 1) * nfe_each

    def _keep(self, candidate: Candidate, image: torch.Tensor, noise: torch.Tensor) -> None:
        if self._baseline is None:
            candidate.image, candidate.noise = image.cpu(), noise.cpu()
            self._baseline = candidate
        key = (candidate.objective, -candidate.index, candidate)
        if len(self._heap) < self.top_k or key[:2] > self._heap[0][:2]:
            candidate.image, candidate.noise = image.cpu(), noise.cpu()
            entry = (candidate.objective, -candidate.index, candidate)
            if len(self._heap) < self.top_k:
                heapq.heappush(self._heap, entry)
            else:
                dropped = heapq.heapreplace(self._heap, entry)[2]
                if dropped is not self._baseline:
                    dropped.image = dropped.noise = None


class SearchContext:
    """What a strategy sees: the budget, noise drawing and candidate evaluation."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def batch_size(self) -> int:
        """How many candidates the engine evaluates at once; propose in multiples of it."""
        return self._engine.batch_size

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self._engine.model.latent_shape)

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

    def affordable(self, nfe_each: int | None = None) -> int | None:
        """How many more candidates the budget allows (``None``: no limit at all)."""
        nfe_each = self.nfe_per_candidate if nfe_each is None else nfe_each
        limits = []
        if self.remaining_candidates is not None:
            limits.append(self.remaining_candidates)
        if self.remaining_nfe is not None:
            limits.append(self.remaining_nfe // max(nfe_each, 1))
        return min(limits) if limits else None

    def seeds(self, n: int) -> list[int]:
        """The next ``n`` seeds of this run: deterministic given the run seed."""
        return self._engine.next_seeds(n)

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Initial noise ``(len(seeds), *latent_shape)`` drawn on the CPU, one per seed."""
        engine = self._engine
        return draw_noise(seeds, self.latent_shape, engine._device(), engine._dtype())

    def evaluate(
        self, recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> list[Candidate]:
        """Generate, score and record one candidate per recipe; returns them in order.

        Recipes of kind ``"seed"`` need no ``noises``; other kinds pass the noise tensor
        ``(len(recipes), *latent_shape)`` they describe. Raises :class:`BudgetExhausted`
        (and computes nothing) if the budget cannot pay for all of them.
        """
        return self._engine.evaluate(recipes, noises)

    def best(self) -> Candidate | None:
        """The best candidate so far."""
        heap = self._engine._heap
        return max(heap, key=lambda e: (e[0], e[1]))[2] if heap else None
