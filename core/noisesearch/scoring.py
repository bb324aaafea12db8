"""Scoring candidates: every verifier, the evaluator, and pooled (rank-based) objectives.

Scores are kept as the verifiers return them, NaN and infinities included: selection ranks
those below every finite score (``noisesearch.selection``) and the run folder reports them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from noisesearch.accounting import Usage
from noisesearch.faults import Owner, blame
from noisesearch.finite import is_finite
from noisesearch.types import Condition, check_scores

if TYPE_CHECKING:
    import torch

    from noisesearch.types import Verifier


class Scorer:
    """Runs the verifiers and the (optional) evaluator on a batch of images.

    The first verifier is the objective: selection ranks by its score. The others are
    recorded on every candidate but never steer the search; so is the evaluator with
    ``evaluate_all``, else it scores only what a run reports (``noisesearch.evaluation``). An objective that
    ranks over a pool (an ensemble: ``member_scores`` + ``combine``) is re-ranked over every
    candidate seen so far.
    """

    def __init__(
        self,
        verifiers: Mapping[str, Verifier],
        evaluator: tuple[str, Verifier] | None = None,
        owners: Mapping[str, Owner] | None = None,
        evaluate_all: bool = True,
    ) -> None:
        if not verifiers:
            raise ValueError("at least one verifier is needed to search")
        self.verifiers = dict(verifiers)
        self.objective_name = next(iter(self.verifiers))
        self.evaluator = evaluator
        self.owners = dict(owners or {})  # verifier name -> who to blame when it raises
        # An evaluator that reads the trajectory, or is searched on too, scores every candidate.
        self.evaluate_all = evaluate_all or bool(evaluator and (
            evaluator[0] in self.verifiers or "trajectory" in getattr(evaluator[1], "requires", ())))
        # Asked per batch, so found once: whether the objective ranks over a pool, and the levels
        # whose clean predictions a verifier or the evaluator reads.
        objective = self.verifiers[self.objective_name]
        self.pooled: bool = hasattr(objective, "member_scores") and hasattr(objective, "combine")
        levels: set[float] = set()
        for verifier in [*self.verifiers.values(), *([evaluator[1]] if evaluator else [])]:
            if "trajectory" in getattr(verifier, "requires", ()):
                levels.update(getattr(verifier, "trajectory_levels", ()))
        self.trajectory_levels: tuple[float, ...] = tuple(sorted(levels))

    @property
    def evaluated(self) -> str | None:
        """``run.json``'s ``"evaluated"``: ``"all"``, ``"reported"`` or ``None`` (no evaluator)."""
        if self.evaluator is None:
            return None
        return "all" if self.evaluate_all else "reported"

    @property
    def objective(self) -> Verifier:
        return self.verifiers[self.objective_name]

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, torch.Tensor] | None,
        usage: Usage,
    ) -> dict[str, list[float]]:
        """Every verifier's raw scores, by name; a pooled objective's by ``name/member`` only
        (its ranks mean something only over a pool: see :meth:`objectives`)."""
        members = dict(self.verifiers)
        if self.evaluator is not None and self.evaluate_all:
            members[self.evaluator[0]] = self.evaluator[1]
        scores: dict[str, list[float]] = {}
        for name, verifier in members.items():
            start = time.perf_counter()
            with blame(self.owners.get(name) or Owner.of("verifier", verifier, name)):
                if name == self.objective_name and self.pooled:
                    parts = verifier.member_scores(images, condition, trajectory=trajectory)
                    for member, values in parts.items():
                        scores[f"{name}/{member}"] = self._as_list(f"{name}/{member}", values, images)
                else:
                    values = verifier.score(images, condition, trajectory=trajectory)
                    scores[name] = self._as_list(name, values, images)
            self._charge(name, verifier, time.perf_counter() - start, usage)
            if self.evaluator is not None and name == self.evaluator[0] and name not in self.verifiers:
                usage.add_phase("evaluator", time.perf_counter() - start)  # --evaluate-all
        return scores

    def evaluate(
        self, images: torch.Tensor, condition: Condition, usage: Usage, predict: bool = False
    ) -> tuple[list[float], list[int] | None]:
        """The evaluator's scores of ``images`` alone (see ``noisesearch.evaluation``) and, with
        ``predict``, its predicted classes from the same call (an evaluator with
        ``score_and_predict``; else ``None``)."""
        assert self.evaluator is not None
        name, verifier = self.evaluator
        start = time.perf_counter()
        both = getattr(verifier, "score_and_predict", None) if predict else None
        predicted = None
        with blame(self.owners.get(name) or Owner.of("verifier", verifier, name)):
            if callable(both):
                values, classes = both(images, condition)  # (B,), (B,)
                check_scores(f"{name} (predicted)", classes, images)
                predicted = list(map(int, classes.tolist()))
            else:
                values = verifier.score(images, condition, trajectory=None)
            values = self._as_list(name, values, images)
        self._charge(name, verifier, time.perf_counter() - start, usage)
        usage.add_phase("evaluator", time.perf_counter() - start)
        return values, predicted

    @staticmethod
    def _charge(name: str, verifier: Verifier, seconds: float, usage: Usage) -> None:
        """One verifier call's seconds; with the counters of a verifier that reports a cost of
        its own (``take_cost()``: a generative judge's tokens, retries and failures)."""
        usage.verifier_seconds += seconds
        usage.verifier_calls += 1
        take_cost = getattr(verifier, "take_cost", None)
        cost = take_cost() if callable(take_cost) else None
        if cost:  # an ensemble without a generative member reports none
            usage.add_verifier_cost(name, {**cost, "seconds": seconds})

    @staticmethod
    def _as_list(name: str, values: torch.Tensor, images: torch.Tensor) -> list[float]:
        check_scores(name, values, images)
        # Python floats in one C call (not B); tolist() copies from any device and ignores
        # autograd, so only the cast to float32 stays (a float64 score is rounded as before)
        return values.float().tolist()

    def objectives(self, scores: Sequence[Mapping[str, float]]) -> list[float]:
        """What selection ranks by, for each row of ``scores``: the objective verifier's score,
        or, for a pooled objective, its rank over exactly these rows."""
        if not self.pooled:
            return [row[self.objective_name] for row in scores]
        if not scores:
            return []
        prefix = f"{self.objective_name}/"
        members = [key[len(prefix):] for key in scores[0] if key.startswith(prefix)]
        # A row with a non-finite member score has no rank (NaN); the others rank among
        # themselves, so that one NaN cannot shift every rank of the pool.
        finite = [i for i, row in enumerate(scores) if all(is_finite(row[prefix + m]) for m in members)]
        objectives = [math.nan] * len(scores)
        if finite:
            pool = {m: [scores[i][prefix + m] for i in finite] for m in members}
            for i, value in zip(finite, self.objective.combine(pool)):
                objectives[i] = float(value)
        return objectives
