"""The search engine: runs a strategy within a budget, batches, scores and keeps the best.

Strategies talk to the engine only through :class:`SearchContext`; the engine owns the model
calls, NFE accounting, verifier calls, top-k selection and events. Memory does not grow with
the number of candidates: only the top-k keep their images; every candidate's scores stream
out through listeners (``candidates.jsonl``).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from noisesearch import recipes as rec
from noisesearch.errors import BudgetExhausted
from noisesearch.sampling import SolveResult, draw_noise, renoise, solve, solver_nfe
from noisesearch.types import Candidate, Condition

if TYPE_CHECKING:
    import torch

    from noisesearch.journal import Journal
    from noisesearch.types import Model, SearchStrategy, Verifier


def derive_seed(run_seed: int, index: int) -> int:
    """An independent 63-bit seed for draw number ``index`` of a run seeded ``run_seed``.

    Hashing (rather than ``run_seed + index``) keeps runs with neighbouring seeds from sharing
    candidates.
    """
    digest = hashlib.blake2b(f"{run_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA (or any accelerator) out-of-memory, or an error a model flags with
    ``is_out_of_memory = True``."""
    if getattr(error, "is_out_of_memory", False):
        return True
    message = str(error).lower()
    return (
        type(error).__name__ == "OutOfMemoryError"
        or "out of memory" in message
        or "can't allocate memory" in message  # the CPU allocator's wording
    )


@dataclass(frozen=True)
class Budget:
    """At most ``candidates`` final samples and at most ``nfe`` denoiser evaluations
    (summed over samples); ``None`` means no limit of that kind."""

    candidates: int | None = None
    nfe: int | None = None


@dataclass
class Usage:
    """What a run spent, reported beside the result. ``final_nfe`` is spent after the search
    (regenerating winners whose images were not kept) and is not charged to the budget."""

    nfe: int = 0
    candidates: int = 0
    verifier_calls: int = 0
    verifier_seconds: float = 0.0
    model_seconds: float = 0.0
    final_nfe: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "nfe": self.nfe,
            "candidates": self.candidates,
            "verifier_calls": self.verifier_calls,
            "verifier_seconds": round(self.verifier_seconds, 4),
            "model_seconds": round(self.model_seconds, 4),
            "final_nfe": self.final_nfe,
        }


class Listener(Protocol):
    """Receives engine events; every method is optional."""

    def on_candidates(self, candidates: Sequence[Candidate], usage: Usage) -> None: ...


class Scorer:
    """Runs the verifiers and the (optional) evaluator on a batch of images.

    The first verifier is the objective: selection ranks by its score. The others, and the
    evaluator, are recorded on every candidate but never steer the search. An objective that
    ranks over a pool (an ensemble: ``member_scores`` + ``combine``) is re-ranked over every
    candidate seen so far.
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
    def objective(self) -> Verifier:
        return self.verifiers[self.objective_name]

    @property
    def pooled(self) -> bool:
        return hasattr(self.objective, "member_scores") and hasattr(self.objective, "combine")

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
        """Every verifier's raw scores, by name; pooled objectives also by ``name/member``."""
        members = dict(self.verifiers)
        if self.evaluator is not None:
            members[self.evaluator[0]] = self.evaluator[1]
        scores: dict[str, list[float]] = {}
        for name, verifier in members.items():
            start = time.perf_counter()
            if name == self.objective_name and self.pooled:
                parts = verifier.member_scores(images, condition, trajectory=trajectory)
                for member, values in parts.items():
                    scores[f"{name}/{member}"] = self._as_list(f"{name}/{member}", values, images)
                pool = {member: scores[f"{name}/{member}"] for member in parts}
                scores[name] = [float(v) for v in verifier.combine(pool)]
            else:
                values = verifier.score(images, condition, trajectory=trajectory)
                scores[name] = self._as_list(name, values, images)
            usage.verifier_seconds += time.perf_counter() - start
            usage.verifier_calls += 1
        return scores

    @staticmethod
    def _as_list(name: str, values: torch.Tensor, images: torch.Tensor) -> list[float]:
        if tuple(values.shape) != (images.shape[0],):
            raise ValueError(
                f"verifier {name!r} returned scores of shape {tuple(values.shape)}, "
                f"expected ({images.shape[0]},)"
            )
        return [float(v) for v in values.detach().float().cpu()]

    def pool_objectives(self, candidates: Sequence[Candidate]) -> list[float]:
        """The objective of each candidate ranked over all of them (pooled objectives only)."""
        prefix = f"{self.objective_name}/"
        members = [key[len(prefix):] for key in candidates[0].scores if key.startswith(prefix)]
        pool = {m: [c.scores[prefix + m] for c in candidates] for m in members}
        return [float(v) for v in self.objective.combine(pool)]


