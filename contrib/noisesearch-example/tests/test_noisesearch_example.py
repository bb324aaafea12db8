"""The example plugin passes noisesearch's contract suites and does what its README says."""

from __future__ import annotations

import torch
from noisesearch import Condition
from noisesearch.engine import Budget
from noisesearch.testing import (
    GaussianModel,
    SearchStrategyContract,
    VerifierContract,
    noise_recipe,
    run_strategy,
)

from noisesearch_example.antithetic import AntitheticSearch
from noisesearch_example.contrast import ContrastVerifier


class TestContrastVerifier(VerifierContract):
    verifier_factory = ContrastVerifier
    registered_name = "example-contrast"


class TestContrastVerifierWithPlainGrey(VerifierContract):
    verifier_factory = ContrastVerifier
    verifier_options = {"luma": False}


class TestAntitheticSearch(SearchStrategyContract):
    strategy_factory = AntitheticSearch
    registered_name = "example-antithetic"


def test_contrast_prefers_a_checkerboard_to_flat_grey() -> None:
    checkerboard = (torch.arange(64).reshape(8, 8) + torch.arange(8)[:, None]) % 2
    images = torch.stack([checkerboard.float().expand(3, 8, 8), torch.full((3, 8, 8), 0.5)])
    scores = ContrastVerifier().score(images, Condition())
    assert scores[0] > scores[1]
    assert scores[1] == 0.0


def test_contrast_of_black_and_white_halves_is_one_half() -> None:
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    assert torch.allclose(ContrastVerifier().score(image, Condition()), torch.tensor([0.5]))


def test_antithetic_candidates_come_in_mirrored_pairs() -> None:
    run = run_strategy(AntitheticSearch(), Budget(candidates=8), batch_size=4, top_k=8)
    recipes = [noise_recipe(c) for c in run.candidates]
    assert [r["sign"] for r in recipes] == [1, -1] * 4
    assert all(a["seed"] == b["seed"] for a, b in zip(recipes[::2], recipes[1::2]))
    noises = {c.index: c.noise for c in run.result.top}
    for index in range(0, 8, 2):
        assert torch.equal(noises[index + 1], -noises[index])


def test_antithetic_evaluates_a_lone_plus_noise_when_one_candidate_is_left() -> None:
    run = run_strategy(AntitheticSearch(), Budget(candidates=5), batch_size=2, top_k=5)
    assert [noise_recipe(c)["sign"] for c in run.candidates] == [1, -1, 1, -1, 1]


def test_antithetic_pairs_cancel_on_a_symmetric_model() -> None:
    """On a zero-mean Gaussian model each pair's samples mirror each other."""
    model = GaussianModel()
    model.mean = lambda: torch.zeros(1, 8, 8)  # type: ignore[method-assign]
    run = run_strategy(AntitheticSearch(), Budget(candidates=2), model=model, top_k=2)
    first, second = sorted(run.result.top, key=lambda c: c.index)
    assert torch.allclose(first.image + second.image, torch.ones_like(first.image), atol=1e-6)
