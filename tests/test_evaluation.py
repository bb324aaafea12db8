"""The evaluator scores what a run reports (baseline, running bests, top-k) unless
``evaluate_all`` asks for every candidate (noisesearch.evaluation)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from typer.testing import CliRunner

import noisesearch
from noisesearch.cli import build_app
from noisesearch.report import scaling_series

JUDGE = "digits-evaluator"


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines()]


def _search(folder: Path, **options: object) -> noisesearch.SearchResult:
    return noisesearch.search(model="digits", label=4, candidates=40, batch_size=8, steps=6,
                              output=str(folder), **options)


def test_by_default_only_the_reported_candidates_are_evaluated(tmp_path: Path) -> None:
    reported = _search(tmp_path / "reported")
    every = _search(tmp_path / "all", evaluate_all=True)
    run = json.loads((tmp_path / "reported" / "run.json").read_text())
    assert run["evaluated"] == "reported"
    assert json.loads((tmp_path / "all" / "run.json").read_text())["evaluated"] == "all"
    # The search itself is the same: same winners, same images, same objectives.
    assert torch.equal(reported.best.image, every.best.image)
    assert [c.index for c in reported.top] == [c.index for c in every.top]
    rows, all_rows = _rows(tmp_path / "reported"), _rows(tmp_path / "all")
    assert all(JUDGE in row["scores"] for row in all_rows)
    # Exactly the running bests, and the candidates the selection held when their batch was
    # scored (the top-k so far after the batch, and the baseline), carry the judge's score.
    top_k, batch = run["config"]["top_k"], run["config"]["batch_size"]
    best = -math.inf
    for i, (row, full) in enumerate(zip(rows, all_rows)):
        leads = row["objective"] > best
        best = max(best, row["objective"])
        end = (i // batch + 1) * batch  # the rows scored by the end of this row's batch
        held = sorted(rows[:end], key=lambda r: (r["objective"], -r["index"]), reverse=True)[:top_k]
        kept = any(r["index"] == row["index"] for r in held) or row["index"] == 0  # 0: the baseline
        assert (JUDGE in row["scores"]) == (leads or kept), row["index"]
        if JUDGE in row["scores"]:
            assert math.isclose(row["scores"][JUDGE], full["scores"][JUDGE], rel_tol=1e-5, abs_tol=1e-6)
    assert sum(JUDGE in row["scores"] for row in rows) < len(rows) * 0.6
    for entry in [*run["top"], run["baseline"], run["best"]]:  # everything reported is judged
        assert JUDGE in entry["scores"]


def test_the_report_says_when_the_oracle_line_is_absent(tmp_path: Path) -> None:
    _search(tmp_path / "reported")
    _search(tmp_path / "all", evaluate_all=True)
    assert "No oracle line" in (tmp_path / "reported" / "report.html").read_text()
    assert "No oracle line" not in (tmp_path / "all" / "report.html").read_text()
    rows = _rows(tmp_path / "all")
    labels = [label for label, *_ in scaling_series(rows, ["digits-classifier"], JUDGE, oracle=False)]
    assert f"{JUDGE} (evaluator)" not in labels and f"{JUDGE} of the searched best" in labels
    labels = [label for label, *_ in scaling_series(rows, ["digits-classifier"], JUDGE)]
    assert f"{JUDGE} (evaluator)" in labels


def test_the_cli_flag_evaluates_every_candidate(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), ["run", "--model", "digits", "--label", "2", "--candidates", "8",
                                      "--steps", "4", "--evaluate-all", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["evaluate_all"] is True and run["evaluated"] == "all"
    assert all(JUDGE in row["scores"] for row in _rows(out))


def test_the_verdicts_come_from_the_evaluators_scoring_call(monkeypatch) -> None:
    """An evaluator with ``score_and_predict`` gives the verdicts' predicted classes in the calls
    that score what the run reports: ``predict`` is never called, and the verdicts are those that
    ``predict`` gives (the evaluator without the method)."""
    from noisesearch_builtin.verifiers import digits_classifiers

    evaluator = digits_classifiers.DigitsEvaluator
    runs = [dict(label=label, seed=seed) for label, seed in ((0, 0), (3, 1), (5, 2), (8, 3))]

    def search(**options: object) -> noisesearch.SearchResult:
        return noisesearch.search(model="digits", candidates=24, batch_size=8, steps=6, write=False,
                                  **options)

    asked = {"predict": 0}
    original_predict = evaluator.predict

    def counted(self, images):  # noqa: ANN001, ANN202
        asked["predict"] += 1
        return original_predict(self, images)

    monkeypatch.setattr(evaluator, "predict", counted)
    fused = [search(**run).verdicts for run in runs]
    assert asked["predict"] == 0
    assert all(v["evaluator"] == JUDGE and "best_predicted" in v for v in fused)
    monkeypatch.setattr(evaluator, "score_and_predict", None)  # not callable: asked after the search
    asked_after = [search(**run).verdicts for run in runs]
    assert asked["predict"] == len(runs)
    assert fused == asked_after
    # Disagreeing verdicts are possible at all (the test would pass vacuously on one label).
    assert len({v["best_predicted"] for v in fused}) > 1


def test_score_and_predict_agrees_with_score_and_predict_called_apart() -> None:
    from noisesearch import Condition
    from noisesearch_builtin.verifiers.digits_classifiers import DigitsClassifier, DigitsEvaluator

    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for verifier in (DigitsEvaluator(), DigitsClassifier()):
        condition = Condition(label=7)
        scores, predicted = verifier.score_and_predict(images, condition)
        assert torch.equal(scores, verifier.score(images, condition))
        assert torch.equal(predicted, verifier.predict(images))


def test_the_evaluator_gets_ordinary_tensors_it_may_run_autograd_on(monkeypatch) -> None:
    """The reported candidates' images reach the evaluator as an ordinary copy, not a view of the
    model unit's inference-mode images: an evaluator with trainable weights that runs without
    no_grad (autograd saves its input) works, whichever rows it is given."""
    from noisesearch.evaluation import _rows
    from noisesearch_builtin.verifiers.digits_classifiers import DigitsEvaluator

    with torch.inference_mode():
        images = torch.rand(6, 3, 8, 8)
    for rows in ([1, 2, 3], [0, 2, 5], [4]):
        taken = _rows(images, rows)
        assert not taken.is_inference() and torch.equal(taken, images[rows])
    layer = torch.nn.Linear(3 * 8 * 8, 10)  # requires grad: a forward outside no_grad saves its input

    def score_and_predict(self, images, condition):  # noqa: ANN001, ANN202
        logits = layer(images.flatten(1))
        return logits[:, int(condition.label)].detach(), logits.argmax(dim=1)

    monkeypatch.setattr(DigitsEvaluator, "score_and_predict", score_and_predict)
    for candidates in (8, 16):  # 8 with the top-k of 8: every row of the batch, consecutive
        result = noisesearch.search(model="digits", label=2, candidates=candidates, steps=4, write=False)
        assert all(JUDGE in c.scores for c in [*result.top, result.baseline])