@dataclass
class Trajectories:
    """A batch of partial trajectories at one level, with each row's recipe so far."""

    x: torch.Tensor  # (N, *latent_shape)
    level: float
    recipes: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.recipes)

    def select(self, indices: Sequence[int]) -> Trajectories:
        """Rows ``indices`` (repeats allowed: resampling), recipes copied, not aliased."""
        import torch

        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.x.device)
        picked = [rec.copy_recipe(self.recipes[i]) for i in indices]
        return Trajectories(self.x.index_select(0, index), self.level, picked)

    @staticmethod
    def concat(parts: Sequence[Trajectories]) -> Trajectories:
        import torch

        levels = {p.level for p in parts}
        if len(levels) != 1:
            raise ValueError(f"cannot join trajectories at different levels {sorted(levels)}")
        return Trajectories(
            torch.cat([p.x for p in parts]), parts[0].level, [r for p in parts for r in p.recipes]
        )


@dataclass
class EngineResult:
    """The outcome of :meth:`Engine.run`: the best candidates (with images) and the usage."""

    top: list[Candidate]  # best first
    baseline: Candidate | None  # the first candidate: what a user gets without search
    usage: Usage
    history: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)
    # (NFEs spent so far, objective, all scores) for every candidate, in evaluation order
    report: dict[str, Any] = field(default_factory=dict)  # what the strategy reported

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
        journal: Journal | None = None,
    ) -> None:
        self.model = model
        self.journal = journal
        self.condition = condition
        self.scorer = scorer
        self.budget = budget
        self.levels = [float(level) for level in levels]
        self.solver = solver
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.top_k = max(1, top_k)
        self.listeners = list(listeners)
        self.usage = Usage()
        self.report: dict[str, Any] = {}
        self.nfe_per_candidate = solver_nfe(model.schedule, self.levels, solver)
        self._prepared: Any = None
        self._draws = 0
        self._heap: list[tuple[float, int, Candidate]] = []  # min-heap of the top-k
        self._all: list[Candidate] = []  # every candidate, without images (for pooled ranks)
        self._baseline: Candidate | None = None
        self._history: list[tuple[int, float, dict[str, float]]] = []

    @property
    def device(self) -> Any:
        return getattr(self.model, "device", "cpu")

    @property
    def dtype(self) -> Any:
        return getattr(self.model, "dtype", None)

    # -- running -------------------------------------------------------------------------
    def run(self, strategy: SearchStrategy) -> EngineResult:
        start = time.perf_counter()
        self._prepared = self.model.prepare(self.condition)
        self.usage.model_seconds += time.perf_counter() - start
        # BudgetExhausted: the engine refused to overspend; the search ends with what it has.
        with contextlib.suppress(BudgetExhausted):
            strategy.run(SearchContext(self))
        if not self._all:
            raise BudgetExhausted(
                f"the strategy evaluated no candidate: a full sample costs "
                f"{self.nfe_per_candidate} NFEs and the budget is {self.budget}"
            )
        return EngineResult(self._final_top(), self._baseline, self.usage, self._history, self.report)

    def next_seeds(self, n: int) -> list[int]:
        seeds = [derive_seed(self.seed, self._draws + i) for i in range(n)]
        self._draws += n
        return seeds

    @property
    def remaining_nfe(self) -> int | None:
        return None if self.budget.nfe is None else self.budget.nfe - self.usage.nfe

    @property
    def remaining_candidates(self) -> int | None:
        if self.budget.candidates is None:
            return None
        return self.budget.candidates - self.usage.candidates

    def charge(self, candidates: int, nfe: int) -> None:
        """Refuse (before any compute) what the budget cannot pay for."""
        if self.remaining_candidates is not None and candidates > self.remaining_candidates:
            raise BudgetExhausted(
                f"{candidates} more candidates asked, {self.remaining_candidates} left in the budget"
            )
        if self.remaining_nfe is not None and nfe > self.remaining_nfe:
            raise BudgetExhausted(f"{nfe} more NFEs asked, {self.remaining_nfe} left in the budget")

    def denoiser(self) -> Callable[[torch.Tensor, float], torch.Tensor]:
        import torch

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            with torch.inference_mode():
                return self.model.denoise(x, sigma, self._prepared)

        return denoise

    def _in_batches(self, rows: int, work: Callable[[int, int], None]) -> None:
        """Run ``work(lo, hi)`` over row chunks of ``batch_size``; on out-of-memory, halve the
        batch size and retry the chunk (the rest of the run keeps the smaller size)."""
        lo = 0
        while lo < rows:
            hi = min(lo + self.batch_size, rows)
            try:
                work(lo, hi)
            except Exception as error:
                if not is_out_of_memory(error) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                _empty_accelerator_cache()
                continue
            lo = hi

    # -- primitives (charged to the budget before compute) -------------------------------
    def start(
        self, noise_recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> Trajectories:
        if noises is None:
            noises = self._noise_for(noise_recipes)
        if noises.shape[0] != len(noise_recipes):
            raise ValueError(f"{len(noise_recipes)} recipes but {noises.shape[0]} noises")
        x = noises.to(device=self.device, dtype=self.dtype or noises.dtype)
        return Trajectories(x, self.levels[0], [rec.candidate_recipe(r) for r in noise_recipes])

    def _noise_for(self, noise_recipes: Sequence[dict[str, Any]]) -> torch.Tensor:
        import torch

        shape = tuple(self.model.latent_shape)
        if all(r.get("kind") == "seed" for r in noise_recipes):
            return draw_noise([r["seed"] for r in noise_recipes], shape, self.device, self.dtype)
        rows = [rec.initial_noise(r, shape, self.device, self.dtype) for r in noise_recipes]
        return torch.stack(rows)

    def solve(
        self, states: Trajectories, levels: Sequence[float], capture: Sequence[float] = ()
    ) -> tuple[Trajectories, dict[float, torch.Tensor]]:
        import torch

        levels = [float(level) for level in levels]
        if abs(levels[0] - states.level) > 1e-9:
            raise ValueError(f"trajectories are at level {states.level}, the solve starts at {levels[0]}")
        per_row = solver_nfe(self.model.schedule, levels, self.solver)
        self.charge(0, per_row * len(states))
        xs: list[torch.Tensor] = []
        captured: dict[float, list[torch.Tensor]] = {}
        recipes: list[dict[str, Any]] = []

        def work(lo: int, hi: int) -> None:
            result = self._journaled_solve(states.x[lo:hi], levels, capture)
            xs.append(result.x)
            for level, x0 in result.x0.items():
                captured.setdefault(level, []).append(x0)
            recipes.extend(
                rec.with_op(r, {"op": "solve", "levels": levels, "batch": hi - lo, "row": row})
                for row, r in enumerate(states.recipes[lo:hi])
            )
            self.usage.nfe += result.nfe * (hi - lo)

        self._in_batches(len(states), work)
        joined = {level: torch.cat(parts) for level, parts in captured.items()}
        return Trajectories(torch.cat(xs), levels[-1], recipes), joined

    def _journaled_solve(self, x: torch.Tensor, levels: list[float], capture: Sequence[float]) -> SolveResult:
        rows = x.shape[0]
        if self.journal is not None and self.journal.replaying:
            tensors, meta = self.journal.read("solve", rows)
            x0 = {float(level): tensors[f"x0_{i}"].to(x.device) for i, level in enumerate(meta["levels"])}
            return SolveResult(tensors["x"].to(x.device), meta["nfe"], x0)
        result = self._timed_solve(x, levels, capture)
        if self.journal is not None:
            tensors = {"x": result.x, **{f"x0_{i}": v for i, v in enumerate(result.x0.values())}}
            self.journal.write("solve", rows, tensors, {"nfe": result.nfe, "levels": list(result.x0)})
        return result

    def _timed_solve(self, x: torch.Tensor, levels: list[float], capture: Sequence[float]) -> SolveResult:
        start = time.perf_counter()
        try:
            return solve(self.denoiser(), x, self.model.schedule, levels, self.solver, capture)
        finally:
            self.usage.model_seconds += time.perf_counter() - start

    def renoise(self, states: Trajectories, to_level: float) -> Trajectories:
        seeds = self.next_seeds(len(states))
        eps = draw_noise(seeds, tuple(self.model.latent_shape), self.device, self.dtype)
        x = renoise(states.x, self.model.schedule, states.level, to_level, eps)
        recipes = [
            rec.with_op(r, {"op": "renoise", "from": states.level, "to": to_level, "seed": s})
            for r, s in zip(states.recipes, seeds)
        ]
        return Trajectories(x, to_level, recipes)

    def predict(self, states: Trajectories) -> torch.Tensor:
        """``x0_hat`` of every row at its level: one NFE each."""
        import torch

        self.charge(0, len(states))
        parts: list[torch.Tensor] = []
        denoise = self.denoiser()

        def work(lo: int, hi: int) -> None:
            if self.journal is not None and self.journal.replaying:
                parts.append(self.journal.read("predict", hi - lo)[0]["x0"].to(states.x.device))
            else:
                start = time.perf_counter()
                parts.append(denoise(states.x[lo:hi], states.level))
                self.usage.model_seconds += time.perf_counter() - start
                if self.journal is not None:
                    self.journal.write("predict", hi - lo, {"x0": parts[-1]}, {})
            self.usage.nfe += hi - lo

        self._in_batches(len(states), work)
        return torch.cat(parts)

    def score_latents(self, x0: torch.Tensor) -> dict[str, list[float]]:
        """Decode clean latents and score them (no candidate is recorded)."""
        scores: dict[str, list[float]] = {}

        def work(lo: int, hi: int) -> None:
            chunk, _ = self._journaled_scores("score", hi - lo, lambda: (self._decode(x0[lo:hi]), {}))
            for name, values in chunk.items():
                scores.setdefault(name, []).extend(values)

        self._in_batches(x0.shape[0], work)
        return scores

    def _journaled_scores(
        self,
        kind: str,
        rows: int,
        decode: Callable[[], tuple[torch.Tensor, dict[float, torch.Tensor]]],
    ) -> tuple[dict[str, list[float]], torch.Tensor | None]:
        """One chunk's scores and images: decoded, scored and journaled; or, resuming, read
        back from the journal (then nothing is decoded here and the images are ``None``)."""
        if self.journal is not None and self.journal.replaying:
            meta = self.journal.read(kind, rows)[1]
            self.usage.verifier_calls += meta["verifier_calls"]
            return meta["scores"], None
        images, trajectory = decode()
        calls = self.usage.verifier_calls
        scores = self.scorer.score(images, self.condition, trajectory or None, self.usage)
        if self.journal is not None:
            meta = {"scores": scores, "verifier_calls": self.usage.verifier_calls - calls}
            self.journal.write(kind, rows, {}, meta)
        return scores, images

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        images = self.model.decode(latents).float().clamp(0, 1)  # (B, 3, H, W)
        self.usage.model_seconds += time.perf_counter() - start
        return images

    def finish(
        self,
        states: Trajectories,
        trajectory: Mapping[float, torch.Tensor] | None = None,
        noises: torch.Tensor | None = None,
    ) -> list[Candidate]:
        """Record finished trajectories as candidates: decode, score, keep the best."""
        if abs(states.level - self.levels[-1]) > 1e-9:
            raise ValueError(
                f"candidates finish at the grid's last level {self.levels[-1]}, not {states.level}"
            )
        self.charge(len(states), 0)
        candidates: list[Candidate] = []

        def work(lo: int, hi: int) -> None:
            def decode() -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
                images = self._decode(states.x[lo:hi])
                return images, {level: self._decode(x0[lo:hi]) for level, x0 in (trajectory or {}).items()}

            scores, images = self._journaled_scores("finish", hi - lo, decode)
            if images is None:  # read back from the journal: the images are still needed
                images = self._decode(states.x[lo:hi])
            batch = []
            for row in range(hi - lo):
                row_scores = {name: values[row] for name, values in scores.items()}
                candidate = Candidate(
                    index=len(self._all),
                    recipe=states.recipes[lo + row],
                    scores=row_scores,
                    objective=row_scores[self.scorer.objective_name],
                    nfe=_recipe_nfe(states.recipes[lo + row], self),
                )
                self._all.append(candidate)
                self.usage.candidates += 1
                self._history.append((self.usage.nfe, candidate.objective, row_scores))
                noise = noises[lo + row] if noises is not None else None
                self._keep(candidate, images[row], noise)
                batch.append(candidate)
            if self.scorer.pooled:
                self._rerank()
            candidates.extend(batch)
            for listener in self.listeners:
                handler = getattr(listener, "on_candidates", None)
                if handler is not None:
                    handler(batch, self.usage)

        self._in_batches(len(states), work)
        return candidates

    def evaluate(
        self, noise_recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> list[Candidate]:
        """Full samples from pure noise: start, solve over the whole grid, finish."""
        n = len(noise_recipes)
        self.charge(n, n * self.nfe_per_candidate)
        states = self.start(noise_recipes, noises)
        initial = states.x
        capture = self.scorer.trajectory_levels
        done, x0 = self.solve(states, self.levels, capture)
        return self.finish(done, x0, noises=initial)

    # -- selection -------------------------------------------------------------------------
    def _keep(self, candidate: Candidate, image: torch.Tensor, noise: torch.Tensor | None) -> None:
        image = image.cpu()
        noise = noise.cpu() if noise is not None else None
        if self._baseline is None:
            candidate.image, candidate.noise = image, noise
            self._baseline = candidate
        entry = (candidate.objective, -candidate.index, candidate)
        if len(self._heap) < self.top_k:
            candidate.image, candidate.noise = image, noise
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            candidate.image, candidate.noise = image, noise
            dropped = heapq.heapreplace(self._heap, entry)[2]
            if dropped is not self._baseline:
                dropped.image = dropped.noise = None

    def _rerank(self) -> None:
        """Pooled objectives: every candidate's objective against the whole pool so far."""
        for candidate, objective in zip(self._all, self.scorer.pool_objectives(self._all)):
            candidate.objective = objective
        self._heap = [(c.objective, -c.index, c) for c in self._heap_members()]
        heapq.heapify(self._heap)

    def _heap_members(self) -> list[Candidate]:
        return [entry[2] for entry in self._heap]

    def _final_top(self) -> list[Candidate]:
        """The top-k by final objective; a member whose image was dropped earlier (possible
        with pooled objectives) is regenerated from its recipe, outside the budget."""
        ranked = sorted(self._all, key=lambda c: (-c.objective, c.index))[: self.top_k]
        for candidate in ranked:
            if candidate.image is None:
                self.regenerate(candidate)
            elif candidate.noise is None and rec.is_derivable(candidate.recipe["start"]):
                shape = tuple(self.model.latent_shape)
                candidate.noise = rec.initial_noise(candidate.recipe["start"], shape, "cpu", self.dtype)
        return ranked

    def regenerate(self, candidate: Candidate) -> None:
        """Recompute a candidate's image and noise from its recipe (exact: see recipes)."""
        if not rec.is_derivable(candidate.recipe["start"]):
            raise ValueError(f"candidate {candidate.index} has a noise recipe that cannot be re-derived")
        shape = tuple(self.model.latent_shape)
        import torch

        with torch.inference_mode():
            latent = rec.replay(candidate.recipe, self.denoiser(), self.model.schedule, self.solver,
                                shape, self.device, self.dtype)
        self.usage.final_nfe += candidate.nfe
        candidate.image = self._decode(latent[None])[0].cpu()
        candidate.noise = rec.initial_noise(candidate.recipe["start"], shape, "cpu", self.dtype)


def _recipe_nfe(recipe: dict[str, Any], engine: Engine) -> int:
    """NFEs spent on one candidate's own path (solves only; shared scoring NFEs excluded)."""
    return sum(
        solver_nfe(engine.model.schedule, op["levels"], engine.solver)
        for op in recipe["ops"]
        if op["op"] == "solve"
    )


def _empty_accelerator_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class SearchContext:
    """What a strategy sees: the budget, noise drawing, candidate evaluation and partial
    trajectories. Every call that computes is charged to the budget first and raises
    :class:`BudgetExhausted` (computing nothing) when the budget cannot pay for it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- what the search can see -----------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """How many rows the engine computes at once; propose in multiples of it."""
        return self._engine.batch_size

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self._engine.model.latent_shape)

    @property
    def levels(self) -> list[float]:
        """The search sampler's grid, from noise (``levels[0]``) to clean (``levels[-1]``)."""
        return list(self._engine.levels)

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

    def solve_nfe(self, levels: Sequence[float]) -> int:
        """NFEs per row of solving over ``levels`` with the run's solver."""
        return solver_nfe(self._engine.model.schedule, levels, self._engine.solver)

    def grid(self, start: float, end: float) -> list[float]:
        """The run's grid between two levels (both included), for partial solves."""
        inner = [level for level in self._engine.levels if end + 1e-9 < level < start - 1e-9]
        return [start, *inner, end]

    # -- noise ------------------------------------------------------------------------------
    def seeds(self, n: int) -> list[int]:
        """The next ``n`` seeds of this run: deterministic given the run seed."""
        return self._engine.next_seeds(n)

    def noise(self, noise_recipes: Sequence[dict[str, Any]]) -> torch.Tensor:
        """The initial noise ``(len(recipes), *latent_shape)`` that derivable recipes describe."""
        return self._engine._noise_for(noise_recipes)

    # -- full samples -------------------------------------------------------------------------
    def evaluate(
        self, noise_recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> list[Candidate]:
        """Generate, score and record one candidate per noise recipe; returns them in order.

        Derivable recipes (``noisesearch.recipes``: seed, neighbour) need no ``noises``; other
        kinds pass the noise tensor ``(len(recipes), *latent_shape)`` they describe.
        """
        return self._engine.evaluate(noise_recipes, noises)

    def best(self) -> Candidate | None:
        """The best candidate so far."""
        heap = self._engine._heap
        return max(heap, key=lambda e: (e[0], e[1]))[2] if heap else None

    # -- partial trajectories -------------------------------------------------------------------
    def start(
        self, noise_recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> Trajectories:
        """Trajectories at the grid's first level from their initial noises (free)."""
        return self._engine.start(noise_recipes, noises)

    def solve(self, states: Trajectories, levels: Sequence[float]) -> Trajectories:
        """Solve from ``states.level`` (= ``levels[0]``) down to ``levels[-1]``."""
        return self._engine.solve(states, levels)[0]

    def renoise(self, states: Trajectories, to_level: float) -> Trajectories:
        """The forward kernel up to a noisier level, fresh seeded noise per row (free)."""
        return self._engine.renoise(states, to_level)

    def predict(self, states: Trajectories) -> torch.Tensor:
        """The clean predictions ``x0_hat`` ``(N, *latent_shape)`` at the rows' level (1 NFE each)."""
        return self._engine.predict(states)

    def score(self, x0: torch.Tensor) -> list[float]:
        """The objective of clean latents (e.g. ``predict``'s), decoded; no candidate recorded.

        Pooled objectives (ensembles) rank within these rows.
        """
        engine = self._engine
        return engine.score_latents(x0)[engine.scorer.objective_name]

    def finish(self, states: Trajectories) -> list[Candidate]:
        """Record trajectories that reached the grid's last level as candidates."""
        return self._engine.finish(states)

    def report(self, key: str, value: Any) -> None:
        """Attach a JSON-able diagnostic to the run (e.g. SMC's effective sample sizes)."""
        self._engine.report[key] = value
