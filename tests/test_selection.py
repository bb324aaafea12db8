"""The running top-k (``noisesearch.selection``): a scored batch added at once keeps exactly what
adding its candidates one by one keeps (heap, baseline, images, noises), whatever the objectives
(NaN and infinities too), and the baseline and non-derivable noises are kept as ``_drop`` keeps
them."""

from __future__ import annotations

import math
import random

import torch

from noisesearch.selection import Selection
from noisesearch.types import Candidate

SPECIALS = (math.nan, math.inf, -math.inf)


def _candidates(objectives: list[float], kind: str = "seed", first: int = 0) -> list[Candidate]:
    return [Candidate(first + i, {"start": {"kind": kind, "seed": first + i}, "ops": []}, {"v": o}, o, 1)
            for i, o in enumerate(objectives)]


def _state(selection: Selection, candidates: list[Candidate]) -> tuple:
    held = sorted(c.index for *_, c in selection._heap)
    kept = [(c.index, c.image is not None, None if c.noise is None else float(c.noise[0]))
            for c in candidates]
    best = selection.best()
    return (held, selection.baseline and selection.baseline.index, [c.index for c in selection.ranked()],
            best and best.index, kept, selection.count, selection.non_finite())


def test_a_batch_added_at_once_keeps_what_one_by_one_keeps() -> None:
    rng = random.Random(0)
    for trial in range(400):
        top_k, kind = rng.choice([1, 2, 3, 8]), rng.choice(["seed", "gradient"])
        keep_all, baseline = rng.random() < 0.3, rng.choice([0, 1, 5, None])
        batches = [[rng.choice([*SPECIALS, round(rng.uniform(-3, 3), 1), 1.0])
                    for _ in range(rng.randint(1, 7))] for _ in range(rng.randint(1, 4))]
        states = []
        for at_once in (True, False):
            selection = Selection(top_k, lambda c, b=baseline: c.index == b, keep_all=keep_all)
            everyone: list[Candidate] = []
            for objectives in batches:
                batch = _candidates(objectives, kind, first=len(everyone))
                images = torch.arange(float(len(batch))).reshape(-1, 1, 1, 1).expand(-1, 3, 2, 2)
                noises = torch.arange(100.0, 100.0 + len(everyone) + len(batch))[:, None]  # (all rows, 1)
                if at_once:
                    selection.add_batch(batch, images, noises, len(everyone))
                else:
                    for row, candidate in enumerate(batch):
                        selection.add(candidate, images, row, noises, len(everyone) + row)
                everyone += batch
            states.append(_state(selection, everyone))
        assert states[0] == states[1], (trial, top_k, kind, keep_all, baseline, batches)


def test_the_baseline_enters_the_top_k_whatever_its_objective() -> None:
    selection = Selection(3, lambda c: c.index == 0, keep_all=False)
    batch = _candidates([-math.inf, math.nan])
    selection.add_batch(batch, torch.zeros(2, 3, 2, 2), torch.zeros(2, 1))
    assert selection.baseline is batch[0] and batch[0].image is not None
    assert sorted(c.index for *_, c in selection._heap) == [0, 1]


def test_a_non_derivable_noise_pushed_out_in_its_own_batch_is_kept() -> None:
    """A noise that no recipe can derive (the gradient strategy's) is its candidate's only source,
    kept when the candidate leaves the top-k (as ``_drop`` does), here within its own batch."""
    for kind, kept in (("gradient", [7.0, 8.0]), ("seed", [None, 8.0])):
        selection = Selection(1, keep_all=True)
        batch = _candidates([1.0, 2.0], kind)
        selection.add_batch(batch, torch.zeros(2, 3, 2, 2), torch.tensor([[7.0], [8.0]]))
        assert [None if c.noise is None else float(c.noise[0]) for c in batch] == kept
        assert [c.image is not None for c in batch] == [False, True]
