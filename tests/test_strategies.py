"""The built-in search strategies: their math, their NFE formulas, budgets and replay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import noisesearch
from noisesearch.api import replay_run
from noisesearch.engine import Budget
from noisesearch.recipes import (
    initial_noise,
    neighbour_noise,
    neighbour_recipe,
    same_norm_neighbour,
    seed_recipe,
)
from noisesearch.testing import run_strategy
from noisesearch_builtin.search.paths import SearchOverPaths
from noisesearch_builtin.search.pruning import EarlyPruning
from noisesearch_builtin.search.random_search import RandomSearch
from noisesearch_builtin.search.smc import SequentialMonteCarlo, effective_sample_size, systematic_resample
from noisesearch_builtin.search.zero_order import ZeroOrderSearch

STRATEGIES = ["random", "zero-order", "paths", "smc", "pruning"]


# -- zero-order ------------------------------------------------------------------------------


@pytest.mark.parametrize("cosine", [0.5, 0.95, 0.999])
def test_zero_order_neighbours_keep_pivot_norm_and_cosine(cosine: float) -> None:
    generator = torch.Generator().manual_seed(0)
    pivot = torch.randn(4, 8, 8, generator=generator, dtype=torch.float64)
    for _ in range(5):
        direction = torch.randn(4, 8, 8, generator=generator, dtype=torch.float64)
        neighbour = same_norm_neighbour(pivot, direction, cosine)
        assert abs(neighbour.norm().item() - pivot.norm().item()) < 1e-6
        cos = torch.nn.functional.cosine_similarity(neighbour.flatten(), pivot.flatten(), dim=0)
        assert abs(cos.item() - cosine) < 1e-6
        assert not torch.allclose(neighbour, pivot)


def test_neighbour_recipes_re_derive_their_noise_through_the_walk() -> None:
    pivot = seed_recipe(7)
    child = neighbour_recipe(pivot, 11, 0.9)
    grandchild = neighbour_recipe(child, 12, 0.9)
    assert grandchild == {"kind": "neighbour", "root": 7, "moves": [[11, 0.9], [12, 0.9]]}
    first = initial_noise(grandchild, (64,))
    assert torch.equal(first, initial_noise(json.loads(json.dumps(grandchild)), (64,)))
    assert torch.equal(first, neighbour_noise(initial_noise(child, (64,)), 12, 0.9))
    cos = torch.nn.functional.cosine_similarity(first, initial_noise(child, (64,)), dim=0)
    assert cos.item() == pytest.approx(0.9, abs=1e-5)


def test_a_long_zero_order_walk_stays_flat_and_re_derivable() -> None:
    recipe = seed_recipe(1)
    for step in range(2000):
        recipe = neighbour_recipe(recipe, step, 0.99)
    assert len(recipe["moves"]) == 2000 and "pivot" not in json.dumps(recipe)
    assert torch.isfinite(initial_noise(recipe, (16,))).all()


def parent(recipe: dict) -> dict:
    """The pivot a zero-order neighbour moved from."""
    if len(recipe["moves"]) == 1:
        return seed_recipe(recipe["root"])
    return {**recipe, "moves": recipe["moves"][:-1]}


def test_zero_order_moves_the_pivot_only_to_better_neighbours() -> None:
    run = run_strategy(ZeroOrderSearch(neighbours=3), Budget(candidates=13))
    pivots = [run.candidates[0]]
    for lo in range(1, 13, 3):
        batch = run.candidates[lo:lo + 3]
        assert all(parent(c.recipe["start"]) == pivots[-1].recipe["start"] for c in batch)
        leader = max(batch, key=lambda c: c.objective)
        pivots.append(leader if leader.objective > pivots[-1].objective else pivots[-1])
    assert pivots[-1].objective == run.result.best.objective


def test_zero_order_restarts_from_a_fresh_pivot_after_stale_rounds() -> None:
    run = run_strategy(ZeroOrderSearch(neighbours=2, cosine=0.999, restart_after=1), Budget(candidates=12))
    fresh = [c for c in run.candidates if c.recipe["start"]["kind"] == "seed"]
    assert len(fresh) >= 2


def test_zero_order_cost_formula() -> None:
    run = run_strategy(ZeroOrderSearch(neighbours=4, iterations=3), Budget(nfe=10_000))
    assert run.usage.nfe == ZeroOrderSearch.nfe_cost(4, neighbours=4, iterations=3)


# -- paths -------------------------------------------------------------------------------------


def test_paths_paper_preset_rounds_make_net_progress_to_the_clean_end() -> None:
    rounds = SearchOverPaths(preset="paper").rounds(0.0)
    expected = [(0.11, 0.89, 0.08), (0.08, 0.86, 0.05), (0.05, 0.83, 0.02), (0.02, 0.80, 0.0)]
    assert [tuple(round(v, 9) for v in r) for r in rounds] == expected


@pytest.mark.parametrize(("paths", "children", "options"), [
    (2, 2, {}), (3, 4, {"start_level": 0.7, "forward": 0.1, "backward": 0.35}), (1, 3, {"preset": "paper"}),
])
def test_paths_spend_exactly_their_nfe_formula(paths: int, children: int, options: dict) -> None:
    strategy = SearchOverPaths(paths=paths, children=children, **options)
    run = run_strategy(strategy, Budget(nfe=100_000), steps=20, batch_size=5)
    assert len(run.candidates) == paths * children
    assert run.usage.nfe == strategy_cost(strategy, paths)


def strategy_cost(strategy: SearchOverPaths | EarlyPruning | SequentialMonteCarlo, size: int) -> int:
    """The strategy's own formula, evaluated on a context with the same grid."""
    from noisesearch.engine import Engine, Scorer, SearchContext
    from noisesearch.testing import BrightnessVerifier, GaussianModel

    model = GaussianModel()
    engine = Engine(model, noisesearch.Condition(), Scorer({"v": BrightnessVerifier()}), Budget(),
                    model.schedule.levels(20))
    return strategy.nfe_cost(SearchContext(engine), size)


