"""The commands that read a run folder back (`replay`, `show`, `report`, `runs`) on a hand-edited or
damaged folder: one line naming the file and the field, exit code 2, never a traceback; and what
they print for odd but valid input (a path that is a file, an interrupted run, a run.json path)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import invoke, refused

import noisesearch
from noisesearch.errors import ConfigError
from noisesearch.plugins import build_registries
from noisesearch.recipes import recipe_problem


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = invoke("run", "--model", "digits", "--candidates", "2", "--label", "3", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    return out


def edited(finished: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of the finished run with ``edit`` applied to its run.json."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    data = json.loads((copy / "run.json").read_text())
    edit(data)
    (copy / "run.json").write_text(json.dumps(data))
    return copy


# -- replay: a damaged recipe -------------------------------------------------------------------


def _op(data: dict[str, Any]) -> dict[str, Any]:
    return data["best"]["recipe"]["ops"][0]


def _subspace(data: dict[str, Any]) -> None:
    """An evolution-style noise whose layout is not the digits latent's (1 x 8 x 8)."""
    data["best"]["recipe"]["start"] = {"kind": "subspace", "seed": 1, "transform": "dct-ii",
                                       "layout": [1, 4, 16], "band": [1, 1], "coefficients": [0.5]}


RECIPE_DAMAGE: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    # name: (edit of run.json, the field the message names)
    "ops-a-string": (lambda d: d["best"]["recipe"].__setitem__("ops", "x"), "best.recipe.ops"),
    "op-not-a-table": (lambda d: d["best"]["recipe"]["ops"].__setitem__(0, 5), "best.recipe.ops[0]"),
    "unknown-op": (lambda d: _op(d).__setitem__("op", "teleport"), "best.recipe.ops[0].op"),
    "no-levels": (lambda d: _op(d).pop("levels"), "best.recipe.ops[0].levels"),
    "rising-levels": (lambda d: _op(d).__setitem__("levels", [0.0, 1.0]), "best.recipe.ops[0].levels"),
    "seed-a-string": (lambda d: d["best"]["recipe"]["start"].__setitem__("seed", "abc"),
                      "best.recipe.start.seed"),
    "row-out-of-batch": (lambda d: _op(d).__setitem__("row", 99), "best.recipe.ops[0].row"),
    "batch-a-float": (lambda d: _op(d).__setitem__("batch", 1.5), "best.recipe.ops[0].batch"),
    "batch-beyond-the-run": (lambda d: _op(d).__setitem__("batch", 10**9), "best.recipe.ops[0].batch"),
    "decode-row": (lambda d: d["best"]["recipe"]["decode"].__setitem__("row", -1), "best.recipe.decode.row"),
    "renoise-downwards": (lambda d: d["best"]["recipe"]["ops"].append(
        {"op": "renoise", "from": 0.5, "to": 0.2, "seed": 1}), "best.recipe.ops[1].to"),
    "neighbour-moves": (lambda d: d["best"]["recipe"].__setitem__(
        "start", {"kind": "neighbour", "root": 1, "moves": [[2, "far"]]}), "best.recipe.start.moves"),
    "subspace-layout": (_subspace, "best.recipe.start.layout"),
    "inputs-a-list": (lambda d: d["best"]["recipe"].__setitem__("inputs", [1]), "best.recipe.inputs"),
}


@pytest.mark.parametrize("damage", list(RECIPE_DAMAGE))
def test_replay_names_the_damaged_field_of_the_recipe(finished: Path, tmp_path: Path, damage: str) -> None:
    edit, field = RECIPE_DAMAGE[damage]
    copy = edited(finished, tmp_path, edit)
    refused(invoke("replay", str(copy)), 2, str(copy / "run.json"), field)
    assert not (copy / "replay.png").exists()


def test_replay_of_an_intact_run_is_unchanged_and_takes_its_run_json(finished: Path, tmp_path: Path) -> None:
    copy = edited(finished, tmp_path, lambda d: None)
    result = invoke("replay", str(copy / "run.json"))
    refused(result, 0, "identical (bit for bit)", f"wrote {copy / 'replay.png'}")
    assert (copy / "replay.png").is_file()


def test_replay_without_a_recorded_score_prints_a_dash(finished: Path, tmp_path: Path) -> None:
    copy = edited(finished, tmp_path, lambda d: d["best"].__setitem__("scores", {}))
    refused(invoke("replay", str(copy)), 0, "identical", "(recorded -)")


@pytest.mark.parametrize("strategy", ["random", "zero-order", "paths", "smc", "pruning", "stochastic",
                                      "gradient", "evolution"])
