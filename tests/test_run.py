"""`noisesearch run` and `noisesearch.search()` on the embedded digits model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import noisesearch
from noisesearch.api import plan
from noisesearch.cli import build_app
from noisesearch.config import RunConfig
from noisesearch.engine import derive_seed
from noisesearch.errors import ConfigError, IncompatibleError, UnknownNameError
from noisesearch.sampling import draw_noise

RUN_FILES = {"run.json", "candidates.jsonl", "best.png", "baseline.png", "grid.png",
             "best_noise.safetensors"}


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def test_default_run_writes_a_run_directory_whose_best_beats_the_first(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("run", "--model", "digits", "--output", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= RUN_FILES
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is True
    assert run["config"]["strategy"] == "random" and run["config"]["steps"] == 20
    assert run["usage"]["candidates"] == 16 and run["usage"]["nfe"] == 16 * 20
    assert run["best"]["objective"] >= run["baseline"]["objective"]
    lines = (out / "candidates.jsonl").read_text().splitlines()
    assert len(lines) == 16
    objectives = [json.loads(line)["objective"] for line in lines]
    assert run["best"]["objective"] == max(objectives)
    assert run["baseline"]["objective"] == objectives[0]


def test_the_same_command_twice_gives_identical_scores(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = invoke("run", "--model", "digits", "-o", str(tmp_path / name), "-q", "--seed", "5")
        assert result.exit_code == 0
    first, second = ((tmp_path / n / "candidates.jsonl").read_text() for n in ("a", "b"))
    assert first == second


def test_run_prints_first_candidate_against_best(tmp_path: Path) -> None:
    result = invoke("run", "--model", "digits", "-o", str(tmp_path / "r"), "--label", "3")
    assert result.exit_code == 0, result.output
    assert "no search" in result.output and "best of 16" in result.output
    assert "judge says" in result.output


def test_json_summary_is_machine_readable(tmp_path: Path) -> None:
    result = invoke("run", "--model", "digits", "-o", str(tmp_path / "r"), "--json", "--candidates", "4")
    summary = json.loads(result.stdout)
    assert summary["usage"]["candidates"] == 4
    assert summary["condition"]["label"] in range(10)


def test_api_returns_result_and_writes_nothing_when_asked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = noisesearch.search(model="digits", label=7, candidates=8, write=False)
    assert result.run_dir is None and not list(tmp_path.iterdir())
    assert result.condition.label == 7
    assert result.best.objective == max(c.objective for c in result.top)
    assert result.usage.nfe == 8 * 20


def test_label_is_drawn_from_the_seed_when_not_given() -> None:
    labels = {plan(RunConfig(model="digits", seed=seed)).condition.label for seed in range(20)}
    assert len(labels) > 3 and labels <= set(range(10))
    same = [plan(RunConfig(model="digits", seed=4)).condition for _ in range(2)]
    assert same[0] == same[1]


def test_nfe_budget_is_never_exceeded() -> None:
    result = noisesearch.search(model="digits", label=1, budget_nfe=50, write=False)
    assert result.usage.nfe == 40 and result.usage.candidates == 2


def test_heun_costs_two_nfes_per_step_but_one_for_the_last() -> None:
    result = noisesearch.search(model="digits", label=1, candidates=3, steps=10, solver="heun", write=False)
    assert result.nfe_per_candidate == 19
    assert result.usage.nfe == 3 * 19


def test_only_the_top_k_keep_images() -> None:
    result = noisesearch.search(model="digits", label=2, candidates=40, top_k=3, batch_size=8, write=False)
    assert len(result.top) == 3
    assert all(c.image is not None and c.image.shape == (3, 8, 8) for c in result.top)
    assert [c.objective for c in result.top] == sorted((c.objective for c in result.top), reverse=True)


def test_a_candidate_regenerates_bit_for_bit_from_its_recipe() -> None:
    from noisesearch.recipes import replay
    from noisesearch_builtin.models.digits import DigitsModel

    result = noisesearch.search(model="digits", label=4, candidates=12, write=False, seed=3)
    best = result.best
    model = DigitsModel()
    levels = model.schedule.levels(20)
    assert best.recipe == {
        "start": {"kind": "seed", "seed": derive_seed(3, best.index)},
        "ops": [{"op": "solve", "levels": levels, "batch": 12, "row": best.index}],
        "decode": {"batch": 12, "row": best.index},
    }
    noise = draw_noise([best.recipe["start"]["seed"]], model.latent_shape)
    assert torch.equal(noise[0], best.noise)
    prepared = model.prepare(result.condition)
    latent = replay(best.recipe, lambda x, s: model.denoise(x, s, prepared), model.schedule, "ddim",
                    model.latent_shape)
    assert torch.equal(model.decode(latent[None])[0], best.image)


def test_search_improves_the_independent_judges_agreement() -> None:
    """Best-of-64 on the searched classifier raises the *other* classifier's agreement."""
    agreement = {}
    for candidates in (1, 64):
        hits = 0
        for label in range(10):
            for seed in range(3):
                r = noisesearch.search(model="digits", label=label, candidates=candidates, seed=seed,
                                       write=False)
                hits += r.verdicts["best_agrees"]
        agreement[candidates] = hits / 30
    assert agreement[64] > agreement[1] + 0.15, agreement


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--verifier", "digits-clasifier"], "Did you mean: digits-classifier"),
        (["--strategy", "randm"], "Available strategies"),
        (["--label", "10"], "label: must be in 0..9"),
        (["--prompt", "a cat"], "class-conditional"),
        (["--candidates", "0"], "candidates: must be a positive integer"),
        (["--steps", "-3"], "steps: must be a positive integer"),
        (["--budget-nfe", "0"], "budget_nfe: must be a positive integer"),
        (["--solver", "rk4"], "solver: must be one of"),
        (["--model-opt", "nonsense=1"], "Valid options: device, guidance_scale, weights"),
        (["--verifier-opt", "digits-classifier.x=1"], "option 'x'"),
        (["--strategy-opt", "foo=1"], "Valid options: (none)"),
        (["--device", "nonsense"], "device: must be"),
        (["--strategy", "zero-order", "--strategy-opt", "cosine=2"], "zero-order.cosine"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_no_run(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    result = invoke("run", "--model", "digits", "-o", str(out), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_unwritable_output_folder_is_refused_before_compute(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("run", "--model", "digits", "-o", str(blocker / "run"))
    assert result.exit_code == 2
    assert "output:" in result.output and "not a folder" in result.output


def test_api_raises_typed_errors_before_loading() -> None:
    with pytest.raises(UnknownNameError):
        noisesearch.search(model="nope", write=False)
    with pytest.raises(IncompatibleError):
        noisesearch.search(model="digits", prompt="a cat", write=False)
    with pytest.raises(ConfigError, match="Valid fields"):
        noisesearch.search(candidate=3, write=False)


def test_the_training_script_produces_weights_the_model_loads(tmp_path: Path) -> None:
    """A tiny retraining run through the real script, loaded back through the model's option."""
    from noisesearch_builtin.digits.train import train_all

    metrics = train_all(tmp_path, seed=1, flow_steps=5, classifier_epochs=1, samples_per_label=1)
    assert metrics
    result = noisesearch.search(model="digits",
        label=3, candidates=4, write=False, evaluator="none",
        model_options={"weights": str(tmp_path / "digits_flow.safetensors")},
        verifier_options={"digits-classifier": {"weights": str(tmp_path / "digits_classifier.safetensors")}},
    )
    assert result.usage.candidates == 4


def test_replay_and_resume_refuse_folders_that_are_not_finished_runs(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{")
    for args in (["replay", str(tmp_path / "bad")], ["run", "--resume", str(tmp_path / "bad")],
                 ["replay", str(tmp_path / "nothing-here")]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "Error:" in result.output and "Traceback" not in result.output
