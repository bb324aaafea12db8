"""Non-finite scores (issue 10, item 1): a NaN or an infinity from a verifier is never
selected, ranks below every finite score, is counted and reported, and every file stays
strict JSON. The verifiers here are real plugins, installed and discovered like any other."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hand_plugins import install_plugin
from typer.testing import CliRunner

import noisesearch
from noisesearch.cli import build_app
from noisesearch.finite import FLAG, strict_json
from noisesearch.plugins import build_registries, get_plugin_manager
from noisesearch.selection import Selection
from noisesearch.types import Candidate

#: Brightness scores, but every candidate whose index is 0, 2 or 4 modulo 6 gets NaN, +inf or
#: -inf: the verifier is called once per batch, so it counts the rows it has seen.
NON_FINITE_PLUGIN = """
    import math

    from noisesearch import hookimpl

    class Flaky:
        requires = frozenset()

        def __init__(self, pattern: str = "nan,x,inf,x,-inf,x"):
            self.pattern = pattern.split(",")
            self.seen = 0

        def score(self, images, condition, trajectory=None):
            scores = images.float().mean(dim=(1, 2, 3))
            for row in range(images.shape[0]):
                kind = self.pattern[(self.seen + row) % len(self.pattern)]
                if kind != "x":
                    scores[row] = float(kind)
            self.seen += images.shape[0]
            return scores

    class AllNaN:
        requires = frozenset()

        def score(self, images, condition, trajectory=None):
            return images.new_full((images.shape[0],), math.nan)

    @hookimpl
    def register_verifiers(register):
        register("flaky", Flaky)
        register("all-nan", AllNaN)
"""


@pytest.fixture
def flaky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    plugins = tmp_path / "site"
    plugins.mkdir()
    return install_plugin(plugins, monkeypatch, "flaky", NON_FINITE_PLUGIN)


def strict_load(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as RFC 8259 (and most parsers) do."""
    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_selection_ranks_nan_and_infinities_below_every_finite_score() -> None:
    """The issue's example: a top-k that came out as [nan, 0.69, nan, 0.60, nan]."""
    objectives = [math.nan, 0.69, math.nan, 0.60, math.nan, math.inf, -math.inf, 0.9, -5.0]
    selection = Selection(top_k=5)
    for index, objective in enumerate(objectives):
        import torch

        candidate = Candidate(index, {"start": {"kind": "seed", "seed": index}, "ops": []},
                              {"v": objective}, objective, 1)
        selection.add(candidate, torch.zeros(1, 3, 2, 2), 0)
    assert [c.objective for c in selection.ranked()] == [0.9, 0.69, 0.60, -5.0]
    assert selection.best() is not None and selection.best().objective == 0.9
    assert selection.non_finite() == {"candidates": 5, "scores": {"v": 5}}


def test_strict_json_writes_null_and_flags_where_each_value_was() -> None:
    data = {"objective": math.nan, "scores": {"a/b": math.inf, "c": 1.5}, "list": [-math.inf]}
    clean = strict_json(data)
    assert clean["objective"] is None and clean["scores"] == {"a/b": None, "c": 1.5}
    assert clean[FLAG] == {"/objective": "nan", "/scores/a~1b": "inf", "/list/0": "-inf"}
    strict_load(json.dumps(clean, allow_nan=False))
    assert FLAG not in strict_json({"x": 1.0})