def test_paths_children_carry_their_full_history_in_the_recipe() -> None:
    run = run_strategy(SearchOverPaths(paths=2, children=2), Budget(nfe=100_000), steps=20)
    ops = [op["op"] for op in run.result.best.recipe["ops"]]
    assert ops[0] == "solve" and ops.count("renoise") == len(SearchOverPaths().rounds(0.0))


# -- SMC ---------------------------------------------------------------------------------------


def test_effective_sample_size_of_equal_and_degenerate_weights() -> None:
    assert effective_sample_size([0.0] * 8) == pytest.approx(8)
    assert effective_sample_size([0.0] + [-1e4] * 7) == pytest.approx(1)


def test_systematic_resampling_follows_the_weights() -> None:
    log_w = [math.log(w) for w in (0.5, 0.25, 0.125, 0.125)]
    assert systematic_resample(log_w, 0.1) == [0, 0, 1, 2]
    assert systematic_resample([0.0, -1e9, -1e9], 0.7) == [0, 0, 0]


@pytest.mark.parametrize("options", [{}, {"resample_every": 1, "churn": 0.0}, {"potential": "max"}])
def test_smc_spends_exactly_its_nfe_formula(options: dict) -> None:
    strategy = SequentialMonteCarlo(particles=5, **options)
    run = run_strategy(strategy, Budget(nfe=100_000), steps=20, batch_size=4)
    assert len(run.candidates) == 5
    assert run.usage.nfe == strategy_cost(strategy, 5)


@pytest.mark.parametrize("potential", ["difference", "max", "immediate"])
def test_smc_potentials_reweight_negative_scores(potential: str) -> None:
    """Log-probability verifiers score below zero: every potential must still favour the best."""
    smc = SequentialMonteCarlo(potential=potential, temperature=1.0)
    log_w, previous = smc._reweight([0.0] * 3, [None] * 3, [-3.0, -1.0, -0.2])
    assert log_w[2] > log_w[1] > log_w[0]
    log_w, _ = smc._reweight([0.0] * 3, previous, [-0.1, -2.0, -5.0])
    assert log_w[0] > log_w[2]


def test_smc_reports_ess_and_resampled_particles_diverge() -> None:
    result = noisesearch.search(model="digits", label=5, strategy="smc", budget_nfe=400, write=False,
                                strategy_options={"particles": 8, "ess_threshold": 1.0})
    ess = result.strategy_report["ess"]
    assert ess and all(1.0 <= entry["ess"] <= 8.0 + 1e-9 for entry in ess)
    assert any(entry["resampled"] for entry in ess)
    images = torch.stack([c.image for c in result.top])
    assert torch.unique(images.flatten(1), dim=0).shape[0] == images.shape[0]


# -- pruning -----------------------------------------------------------------------------------


def test_pruning_spends_exactly_its_nfe_formula_and_starts_more_than_it_finishes() -> None:
    strategy = EarlyPruning(initial=12, checkpoints=(0.6, 0.3), keep=0.5)
    run = run_strategy(strategy, Budget(nfe=100_000), steps=20, batch_size=5)
    assert strategy.sizes(12) == [12, 6, 3]
    assert len(run.candidates) == 3
    assert run.usage.nfe == strategy_cost(strategy, 12)


def test_pruning_starts_more_candidates_than_random_search_at_equal_nfes() -> None:
    strategy = EarlyPruning(checkpoints=(0.5,), keep=0.25)
    budget = 20 * 16
    started = max(n for n in range(1, 200) if strategy_cost(strategy, n) <= budget)
    assert started > budget // 20


