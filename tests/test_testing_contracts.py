"""The contract suites of ``noisesearch.testing``, applied to the built-ins and to the analytic
test plugins, and shown to catch the plugin bugs they exist for."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, ClassVar

import pytest
import torch

from noisesearch import Condition
from noisesearch.engine import Budget, SearchContext
from noisesearch.plugins import build_registries, get_plugin_manager
from noisesearch.sampling import draw_noise, solve
from noisesearch.testing import (
    BrightnessVerifier,
    GaussianModel,
    ModelContract,
    SearchStrategyContract,
    VerifierContract,
    run_strategy,
)
from noisesearch_builtin.digits import CLASSIFIER_WEIGHTS, EVALUATOR_WEIGHTS, FLOW_WEIGHTS
from noisesearch_builtin.models.digits import DigitsModel
from noisesearch_builtin.search.random_search import RandomSearch
from noisesearch_builtin.verifiers.digits_classifiers import DigitsClassifier, DigitsEvaluator

needs_digits_weights = pytest.mark.skipif(
    not all(path.exists() for path in (FLOW_WEIGHTS, CLASSIFIER_WEIGHTS, EVALUATOR_WEIGHTS)),
    reason="the digits weights are not trained yet (python -m noisesearch_builtin.digits.train)",
)


# -- the built-ins pass their contracts -------------------------------------------------------


@needs_digits_weights
class TestDigitsClassifierContract(VerifierContract):
    verifier_factory = DigitsClassifier
    registered_name = "digits-classifier"


@needs_digits_weights
class TestDigitsEvaluatorContract(VerifierContract):
    verifier_factory = DigitsEvaluator
    registered_name = "digits-evaluator"


@needs_digits_weights
class TestDigitsModelContract(ModelContract):
    model_factory = DigitsModel
    registered_name = "digits"


@needs_digits_weights
class TestDigitsModelWithGuidanceContract(ModelContract):
    model_factory = DigitsModel
    model_options: ClassVar[dict[str, Any]] = {"guidance_scale": 3.0}


#: Contract settings of built-in strategies whose least useful run costs more than a sample.
STRATEGY_SETTINGS: dict[str, dict[str, Any]] = {
    "paths": {"nfe_budget": 10.5, "min_candidates": 2},  # one path: 2 children, ~7.5 samples of NFEs
}


def _strategy_suites() -> dict[str, type]:
    """A ``Test<Name>Contract`` class per built-in strategy, so that new ones are covered too."""
    registry = build_registries(get_plugin_manager(load_entrypoints=False)).strategies
    suites = {}
    for entry in registry:
        name = "Test" + "".join(part.title() for part in entry.name.split("-")) + "StrategyContract"
        attributes = {"strategy_factory": entry.factory, "registered_name": entry.name}
        attributes.update(STRATEGY_SETTINGS.get(entry.name, {}))
        suites[name] = type(name, (SearchStrategyContract,), attributes)
    return suites


globals().update(_strategy_suites())


def test_every_builtin_strategy_gets_a_contract_suite() -> None:
    assert "TestRandomStrategyContract" in globals()
    assert set(STRATEGY_SETTINGS) <= {cls.registered_name for cls in _strategy_suites().values()}


@needs_digits_weights
class TestRandomSearchOnDigitsContract(SearchStrategyContract):
    """The same contract through the real digits model and classifier."""

    strategy_factory = RandomSearch

    def make_model(self) -> DigitsModel:
        return DigitsModel()

    def make_verifier(self) -> DigitsClassifier:
        return DigitsClassifier()


# -- the analytic test plugins pass them too --------------------------------------------------


class TestGaussianModelContract(ModelContract):
    model_factory = GaussianModel


class TestBrightnessVerifierContract(VerifierContract):
    verifier_factory = BrightnessVerifier


def test_gaussian_model_denoiser_is_exact() -> None:
    """Its probability-flow ODE maps a noise eps to mean + std * eps (up to solver error)."""
    model = GaussianModel(std=0.3)
    noise = draw_noise(range(64), model.latent_shape)
    levels = model.schedule.levels(20)
    result = solve(lambda x, sigma: model.denoise(x, sigma, None), noise, model.schedule, levels, "heun")
    assert torch.allclose(result.x, model.mean() + 0.3 * noise, atol=0.02)


def test_run_strategy_records_every_candidate_and_batch() -> None:
    run = run_strategy(RandomSearch(), Budget(candidates=7), batch_size=3, top_k=2)
    assert [c.index for c in run.candidates] == list(range(7))
    assert run.calls == [3, 3, 1]
    assert run.usage.nfe == 7 * 4 and len(run.result.top) == 2


def test_importing_the_testing_module_imports_neither_torch_nor_pytest() -> None:
    code = "import sys, noisesearch.testing; assert not {'torch', 'pytest'} & set(sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr


# -- the contracts catch broken plugins -------------------------------------------------------


class ColumnScores(BrightnessVerifier):
    """Scores shaped (B, 1) instead of (B,)."""

    def score(self, images: torch.Tensor, condition: Condition, trajectory: Any = None) -> torch.Tensor:
        return super().score(images, condition)[:, None]


class InPlaceScores(BrightnessVerifier):
    """Normalises its input in place."""

    def score(self, images: torch.Tensor, condition: Condition, trajectory: Any = None) -> torch.Tensor:
        return images.mul_(2).mean(dim=(1, 2, 3))


class BatchRelativeScores(BrightnessVerifier):
    """Scores relative to the batch mean: a candidate's score depends on its batch."""

    def score(self, images: torch.Tensor, condition: Condition, trajectory: Any = None) -> torch.Tensor:
        scores = super().score(images, condition)
        return scores - scores.mean()