def test_every_strategy_s_recipes_pass_the_replay_check(strategy: str) -> None:
    """The check refuses only damage: every recipe a built-in strategy writes is well formed."""
    result = noisesearch.search(model="digits", label=3, budget_nfe=400, strategy=strategy, write=False,
                                registries=_registries())
    for candidate in (result.best, result.baseline, *result.top):
        recipe = json.loads(json.dumps(candidate.recipe))  # as read back from run.json
        assert recipe_problem(recipe, (64,), result.config.batch_size) is None, recipe


def _registries() -> Any:
    if not hasattr(_registries, "built"):
        _registries.built = build_registries()  # type: ignore[attr-defined]
    return _registries.built  # type: ignore[attr-defined]


# -- show and report: damaged run.json and candidates.jsonl ----------------------------------


RUN_JSON_DAMAGE: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "best-scores-a-list": (lambda d: d["best"].__setitem__("scores", [1, 2]), "'best.scores' is a list"),
    "baseline-scores-a-string": (lambda d: d["baseline"].__setitem__("scores", "x"), "'baseline.scores'"),
    "top-a-string": (lambda d: d.__setitem__("top", "x"), "'top' is a str"),
    "top-of-numbers": (lambda d: d.__setitem__("top", [1]), "'top[0]' is an int"),
    "top-scores": (lambda d: d["top"][1].__setitem__("scores", [1]), "'top[1].scores'"),
    "verifiers-a-string": (lambda d: d["config"].__setitem__("verifiers", "digits-classifier"),
                           "'config.verifiers'"),
    "verifiers-of-numbers": (lambda d: d["config"].__setitem__("verifiers", [1]), "'config.verifiers[0]'"),
    "evaluator-a-list": (lambda d: d["config"].__setitem__("evaluator", ["x"]), "'config.evaluator'"),
    "non-finite-a-list": (lambda d: d.__setitem__("non_finite", [1]), "'non_finite'"),
    "non-finite-scores": (lambda d: d["non_finite"].__setitem__("scores", [1]), "'non_finite.scores'"),
    "verdicts-a-string": (lambda d: d.__setitem__("verdicts", "x"), "'verdicts'"),
    "clauses-not-pairs": (lambda d: d["verdicts"].__setitem__("best_clauses", [[1, 2, 3]]),
                          "'verdicts.best_clauses[0]'"),
}


@pytest.mark.parametrize("command", ["show", "report"])
@pytest.mark.parametrize("damage", list(RUN_JSON_DAMAGE))
def test_show_and_report_name_the_damaged_field_of_run_json(
    finished: Path, tmp_path: Path, command: str, damage: str
) -> None:
    edit, phrase = RUN_JSON_DAMAGE[damage]
    copy = edited(finished, tmp_path, edit)
    refused(invoke(command, str(copy)), 2, str(copy / "run.json"), phrase)


def test_runs_lists_a_run_with_a_damaged_field_beside_the_others(finished: Path, tmp_path: Path) -> None:
    edited(finished, tmp_path, lambda d: d.__setitem__("top", "x"))
    shutil.copytree(finished, tmp_path / "good")
    result = invoke("runs", str(tmp_path), "--json")
    refused(result, 0)
    rows = {row["run"]: row for row in json.loads(result.output)}
    assert "'top' is a str" in rows["copy"]["error"] and "error" not in rows["good"]


@pytest.mark.parametrize(("key", "value"), [("objective", "x"), ("scores", {"digits-classifier": "x"}),
                                            ("nfe_spent", [1]), ("non_finite_values", 3)])
def test_show_and_report_name_a_damaged_candidate_line(
    finished: Path, tmp_path: Path, key: str, value: Any
) -> None:
    copy = edited(finished, tmp_path, lambda d: d.update(complete=False, status="interrupted"))
    lines = (copy / "candidates.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first[key] = value
    (copy / "candidates.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    for command in ("show", "report"):
        refused(invoke(command, str(copy)), 2, f"{copy / 'candidates.jsonl'}:1")


# -- small messages -----------------------------------------------------------------------------


def test_show_of_a_run_stopped_before_it_counted_prints_dashes(finished: Path, tmp_path: Path) -> None:
    copy = edited(finished, tmp_path, lambda d: (d.update(complete=False, status="interrupted"),
                                                 d.pop("usage")))
    (copy / "candidates.jsonl").unlink()
    result = invoke("show", str(copy))
    refused(result, 0, "- candidates, - NFEs")
    assert "None" not in result.output


@pytest.mark.parametrize("command", ["show", "runs", "report", "replay"])
def test_a_path_that_is_a_file_is_not_called_missing(tmp_path: Path, command: str) -> None:
    path = tmp_path / "afile"
    path.write_text("hello")
    result = invoke(command, str(path))
    refused(result, 2, "is a file, not a")
    assert "does not exist" not in result.output


def test_search_refuses_a_write_that_is_not_a_bool(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="^write: .*'no'"):
        noisesearch.search(model="digits", label=3, candidates=2, output=str(out), write="no")
    assert not out.exists()
