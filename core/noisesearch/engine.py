"""The search engine: runs a strategy within a budget, batches, scores and keeps the best.

Strategies talk to the engine only through :class:`SearchContext`; the engine owns the model
calls, NFE accounting, verifier calls, top-k selection and events. Memory does not grow with
the number of candidates: only the top-k keep their images; every candidate's scores stream
out through listeners (``candidates.jsonl``).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from noisesearch import baseline as plain
from noisesearch import interrupts
from noisesearch import recipes as rec
from noisesearch.accounting import Budget, Usage
from noisesearch.context import SearchContext, Trajectories
from noisesearch.errors import BudgetExhausted, IncompatibleError
from noisesearch.evaluation import ReportedEvaluation
from noisesearch.faults import (
    NoCandidate,
    Owner,
    PluginFailed,
    RecordingFailed,
    RunFailed,
    blame,
    empty_accelerator_cache,
    is_out_of_memory,
)
from noisesearch.gradients import (
    BACKWARD_NFE_FACTOR,
    Gradients,
    check_weights,
    value_and_grad,
    weighted_objective,
)
from noisesearch.heap import search_objects_only
from noisesearch.sampling import (
    Solver,
    SolveResult,
    draw_noise,
    is_stochastic,
    renoise,
    resolve_solver,
    solver_nfe,
)
from noisesearch.scoring import Scorer
from noisesearch.selection import Selection
from noisesearch.types import Candidate, Condition
from noisesearch.units import DECODE, PREDICT, SAMPLE, SOLVE, Dispatch, LocalDispatch, Output, Unit

__all__ = [  # Budget, Usage, Scorer and SearchContext live in their own modules; re-exported here
    "Budget",
    "Engine",
    "EngineResult",
    "Listener",
    "Scorer",
    "SearchContext",
    "Trajectories",
    "Usage",
    "derive_seed",
    "is_out_of_memory",
]

if TYPE_CHECKING:
    import torch

    from noisesearch.journal import Journal
    from noisesearch.types import Model, SearchStrategy


@functools.lru_cache(maxsize=1024, typed=True)  # a search's first seed, asked by every search
def derive_seed(run_seed: int, index: int) -> int:
    """An independent 63-bit seed for draw number ``index`` of a run seeded ``run_seed``.

    Hashing (rather than ``run_seed + index``) keeps runs with neighbouring seeds from sharing
    candidates.
    """
    return derive_seeds(run_seed, index, 1)[0]


def derive_seeds(run_seed: int, start: int, n: int) -> list[int]:
    """``[derive_seed(run_seed, i) for i in range(start, start + n)]``: the blake2b of
    ``"RUN_SEED:INDEX"``, shifted to 63 bits, with the common prefix hashed once (a third less
    time a seed: a search draws one per candidate)."""
    prefix = hashlib.blake2b(digest_size=8)
    prefix.update(f"{run_seed}:".encode())
    copy, from_bytes = prefix.copy, int.from_bytes
    seeds = []
    for index in range(start, start + n):
        hasher = copy()
        hasher.update(b"%d" % index)  # str(index).encode()
        seeds.append(from_bytes(hasher.digest(), "big") >> 1)
    return seeds


def _budget_text(budget: Budget) -> str:
    """``"8 candidates, 640 NFEs"``, ``"no NFE limit"`` where one is unset."""
    candidates = "no candidate limit" if budget.candidates is None else f"{budget.candidates} candidates"
    nfe = "no NFE limit" if budget.nfe is None else f"{budget.nfe} NFEs"
    return f"{candidates}, {nfe}"


class Listener(Protocol):
    """Receives engine events; every method is optional."""

    def on_candidates(self, candidates: Sequence[Candidate], usage: Usage) -> None: ...


@dataclass
class EngineResult:
    """The outcome of :meth:`Engine.run`: the best candidates (with images) and the usage."""

    top: list[Candidate]  # best first; finite objectives only
    baseline: Candidate | None  # the plain sampler's output from the run's first seed
    usage: Usage
    history: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)
    # (NFEs spent so far, objective, all scores) for every candidate, in evaluation order
    report: dict[str, Any] = field(default_factory=dict)  # what the strategy reported
    non_finite: dict[str, Any] = field(default_factory=dict)  # Selection.non_finite()
    baseline_origin: str = plain.FROM_SEARCH  # or plain.EXTRA: generated outside the search
    # the evaluator's predicted class by candidate index, where its scoring call gave one
    # (noisesearch.evaluation): the verdicts need no second call
    predicted: dict[int, int] = field(default_factory=dict)

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
        solver: str | Solver = "ddim",
        batch_size: int = 16,
        seed: int = 0,
        top_k: int = 8,
        listeners: Sequence[Listener] = (),
        journal: Journal | None = None,
        owners: Mapping[str, Owner] | None = None,
        dispatch: Dispatch | None = None,
    ) -> None:
        self.model = model
        # Who computes the model's batches (noisesearch.units): here by default, or on workers.
        self.dispatch: Dispatch = dispatch or LocalDispatch()
        self.owners = dict(owners or {})  # "model", "strategy" -> who to blame when it raises
        self.journal = journal
        self.condition = condition
        self.scorer = scorer
        self.budget = budget
        self.levels = [float(level) for level in levels]
        # "native": the model's own Solver, over as many steps as the grid has
        self.solver = resolve_solver(model, solver, len(self.levels) - 1)
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.top_k = max(1, top_k)
        self.listeners = list(listeners)
        self.usage = Usage()
        self.reported = ReportedEvaluation(scorer, condition, self.usage, self.device)
        self.report: dict[str, Any] = {}
        self.nfe_per_candidate = solver_nfe(model.schedule, self.levels, self.solver)
        self._prepared: Any = None
        self._draws = 0
        first = derive_seed(seed, 0)  # the baseline: the plain sample of this seed (baseline.py)
        levels = self.levels  # the lambda below must not hold self (a cycle keeps a search alive)
        step_seed = plain.step_noise_seed(first) if is_stochastic(self.solver) else None
        self.selection = Selection(
            self.top_k, lambda c: plain.is_plain(c.recipe, first, levels, step_seed)
        )
        self.selection.keep_all = scorer.pooled  # only a pooled objective re-ranks every candidate
        self._all = self.selection.all  # every candidate when pooled (without images), else empty
        self._history: list[tuple[int, float, dict[str, float]]] = []
        self.nfe_cache: dict[int, tuple[list[float], int]] = {}  # id(levels list) -> NFEs (_recipe_nfe)
        self.gradient_rows: int | None = None  # rows per differentiable chunk (halved on out-of-memory)

    @property
    def device(self) -> Any:
        return getattr(self.model, "device", "cpu")

    @property
    def dtype(self) -> Any:
        return getattr(self.model, "dtype", None)

    def owner(self, kind: str, thing: object) -> Owner:
        return self.owners.get(kind) or Owner.of(kind, thing)

    # -- running -------------------------------------------------------------------------
    def run(self, strategy: SearchStrategy) -> EngineResult:
        with search_objects_only():  # collections skip torch and the model (noisesearch.heap)
            return self._run(strategy)

    def _run(self, strategy: SearchStrategy) -> EngineResult:
        start = time.perf_counter()
        with blame(self.owner("model", self.model)):
            self._prepared = self.model.prepare(self.condition)
        self.usage.model_seconds += time.perf_counter() - start
        self.usage.add_phase("prepare", time.perf_counter() - start)
        self.dispatch.open(self.model, self._prepared, self.solver, self.owner("model", self.model))
        owner = self.owner("strategy", strategy)
        refused: BudgetExhausted | None = None
        try:
            with blame(owner):
                strategy.run(SearchContext(self))
        except BudgetExhausted as exc:  # the engine refused to overspend: the search ends with what it has
            refused = exc
        if not self.selection.count:
            budget = _budget_text(self.budget)
            if (self.budget.nfe is not None and self.budget.nfe < self.nfe_per_candidate) \
                    or self.budget.candidates == 0:  # (planning refuses such a budget first)
                raise BudgetExhausted(f"{owner} evaluated no candidate: a full sample costs "
                                      f"{self.nfe_per_candidate} NFEs and the budget is {budget}")
            why = (f"the engine refused what it asked for ({refused})" if refused is not None
                   else "it returned without evaluating any")
            raise NoCandidate(f"{owner} evaluated no candidate: {why}, although the budget ({budget}) "
                            f"pays for a full sample of {self.nfe_per_candidate} NFEs; a strategy "
                            f"checks context.affordable()")
        top = self._final_top()
        if not top:
            raise self.selection.nothing_selectable(self.scorer.objective_name)
        # The searched candidate that is exactly the plain first sample, or else one made apart.
        found = self.selection.baseline
        start = time.perf_counter()
        baseline = found or plain.generate(self, derive_seed(self.seed, 0))
        self.usage.add_phase("baseline", time.perf_counter() - start)  # wall, model and verifiers
        self.reported.complete([*top, baseline])
        return EngineResult(top, baseline, self.usage, self._history, self.report,
                            self.selection.non_finite(self.reported.non_finite),
                            plain.FROM_SEARCH if found else plain.EXTRA, self.reported.predicted)

    def next_seeds(self, n: int) -> list[int]:
        seeds = derive_seeds(self.seed, self._draws, n)
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

        owner = self.owner("model", self.model)

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            with torch.inference_mode(), blame(owner, keep=is_out_of_memory):
                return self.model.denoise(x, sigma, self._prepared)

        return denoise

    def _in_batches(
        self,
        rows: int,
        unit: Callable[[int, int], Unit | None],
        use: Callable[[int, int, Output | None], None],
    ) -> None:
        """Row chunks of ``batch_size``: ``unit(lo, hi)`` is a chunk's model work (``None``: the
        journal serves the chunk), all computed by the dispatch (``noisesearch.units``: here, or
        on workers at once), and ``use(lo, hi, output)`` takes each chunk's output in order: the
        engine's state changes only there. On out-of-memory, halve the batch size and retry the
        chunk (the rest of the run keeps the smaller size)."""
        lo = 0
        while lo < rows:
            replayed = self.journal is not None and self.journal.replaying
            if replayed:
                # Resuming: the chunks the run made (after any out-of-memory halving), one by one.
                self.batch_size = self.journal.next_batch_size() or self.batch_size
                chunks = [(lo, min(lo + self.batch_size, rows))]
            else:  # the journal only grows from here: every chunk left is computed
                chunks = [(a, min(a + self.batch_size, rows)) for a in range(lo, rows, self.batch_size)]
            units = [unit(a, b) for a, b in chunks]
            outputs = self.dispatch.map([u for u in units if u is not None])
            try:
                for (a, b), work in zip(chunks, units):
                    use(a, b, None if work is None else next(outputs))
                    lo = b
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if replayed:  # the journal fixes this chunk's size: halving would retry it forever
                    raise RunFailed(
                        f"resuming: a journaled batch of {self.batch_size} rows ran out of memory "
                        f"here ({type(error).__name__}); the run was made on a device with more "
                        f"memory: resume it there, or start it again with a smaller --batch-size"
                    ) from error
                if self.batch_size == 1:  # nothing left to halve: the model cannot run here
                    raise PluginFailed(self.owner("model", self.model), error) from error
                self.batch_size = max(1, self.batch_size // 2)
                empty_accelerator_cache()
            finally:
                close = getattr(outputs, "close", None)
                if close is not None:  # drop what was not used (a worker's pending units)
                    close()

    def _pad_to(self) -> int:
        """Denoiser rows per unit for a model with ``static_batch`` (a compiled network): the batch size."""
        return self.batch_size if getattr(self.model, "static_batch", False) else 0

    # -- primitives (charged to the budget before compute) -------------------------------
    def start(
        self, noise_recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> Trajectories:
        if noises is None:
            noises = self._noise_for(noise_recipes)
        if noises.shape[0] != len(noise_recipes):
            raise ValueError(f"{len(noise_recipes)} recipes but {noises.shape[0]} noises")
        x = self.initial_state(noises.to(device=self.device, dtype=self.dtype or noises.dtype))
        return Trajectories(x, self.levels[0], [rec.candidate_recipe(r) for r in noise_recipes])

    def initial_state(self, noise: torch.Tensor) -> torch.Tensor:
        """The state at the grid's first level from initial noises ``(B, *latent)``: the noise, or
        what the model's ``initial_state(noise, level)`` makes of it (img2img: a noised image)."""
        start = getattr(self.model, "initial_state", None)
        return noise if start is None else start(noise, self.levels[0])

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
        if not isinstance(self.solver, str):  # from where the states are, along the solver's grid
            levels = self.on_grid([states.level, levels[-1]])
            if len(levels) < 2:  # both ends on the same grid level: nothing to solve
                return states, {}
        if abs(levels[0] - states.level) > 1e-9:
            raise ValueError(f"trajectories are at level {states.level}, the solve starts at {levels[0]}")
        if len(states) == 0:
            return Trajectories(states.x, levels[-1], []), {}
        per_row = solver_nfe(self.model.schedule, levels, self.solver)
        self.charge(0, per_row * len(states))
        step_seeds = self._step_seeds(states, levels) if is_stochastic(self.solver) else None
        xs: list[torch.Tensor] = []
        captured: dict[float, list[torch.Tensor]] = {}
        recipes: list[dict[str, Any]] = []

        def unit(lo: int, hi: int) -> Unit | None:
            if self.journal is not None and self.journal.replaying:
                return None
            seeds = None if step_seeds is None else step_seeds[lo:hi]
            return Unit(SOLVE, states.x[lo:hi], levels, tuple(capture), seeds, pad_to=self._pad_to())

        def work(lo: int, hi: int, output: Output | None) -> None:
            result = self._journaled_solve(states.x[lo:hi], output)
            xs.append(result.x)
            for level, x0 in result.x0.items():
                captured.setdefault(level, []).append(x0)
            recipes.extend(self._solved(states.recipes[lo:hi], levels, step_seeds, lo))
            self.usage.nfe += result.nfe * (hi - lo)

        self._in_batches(len(states), unit, work)
        joined = {level: torch.cat(parts) for level, parts in captured.items()}
        return Trajectories(torch.cat(xs), levels[-1], recipes), joined

    def _solved(
        self, recipes: Sequence[dict[str, Any]], levels: list[float], step_seeds: list[int] | None, lo: int,
        own: bool = False,
    ) -> list[dict[str, Any]]:
        """A chunk's recipes (rows ``lo:lo + len(recipes)`` of a solve) with the solve op added:
        copies (a strategy's trajectories may share a past), or, ``own`` (recipes made for these
        rows alone, with no op yet: :meth:`_sample`), the same recipes with the op set in place."""
        batch = max(len(recipes), self._pad_to())  # a static-batch model's rows ran padded
        if step_seeds is None:
            shared = rec.solve_op(levels, batch, 0)  # the chunk's rows share one levels list
            ops = [{**shared, "row": row} for row in range(len(recipes))]
        else:
            ops = [rec.solve_op(levels, batch, row, step_seeds[lo + row]) for row in range(len(recipes))]
        if not own:
            return [rec.with_op(r, op) for r, op in zip(recipes, ops)]
        for r, op in zip(recipes, ops):
            r["ops"] = [op]  # start() made it with no op: set, not appended (idempotent)
        return list(recipes)

    def _step_seeds(self, states: Trajectories, levels: list[float]) -> list[int]:
        """A stochastic solver's step-noise seeds, one per row, kept in the rows' recipes: a whole
        sample of a seed's noise uses ``step_noise_seed(seed)`` (so the plain first sample is the
        baseline), any other solve the run's next seeds."""
        whole = abs(levels[0] - self.levels[0]) <= 1e-9 and abs(levels[-1] - self.levels[-1]) <= 1e-9
        own = [
            plain.step_noise_seed(r["start"]["seed"])
            if whole and not r["ops"] and r["start"].get("kind") == "seed" else None
            for r in states.recipes
        ]
        fresh = iter(self.next_seeds(sum(seed is None for seed in own)))
        return [next(fresh) if seed is None else seed for seed in own]

    def _journaled_solve(self, x: torch.Tensor, output: Output | None) -> SolveResult:
        """A chunk's solve: computed (``output``) and journaled, or, resuming, read back."""
        rows = x.shape[0]
        if output is None:
            tensors, meta = self.journal.read("solve", rows)
            self.usage.model_seconds += float(meta.get("model_seconds", 0.0))  # the earlier process's
            x0 = {float(level): tensors[f"x0_{i}"].to(x.device) for i, level in enumerate(meta["levels"])}
            return SolveResult(tensors["x"].to(x.device), meta["nfe"], x0)
        self.usage.model_seconds += output.seconds
        result = SolveResult(output.x.to(x.device), output.nfe, output.x0)
        if self.journal is not None:
            tensors = {"x": result.x, **{f"x0_{i}": v for i, v in enumerate(result.x0.values())}}
            self.journal.write("solve", rows, tensors, {"nfe": result.nfe, "levels": list(result.x0),
                                                        "batch_size": self.batch_size,
                                                        "model_seconds": output.seconds})
        return result

    def on_grid(self, levels: Sequence[float]) -> list[float]:
        """The levels a solve really goes through. A model's own solver steps along its own grid
        only (the run's ``levels``): the ends move to the nearest grid levels and the grid between
        them is used. The core's solvers take ``levels`` as they are."""
        levels = [float(level) for level in levels]
        if isinstance(self.solver, str) or not levels:
            return levels
        first, last = self.grid_level(levels[0]), self.grid_level(levels[-1])
        return [level for level in self.levels if last - 1e-12 <= level <= first + 1e-12]

    def grid_level(self, level: float, above: float | None = None) -> float:
        """With a model's own solver, the run grid's level nearest to ``level`` (strictly above
        ``above`` when given: a re-noising target); else ``level`` itself."""
        if isinstance(self.solver, str):
            return float(level)
        options = [g for g in self.levels if above is None or g > above + 1e-12] or self.levels
        return min(options, key=lambda g: abs(g - level))

    def renoise(self, states: Trajectories, to_level: float) -> Trajectories:
        to_level = self.grid_level(to_level, above=states.level)  # a native solver restarts on its grid
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

        if len(states) == 0:
            return states.x
        self.charge(0, len(states))
        parts: list[torch.Tensor] = []

        def unit(lo: int, hi: int) -> Unit | None:
            if self.journal is not None and self.journal.replaying:
                return None
            return Unit(PREDICT, states.x[lo:hi], [states.level], pad_to=self._pad_to())

        def work(lo: int, hi: int, output: Output | None) -> None:
            if output is None:
                tensors, meta = self.journal.read("predict", hi - lo)
                parts.append(tensors["x0"].to(states.x.device))
                self.usage.model_seconds += float(meta.get("model_seconds", 0.0))  # the earlier process's
            else:
                parts.append(output.x.to(states.x.device))
                self.usage.model_seconds += output.seconds
                if self.journal is not None:
                    self.journal.write("predict", hi - lo, {"x0": parts[-1]},
                                       {"batch_size": self.batch_size, "model_seconds": output.seconds})
            self.usage.nfe += hi - lo

        self._in_batches(len(states), unit, work)
        return torch.cat(parts)

    def score_latents(self, x0: torch.Tensor) -> dict[str, list[float]]:
        """Decode clean latents and score them (no candidate is recorded)."""
        scores: dict[str, list[float]] = {}

        def unit(lo: int, hi: int) -> Unit | None:
            if self.journal is not None and self.journal.replaying:
                return None
            return Unit(DECODE, x0[lo:hi])

        def work(lo: int, hi: int, output: Output | None) -> None:
            chunk, _ = self._journaled_scores("score", hi - lo, lambda: self._decoded(output))
            for name, values in chunk.items():
                scores.setdefault(name, []).extend(values)

        self._in_batches(x0.shape[0], unit, work)
        return scores

    def _decoded(self, output: Output | None) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
        """A decode unit's images and the trajectory's, its model time counted."""
        assert output is not None  # a chunk that the journal does not serve was computed
        self.usage.model_seconds += output.seconds
        self.usage.add_phase("decode", output.seconds)
        return output.x, output.x0

    def _journaled_scores(
        self,
        kind: str,
        rows: int,
        decode: Callable[[], tuple[torch.Tensor, dict[float, torch.Tensor]]],
        before: Callable[[], object] | None = None,
    ) -> tuple[dict[str, list[float]], torch.Tensor | None]:
        """One chunk's scores and images: decoded, scored and journaled; or, resuming, read
        back from the journal (then nothing is decoded here and the images are ``None``).
        ``before``: what must be journaled ahead of the scores (a sample's solve), once they
        exist."""
        if self.journal is not None and self.journal.replaying:
            meta = self.journal.read(kind, rows)[1]
            self.usage.verifier_calls += meta["verifier_calls"]
            self.usage.verifier_seconds += float(meta.get("verifier_seconds", 0.0))  # the earlier process's
            for name, cost in meta.get("verifier_cost", {}).items():  # generative judges' tokens
                self.usage.add_verifier_cost(name, cost)
            return meta["scores"], None
        import torch

        # No autograd graph: adapters' weights keep requires_grad, and a graph kept alive by the
        # top-k's images held ~35 GB per batch of 64 DiT-XL/2 decodes on an H200 (out of memory).
        with torch.inference_mode():
            images, trajectory = decode()
            calls, seconds = self.usage.verifier_calls, self.usage.verifier_seconds
            costs = {name: dict(cost) for name, cost in self.usage.verifier_cost.items()}
            scores = self.scorer.score(images, self.condition, trajectory or None, self.usage)
        if before is not None:
            before()
        if self.journal is not None:
            meta = {"scores": scores, "verifier_calls": self.usage.verifier_calls - calls,
                    "verifier_seconds": self.usage.verifier_seconds - seconds, "batch_size": self.batch_size}
            spent = self.usage.verifier_cost_since(costs)
            if spent:
                meta["verifier_cost"] = spent
            self.journal.write(kind, rows, {}, meta)
        return scores, images

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        with blame(self.owner("model", self.model), keep=is_out_of_memory):
            images = self.model.decode(latents).float().clamp(0, 1)  # (B, 3, H, W)
        seconds = time.perf_counter() - start
        self.usage.model_seconds += seconds
        self.usage.add_phase("decode", seconds)
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
        if self.scorer.trajectory_levels and not trajectory:
            raise IncompatibleError(
                f"a verifier needs the clean predictions at levels {self.scorer.trajectory_levels}, "
                f"which this strategy's samples do not have; declare `partial_paths = True` on it"
            )
        candidates: list[Candidate] = []

        def unit(lo: int, hi: int) -> Unit:
            if self.journal is not None and self.journal.replaying:  # the scores are journaled
                return Unit(DECODE, states.x[lo:hi])
            also = {level: x0[lo:hi] for level, x0 in (trajectory or {}).items()}
            return Unit(DECODE, states.x[lo:hi], also=also)

        def work(lo: int, hi: int, output: Output | None) -> None:
            scores, images = self._journaled_scores("finish", hi - lo, lambda: self._decoded(output))
            if images is None:  # read back from the journal: the images are still needed
                images = self._decoded(output)[0]
            self._record(states.recipes[lo:hi], scores, images, noises, lo, candidates)

        self._in_batches(len(states), unit, work)
        return candidates

    def _record(
        self,
        recipes: Sequence[dict[str, Any]],
        scores: dict[str, list[float]],
        images: torch.Tensor,
        noises: torch.Tensor | None,
        lo: int,
        candidates: list[Candidate],
        own: bool = False,
    ) -> None:
        """One scored chunk (``recipes``, ``images`` ``(B, 3, H, W)``; rows ``lo:lo + B`` of
        ``noises``) recorded as candidates: selection, the evaluator's running bests, listeners.
        ``own``: the recipes were made for these candidates alone (:meth:`_sample`), so they take
        their ``decode`` in place, and every row followed the same path (one NFE count); else
        they are a strategy's trajectories' recipes, copied."""
        batch = []
        names = list(scores)
        size = len(recipes)
        rows = [dict(zip(names, values)) for values in zip(*scores.values())] if names else \
            [{} for _ in range(size)]
        objectives = self.scorer.objectives(rows)  # pooled: provisional, re-ranked below
        shared_nfe = _recipe_nfe(recipes[0], self) if own and recipes else None
        first, nfe, history = self.selection.count, self.usage.nfe, self._history
        with interrupts.deferred(), _not_retried(size):  # the batch is recorded whole or not at all
            for row, row_scores in enumerate(rows):
                if own:
                    recipe = recipes[row]
                    recipe["decode"] = {"batch": size, "row": row}
                else:
                    recipe = {**recipes[row], "decode": {"batch": size, "row": row}}
                objective = objectives[row]
                batch.append(Candidate(first + row, recipe, row_scores, objective,
                                       shared_nfe if own else _recipe_nfe(recipe, self)))
                history.append((nfe, objective, row_scores))
            self.usage.candidates += size
            self.selection.add_batch(batch, images, noises, lo)
            if self.scorer.pooled:
                self._rerank()
            self.reported.on_batch(batch, images)  # the running bests, before they stream out
            candidates.extend(batch)
            for listener in self.listeners:
                handler = getattr(listener, "on_candidates", None)
                if handler is not None:
                    handler(batch, self.usage)

    def evaluate(
        self, noise_recipes: Sequence[dict[str, Any]], noises: torch.Tensor | None = None
    ) -> list[Candidate]:
        """Full samples from pure noise: start, then solve over the whole grid and finish, chunk
        by chunk (one ``sample`` unit each: see :meth:`_sample`)."""
        n = len(noise_recipes)
        if n == 0:  # nothing asked, nothing computed (torch.cat of no batch would fail)
            return []
        self.charge(n, n * self.nfe_per_candidate)
        if noises is None:
            noises = self._noise_for(noise_recipes)
        initial = noises.to(device=self.device, dtype=self.dtype or noises.dtype)  # kept as the noise
        states = self.start(noise_recipes, initial)  # img2img: a noised image, not the noise
        return self._sample(states, initial)

    def _sample(self, states: Trajectories, noises: torch.Tensor) -> list[Candidate]:
        """:meth:`solve` over the whole grid and :meth:`finish`, per chunk: each chunk is one
        ``sample`` unit (solved, then decoded where it was solved) and is journaled as a solve
        and a finish, so that a dispatch computing ahead (``noisesearch.overlap``) denoises
        the next chunk while this one is scored. The same model batches, recipes and
        candidates as a solve of every row followed by a finish; charged by the caller."""
        levels = list(self.levels)  # (floats already) the chunk's rows share this list in their recipes
        if not isinstance(self.solver, str):  # a model's own solver: along its grid (all of it)
            levels = self.on_grid(levels)
        step_seeds = self._step_seeds(states, levels) if is_stochastic(self.solver) else None
        capture = tuple(self.scorer.trajectory_levels)
        candidates: list[Candidate] = []
        journal = self.journal

        def unit(lo: int, hi: int) -> Unit:
            if journal is not None and journal.replaying:  # the solve is journaled: decode it
                tensors, meta = journal.peek("solve", hi - lo)
                x = tensors["x"].to(states.x.device)
                also = {} if journal.left > 1 else {  # no finish journaled: score the trajectory too
                    float(level): tensors[f"x0_{i}"].to(x.device) for i, level in enumerate(meta["levels"])}
                return Unit(DECODE, x, also=also)
            seeds = None if step_seeds is None else step_seeds[lo:hi]
            return Unit(SAMPLE, states.x[lo:hi], levels, capture, seeds, pad_to=self._pad_to())

        def work(lo: int, hi: int, output: Output | None) -> None:
            assert output is not None  # every chunk has a unit (a replayed one decodes)
            served = journal is not None and journal.replaying  # the unit was a decode
            if served:
                result = self._journaled_solve(states.x[lo:hi], None)
                scores, images = self._journaled_scores("finish", hi - lo, lambda: self._decoded(output))
                if images is None:  # read back from the journal: the images are still needed
                    images = self._decoded(output)[0]
            else:  # the solve is journaled (and counted) once the chunk is scored: a verifier's
                # out-of-memory error retries the chunk smaller with nothing of it on record
                solved: list[SolveResult] = []
                scores, images = self._journaled_scores(
                    "finish", hi - lo, lambda: (output.images, output.trajectory),
                    before=lambda: solved.append(self._sampled(states.x[lo:hi], output)))
                result = solved[0]
            self.usage.nfe += result.nfe * (hi - lo)
            # start()'s recipes are these rows' own: the solve op goes in place, once nothing
            # can fail and retry the chunk any more
            recipes = self._solved(states.recipes[lo:hi], levels, step_seeds, lo, own=True)
            self._record(recipes, scores, images, noises, lo, candidates, own=True)

        self._in_batches(len(states), unit, work)
        return candidates

    def _sampled(self, x: torch.Tensor, output: Output) -> SolveResult:
        """A scored sample unit's solve, journaled, with its model time (its decode's included)
        counted: once its chunk is scored, so that a chunk a verifier's out-of-memory error retried
        smaller counts only the work that made its candidates."""
        assert output.images is not None
        self.usage.add_phase("decode", output.decode_seconds)
        return self._journaled_solve(x, output)

    # -- differentiable evaluation (gradient strategies: noisesearch.gradients) ----------------
    def gradient_nfe(self, levels: Sequence[float]) -> tuple[int, int]:
        """(forward, backward) NFEs per row of :meth:`gradient` over ``levels``."""
        forward = solver_nfe(self.model.schedule, [float(level) for level in levels], self.solver)
        return forward, BACKWARD_NFE_FACTOR * forward

    def gradient(
        self, noises: torch.Tensor, levels: Sequence[float], weights: Mapping[str, float]
    ) -> Gradients:
        """The weighted verifiers' objective of ``noises`` ``(N, *latent)`` solved over ``levels``
        and its gradient with respect to the noises; charged (forward + backward NFEs) before
        any compute, recorded as no candidate. Rows go in chunks of at most ``gradient_rows``,
        halved on out-of-memory as ``_in_batches`` does."""
        import torch

        if not isinstance(self.solver, str):
            raise IncompatibleError("gradients go through the core solvers (ddim, heun), not a "
                                    "model's own sampler; use --solver ddim")
        check_weights(self.scorer, weights)
        levels = [float(level) for level in levels]
        rows = noises.shape[0]
        forward, backward = self.gradient_nfe(levels)
        self.charge(0, rows * (forward + backward))
        score = weighted_objective(self.scorer, weights, self.condition)
        owner = self.owner("model", self.model)
        x = noises.to(device=self.device, dtype=self.dtype or noises.dtype)
        parts: list[Gradients] = []
        lo = 0
        while lo < rows:
            hi = min(lo + (self.gradient_rows or rows), rows)
            try:
                part, seconds = value_and_grad(x[lo:hi], self.model, self._prepared, levels,
                                               self.solver, score, owner, self.initial_state)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if hi - lo == 1:  # nothing left to halve: the model cannot run here
                    raise PluginFailed(owner, error) from error
                self.gradient_rows = max(1, (hi - lo) // 2)
                empty_accelerator_cache()
                continue
            self.usage.model_seconds += seconds
            self.usage.verifier_calls += len(weights)
            self.usage.nfe += (hi - lo) * (forward + backward)
            self.usage.backward_nfe += (hi - lo) * backward
            parts.append(part)
            lo = hi
        names = parts[0].scores if parts else {}
        return Gradients(
            torch.cat([p.objective for p in parts]),
            {name: [v for p in parts for v in p.scores[name]] for name in names},
            torch.cat([p.grad for p in parts]),
        )

    # -- selection -------------------------------------------------------------------------
    def _rerank(self) -> None:
        """Pooled objectives: every candidate's objective against the whole pool so far."""
        self.selection.rerank(self.scorer.objectives([c.scores for c in self._all]))

    def _final_top(self) -> list[Candidate]:
        """The top-k by final objective; a member whose image was dropped earlier (possible
        with pooled objectives) is regenerated from its recipe, outside the budget."""
        ranked = self.selection.ranked()
        for candidate in ranked:
            if candidate.image is None:
                self.regenerate(candidate)
            elif candidate.noise is None and rec.is_derivable(candidate.recipe["start"]):
                shape = tuple(self.model.latent_shape)
                candidate.noise = rec.initial_noise(candidate.recipe["start"], shape, "cpu", self.dtype)
        return ranked

    def regenerate(self, candidate: Candidate) -> None:
        """Recompute a candidate's image from its recipe (exact: see ``noisesearch.recipes``)."""
        import torch

        shape = tuple(self.model.latent_shape)
        derivable = rec.is_derivable(candidate.recipe["start"])
        with torch.inference_mode():
            latent = rec.replay(candidate.recipe, self.denoiser(), self.model.schedule, self.solver,
                                shape, self.device, self.dtype, noise=None if derivable else candidate.noise,
                                initial_state=self.initial_state)
            image = rec.decode_padded(self._decode, latent, **candidate.recipe.get("decode", {}))
        self.usage.final_nfe += candidate.nfe
        candidate.image = image.cpu()
        if derivable:
            candidate.noise = rec.initial_noise(candidate.recipe["start"], shape, "cpu", self.dtype)


def _recipe_nfe(recipe: dict[str, Any], engine: Engine) -> int:
    """NFEs spent on one candidate's own path (solves only; shared scoring NFEs excluded).
    A chunk's rows share one levels list (``Engine.solve``): its NFEs are counted once."""
    total = 0
    for op in recipe["ops"]:
        if op["op"] == "solve":
            levels = op["levels"]
            cached = engine.nfe_cache.get(id(levels))  # (the list, kept alive so its id stays its own; NFEs)
            if cached is None:
                cached = engine.nfe_cache[id(levels)] = (levels, solver_nfe(engine.model.schedule, levels,
                                                                          engine.solver))
            total += cached[1]
    return total


class _not_retried:  # noqa: N801 - used as a function: ``with _not_retried(rows):``
    """An out-of-memory error while a scored batch is being recorded (the evaluator, on one image:
    it halves its own calls before that) fails the run: retrying the chunk with a smaller batch,
    as ``_in_batches`` does for the model and the verifiers, would record candidates twice. (A
    class, not a generator: entered once per recorded batch.)"""

    __slots__ = ("rows",)

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> bool:
        if not isinstance(error, Exception) or not is_out_of_memory(error):
            return False
        raise RecordingFailed(
            f"{error} (while recording a scored batch of {self.rows}, which cannot be retried half "
            f"recorded: start again with a smaller --batch-size)") from error
