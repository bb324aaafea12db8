"""Contract test suites that plugin authors opt into (diffusers' shared scheduler tests, for plugins).

Subclass a contract in a test module, name the subclass ``Test...`` and say what to build; pytest
collects the inherited tests::

    from noisesearch.testing import VerifierContract
    from noisesearch_example.contrast import ContrastVerifier

    class TestContrastVerifier(VerifierContract):
        verifier_factory = ContrastVerifier
        registered_name = "example-contrast"  # optional: also check the entry point

Each contract builds through a class attribute (``verifier_factory``, ``strategy_factory``,
``model_factory``, with ``*_options``) or an overridden ``make_*()`` method. Nothing here imports
pytest, and torch only inside the tests: importing this module is as cheap as importing
``noisesearch``. Strategies run, by default, on :class:`GaussianModel`, an exact analytic model, so
a contract suite takes well under a second and needs no weights.
"""

from __future__ import annotations

import json
import math
import unittest
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch.engine import Budget, Engine, EngineResult, Scorer, Usage
from noisesearch.errors import BudgetExhausted
from noisesearch.faults import NoCandidate
from noisesearch.registry import describe_parameters
from noisesearch.sampling import RectifiedFlow, Schedule, draw_noise, solve
from noisesearch.types import (
    CONDITIONINGS,
    REQUIREMENTS,
    Candidate,
    Condition,
    Model,
    SearchStrategy,
    Verifier,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "BrightnessVerifier",
    "GaussianModel",
    "ModelContract",
    "SearchStrategyContract",
    "StrategyRun",
    "VerifierContract",
    "default_condition",
    "noise_recipe",
    "run_strategy",
]


# -- tiny analytic plugins --------------------------------------------------------------------


class GaussianModel:
    """An exact "diffusion model" of images whose pixels are independent Gaussians, for tests.

    The data are ``x0 ~ N(mean, std^2 I)`` with a fixed diagonal-gradient ``mean`` image. Under
    the rectified flow ``x = (1 - sigma) x0 + sigma eps`` the denoiser ``E[x0 | x]`` is closed
    form, so the probability-flow ODE maps a noise ``eps`` to ``mean + std * eps`` exactly.

    :param size: image side in pixels (latents are ``(1, size, size)``).
    :param std: standard deviation of every pixel of the data.
    """

    conditioning: ClassVar[str] = "none"
    default_steps: ClassVar[int] = 4
    preferred_batch_size: ClassVar[int] = 16

    def __init__(self, size: int = 8, std: float = 0.5) -> None:
        if size < 1 or std <= 0:
            raise ValueError(f"size must be >= 1 and std > 0, got size={size}, std={std}")
        self.size = int(size)
        self.std = float(std)
        self.schedule: Schedule = RectifiedFlow()
        self.latent_shape = (1, self.size, self.size)
        self.device = "cpu"

    def mean(self) -> torch.Tensor:
        """The data mean ``(1, size, size)``: a gradient from -0.5 (top left) to 0.5."""
        import torch

        ramp = torch.linspace(-0.5, 0.5, self.size)
        return ((ramp[:, None] + ramp[None, :]) / 2).unsqueeze(0)

    def prepare(self, condition: Condition) -> None:
        return None

    def denoise(self, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
        a, b = self.schedule.scales(sigma)
        variance = self.std**2
        gain = a * variance / (a * a * variance + b * b)  # Cov(x0, x) / Var(x)
        mean = self.mean().to(x.device, x.dtype)
        return mean + gain * (x - a * mean)  # (B, 1, size, size)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0).expand(-1, 3, -1, -1)  # (B, 3, size, size)


class BrightnessVerifier:
    """Mean brightness of each image: a cheap, smooth objective for strategy tests (gradient
    strategies included: it is differentiable)."""

    requires: ClassVar[frozenset[str]] = frozenset()
    differentiable: ClassVar[bool] = True

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))

    def score_with_grad(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))


# -- helpers ----------------------------------------------------------------------------------


