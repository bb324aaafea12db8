"""The verifier contract's allowances for generative judges (``failures_allowed``,
``score_tolerance``): what a judge declares is accepted, and nothing more."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import noisesearch
from noisesearch import Condition
from noisesearch.accounting import Usage
from noisesearch.api import resume_run
from noisesearch.scoring import Scorer
from noisesearch.testing import BrightnessVerifier, VerifierContract


class FailingJudge(BrightnessVerifier):
    """A judge whose reply about a dark image is unreadable: NaN, counted as a failure."""

    failures_allowed: ClassVar[bool] = True
    undercount: ClassVar[int] = 0
    failure: ClassVar[float] = float("nan")

    def __init__(self) -> None:
        self.failures = 0

    def score(self, images: torch.Tensor, condition: Condition, trajectory: Any = None) -> torch.Tensor:
        scores = super().score(images, condition)
        dark = scores < 0.5
        self.failures += int(dark.sum())
        return torch.where(dark, torch.full_like(scores, self.failure), scores)

    def take_cost(self) -> dict[str, int]:
        cost = {"failures": max(self.failures - self.undercount, 0), "tokens_in": 10}
        self.failures = 0
        return cost


class UndeclaredFailures(FailingJudge):
    failures_allowed = False


class UncountedFailures(FailingJudge):
    undercount = 1


class InfiniteFailures(FailingJudge):
    failure = float("-inf")


class PaddedJudge(BrightnessVerifier):
    """Scores shift by ``shift`` when batched, as greedy decoding under padding may do."""

    shift: ClassVar[float] = 0.5
    score_tolerance: ClassVar[float] = 1.0

    def score(self, images: torch.Tensor, condition: Condition, trajectory: Any = None) -> torch.Tensor:
        return super().score(images, condition) + (self.shift if images.shape[0] > 1 else 0.0)


class UndeclaredPadding(PaddedJudge):
    score_tolerance = 0.0


class PaddingBeyondTolerance(PaddedJudge):
    shift = 2.0


def contract(verifier: type) -> VerifierContract:
    return type("Configured", (VerifierContract,), {"verifier_factory": verifier, "batch": 8})()


def test_the_images_are_dark_and_bright_so_that_some_replies_fail() -> None:
    scores = FailingJudge().score(contract(FailingJudge).make_images(), Condition())
    assert 0 < int(torch.isnan(scores).sum()) < 8


@pytest.mark.parametrize("verifier", [FailingJudge, PaddedJudge])
def test_a_judge_that_declares_what_it_does_passes(verifier: type) -> None:
    suite = contract(verifier)
    suite.test_scores_one_finite_float_per_image()
    suite.test_batched_scores_match_one_by_one()


@pytest.mark.parametrize(("verifier", "test", "message"), [
    (UndeclaredFailures, "test_scores_one_finite_float_per_image", None),
    (UncountedFailures, "test_scores_one_finite_float_per_image", "counted"),
    (InfiniteFailures, "test_scores_one_finite_float_per_image", "never infinite"),
    (UndeclaredPadding, "test_batched_scores_match_one_by_one", None),
    (PaddingBeyondTolerance, "test_batched_scores_match_one_by_one", None),
])
def test_the_contract_catches_what_a_judge_did_not_declare(
    verifier: type, test: str, message: str | None
) -> None:
    with pytest.raises(AssertionError, match=message):
        getattr(contract(verifier), test)()


def test_the_scorer_adds_a_judges_counters_and_seconds_to_the_usage() -> None:
    usage = Usage()
    scorer = Scorer({"judge": FailingJudge(), "plain": BrightnessVerifier()})
    images = contract(FailingJudge).make_images()
    for _ in range(2):
        scorer.score(images, Condition(), None, usage)
    failed = 2 * int(torch.isnan(FailingJudge().score(images, Condition())).sum())
    cost = usage.verifier_cost["judge"]
    assert cost["failures"] == failed and cost["tokens_in"] == 20
    assert 0 < cost["seconds"] <= usage.verifier_seconds
    assert set(usage.verifier_cost) == {"judge"}  # a verifier without take_cost() reports none
    assert usage.to_json()["verifier_cost"]["judge"]["tokens_in"] == 20
    assert "verifier_cost" not in Usage().to_json()  # run.json unchanged for every other run


def test_the_cost_since_a_copy_is_what_the_journal_replays() -> None:
    usage = Usage()
    usage.add_verifier_cost("judge", {"tokens_in": 5, "seconds": 0.25})
    before = {name: dict(cost) for name, cost in usage.verifier_cost.items()}
    usage.add_verifier_cost("judge", {"tokens_in": 7, "seconds": 0.5})
    usage.add_verifier_cost("other", {"tokens_in": 1})
    spent = usage.verifier_cost_since(before)
    assert spent == {"judge": {"tokens_in": 7, "seconds": 0.5}, "other": {"tokens_in": 1}}
    replayed = Usage()
    replayed.add_verifier_cost("judge", {"tokens_in": 5, "seconds": 0.25})
    for name, cost in spent.items():
        replayed.add_verifier_cost(name, cost)
    assert replayed.verifier_cost == usage.verifier_cost


def test_a_resumed_run_keeps_the_verifier_cost_of_the_part_it_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal holds each batch's cost: a run that crashed after three batches and resumed
    reports the cost of all five, as an uninterrupted run does."""
    from noisesearch_builtin.verifiers import digits_classifiers

    original = digits_classifiers.DigitsClassifier.score
    state = {"calls": 0, "crash": True}

    def counted(self: Any, images: torch.Tensor, condition: Condition, trajectory: Any = None
                ) -> torch.Tensor:
        state["calls"] += 1
        if state["crash"] and state["calls"] == 4:
            raise RuntimeError("disk on fire")
        self.tokens = getattr(self, "tokens", 0) + 10 * images.shape[0]
        return original(self, images, condition, trajectory)

    def take_cost(self: Any) -> dict[str, int]:
        cost, self.tokens = {"tokens_in": getattr(self, "tokens", 0)}, 0
        return cost

    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", counted)
    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "take_cost", take_cost, raising=False)
    options = {"model": "digits", "label": 6, "candidates": 40, "batch_size": 8, "seed": 1,
               "verifiers": ["digits-classifier"], "evaluator": "none"}
    out = tmp_path / "run"
    with pytest.raises(noisesearch.NoiseSearchError, match="disk on fire"):
        noisesearch.search(**options, output=str(out))
    state["crash"] = False
    resumed = resume_run(out)
    reference = noisesearch.search(**options, write=False)
    assert reference.usage.verifier_cost["digits-classifier"]["tokens_in"] == 40 * 10
    assert resumed.usage.verifier_cost["digits-classifier"]["tokens_in"] == 40 * 10
    run = json.loads((out / "run.json").read_text())
    assert run["usage"]["verifier_cost"]["digits-classifier"]["tokens_in"] == 40 * 10


def test_an_ensemble_reports_the_summed_cost_of_its_members_that_keep_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from noisesearch_builtin.verifiers import digits_classifiers

    options = {"model": "digits", "label": 3, "candidates": 8, "batch_size": 4, "evaluator": "none",
               "verifiers": ["ensemble"], "write": False,
               "verifier_options": {"ensemble": {"members": "digits-classifier,digits-evaluator"}}}
    assert noisesearch.search(**options).usage.verifier_cost == {}  # no member keeps a cost
    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "take_cost", lambda self: {"tokens_in": 5},
                        raising=False)
    cost = noisesearch.search(**options).usage.verifier_cost
    assert set(cost) == {"ensemble"} and cost["ensemble"]["tokens_in"] == 2 * 5  # two batches