def test_a_nan_or_inf_score_is_never_selected_counted_and_written_as_strict_json(
    flaky: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = noisesearch.search(
        model="digits", label=3, candidates=12, batch_size=4, top_k=12, verifiers=["flaky"],
        evaluator="none", output=str(out), registries=build_registries(get_plugin_manager()),
    )
    objectives = [c.objective for c in result.top]
    assert all(math.isfinite(value) for value in objectives)
    assert objectives == sorted(objectives, reverse=True) and len(objectives) == 6
    assert math.isfinite(result.best.objective)
    assert result.non_finite == {"candidates": 6, "scores": {"flaky": 6}}

    run = strict_load((out / "run.json").read_text())
    assert run["non_finite"] == {"candidates": 6, "scores": {"flaky": 6}}
    assert run["best"]["objective"] == max(objectives)
    rows = [strict_load(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    flagged = [row for row in rows if row["objective"] is None]
    assert [row["index"] for row in flagged] == [0, 2, 4, 6, 8, 10]
    assert [row[FLAG]["/objective"] for row in flagged[:3]] == ["nan", "inf", "-inf"]
    assert flagged[0][FLAG]["/scores/flaky"] == "nan" and flagged[0]["scores"]["flaky"] is None
    assert all(FLAG not in row for row in rows if row["objective"] is not None)

    shown = CliRunner().invoke(build_app(), ["show", str(out)])
    assert shown.exit_code == 0 and "6 candidates had a NaN or infinite objective" in shown.output
    listed = strict_load(CliRunner().invoke(build_app(), ["runs", str(tmp_path), "--json"]).stdout)
    assert listed[0]["non_finite"] == 6
    assert "6 candidates had a non-finite objective" in (out / "report.html").read_text()


def test_the_run_table_says_how_many_scores_were_not_finite(flaky: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), [
        "run", "--model", "digits", "--label", "2", "--candidates", "6", "--verifier", "flaky",
        "--evaluator", "none", "-o", str(tmp_path / "run"),
    ])
    assert result.exit_code == 0, result.output
    assert "3 of 6 candidates had a non-finite objective" in " ".join(result.output.split())


def test_a_pooled_objective_ranks_only_the_rows_whose_members_are_finite(
    flaky: str, tmp_path: Path
) -> None:
    """An ensemble with a NaN member score gives that row no rank, and the others' ranks
    are taken among the finite rows only (one NaN must not shift every rank)."""
    result = noisesearch.search(
        model="digits", label=5, candidates=12, batch_size=6, top_k=12, evaluator="none",
        verifiers=["ensemble"], write=False,
        verifier_options={"ensemble": {"members": ["flaky", "digits-classifier"]}},
        registries=build_registries(get_plugin_manager()),
    )
    pool = [scores for _, _, scores in result.history]
    finite = [i for i, row in enumerate(pool) if all(math.isfinite(v) for v in row.values())]
    assert len(finite) == 6 and len(result.top) == 6
    assert {c.index for c in result.top} == set(finite)
    assert all(0.0 <= c.objective <= 1.0 for c in result.top)


def test_every_candidate_non_finite_fails_with_exit_1_and_keeps_the_folder(
    flaky: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), [
        "run", "--model", "digits", "--label", "1", "--candidates", "4", "--verifier", "all-nan",
        "--evaluator", "none", "-o", str(out),
    ])
    assert result.exit_code == 1, result.output
    assert "every one of the 4 candidates has a non-finite objective" in result.output
    assert "Traceback" not in result.output
    run = strict_load((out / "run.json").read_text())
    assert run["status"] == "failed" and "non-finite" in run["error"]
    assert len((out / "candidates.jsonl").read_text().splitlines()) == 4
    # a resume would replay the journaled NaN scores: the advice is to start it again
    assert run["resumable"] is False
    shown = " ".join(CliRunner().invoke(build_app(), ["show", str(out)]).output.split())
    assert "a resume would replay its journaled scores" in shown
    assert f"run.json -o {out} --overwrite" in shown  # (a run.json's output is not read back)
    assert "resume with" not in shown


@pytest.mark.parametrize("strategy", ["zero-order", "paths", "smc", "pruning"])
def test_every_strategy_steers_away_from_non_finite_scores(
    flaky: str, strategy: str, tmp_path: Path
) -> None:
    """Strategies rank their own proposals too (pivots, paths, particles, survivors): NaN and
    infinities must neither win there nor turn weights into NaN."""
    out = tmp_path / strategy
    result = noisesearch.search(
        model="digits", label=6, strategy=strategy, budget_nfe=240, batch_size=4, verifiers=["flaky"],
        evaluator="none", output=str(out), registries=build_registries(get_plugin_manager()),
    )
    assert result.top and all(math.isfinite(c.objective) for c in result.top)
    if strategy == "zero-order":  # its first pivot (index 0) scored NaN: a finite one replaced it
        rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
        assert max(len(row["recipe"]["start"].get("moves", [])) for row in rows) >= 2
    if strategy == "smc":
        assert all(math.isfinite(step["ess"]) for step in result.strategy_report["ess"])


@pytest.mark.parametrize(("returned", "named"), [([0.5, 0.5], "list"), (None, "NoneType")])
def test_scores_that_are_no_tensor_are_refused_by_what_they_are(returned: Any, named: str) -> None:
    """A list or None from ``score``: the contract's words, not ``'list' object has no attribute``."""
    import torch

    from noisesearch.accounting import Usage
    from noisesearch.scoring import Scorer
    from noisesearch.types import Condition

    class Listy:
        requires = frozenset()

        def score(self, images: Any, condition: Any, trajectory: Any = None) -> Any:
            return returned

    scorer = Scorer({"listy": Listy()}, None, {})
    with pytest.raises(noisesearch.NoiseSearchError) as caught:
        scorer.score(torch.zeros(2, 3, 8, 8), Condition(label=1), None, Usage())
    assert f"returned {named}, expected a torch tensor of shape (2,)" in str(caught.value)