def default_condition(
    needs: str | frozenset[str] | Sequence[str], num_classes: int | None = None
) -> Condition:
    """A condition that satisfies a model's ``conditioning`` or a verifier's ``requires``."""
    wanted = {needs} if isinstance(needs, str) else set(needs)
    if "prompt" in wanted:
        return Condition(prompt="a photograph of a red apple on a wooden table")
    if "label" in wanted:
        return Condition(label=min(3, (num_classes or 10) - 1))
    return Condition()


def unused_port() -> int:
    """A local TCP port nothing listens on: a hub or API endpoint that refuses connections, for
    tests of what a plugin says when it cannot reach one."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seconds_without_hub(imports: str, build: str, hub_cache: Path | str) -> float:
    """Seconds ``build`` (a statement, after ``imports``) takes in a fresh interpreter whose hub
    cannot be reached (``HF_ENDPOINT`` at :func:`unused_port`, no proxy, ``HF_HUB_OFFLINE`` unset)
    and whose hub cache is ``hub_cache``: a plugin that loads cached weights should not wait out
    huggingface_hub's retries. A failing ``build`` fails the calling test with its stderr."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "HF_HUB_OFFLINE"}
    env.update(HF_HUB_CACHE=str(hub_cache), HF_ENDPOINT=f"http://127.0.0.1:{unused_port()}",
               OMP_NUM_THREADS="1")
    code = "\n".join(["import time", imports, "start = time.perf_counter()", build,
                      "print(time.perf_counter() - start)"])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


def noise_recipe(candidate: Candidate) -> dict[str, Any]:
    """The recipe of a candidate's initial noise (``{"kind": ..., ...}``)."""
    return candidate.recipe["start"]


@dataclass
class StrategyRun:
    """One strategy run through a real :class:`~noisesearch.engine.Engine`."""

    result: EngineResult
    candidates: list[Candidate] = field(default_factory=list)  # every candidate, in order
    calls: list[int] = field(default_factory=list)  # candidates per engine batch

    @property
    def usage(self) -> Usage:
        return self.result.usage


class _Recorder:
    def __init__(self) -> None:
        self.candidates: list[Candidate] = []
        self.calls: list[int] = []

    def on_candidates(self, candidates: Sequence[Candidate], usage: Usage) -> None:
        self.candidates.extend(candidates)
        self.calls.append(len(candidates))


def run_strategy(
    strategy: SearchStrategy,
    budget: Budget,
    *,
    model: Model | None = None,
    verifier: Verifier | None = None,
    condition: Condition | None = None,
    steps: int = 4,
    batch_size: int = 3,
    seed: int = 0,
    top_k: int = 4,
) -> StrategyRun:
    """Run ``strategy`` on a small model (default :class:`GaussianModel`), recording every candidate."""
    model = model if model is not None else GaussianModel()
    verifier = verifier if verifier is not None else BrightnessVerifier()
    if condition is None:
        condition = default_condition(
            getattr(model, "conditioning", "none"), getattr(model, "num_classes", None)
        )
    recorder = _Recorder()
    engine = Engine(
        model,
        condition,
        Scorer({"objective": verifier}),
        budget,
        model.schedule.levels(steps),
        batch_size=batch_size,
        seed=seed,
        top_k=top_k,
        listeners=[recorder],
    )
    result = engine.run(strategy)
    return StrategyRun(result, recorder.candidates, recorder.calls)


def _class_attribute(owner: type, name: str) -> Any:
    """A class attribute as stored, so that a plain function is not bound as a method."""
    for klass in owner.__mro__:
        if name in vars(klass):
            value = vars(klass)[name]
            return value.__func__ if isinstance(value, staticmethod) else value
    return None


def _skip(reason: str) -> None:
    """Skip the current test: with pytest's skip where pytest runs it (its report then points
    here, not into pytest), else with ``unittest.SkipTest``."""
    try:
        import pytest
    except ImportError:
        raise unittest.SkipTest(reason) from None
    pytest.skip(reason)


