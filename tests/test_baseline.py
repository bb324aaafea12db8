"""Correctness (issue 10, item 8): the baseline is the plain sampler's output from the run's
first seed for every strategy; paths ends exactly on the grid's last level; the DDIM grid of
diffusers adapters against diffusers' own DDIMScheduler; the precision that
``same_norm_neighbour`` really promises."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import noisesearch
from noisesearch import recipes
from noisesearch.sampling import VariancePreserving, solve
from noisesearch_builtin.search.paths import SearchOverPaths

# -- the baseline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_first_sample() -> torch.Tensor:
    """The plain sample of seed 0's first draw: random search's first candidate, alone in its
    batch (batching moves results by ~1e-7, so the batch size is 1, as the baseline's)."""
    plain = noisesearch.search(model="digits", label=7, candidates=1, batch_size=1, seed=0,
                               evaluator="none", write=False)
    return plain.best.image


@pytest.mark.parametrize(
    ("strategy", "options"),
    [("paths", {"paths": 2, "start_level": 0.5}), ("smc", {}), ("pruning", {})],
)
def test_steering_strategies_report_the_plain_first_sample_as_baseline(
    strategy: str, options: dict, plain_first_sample: torch.Tensor, tmp_path: Path
) -> None:
    out = tmp_path / strategy
    result = noisesearch.search(model="digits", label=7, strategy=strategy, strategy_options=options,
                                budget_nfe=300, batch_size=8, seed=0, evaluator="none", output=str(out))
    assert torch.equal(result.baseline.image, plain_first_sample)
    assert result.baseline_origin == "extra" and result.baseline.index == -1
    assert result.usage.baseline_nfe == result.nfe_per_candidate
    assert result.usage.nfe <= 300  # generated apart: not charged to the budget
    run = json.loads((out / "run.json").read_text())
    assert run["baseline_origin"] == "extra" and run["usage"]["baseline_nfe"] == result.nfe_per_candidate
    assert run["baseline"]["recipe"]["ops"][0]["levels"] == run["levels"]
    assert "generated apart from the search" in (out / "report.html").read_text()


@pytest.mark.parametrize("strategy", ["random", "zero-order"])
def test_strategies_whose_first_candidate_is_the_plain_sample_reuse_it(
    strategy: str, plain_first_sample: torch.Tensor
) -> None:
    result = noisesearch.search(model="digits", label=7, strategy=strategy, candidates=6,
                                batch_size=1, seed=0, evaluator="none", write=False)
    assert result.baseline_origin == "candidate" and result.baseline.index == 0
    assert result.usage.baseline_nfe == 0
    assert torch.equal(result.baseline.image, plain_first_sample)


# -- paths ends on the grid ----------------------------------------------------------------------


def test_paths_rounds_end_exactly_on_the_last_level() -> None:
    """0.11 + 0.78 - 0.81 is 5.55e-17 in floating point; the last round must end at 0."""
    rounds = SearchOverPaths(preset="paper").rounds(0.0)
    assert rounds[-1][2] == 0.0
    assert all(down > 0.0 for _, _, down in rounds[:-1])


def test_paths_with_heun_ends_each_candidate_on_the_grid_last_level() -> None:
    result = noisesearch.search(model="digits", label=2, strategy="paths", solver="heun",
                                strategy_options={"preset": "paper", "paths": 2}, budget_nfe=400,
                                evaluator="none", write=False)
    for candidate in result.top:
        last = [op for op in candidate.recipe["ops"] if op["op"] == "solve"][-1]
        assert last["levels"][-1] == 0.0


# -- the DDIM grid against diffusers' DDIMScheduler ------------------------------------------------


def _ddim_pair(spacing: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One toy eps-prediction network run through diffusers' DDIMScheduler and through our
    grid (``VariancePreservingModel.levels``) and ``ddim`` solver, from the same noise."""
    from diffusers import DDIMScheduler

    from noisesearch_builtin.models.diffusers.base import VariancePreservingModel

    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "beta_end": 0.012, "timestep_spacing": spacing, "set_alpha_to_one": False,
              "steps_offset": 1 if spacing == "leading" else 0, "clip_sample": False}
    scheduler = DDIMScheduler(**config)
    schedule = VariancePreserving(tuple(scheduler.alphas_cumprod.tolist()))

    def eps(x: torch.Tensor, t: float) -> torch.Tensor:  # a smooth stand-in for a network
        return torch.tanh(x) * (0.5 + t / 2000.0)

    x_start = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scheduler.set_timesteps(steps)
    x = x_start.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(eps(x, float(t)), t, x).prev_sample

    owner = SimpleNamespace(pipe=SimpleNamespace(scheduler=scheduler), schedule=schedule)
    # a text-to-image model (no init image): the grid starts at pure noise
    owner._from_start = lambda levels, steps: VariancePreservingModel._from_start(owner, levels, steps)
    levels = VariancePreservingModel.levels(owner, steps)

    def denoise(y: torch.Tensor, sigma: float) -> torch.Tensor:
        a, b = schedule.scales(sigma)
        return (y - b * eps(y, round(schedule.timestep(sigma)))) / a

    ours = solve(denoise, x_start.clone(), schedule, levels, "ddim").x
    return x, ours


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_the_ddim_grid_matches_diffusers_where_it_steps_to_the_next_listed_timestep(spacing: str) -> None:
    theirs, ours = _ddim_pair(spacing, 10)
    assert (theirs - ours).abs().max() / theirs.abs().max() < 1e-6  # float rounding only


def test_linspace_spacing_differs_from_diffusers_as_documented() -> None:
    """Diffusers' DDIM steps from t to t - T // K whatever the spacing; with "linspace"
    (PixArt's configuration) that is not the next listed timestep, which the network is
    then evaluated at anyway. We step to the next listed timestep instead (the documented
    difference, ``VariancePreservingModel.levels``)."""
    from noisesearch_builtin.models.diffusers.base import VariancePreservingModel

    theirs, ours = _ddim_pair("linspace", 10)
    assert (theirs - ours).abs().max() / theirs.abs().max() > 1e-3
    assert "linspace" in (VariancePreservingModel.levels.__doc__ or "")


# -- same_norm_neighbour's precision -----------------------------------------------------------------


def _norm_and_cosine_errors(dtype: torch.dtype) -> tuple[float, float]:
    worst_norm = worst_cosine = 0.0
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        pivot = torch.randn(1, 8, 8, generator=generator, dtype=dtype)
        direction = torch.randn(1, 8, 8, generator=generator, dtype=dtype)
        y = recipes.same_norm_neighbour(pivot, direction, 0.95).double().flatten()
        n = pivot.double().flatten()
        worst_norm = max(worst_norm, abs(float(y.norm() / n.norm()) - 1.0))
        worst_cosine = max(worst_cosine, abs(float(y @ n / (y.norm() * n.norm())) - 0.95))
    return worst_norm, worst_cosine


def test_same_norm_neighbour_holds_what_its_docstring_promises() -> None:
    assert max(_norm_and_cosine_errors(torch.float64)) < 1e-12
    float32 = max(_norm_and_cosine_errors(torch.float32))
    assert 1e-12 < float32 < 1e-7  # the float32 cast, not the float64 arithmetic, limits it
    doc = " ".join((recipes.same_norm_neighbour.__doc__ or "").split())
    assert "float32" in doc and "1e-8" in doc
    assert not math.isnan(float32)