class ListRequires(BrightnessVerifier):
    """Declares ``requires`` as a list with an unknown need."""

    requires = ["label", "mood"]  # type: ignore[assignment]


class GreedySearch:
    """Ignores the budget."""

    def run(self, context: SearchContext) -> None:
        context.evaluate([{"kind": "seed", "seed": seed} for seed in context.seeds(50)])


class ClockSeededSearch:
    """Seeds from a global counter instead of the run seed."""

    counter: ClassVar[list[int]] = [0]

    def run(self, context: SearchContext) -> None:
        self.counter[0] += 1
        context.evaluate([{"kind": "seed", "seed": self.counter[0]}])


class OverexposedModel(GaussianModel):
    """Decodes to values outside [0, 1]."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return (x0 * 4.0).expand(-1, 3, -1, -1)


class ShapeChangingModel(GaussianModel):
    """Returns flattened predictions."""

    def denoise(self, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
        return super().denoise(x, sigma, prepared).flatten(1)


def contract(base: type, **attributes: Any) -> Any:
    """An instance of a contract subclass configured with ``attributes`` (never collected)."""
    return type("Configured", (base,), attributes)()


@pytest.mark.parametrize(
    ("verifier", "test"),
    [
        (ColumnScores, "test_scores_one_finite_float_per_image"),
        (InPlaceScores, "test_scoring_leaves_the_images_untouched"),
        (BatchRelativeScores, "test_batched_scores_match_one_by_one"),
        (ListRequires, "test_requires_is_a_frozenset_of_known_needs"),
    ],
)
def test_verifier_contract_catches(verifier: type, test: str) -> None:
    suite = contract(VerifierContract, verifier_factory=verifier)
    with pytest.raises(AssertionError):
        getattr(suite, test)()


@pytest.mark.parametrize(
    ("strategy", "test"),
    [
        (GreedySearch, "test_stays_within_a_budget_in_candidates"),
        (GreedySearch, "test_stays_within_a_budget_in_nfe"),
        (ClockSeededSearch, "test_same_seed_gives_the_same_candidates"),
    ],
)
def test_strategy_contract_catches(strategy: type, test: str) -> None:
    suite = contract(SearchStrategyContract, strategy_factory=strategy)
    with pytest.raises(AssertionError):
        getattr(suite, test)()


@pytest.mark.parametrize(
    ("model", "test"),
    [
        (OverexposedModel, "test_decodes_to_rgb_images_in_the_unit_range"),
        (ShapeChangingModel, "test_denoise_keeps_the_shape_and_stays_finite"),
    ],
)
def test_model_contract_catches(model: type, test: str) -> None:
    suite = contract(ModelContract, model_factory=model)
    with pytest.raises(AssertionError):
        getattr(suite, test)()


def test_a_contract_without_a_factory_says_what_to_set() -> None:
    with pytest.raises(NotImplementedError, match="set verifier_factory or override make_verifier"):
        contract(VerifierContract).make_verifier()


def test_a_factory_function_is_not_bound_as_a_method() -> None:
    def make() -> BrightnessVerifier:
        return BrightnessVerifier()

    suite = contract(VerifierContract, verifier_factory=make)
    assert isinstance(suite.make_verifier(), BrightnessVerifier)


def test_requires_on_a_function_factory_must_match_the_instance() -> None:
    def make_label_verifier() -> BrightnessVerifier:
        verifier = BrightnessVerifier()
        verifier.requires = frozenset({"label"})  # type: ignore[misc]
        return verifier

    suite = contract(VerifierContract, verifier_factory=make_label_verifier)
    with pytest.raises(AssertionError, match="same `requires`"):
        suite.test_requires_is_readable_before_building()
