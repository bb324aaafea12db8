"""The ``evolution`` strategy (SES-style): its orthonormal subspace, generation 0 = N(0, I), its
budget plan over previews and finalists, bad options, and bit-exact replay of its noises."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from crashes import crash_digits_verifier_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripts import load_benchmark
from typer.testing import CliRunner

import noisesearch
from noisesearch import recipes
from noisesearch.api import replay_run
from noisesearch.cli import build_app
from noisesearch.engine import Budget
from noisesearch.sampling import draw_noise
from noisesearch.spectral import band_coefficients, dct_basis, layout, with_band
from noisesearch.testing import run_strategy
from noisesearch_builtin.search.evolution import EvolutionSearch

# -- the subspace --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_the_dct_basis_is_orthonormal(n: int) -> None:
    basis = dct_basis(n, n)
    assert torch.allclose(basis @ basis.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_layouts() -> None:
    assert layout((4, 8, 8)) == (4, 8, 8)
    assert layout((2, 3, 6, 5)) == (6, 6, 5)
    assert layout((64,)) == (1, 8, 8)  # the digits model's flattened 8x8 image
    with pytest.raises(ValueError, match="spatial layout"):
        layout((63,))


def test_setting_a_band_keeps_the_rest_of_the_noise_and_projects_back_to_its_coefficients() -> None:
    grid, band = (3, 8, 6), (4, 2)
    noise = draw_noise([5], grid)[0]
    coefficients = torch.randn(3 * 4 * 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    moved = with_band(noise, grid, band, coefficients)
    assert torch.allclose(band_coefficients(moved, grid, band), coefficients, atol=1e-12)
    # the complement (everything but the band) is the seed's, untouched
    assert torch.allclose(moved - with_band(moved, grid, band, torch.zeros_like(coefficients)),
                          with_band(noise.double(), grid, band, coefficients)
                          - with_band(noise.double(), grid, band, torch.zeros_like(coefficients)), atol=1e-12)
    assert torch.allclose(with_band(moved, grid, band, band_coefficients(noise, grid, band)), noise.double(),
                          atol=1e-12)


def _moments(noises: torch.Tensor) -> tuple[float, float]:
    """Largest |mean| and largest |covariance - I| entry of ``noises`` ``(n, d)``."""
    mean = noises.mean(0)
    centred = noises - mean
    covariance = centred.T @ centred / (noises.shape[0] - 1)
    identity = torch.eye(noises.shape[1], dtype=noises.dtype)
    return float(mean.abs().max()), float((covariance - identity).abs().max())


def test_generation_zero_noises_are_standard_normal() -> None:
    """Seeds' noises with their 4x4 band redrawn from N(0, I) are N(0, I) in all 64 dimensions:
    mean ~ 0, covariance ~ I (sampling error of 4000 draws: sd 0.016 per entry), |z|^2 ~ 64.
    The same test refuses noises whose band is zeroed instead (the test can fail)."""
    n, grid, band = 4000, (1, 8, 8), (4, 4)
    generator = torch.Generator().manual_seed(0)
    coefficients = torch.randn((n, 16), generator=generator, dtype=torch.float64)
    drawn = torch.stack([
        recipes.initial_noise(recipes.subspace_recipe(1000 + i, grid, band, coefficients[i].tolist()), (64,))
        for i in range(n)
    ]).double()
    mean, covariance = _moments(drawn)
    assert mean < 0.08 and covariance < 0.1, (mean, covariance)
    assert abs(float((drawn**2).sum(1).mean()) - 64.0) < 1.0  # E|z|^2 = d (sd of the mean 0.18)
    zeroed = torch.stack([with_band(drawn[i], grid, band, torch.zeros(16)) for i in range(n)])
    assert _moments(zeroed)[1] > 0.5


def test_a_subspace_recipe_gives_its_noise_bit_for_bit_and_in_the_models_dtype() -> None:
    recipe = recipes.subspace_recipe(7, (4, 8, 8), (2, 2), [0.1 * i for i in range(16)])
    again = json.loads(json.dumps(recipe))  # through candidates.jsonl
    first = recipes.initial_noise(recipe, (4, 8, 8))
    assert first.dtype == torch.float32 and first.shape == (4, 8, 8)
    assert torch.equal(first, recipes.initial_noise(again, (4, 8, 8)))
    assert recipes.initial_noise(recipe, (4, 8, 8), dtype=torch.float16).dtype == torch.float16
    assert recipes.is_derivable(recipe)


# -- planning and the budget -------------------------------------------------------------------


def test_the_plan_fills_the_budget_with_previews_after_the_finalists() -> None:
    strategy = EvolutionSearch(population=16, elite_fraction=0.25)  # 4 finalists
    sizes, finalists = strategy.plan(400, preview_nfe=8, full_nfe=20, candidates=None)
    assert (sizes, finalists) == ([16, 16, 8], 4)  # 40 previews * 8 + 4 * 20 = 400
    assert strategy.plan(400, 8, 20, candidates=2)[1] == 2
    assert strategy.plan(400, 20, 20, candidates=None) == ([16, 4], 0)  # full previews: 20 candidates
    assert EvolutionSearch(generations=1).plan(400, 8, 20, None) == ([16], 4)


def test_preview_levels_are_taken_evenly_from_the_run_grid() -> None:
    levels = [round(1 - i / 20, 12) for i in range(21)]
    assert EvolutionSearch(preview_steps=4).preview_levels(levels) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert EvolutionSearch(preview_steps=50).preview_levels(levels) == levels


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget_nfe=st.integers(min_value=1, max_value=300),
    steps=st.integers(min_value=2, max_value=10),
    batch_size=st.integers(min_value=1, max_value=7),
    population=st.integers(min_value=2, max_value=9),
    preview=st.integers(min_value=1, max_value=12),
    fraction=st.floats(min_value=0.05, max_value=0.95),
)
def test_evolution_never_exceeds_its_budget_and_spends_what_it_planned(
    budget_nfe: int, steps: int, batch_size: int, population: int, preview: int, fraction: float
) -> None:
    strategy = EvolutionSearch(band=2, population=population, preview_steps=preview, elite_fraction=fraction)
    try:
        run = run_strategy(strategy, Budget(nfe=budget_nfe), steps=steps, batch_size=batch_size)
    except noisesearch.BudgetExhausted:
        assert budget_nfe < steps  # not even one full sample fits
        return
    report = run.result.report["evolution"]
    assert run.usage.nfe == report["planned_nfe"] <= budget_nfe
    assert run.usage.candidates == (report["finalists"] or sum(report["generation_sizes"]))


@pytest.mark.parametrize(("solver", "preview_nfe", "full_nfe"), [("ddim", 8, 20), ("heun", 15, 39)])
def test_previews_and_finalists_are_both_charged(
    solver: str, preview_nfe: int, full_nfe: int
) -> None:
    result = noisesearch.search(model="digits", label=3, strategy="evolution", budget_nfe=500, seed=1,
                                solver=solver, write=False)
    report = result.strategy_report["evolution"]
    assert (report["preview_nfe"], report["full_nfe"]) == (preview_nfe, full_nfe)
    previews = sum(report["generation_sizes"])
    assert result.usage.nfe == previews * preview_nfe + report["finalists"] * full_nfe <= 500
    assert result.usage.candidates == report["finalists"] == 4  # only the finalists are candidates
    assert 500 - result.usage.nfe < preview_nfe * 2  # used up (a 1-member generation is not run)


def test_a_candidate_budget_pays_for_as_many_full_samples() -> None:
    result = noisesearch.search(model="digits", label=3, strategy="evolution", candidates=8, seed=1,
                                write=False)
    assert result.usage.candidates <= 8 and result.usage.nfe <= 8 * 20
    assert result.strategy_report["evolution"]["finalists"] == 4


def test_generation_zero_samples_coefficients_from_n01_and_the_search_moves_the_gaussian() -> None:
    """Previews as dear as a full sample are skipped: every member is a candidate with its
    coefficients recorded, so generation 0's draws can be read back."""
    result = noisesearch.search(model="digits", label=5, strategy="evolution", budget_nfe=64 * 20 * 2,
                                strategy_options={"population": 64, "preview_steps": 20, "generations": 2},
                                top_k=200, seed=0, write=False)
    report = result.strategy_report["evolution"]
    assert report["full_previews"] and report["generation_sizes"] == [64, 64]
    assert result.usage.candidates == 128
    first = torch.tensor([c.recipe["start"]["coefficients"] for c in result.top if c.index < 64])
    assert first.shape == (64, 16)  # generation 0: N(0, 1) draws (sd of the mean 0.03, of the std 0.02)
    assert abs(float(first.mean())) < 0.15 and abs(float(first.std()) - 1.0) < 0.1
    second = torch.tensor([c.recipe["start"]["coefficients"] for c in result.top if c.index >= 64])
    assert float(second.std()) < float(first.std())  # refitted on the elites: narrower
    generations = report["generations"]
    elites = sorted((c for c in result.top if c.index < 64), key=lambda c: c.objective, reverse=True)[:16]
    noises = torch.stack([recipes.initial_noise(c.recipe["start"], (64,)) for c in elites])
    norms = noises.double().norm(dim=1)
    assert generations[0]["elites"] == 16
    assert generations[0]["elite_norm_mean"] == pytest.approx(float(norms.mean()), abs=1e-6)
    assert generations[0]["elite_norm_drift_mean"] == pytest.approx(float(norms.mean()) / 8 - 1, abs=1e-6)
    assert generations[0]["std_mean"] < 1.0  # refitted on elites
    for g in generations:  # the elites' noise norms sit near the shell sqrt(64) = 8
        assert abs(g["elite_norm_drift_mean"]) < 0.5


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "field"), [
    ("band=0", "evolution.band"), ("population=1", "evolution.population"),
    ("elite_fraction=1.0", "evolution.elite_fraction"), ("elite_fraction=0", "evolution.elite_fraction"),
    ("preview_steps=0", "evolution.preview_steps"), ("generations=0", "evolution.generations"),
    ("finalists=0", "evolution.finalists"), ("population=many", "evolution.population"),
])
def test_bad_options_exit_2_naming_the_option_before_loading(option: str, field: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from noisesearch_builtin.models import digits

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(digits.DigitsModel, "__init__", never)
    started = time.perf_counter()
    result = CliRunner().invoke(build_app(), ["run", "--model", "digits", "--strategy", "evolution",
                                              "--strategy-opt", option, "--budget-nfe", "200",
                                              "-o", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert field in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
    assert time.perf_counter() - started < 5


def test_a_band_wider_than_the_latent_is_refused_naming_the_option() -> None:
    with pytest.raises(noisesearch.ConfigError, match="evolution.band.*at most 8"):
        noisesearch.search(model="digits", strategy="evolution", strategy_options={"band": 9},
                           budget_nfe=200, write=False)


def test_a_band_wider_than_the_latent_leaves_no_run_folder(tmp_path: Path) -> None:
    """The band fits only a latent the model knows once built: checked then (``check_model``),
    before the run folder is made."""
    result = CliRunner().invoke(build_app(), ["run", "--model", "digits", "--strategy", "evolution",
                                              "--strategy-opt", "band=9", "--budget-nfe", "200",
                                              "-o", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "evolution.band" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


# -- replay ------------------------------------------------------------------------------------


@pytest.mark.slow  # ~3-7 s on 2 shared cores
def test_replay_regenerates_the_best_bit_for_bit(tmp_path: Path) -> None:
    out = tmp_path / "evolution"
    noisesearch.search(model="digits", label=2, strategy="evolution", budget_nfe=400, seed=4,
                       batch_size=5, output=str(out))
    outcome = replay_run(out)
    assert outcome.identical, outcome.max_abs_diff
    assert outcome.score == outcome.recorded_score
    run = json.loads((out / "run.json").read_text())
    start = run["best"]["recipe"]["start"]
    assert start["kind"] == "subspace" and len(start["coefficients"]) == 16
    assert [g["generation"] for g in run["strategy_report"]["evolution"]["generations"]] == [0, 1, 2]


def test_every_reported_candidate_replays_bit_for_bit() -> None:
    from noisesearch.plugins import build_registries
    from noisesearch.sampling import resolve_solver

    result = noisesearch.search(model="digits", label=7, strategy="evolution", budget_nfe=400, seed=2,
                                batch_size=3, top_k=4, write=False)
    model = build_registries().models.create("digits")
    prepared = model.prepare(noisesearch.Condition(label=7))
    levels = model.schedule.levels(20)
    assert len(result.top) == 4
    for candidate in result.top:
        with torch.inference_mode():
            latent = recipes.replay(candidate.recipe, lambda x, s: model.denoise(x, s, prepared),
                                    model.schedule, resolve_solver(model, "ddim", 20), (64,))
            image = recipes.decode_padded(model.decode, latent, **candidate.recipe["decode"])
        image = image.float().clamp(0, 1)
        assert torch.equal(image, candidate.image), candidate.index
        assert candidate.recipe["ops"][0]["levels"] == levels  # finalists are solved on the full grid


# -- the measurement script ----------------------------------------------------------------------


def test_the_comparison_script_runs_within_its_budgets(tmp_path: Path) -> None:
    module = load_benchmark("compare_evolution")
    assert module.parse("evolution:band=2,finalists=1") == ("evolution", {"band": 2, "finalists": 1})
    rows = module.run([100], 1, [0, 1], ["random", "evolution:band=2"])
    assert [r["searches"] for r in rows] == [2, 2] and all(r["max_nfe_spent"] <= 100 for r in rows)
    assert rows[0]["elite_norm_drift_last_generation"] is None
    assert isinstance(rows[1]["elite_norm_drift_last_generation"], float)
    module.write_markdown(rows, tmp_path / "t.md", "the command", "the machine")
    assert "| evolution:band=2 | 100 |" in (tmp_path / "t.md").read_text()


@pytest.mark.slow  # two searches and a resume
def test_a_run_that_failed_mid_search_resumes_to_the_same_result(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The previews' scorings are journaled like any other engine call: a verifier failing in
    generation 1 leaves a run that resumes to what an uninterrupted run finds."""
    from noisesearch.api import resume_run

    out = tmp_path / "run"
    fields = {"model": "digits", "label": 6, "strategy": "evolution", "budget_nfe": 400, "batch_size": 8,
              "seed": 1}
    crash_digits_verifier_at(monkeypatch, 4)
    with pytest.raises(noisesearch.NoiseSearchError, match="disk on fire"):
        noisesearch.search(**fields, output=str(out))
    monkeypatch.undo()
    resumed = resume_run(out)
    reference = noisesearch.search(**fields, write=False)
    assert resumed.best.recipe == reference.best.recipe
    assert [c.objective for c in resumed.top] == [c.objective for c in reference.top]
    assert resumed.usage.nfe == reference.usage.nfe == 400
    assert resumed.strategy_report == reference.strategy_report