def _undocumented_options(factory: Callable[..., Any]) -> list[str]:
    return [p.name for p in describe_parameters(factory) if not p.help]


def _registered_entry(kind: str, name: str) -> Any:
    from noisesearch.plugins import build_registries

    return build_registries().of(kind).get(name)


# -- verifiers --------------------------------------------------------------------------------


class VerifierContract:
    """Tests every verifier should pass. Set ``verifier_factory`` or override :meth:`make_verifier`.

    Scores come from random images in ``[0, 1]`` of shape ``image_shape``; set it to what the
    verifier expects (e.g. ``(3, 224, 224)`` for CLIP).

    Generative judges (a vision-language model's reply, parsed) declare on the verifier what
    the suite then accepts: ``failures_allowed = True`` (an unreadable reply scores NaN, which
    the verifier counts as a failure in ``take_cost()["failures"]``) and ``score_tolerance``
    (how far one image's score may move between batched and one-by-one scoring: greedy
    decoding can flip a near tie under padding). Neither relaxes anything else.
    """

    verifier_factory: ClassVar[Callable[..., Any] | None] = None
    verifier_options: ClassVar[dict[str, Any]] = {}
    #: Also check that an installed plugin registers the factory under this name.
    registered_name: ClassVar[str | None] = None
    image_shape: ClassVar[tuple[int, int, int]] = (3, 8, 8)
    batch: ClassVar[int] = 4
    atol: ClassVar[float] = 1e-5
    rtol: ClassVar[float] = 1e-4

    def factory(self) -> Callable[..., Any] | None:
        return _class_attribute(type(self), "verifier_factory")

    def make_verifier(self) -> Verifier:
        factory = self.factory()
        if factory is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set verifier_factory or override make_verifier()"
            )
        return factory(**self.verifier_options)

    def make_condition(self, verifier: Verifier) -> Condition:
        return default_condition(verifier.requires)

    def make_images(self, seed: int = 0) -> torch.Tensor:
        import torch

        generator = torch.Generator("cpu").manual_seed(seed)
        return torch.rand((self.batch, *self.image_shape), generator=generator)  # (B, 3, H, W)

    def make_trajectory(
        self, verifier: Verifier, images: torch.Tensor
    ) -> dict[float, torch.Tensor] | None:
        if "trajectory" not in verifier.requires:
            return None
        import torch

        generator = torch.Generator("cpu").manual_seed(1)
        return {
            float(level): torch.rand(images.shape, generator=generator)
            for level in getattr(verifier, "trajectory_levels", ())
        }

    def _score(self, verifier: Verifier, images: torch.Tensor) -> torch.Tensor:
        trajectory = self.make_trajectory(verifier, images)
        return verifier.score(images, self.make_condition(verifier), trajectory=trajectory)

    def test_requires_is_a_frozenset_of_known_needs(self) -> None:
        verifier = self.make_verifier()
        assert isinstance(verifier.requires, frozenset), (
            f"requires must be a frozenset, got {type(verifier.requires).__name__}"
        )
        unknown = set(verifier.requires) - set(REQUIREMENTS)
        assert not unknown, f"requires names unknown needs {sorted(unknown)}; known: {REQUIREMENTS}"

    def test_requires_is_readable_before_building(self) -> None:
        factory = self.factory()
        if factory is None:
            _skip("no verifier_factory: make_verifier() is overridden")
        declared = getattr(factory, "requires", frozenset())
        assert declared == self.make_verifier().requires, (
            "the factory must declare the same `requires` as the verifier it builds: the core "
            "checks it before loading anything"
        )

    def test_trajectory_levels_are_declared_when_needed(self) -> None:
        verifier = self.make_verifier()
        if "trajectory" not in verifier.requires:
            return  # nothing to declare
        levels = tuple(getattr(verifier, "trajectory_levels", ()))
        assert levels and all(0.0 < float(level) <= 1.0 for level in levels), levels

    def test_follows_the_verifier_protocol(self) -> None:
        assert isinstance(self.make_verifier(), Verifier)

    def test_scores_one_finite_float_per_image(self) -> None:
        import torch

        verifier = self.make_verifier()
        take_cost = getattr(verifier, "take_cost", None)
        if callable(take_cost):
            take_cost()  # what building it cost, if anything
        scores = self._score(verifier, self.make_images())
        assert isinstance(scores, torch.Tensor), type(scores)
        assert tuple(scores.shape) == (self.batch,), f"shape {tuple(scores.shape)}, want ({self.batch},)"
        assert scores.is_floating_point(), scores.dtype
        if not getattr(verifier, "failures_allowed", False):
            assert torch.isfinite(scores).all(), scores
            return
        failed = int(torch.isnan(scores).sum())
        assert not torch.isinf(scores).any(), f"a failure is NaN, never infinite: {scores}"
        assert callable(take_cost), "a verifier with failures_allowed must count them in take_cost()"
        counted = take_cost().get("failures")
        assert counted == failed, f"{failed} NaN scores, but take_cost() counted {counted} failures"

    def test_batched_scores_match_one_by_one(self) -> None:
        import torch

        verifier = self.make_verifier()
        images = self.make_images()
        trajectory = self.make_trajectory(verifier, images)
        condition = self.make_condition(verifier)
        together = verifier.score(images, condition, trajectory=trajectory).detach().float().cpu()
        single = []
        for i in range(self.batch):
            part = None if trajectory is None else {k: v[i : i + 1] for k, v in trajectory.items()}
            single.append(verifier.score(images[i : i + 1], condition, trajectory=part).detach())
        alone = torch.cat([s.float().cpu().reshape(-1) for s in single])
        atol = max(self.atol, float(getattr(verifier, "score_tolerance", 0.0)))
        if getattr(verifier, "failures_allowed", False):  # compare where both replies were read
            both = ~(torch.isnan(together) | torch.isnan(alone))
            together, alone = together[both], alone[both]
        assert torch.allclose(together, alone, atol=atol, rtol=self.rtol), (together, alone)

    def test_scoring_leaves_the_images_untouched(self) -> None:
        import torch

        verifier = self.make_verifier()
        images = self.make_images()
        before = images.clone()
        trajectory = self.make_trajectory(verifier, images)
        trajectory_before = {k: v.clone() for k, v in (trajectory or {}).items()}
        verifier.score(images, self.make_condition(verifier), trajectory=trajectory)
        assert torch.equal(images, before), "score() modified its input images"
        for level, tensor in (trajectory or {}).items():
            assert torch.equal(tensor, trajectory_before[level]), f"score() modified level {level}"

    def test_a_differentiable_score_keeps_its_graph(self) -> None:
        """``differentiable = True`` (on the factory too: planning reads it before building):
        ``score_with_grad(images, condition)`` gives ``score``'s values with an autograd graph back
        to the pixels, for the ``gradient`` strategy."""
        import torch

        verifier = self.make_verifier()
        if not getattr(verifier, "differentiable", False):
            _skip("not differentiable (no `differentiable = True`)")
        factory = self.factory()
        if factory is not None:
            assert getattr(factory, "differentiable", False), "declare `differentiable` on the factory"
        images = self.make_images()
        condition = self.make_condition(verifier)
        plain = verifier.score(images, condition).detach().float().cpu()
        pixels = images.clone().requires_grad_(True)
        scores = verifier.score_with_grad(pixels, condition)
        assert tuple(scores.shape) == (self.batch,) and scores.requires_grad, (
            "score_with_grad must keep its graph (no inference_mode or no_grad inside)")
        atol = max(self.atol, float(getattr(verifier, "score_tolerance", 0.0)))
        assert torch.allclose(scores.detach().float().cpu(), plain, atol=atol, rtol=self.rtol)
        # Rows are independent (the gradient strategy optimises each row's noise on its own
        # score): the first image's score has a finite, non-zero gradient in its own pixels only.
        (grad,) = torch.autograd.grad(scores[0], pixels)
        assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0
        assert grad.shape[0] < 2 or grad[1:].abs().max() == 0, (
            "one image's score depends on the other images' pixels")

    def test_every_option_is_documented(self) -> None:
        factory = self.factory()
        if factory is None:
            _skip("no verifier_factory: make_verifier() is overridden")
        missing = _undocumented_options(factory)
        assert not missing, f"options without a `:param NAME:` docstring line: {missing}"

    def test_is_registered_under_its_name(self) -> None:
        if self.registered_name is None:
            _skip("set registered_name to check the plugin's registration")
        entry = _registered_entry("verifier", self.registered_name)
        if self.factory() is not None:
            assert entry.factory is self.factory(), (entry.factory, self.factory())
        assert entry.description, "the factory needs a docstring: its first line is the description"


