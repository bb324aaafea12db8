"""``benchmarks/compare_pruning.py``: its replay of random search and one-cut pruning from probe
pools must give what real searches give (the docs' tables rely on both), on the digits model."""

from __future__ import annotations

from types import ModuleType

import pytest
from scripts import load_benchmark


def _script() -> ModuleType:
    return load_benchmark("compare_pruning")


@pytest.mark.slow  # ~14 s of CPU: a probe and four searches
def test_replayed_pools_match_real_searches() -> None:
    script = _script()
    conds = [{"label": 3}, {"label": 7}]
    corr = script.correlation("digits", conds, 1, 16, [0.9], 20)
    assert corr["steps"]["0.9"] == (2, 18)  # DDIM steps before and after the cut
    replayed = script.simulate(corr, 160, [(0.9, 0.25)])
    real = script.compare("digits", conds, 1, 160, ["checkpoints=0.9,keep=0.25"], 20)
    by_arm = {(r["strategy"], r["budget_nfe"]): r for r in real}
    pruned = next(r for r in replayed if r["strategy"] == "pruning" and r["budget_nfe"] == 80)
    assert pruned["starts"] == 8 and pruned["finished"] == 2  # 8 x 3 + 2 x 18 = 60 <= 80 < 9 x 3 + 3 x 18
    assert by_arm[("pruning:checkpoints=0.9,keep=0.25", 80)]["finished_candidates"] == 2
    assert "skipped" in next(r for r in replayed if r["strategy"] == "pruning" and r["budget_nfe"] == 160)
    for r in replayed:
        if "skipped" in r:
            continue
        name = r["strategy"] if r["level"] is None else "pruning:checkpoints=0.9,keep=0.25"
        searched = by_arm[(name, r["budget_nfe"])]
        assert r["verifier"] == pytest.approx(searched["verifier"], rel=1e-4, abs=1e-6)
        assert r["evaluator"] == pytest.approx(searched["evaluator"], rel=1e-4, abs=1e-6)
