"""The ensemble verifier: weighted mean of normalised ranks (ties averaged), needs read before
loading, members built through the registry, shared CLIP backbones, and real digits searches."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from clip_tiny import TINY_CLIP, TinyFiles, make_tiny_files

import noisesearch
from noisesearch import Condition, ConfigError, IncompatibleError, UnknownNameError
from noisesearch.api import verifier_requirements
from noisesearch.plugins import build_registries
from noisesearch.testing import VerifierContract
from noisesearch_builtin.verifiers import clip_backbone
from noisesearch_builtin.verifiers.ensemble import Ensemble, normalised_ranks

DIGITS = ["digits-classifier", "digits-evaluator"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyFiles:
    return make_tiny_files(tmp_path_factory.mktemp("tiny-models"))


def digit_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, 8, 8), generator=torch.Generator().manual_seed(seed))


# -- ranks --------------------------------------------------------------------------------------


def test_ranks_are_normalised_to_zero_for_the_worst_and_one_for_the_best() -> None:
    assert normalised_ranks([0.2, 0.9, -3.0]) == [0.5, 1.0, 0.0]


def test_tied_scores_share_the_average_of_their_ranks() -> None:
    # ranks 1..4: 1 -> 1, 2 -> 2, the two 3s span ranks 3 and 4 -> 3.5 each; (r - 1) / 3
    assert normalised_ranks([1.0, 3.0, 3.0, 2.0]) == pytest.approx([0.0, 5 / 6, 5 / 6, 1 / 3])
    assert normalised_ranks([7.0, 7.0, 7.0]) == [0.5, 0.5, 0.5]


def test_nan_ranks_below_every_number_and_ties_with_nan() -> None:
    assert normalised_ranks([float("nan"), -math.inf, 1.0, float("nan")]) == pytest.approx(
        [1 / 6, 2 / 3, 1.0, 1 / 6]
    )


def test_a_pool_of_one_is_the_best_of_its_pool() -> None:
    assert normalised_ranks([-5.0]) == [1.0]


# -- combine ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_ensemble() -> Ensemble:
    return Ensemble(members=DIGITS, weights=[2.0, 1.0], device="cpu")


def test_combine_is_the_weighted_mean_of_normalised_ranks_worked_by_hand(digits_ensemble: Ensemble) -> None:
    pool = {
        "digits-classifier": [1.0, 3.0, 3.0, 2.0],  # normalised ranks 0, 5/6, 5/6, 1/3
        "digits-evaluator": [0.5, 0.1, 0.9, 0.9],  # normalised ranks 1/3, 0, 5/6, 5/6
    }
    # weights 2 : 1 -> (2 * a + b) / 3
    assert digits_ensemble.combine(pool) == pytest.approx([1 / 9, 5 / 9, 5 / 6, 1 / 2])


def test_combine_gives_one_to_a_candidate_best_under_every_member(digits_ensemble: Ensemble) -> None:
    pool = {"digits-classifier": torch.tensor([0.0, 4.0, 1.0]), "digits-evaluator": [-9.0, -1.0, -2.0]}
    combined = digits_ensemble.combine(pool)
    assert combined[1] == 1.0 and all(0.0 <= value <= 1.0 for value in combined)
    assert digits_ensemble.combine({name: [] for name in DIGITS}) == []


def test_combine_names_what_is_missing_or_mismatched(digits_ensemble: Ensemble) -> None:
    with pytest.raises(ValueError, match="no scores for members \\['digits-evaluator'\\]"):
        digits_ensemble.combine({"digits-classifier": [1.0]})
    with pytest.raises(ValueError, match="different numbers of candidates"):
        digits_ensemble.combine({"digits-classifier": [1.0, 2.0], "digits-evaluator": [1.0]})


def test_score_ranks_the_batch_from_the_members_raw_scores(digits_ensemble: Ensemble) -> None:
    images, condition = digit_images(5), Condition(label=4)
    raw = digits_ensemble.member_scores(images, condition)
    assert set(raw) == set(DIGITS) and all(values.shape == (5,) for values in raw.values())
    for name, member in digits_ensemble.members.items():
        torch.testing.assert_close(raw[name], member.score(images, condition))
    expected = digits_ensemble.combine({name: values.tolist() for name, values in raw.items()})
    scores = digits_ensemble.score(images, condition)
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_members_and_weights_may_come_comma_separated_from_the_command_line() -> None:
    ensemble = Ensemble(members="digits-classifier, digits-evaluator", weights="2,1", device="cpu")
    assert ensemble.names == DIGITS
    assert ensemble.weights == {"digits-classifier": 2.0, "digits-evaluator": 1.0}


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "1 weights for 2 members"), ([1.0, -1.0], "non-negative"), ([0.0, 0.0], "positive sum")],
)
def test_weights_are_checked(weights: list[float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Ensemble(members=DIGITS, weights=weights)


# -- needs and members, before anything loads --------------------------------------------------


def test_describe_is_the_union_of_the_members_needs_without_building_them() -> None:
    entry = build_registries().verifiers.get("ensemble")
    assert verifier_requirements(entry, {"members": DIGITS}) == {"label"}
    assert verifier_requirements(entry, {}) == {"prompt"}  # aesthetic + clip-score
    needs = verifier_requirements(entry, {"members": ["digits-classifier", "consistency"]})
    assert needs == {"label", "trajectory"}


def test_bad_members_fail_at_planning_naming_the_problem() -> None:
    def search(**ensemble: Any) -> None:
        noisesearch.search(model="digits", verifiers=["ensemble"], write=False,
                           verifier_options={"ensemble": ensemble})

    with pytest.raises(UnknownNameError, match="clip-scor"):
        search(members=["digits-classifier", "clip-scor"])
    with pytest.raises(ConfigError, match="not an option"):
        search(members=DIGITS, member_options={"digits-classifier": {"colour": 1}})
    with pytest.raises(ConfigError, match="not members"):
        search(members=DIGITS, member_options={"aesthetic": {}})
    with pytest.raises(ConfigError, match="cannot be a member"):
        search(members=["digits-classifier", "ensemble"])
    with pytest.raises(ConfigError, match="twice"):
        search(members=["digits-classifier", "digits-classifier"])


def test_an_ensemble_needing_a_prompt_is_refused_on_digits_before_loading() -> None:
    clip_backbone.clear_cache()
    before = clip_backbone.load_count()
    with pytest.raises(IncompatibleError, match="'ensemble' needs a prompt"):
        noisesearch.search(model="digits", verifiers=["ensemble"], write=False,
                           verifier_options={"ensemble": {"members": ["digits-classifier", "clip-score"]}})
    assert clip_backbone.cached_backbones() == [] and clip_backbone.load_count() == before


def test_members_that_share_a_clip_load_it_once(tiny: TinyFiles) -> None:
    clip_backbone.clear_cache()
    before = clip_backbone.load_count()
    clip = {"model": TINY_CLIP, "pretrained": str(tiny.clip)}
    ensemble = Ensemble(
        members=["clip-score", "aesthetic", "consistency"],
        member_options={"clip-score": clip, "aesthetic": {**clip, "weights": str(tiny.aesthetic)},
                        "consistency": {**clip, "backbone": "clip"}},
        device="cpu",
    )
    assert clip_backbone.load_count() == before + 1
    members = ensemble.members
    assert members["clip-score"].backbone is members["aesthetic"].backbone is members["consistency"].clip
    assert ensemble.requires == {"prompt", "trajectory"} and ensemble.trajectory_levels == (0.4,)
    images = torch.rand(3, 3, 16, 16)
    scores = ensemble.score(images, Condition(prompt="a red apple"), trajectory={0.4: images})
    assert scores.shape == (3,) and bool(((scores >= 0) & (scores <= 1)).all())
    clip_backbone.clear_cache()


# -- real searches ------------------------------------------------------------------------------


def test_a_digits_search_runs_with_an_ensemble_of_the_digits_classifiers() -> None:
    result = noisesearch.search(
        model="digits", label=2, candidates=6, steps=5, batch_size=4, verifiers=["ensemble"],
        verifier_options={"ensemble": {"members": DIGITS}}, write=False,
    )
    assert result.usage.candidates == 6
    best = result.best
    assert 0.0 <= best.objective <= 1.0
    assert {"ensemble/digits-classifier", "ensemble/digits-evaluator"} <= set(best.scores)


def test_a_digits_search_feeds_the_trajectory_to_an_ensemble_member(tiny: TinyFiles) -> None:
    result = noisesearch.search(
        model="digits", label=5, candidates=4, steps=5, verifiers=["ensemble"], write=False,
        verifier_options={"ensemble": {
            "members": ["digits-classifier", "consistency"],
            "member_options": {"consistency": {"model": str(tiny.dino)}},
        }},
    )
    assert result.usage.candidates == 4
    assert -1.0 <= result.best.scores["ensemble/consistency"] <= 1.0 + 1e-5


# -- the contract suite -------------------------------------------------------------------------


class TestEnsembleContract(VerifierContract):
    verifier_factory = Ensemble
    verifier_options = {"members": DIGITS, "device": "cpu"}
    registered_name = "ensemble"

    def test_requires_is_readable_before_building(self) -> None:
        # An ensemble's needs depend on its members: the core reads describe(**options).
        described = Ensemble.describe(**self.verifier_options)["requires"]
        assert described == self.make_verifier().requires == {"label"}

    def test_batched_scores_match_one_by_one(self) -> None:
        # Ranks are relative to the pool, so a batch of one always scores 1; what must not
        # depend on batching is what the engine pools: the members' raw scores.
        verifier = self.make_verifier()
        images, condition = self.make_images(), self.make_condition(verifier)
        together = verifier.member_scores(images, condition)
        for i in range(self.batch):
            alone = verifier.member_scores(images[i : i + 1], condition)
            assert verifier.score(images[i : i + 1], condition).tolist() == [1.0]
            for name, values in alone.items():
                torch.testing.assert_close(values, together[name][i : i + 1], atol=self.atol, rtol=self.rtol)