# -- search strategies ------------------------------------------------------------------------


class SearchStrategyContract:
    """Tests every search strategy should pass, run through a real engine on a tiny model.

    Set ``strategy_factory`` or override :meth:`make_strategy`. Override :meth:`make_model` /
    :meth:`make_verifier` to run on something else than :class:`GaussianModel` and
    :class:`BrightnessVerifier`.
    """

    strategy_factory: ClassVar[Callable[..., Any] | None] = None
    strategy_options: ClassVar[dict[str, Any]] = {}
    registered_name: ClassVar[str | None] = None
    steps: ClassVar[int] = 4
    batch_size: ClassVar[int] = 3  # odd, so that budgets do not divide into batches
    candidate_budget: ClassVar[int] = 7
    #: The NFE budget, in full samples' worth; not whole, so that it does not divide evenly.
    nfe_budget: ClassVar[float] = 5.5
    #: Candidates of the smallest budget; the strategy must still return them. Raise it (and the
    #: budgets above) for a strategy whose least useful run costs more.
    min_candidates: ClassVar[int] = 1

    def factory(self) -> Callable[..., Any] | None:
        return _class_attribute(type(self), "strategy_factory")

    def make_strategy(self) -> SearchStrategy:
        factory = self.factory()
        if factory is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set strategy_factory or override make_strategy()"
            )
        return factory(**self.strategy_options)

    def make_model(self) -> Model:
        return GaussianModel()

    def make_verifier(self) -> Verifier:
        return BrightnessVerifier()

    def run(self, budget: Budget, seed: int = 0) -> StrategyRun:
        """A fresh strategy, model and verifier, run once within ``budget``."""
        try:
            return run_strategy(
                self.make_strategy(),
                budget,
                model=self.make_model(),
                verifier=self.make_verifier(),
                steps=self.steps,
                batch_size=self.batch_size,
                seed=seed,
            )
        except (BudgetExhausted, NoCandidate) as exc:
            raise AssertionError(f"the strategy overran or ignored {budget}: {exc}") from exc

    def nfe_per_candidate(self) -> int:
        from noisesearch.sampling import solver_nfe

        model = self.make_model()
        return solver_nfe(model.schedule, model.schedule.levels(self.steps), "ddim")

    def test_follows_the_strategy_protocol(self) -> None:
        assert isinstance(self.make_strategy(), SearchStrategy)

    def test_stays_within_a_budget_in_candidates(self) -> None:
        run = self.run(Budget(candidates=self.candidate_budget))
        assert 1 <= len(run.candidates) <= self.candidate_budget, len(run.candidates)
        assert run.usage.candidates == len(run.candidates)

    def test_stays_within_a_budget_in_nfe(self) -> None:
        budget = Budget(nfe=int(self.nfe_per_candidate() * self.nfe_budget))
        run = self.run(budget)
        assert run.candidates, "no candidate evaluated"
        assert run.usage.nfe <= budget.nfe, f"spent {run.usage.nfe} NFEs of {budget.nfe}"

    def test_stays_within_both_budgets_at_once(self) -> None:
        budget = Budget(
            candidates=self.candidate_budget, nfe=int(self.nfe_per_candidate() * self.nfe_budget)
        )
        run = self.run(budget)
        assert run.candidates, "no candidate evaluated"
        assert run.usage.nfe <= budget.nfe and run.usage.candidates <= self.candidate_budget

    def test_the_smallest_budget_still_yields_a_candidate(self) -> None:
        run = self.run(Budget(candidates=self.min_candidates))
        assert len(run.candidates) == self.min_candidates, len(run.candidates)
        assert run.result.best is not None

    def test_same_seed_gives_the_same_candidates(self) -> None:
        budget = Budget(candidates=self.candidate_budget)
        first, second = self.run(budget, seed=5), self.run(budget, seed=5)
        assert [c.recipe for c in first.candidates] == [c.recipe for c in second.candidates]
        assert [c.objective for c in first.candidates] == [c.objective for c in second.candidates]

    def test_recipes_are_json_with_a_kind(self) -> None:
        run = self.run(Budget(candidates=self.candidate_budget))
        for candidate in run.candidates:
            assert isinstance(noise_recipe(candidate).get("kind"), str), candidate.recipe
            assert json.loads(json.dumps(candidate.recipe)) == candidate.recipe, candidate.recipe

    def test_is_registered_under_its_name(self) -> None:
        if self.registered_name is None:
            _skip("set registered_name to check the plugin's registration")
        entry = _registered_entry("strategy", self.registered_name)
        if self.factory() is not None:
            assert entry.factory is self.factory(), (entry.factory, self.factory())
        assert entry.description, "the factory needs a docstring: its first line is the description"

    def test_every_option_is_documented(self) -> None:
        factory = self.factory()
        if factory is None:
            _skip("no strategy_factory: make_strategy() is overridden")
        missing = _undocumented_options(factory)
        assert not missing, f"options without a `:param NAME:` docstring line: {missing}"


