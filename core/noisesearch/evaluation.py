"""The evaluator on what a run reports, not on every candidate.

A run reports the baseline, the running bests (the candidates that were the best so far when
scored: the dotted "evaluator of the searched best" line of ``scaling.png``) and the top-k.
Scoring only those with the held-out evaluator saves one model call per candidate, most of a
small model's search time. ``RunConfig.evaluate_all`` (``--evaluate-all``) scores every
candidate instead, which the report's oracle line (the evaluator's best over all candidates)
needs; ``run.json``'s ``"evaluated"`` says which was done.

Deterministic, so resume and replay stay exact: the same images (a resumed chunk re-decodes
its latents) in the same groups get the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from noisesearch.faults import empty_accelerator_cache, is_out_of_memory
from noisesearch.finite import is_finite

if TYPE_CHECKING:
    import torch

    from noisesearch.accounting import Usage
    from noisesearch.scoring import Scorer
    from noisesearch.types import Candidate, Condition

#: ``run.json``'s ``"evaluated"``: every candidate, or only what the run reports.
ALL = "all"
REPORTED = "reported"


class ReportedEvaluation:
    """Scores the running bests batch by batch and, at the end, the top-k and the baseline;
    a no-op when the scorer already scores every candidate (or there is no evaluator)."""

    def __init__(self, scorer: Scorer, condition: Condition, usage: Usage, device: object = "cpu") -> None:
        self.scorer = scorer
        self.device = device
        self.condition = condition
        self.usage = usage
        self.active = scorer.evaluated == REPORTED
        self.name = scorer.evaluator[0] if scorer.evaluator else ""
        self._best: float | None = None
        self.non_finite: dict[str, int] = {}  # non-finite evaluator scores given here
        # The verdicts' predicted classes (label conditions), from the scoring calls themselves
        # when the evaluator has ``score_and_predict``: no second call for the verdicts.
        judge = scorer.evaluator[1] if scorer.evaluator else None
        self.predicts = condition.label is not None and callable(getattr(judge, "score_and_predict", None)) \
            and not callable(getattr(judge, "verdict", None))
        self.predicted: dict[int, int] = {}  # candidate index -> the evaluator's predicted class

    def on_batch(self, candidates: Sequence[Candidate], images: torch.Tensor) -> None:
        """Score the candidates of one scored batch (``images`` ``(B, 3, H, W)``, in order)
        that beat every objective before them, and with them, in the same call, those the
        selection kept (they hold an image: the top-k so far, the baseline). Most of the top-k
        at the end is then scored already, and :meth:`complete` has little or nothing left:
        one evaluator call instead of two for a search of one batch, the call's fixed cost
        being most of a small evaluator's time."""
        if not self.active:
            return
        rows = []
        for row, candidate in enumerate(candidates):
            objective = candidate.objective
            if is_finite(objective) and (self._best is None or objective > self._best):
                self._best = objective
                rows.append(row)
            elif candidate.image is not None:
                rows.append(row)
        if rows:
            self._score([candidates[row] for row in rows], _rows(images, rows))

    def complete(self, candidates: Sequence[Candidate | None]) -> None:
        """Score, in one call, those of ``candidates`` (the top-k, the baseline) that hold an
        image and have no evaluator score yet."""
        if not self.active:
            return
        todo: list[Candidate] = []
        for candidate in candidates:
            if candidate is not None and candidate.image is not None and self.name not in candidate.scores \
                    and all(candidate is not other for other in todo):
                todo.append(candidate)
        if todo:
            import torch

            self._score(todo, torch.stack([c.image for c in todo]).to(self.device))

    def _score(self, candidates: Sequence[Candidate], images: torch.Tensor) -> None:
        values, predicted = self._evaluate(images)
        for candidate, label in zip(candidates, predicted or ()):
            self.predicted[candidate.index] = label
        for candidate, value in zip(candidates, values):
            candidate.scores[self.name] = value
            if not is_finite(value):
                self.non_finite[self.name] = self.non_finite.get(self.name, 0) + 1

    def _evaluate(self, images: torch.Tensor) -> tuple[list[float], list[int] | None]:
        """The evaluator's scores (and predicted classes) of ``images`` ``(B, 3, H, W)``, in halves
        when it runs out of memory: it runs while a batch is being recorded, which the engine
        cannot retry at a smaller batch size (an evaluator at batch size 1 that still does not fit
        fails the run). Halves round like any other batch composition (~1e-7)."""
        try:
            return self.scorer.evaluate(images, self.condition, self.usage, predict=self.predicts)
        except Exception as error:
            if images.shape[0] == 1 or not is_out_of_memory(error):
                raise
        empty_accelerator_cache()
        half = images.shape[0] // 2
        first, second = self._evaluate(images[:half]), self._evaluate(images[half:])
        both = None if first[1] is None or second[1] is None else first[1] + second[1]
        return first[0] + second[0], both


def _rows(images: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``images[rows]`` with one ``index_select`` (indexing with a Python list converts it element
    by element): an ordinary copy, as the evaluator always got (a slice of the unit's images
    would be an inference tensor, which an evaluator run with autograd on cannot take)."""
    import torch

    return images.index_select(0, torch.tensor(rows, device=images.device))
