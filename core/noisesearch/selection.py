"""Which candidates a search keeps: the top-k (with their images), ranked by objective.

Only the top-k and the baseline hold images, and only a pooled objective (which re-ranks the
whole pool) keeps every candidate, so memory does not grow with the number of candidates.
A non-finite objective (NaN, +-inf: see ``noisesearch.finite``) ranks below every finite
one and is never selected; such candidates are counted, per score, for the report.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from math import isfinite
from typing import TYPE_CHECKING, Any

from noisesearch import recipes as rec
from noisesearch.faults import NothingSelectable
from noisesearch.finite import is_finite, rank_key
from noisesearch.types import Candidate

if TYPE_CHECKING:
    import torch


def selection_key(candidate: Candidate) -> tuple[tuple[int, float], int]:
    """Larger is better: finite objectives first, by value; ties to the earlier candidate."""
    objective = candidate.objective
    if type(objective) is float and isfinite(objective):  # rank_key's value, without its call
        return (1, objective), -candidate.index
    return rank_key(objective), -candidate.index


def _finite(value: object) -> bool:
    """:func:`~noisesearch.finite.is_finite`, with a float's check inline (per candidate)."""
    return isfinite(value) if type(value) is float else is_finite(value)


class Selection:
    """The running top-k of a search, every candidate (without images) and the baseline.

    ``is_baseline(candidate)`` says whether a candidate is exactly the plain sample the run's
    baseline stands for; the first such candidate keeps its image as the baseline.
    ``keep_all``: keep every candidate in :attr:`all` (a pooled objective re-ranks them);
    otherwise only the top-k, the baseline and per-score counts of non-finite values are kept.
    """

    def __init__(
        self, top_k: int, is_baseline: Callable[[Candidate], bool] = lambda c: False, keep_all: bool = True
    ) -> None:
        self.top_k = max(1, top_k)
        self.is_baseline = is_baseline
        self.keep_all = keep_all
        self.all: list[Candidate] = []  # every candidate, in evaluation order (with keep_all)
        self.count = 0  # candidates added
        self._non_finite_objectives = 0
        self._non_finite_scores: dict[str, int] = {}
        self.baseline: Candidate | None = None
        self._heap: list[tuple[tuple[tuple[int, float], int], int, Candidate]] = []  # min-heap
        self._floor = -math.inf  # see _update_floor

    def add(
        self,
        candidate: Candidate,
        images: torch.Tensor,
        row: int,
        noises: torch.Tensor | None = None,
        noise_row: int = 0,
    ) -> None:
        """Record one scored candidate: :meth:`add_batch` of ``images[row]`` alone."""
        self.add_batch([candidate], images[row : row + 1],
                       None if noises is None else noises[noise_row : noise_row + 1])

    def add_batch(
        self,
        candidates: Sequence[Candidate],
        images: torch.Tensor,
        noises: torch.Tensor | None = None,
        noise_lo: int = 0,
    ) -> None:
        """Record a batch of scored candidates, in order (``images`` ``(B, 3, H, W)``, row ``i``
        for ``candidates[i]``; their noises are ``noises[noise_lo + i]``). Those left in the
        top-k after the batch, and the baseline, keep their image and noise: only those rows are
        viewed and copied to the CPU (most candidates of a big search are neither, and a small
        one's first batch would otherwise copy rows that a later row of it pushes out)."""
        self.count += len(candidates)
        if self.keep_all:
            self.all.extend(candidates)
        else:  # counted now: the candidates are not kept (non_finite() of a pooled run recounts)
            for candidate in candidates:
                if not _finite(candidate.objective):
                    self._non_finite_objectives += 1
                for name, value in candidate.scores.items():
                    if not _finite(value):
                        self._non_finite_scores[name] = self._non_finite_scores.get(name, 0) + 1
        heap, top_k = self._heap, self.top_k
        entered: list[int] = []  # rows that entered the heap (some may leave it again below)
        for row, candidate in enumerate(candidates):
            baseline = self.baseline is None and self.is_baseline(candidate)
            if baseline:
                self.baseline = candidate
                entered.append(row)
            objective = candidate.objective
            if not baseline and type(objective) is float and objective <= self._floor:
                continue  # the heap is full and this one can't enter it (most of a big N)
            entry = (selection_key(candidate), candidate.index, candidate)
            if len(heap) < top_k:
                heapq.heappush(heap, entry)
            elif entry[0] > heap[0][0]:
                self._drop(heapq.heapreplace(heap, entry)[2])
            else:
                continue
            entered.append(row)
            if len(heap) >= top_k:  # (while the heap has room the floor stays -inf)
                self._update_floor()
        if not entered:
            return
        held = {id(entry[2]) for entry in heap}
        # An accelerator's row is copied alone; a CPU row is kept as the view .cpu() would return
        # (the call costs a small search ~1 us a row when the caches are cold).
        images_on_cpu = images.is_cpu
        noises_on_cpu = noises is not None and noises.is_cpu
        for row in entered:
            candidate = candidates[row]
            if candidate.image is not None:
                continue
            if id(candidate) in held or candidate is self.baseline:
                image = images[row]  # (3, H, W)
                candidate.image = image if images_on_cpu else image.cpu()
            elif rec.is_derivable(candidate.recipe["start"]):
                continue  # entered and pushed out in this batch: nothing kept (as _drop does)
            if noises is not None:  # a non-derivable start keeps its noise, its only source
                noise = noises[noise_lo + row]
                candidate.noise = noise if noises_on_cpu else noise.cpu()

    def _update_floor(self) -> None:
        """The objective a candidate must beat to enter the full heap: its lowest finite one
        (a later candidate loses ties), or -inf while the heap has room or holds a non-finite
        objective (then only the full comparison of :func:`selection_key` can tell)."""
        heap = self._heap
        full = len(heap) >= self.top_k and heap[0][0][0][0] == 1
        self._floor = heap[0][2].objective if full else -math.inf

    def _drop(self, dropped: Candidate) -> None:
        if dropped is self.baseline:
            return
        dropped.image = None
        if rec.is_derivable(dropped.recipe["start"]):  # else the noise is its only source
            dropped.noise = None

    def rerank(self, objectives: Sequence[float]) -> None:
        """New objectives for every candidate so far (pooled objectives), in order."""
        for candidate, objective in zip(self.all, objectives):
            candidate.objective = objective
        self._heap = [(selection_key(c), c.index, c) for _, _, c in self._heap]
        heapq.heapify(self._heap)
        self._update_floor()

    def best(self) -> Candidate | None:
        """The best candidate so far (``None`` before the first), finite or not."""
        return max(self._heap)[2] if self._heap else None

    def ranked(self) -> list[Candidate]:
        """The top-k by final objective, best first; non-finite objectives are never selected."""
        # The heap holds the k best keys, and every finite key beats every non-finite one.
        pool = self.all if self.keep_all else [c for _, _, c in self._heap]
        finite = [c for c in pool if _finite(c.objective)]
        return sorted(finite, key=selection_key, reverse=True)[: self.top_k]

    def non_finite(self, later: Mapping[str, int] | None = None) -> dict[str, Any]:
        """How many candidates had a non-finite objective, and how many non-finite values
        each score had (verifiers, members of pooled objectives, the evaluator). ``later``:
        counts of scores given after the candidates were added (``noisesearch.evaluation``),
        which only kept candidates could show."""
        if not self.keep_all:
            per_score = dict(self._non_finite_scores)
            for name, count in (later or {}).items():
                per_score[name] = per_score.get(name, 0) + count
            return {"candidates": self._non_finite_objectives, "scores": per_score}
        per_score: dict[str, int] = {}
        for candidate in self.all:
            for name, value in candidate.scores.items():
                if not is_finite(value):
                    per_score[name] = per_score.get(name, 0) + 1
        return {
            "candidates": sum(not is_finite(c.objective) for c in self.all),
            "scores": per_score,
        }

    def nothing_selectable(self, objective: str) -> NothingSelectable:
        """The error of a run whose every candidate has a non-finite objective."""
        return NothingSelectable(
            f"every one of the {self.count} candidates has a non-finite objective (NaN or "
            f"infinite; non-finite values per score: {self.non_finite()['scores']}), so none can "
            f"be selected; check the verifier {objective!r}"
        )