# -- models -----------------------------------------------------------------------------------


class ModelContract:
    """Tests every model should pass. Set ``model_factory`` or override :meth:`make_model`."""

    model_factory: ClassVar[Callable[..., Any] | None] = None
    model_options: ClassVar[dict[str, Any]] = {}
    registered_name: ClassVar[str | None] = None
    batch: ClassVar[int] = 3
    steps: ClassVar[int] = 3
    levels_to_check: ClassVar[tuple[float, ...]] = (1.0, 0.5, 0.05)
    atol: ClassVar[float] = 1e-5
    rtol: ClassVar[float] = 1e-4

    def factory(self) -> Callable[..., Any] | None:
        return _class_attribute(type(self), "model_factory")

    def make_model(self) -> Model:
        factory = self.factory()
        if factory is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set model_factory or override make_model()"
            )
        return factory(**self.model_options)

    def make_conditions(self, model: Model) -> list[Condition]:
        """Conditions the model must accept: for label models the first and the last label."""
        conditioning = getattr(model, "conditioning", "none")
        if conditioning == "label":
            return [Condition(label=0), Condition(label=int(model.num_classes) - 1)]  # type: ignore[attr-defined]
        return [default_condition(conditioning)]

    def make_noise(self, model: Model, seed: int = 0) -> torch.Tensor:
        seeds = [seed * 1000 + i for i in range(self.batch)]
        return draw_noise(
            seeds, model.latent_shape, getattr(model, "device", "cpu"), getattr(model, "dtype", None)
        )

    def sample(self, model: Model, condition: Condition, noise: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` from ``noise`` with a short DDIM solve."""
        import torch

        prepared = model.prepare(condition)
        with torch.inference_mode():
            result = solve(
                lambda x, sigma: model.denoise(x, sigma, prepared),
                noise,
                model.schedule,
                model.schedule.levels(self.steps),
            )
            return model.decode(result.x)

    def test_declares_a_known_conditioning(self) -> None:
        model = self.make_model()
        assert model.conditioning in CONDITIONINGS, (
            f"conditioning {model.conditioning!r} is not one of {CONDITIONINGS}"
        )
        if model.conditioning == "label":
            num_classes = getattr(model, "num_classes", None)
            assert isinstance(num_classes, int) and num_classes > 0, f"num_classes={num_classes!r}"
        factory = self.factory()
        if factory is not None:
            assert getattr(factory, "conditioning", "none") == model.conditioning, (
                "the factory must declare the same `conditioning` as the model it builds"
            )

    def test_latent_shape_and_schedule_are_usable(self) -> None:
        model = self.make_model()
        shape = tuple(model.latent_shape)
        assert shape and all(isinstance(n, int) and n > 0 for n in shape), shape
        assert isinstance(model.schedule, Schedule), type(model.schedule)
        levels = model.schedule.levels(self.steps)
        assert len(levels) == self.steps + 1 and math.isclose(levels[0], 1.0) and levels[-1] == 0.0

    def test_follows_the_model_protocol(self) -> None:
        assert isinstance(self.make_model(), Model)

    def test_prepares_each_condition_it_accepts(self) -> None:
        model = self.make_model()
        for condition in self.make_conditions(model):
            model.prepare(condition)

    def test_denoise_keeps_the_shape_and_stays_finite(self) -> None:
        import torch

        model = self.make_model()
        noise = self.make_noise(model)
        for condition in self.make_conditions(model):
            prepared = model.prepare(condition)
            for sigma in self.levels_to_check:
                with torch.inference_mode():
                    x0 = model.denoise(noise, sigma, prepared)
                assert tuple(x0.shape) == tuple(noise.shape), (sigma, tuple(x0.shape))
                assert torch.isfinite(x0).all(), f"non-finite x0_hat at sigma={sigma}"

    def test_denoise_leaves_its_input_untouched(self) -> None:
        import torch

        model = self.make_model()
        noise = self.make_noise(model)
        before = noise.clone()
        prepared = model.prepare(self.make_conditions(model)[0])
        with torch.inference_mode():
            model.denoise(noise, 0.5, prepared)
        assert torch.equal(noise, before), "denoise() modified its input"

    def test_denoising_a_batch_matches_one_by_one(self) -> None:
        import torch

        model = self.make_model()
        noise = self.make_noise(model)
        prepared = model.prepare(self.make_conditions(model)[0])
        with torch.inference_mode():
            together = model.denoise(noise, 0.5, prepared)
            alone = torch.cat([model.denoise(noise[i : i + 1], 0.5, prepared) for i in range(self.batch)])
        assert torch.allclose(together, alone, atol=self.atol, rtol=self.rtol), (
            "batching changes the model's output: a search's candidates would depend on batch size"
        )

    def test_decodes_to_rgb_images_in_the_unit_range(self) -> None:
        import torch

        model = self.make_model()
        for condition in self.make_conditions(model):
            images = self.sample(model, condition, self.make_noise(model))
            assert images.dim() == 4 and images.shape[:2] == (self.batch, 3), tuple(images.shape)
            assert images.is_floating_point(), images.dtype
            assert torch.isfinite(images).all()
            assert images.min() >= 0.0 and images.max() <= 1.0, (images.min(), images.max())

    def test_same_noise_gives_the_same_images(self) -> None:
        import torch

        model = self.make_model()
        condition = self.make_conditions(model)[0]
        first = self.sample(model, condition, self.make_noise(model, seed=2))
        second = self.sample(model, condition, self.make_noise(model, seed=2))
        assert torch.equal(first, second), "the same noise must regenerate the same images (replay)"

    def test_every_option_is_documented(self) -> None:
        factory = self.factory()
        if factory is None:
            _skip("no model_factory: make_model() is overridden")
        missing = _undocumented_options(factory)
        assert not missing, f"options without a `:param NAME:` docstring line: {missing}"

    def test_is_registered_under_its_name(self) -> None:
        if self.registered_name is None:
            _skip("set registered_name to check the plugin's registration")
        entry = _registered_entry("model", self.registered_name)
        if self.factory() is not None:
            assert entry.factory is self.factory(), (entry.factory, self.factory())
        assert entry.description, "the factory needs a docstring: its first line is the description"