def test_one_hard_cut_at_half_the_budget_starts_more_than_random_at_the_whole_budget() -> None:
    """The configuration docs/performance.md measures: one level, 1/16 kept; charged only for
    what it runs (the pruned rows' 1 step and scoring, the survivors' whole path)."""
    strategy = EarlyPruning(checkpoints=0.95, keep=0.0625)
    run = run_strategy(strategy, Budget(nfe=320), steps=20, batch_size=16)
    initial = max(n for n in range(1, 400) if strategy_cost(strategy, n) <= 320)
    assert len(run.candidates) == strategy.sizes(initial)[-1] == math.ceil(initial / 16)
    assert run.usage.nfe == strategy_cost(strategy, initial) <= 320
    assert initial > 2 * (320 // 20)  # random search finishes 32 samples with twice the NFEs


@pytest.mark.parametrize(("options", "field"), [
    ({"keep": "abc"}, "pruning.keep"), ({"keep": 0}, "pruning.keep"), ({"keep": True}, "pruning.keep"),
    ({"keep": 1.5}, "pruning.keep"), ({"checkpoints": "abc"}, "pruning.checkpoints"),
    ({"checkpoints": [0.5, "x"]}, "pruning.checkpoints"), ({"checkpoints": 1.0}, "pruning.checkpoints"),
    ({"checkpoints": [0.3, 0.6]}, "pruning.checkpoints"), ({"checkpoints": []}, "pruning.checkpoints"),
    ({"initial": 2.5}, "pruning.initial"), ({"initial": 0}, "pruning.initial"),
    ({"initial": True}, "pruning.initial"),
])
def test_pruning_refuses_bad_options_naming_them_before_anything_loads(options: dict, field: str) -> None:
    with pytest.raises(noisesearch.ConfigError) as raised:
        noisesearch.search(model="digits", label=1, strategy="pruning", strategy_options=options,
                           budget_nfe=100, write=False)
    assert raised.value.field == field


def test_pruning_takes_one_level_or_a_list() -> None:
    assert EarlyPruning(checkpoints=0.9).checkpoints == [0.9]
    assert EarlyPruning(checkpoints=[0.8, 0.5], keep=1).checkpoints == [0.8, 0.5]
    assert EarlyPruning(initial=4.0).initial == 4


# -- every strategy ----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(STRATEGIES),
    budget_nfe=st.integers(min_value=1, max_value=400),
    steps=st.integers(min_value=2, max_value=12),
    batch_size=st.integers(min_value=1, max_value=9),
    knob=st.floats(min_value=0.05, max_value=0.95),
    count=st.integers(min_value=1, max_value=6),
)
def test_no_strategy_ever_exceeds_its_nfe_budget(
    name: str, budget_nfe: int, steps: int, batch_size: int, knob: float, count: int
) -> None:
    strategy = {
        "random": lambda: RandomSearch(),
        "zero-order": lambda: ZeroOrderSearch(neighbours=count, cosine=knob),
        "paths": lambda: SearchOverPaths(children=count, start_level=knob * 0.9 + 0.05,
                                         forward=0.04, backward=0.05 + 0.3 * knob),
        "smc": lambda: SequentialMonteCarlo(particles=count, resample_every=1 + count % 3, churn=knob),
        "pruning": lambda: EarlyPruning(checkpoints=(knob,), keep=knob),
    }[name]()
    try:
        run = run_strategy(strategy, Budget(nfe=budget_nfe), steps=steps, batch_size=batch_size)
    except noisesearch.BudgetExhausted:
        return  # not even one candidate fits: nothing was spent
    assert run.usage.nfe <= budget_nfe


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_budget_of_one_sample_gives_one_candidate(strategy: str) -> None:
    """A budget that pays for one plain sample and no more (the smallest cell of a bench) still
    gives a candidate: a strategy whose smallest search costs more spends it on plain samples.
    SMC and pruning used to end with no candidate (BudgetExhausted) at 20 NFEs."""
    result = noisesearch.search(model="digits", label=3, strategy=strategy, budget_nfe=20, write=False)
    assert result.usage.candidates == 1
    assert result.usage.nfe == 20


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_replay_regenerates_the_best_bit_for_bit(strategy: str, tmp_path: Path) -> None:
    out = tmp_path / strategy
    noisesearch.search(model="digits", label=2, strategy=strategy, budget_nfe=500, seed=4, output=str(out))
    outcome = replay_run(out)
    assert outcome.identical, outcome.max_abs_diff
    assert outcome.score == outcome.recorded_score
    assert (out / "replay.png").is_file()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cli_never_reports_more_nfes_than_the_budget(strategy: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from noisesearch.cli import build_app

    result = CliRunner().invoke(build_app(), ["run", "--model", "digits", "--strategy", strategy,
                                              "--budget-nfe", "250", "--json", "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["usage"]["nfe"] <= 250


def test_bad_strategy_options_name_the_field() -> None:
    with pytest.raises(noisesearch.ConfigError, match="zero-order.cosine"):
        noisesearch.search(model="digits", strategy="zero-order", strategy_options={"cosine": 1.5},
                           write=False)
    with pytest.raises(noisesearch.ConfigError, match="paths.backward"):
        noisesearch.search(model="digits", strategy="paths",
                           strategy_options={"forward": 0.3, "backward": 0.2}, write=False)
