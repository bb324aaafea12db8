"""Plugin faults are attributed and contained (issue 10, item 6), and failed runs look failed
(item 9): an exception inside a strategy, verifier or model is reported as
``strategy 'NAME' (plugin DIST) failed: ...``, the run exits 1 with no traceback, and
``show``, ``runs`` and ``report.html`` say "failed: <error>" with a resume hint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hand_plugins import install_plugin
from typer.testing import CliRunner

import noisesearch
from noisesearch.cli import build_app
from noisesearch.plugins import build_registries, get_plugin_manager

FAULTY_PLUGIN = """
    import torch

    from noisesearch import hookimpl
    from noisesearch.recipes import seed_recipe
    from noisesearch.sampling import RectifiedFlow

    class Boom:
        \"\"\"Evaluates one batch, then raises.\"\"\"

        def run(self, context):
            context.evaluate([seed_recipe(s) for s in context.seeds(2)])
            raise ValueError("bad proposal")

    class EmptyFirst:
        \"\"\"Asks for nothing first (a search that filtered every proposal away), then works.\"\"\"

        def run(self, context):
            assert context.evaluate([]) == []
            context.evaluate([seed_recipe(s) for s in context.seeds(context.affordable() or 2)])

    class Idle:
        def run(self, context):
            pass

    class Greedy:
        def run(self, context):
            context.evaluate([seed_recipe(s) for s in context.seeds(1000)])

    class Explodes:
        requires = frozenset()

        def score(self, images, condition, trajectory=None):
            raise RuntimeError("verifier on fire")

    class Brightness:
        requires = frozenset()

        def score(self, images, condition, trajectory=None):
            return images.mean(dim=(1, 2, 3))

    class Broken:
        \"\"\"An unconditional model whose network fails on its first call.\"\"\"

        conditioning = "none"
        default_verifiers = ("brightness",)
        default_steps = 4

        def __init__(self):
            self.schedule = RectifiedFlow()
            self.latent_shape = (3, 4, 4)

        def prepare(self, condition):
            return None

        def denoise(self, x, sigma, prepared):
            raise KeyError("missing layer")

        def decode(self, x0):
            return x0

    @hookimpl
    def register_search_strategies(register):
        register("boom", Boom)
        register("empty-first", EmptyFirst)
        register("idle", Idle)
        register("greedy", Greedy)

    @hookimpl
    def register_verifiers(register):
        register("explodes", Explodes)
        register("brightness", Brightness)

    @hookimpl
    def register_models(register):
        register("broken", Broken)
"""


@pytest.fixture
def faulty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    plugins = tmp_path / "site"
    plugins.mkdir()
    return install_plugin(plugins, monkeypatch, "faulty", FAULTY_PLUGIN)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "blamed"),
    [
        (["--model", "digits", "--label", "1", "--strategy", "boom"],
         "strategy 'boom' (plugin {dist}) failed: ValueError: bad proposal"),
        (["--model", "digits", "--label", "1", "--verifier", "explodes"],
         "verifier 'explodes' (plugin {dist}) failed: RuntimeError: verifier on fire"),
        (["--model", "broken"], "model 'broken' (plugin {dist}) failed: KeyError: 'missing layer'"),
    ],
)
def test_a_plugin_exception_names_the_plugin_and_fails_the_run(
    faulty: str, tmp_path: Path, args: list[str], blamed: str
) -> None:
    out = tmp_path / "run"
    code, output = run("run", *args, "--candidates", "4", "--evaluator", "none", "-o", str(out))
    assert code == 1, output
    assert blamed.format(dist=faulty) in " ".join(output.split())
    assert "Traceback" not in output
    saved = json.loads((out / "run.json").read_text())
    assert saved["status"] == "failed" and blamed.format(dist=faulty) in saved["error"]


def test_a_builtin_verifier_is_blamed_on_the_noisesearch_distribution(tmp_path: Path, monkeypatch) -> None:
    from noisesearch_builtin.verifiers import digits_classifiers

    def crash(self, images, grad=False):  # noqa: ANN001, ANN202
        raise ZeroDivisionError("division by zero")

    # the evaluator's one forward pass, under score and score_and_predict
    monkeypatch.setattr(digits_classifiers.DigitsEvaluator, "log_probs", crash)
    with pytest.raises(noisesearch.NoiseSearchError) as caught:
        noisesearch.search(model="digits", label=2, candidates=2, write=False)
    assert str(caught.value) == (
        "verifier 'digits-evaluator' (plugin noisesearch) failed: ZeroDivisionError: division by zero"
    )
    assert caught.value.exit_code == 1


def test_evaluating_no_recipe_is_a_no_op(faulty: str) -> None:
    result = noisesearch.search(model="digits", label=4, candidates=3, strategy="empty-first",
                                write=False, registries=build_registries(get_plugin_manager()))
    assert result.usage.candidates == 3


def test_evaluated_no_candidate_names_the_strategy(faulty: str, tmp_path: Path) -> None:
    code, output = run("run", "--model", "digits", "--label", "1", "--strategy", "idle",
                       "--candidates", "2", "-o", str(tmp_path / "run"))
    said = " ".join(output.split())
    assert code == 1 and "strategy 'idle' (plugin " in said and "evaluated no candidate: it returned" in said
    code, output = run("run", "--model", "digits", "--label", "1", "--strategy", "greedy",
                       "--candidates", "8", "-o", str(tmp_path / "run2"))
    said = " ".join(output.split())  # the cause, not the budget: 8 candidates pay for a sample
    assert code == 1 and "strategy 'greedy' (plugin " in said and "1000 more candidates asked" in said
    assert "budget (8 candidates, no NFE limit) pays for a full sample" in said


def test_a_failed_run_looks_failed_in_show_runs_and_report(faulty: str, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "failed"
    code, _ = run("run", "--model", "digits", "--label", "1", "--strategy", "boom",
                  "--candidates", "12", "-o", str(out))
    assert code == 1
    blamed = f"failed: PluginFailed: strategy 'boom' (plugin {faulty}) failed: ValueError: bad proposal"

    code, shown = run("show", str(out))
    flat = " ".join(shown.split())
    assert code == 0 and blamed in flat and f"noisesearch run --resume {out}" in flat
    assert "[red]" not in shown and "incomplete" not in shown
    assert "12 candidates" in flat  # the budget

    code, listed = run("runs", str(tmp_path / "runs"))
    assert code == 0 and "failed:" in listed and "--resume" in listed
    row = json.loads(CliRunner().invoke(build_app(), ["runs", str(tmp_path / "runs"), "--json"]).stdout)[0]
    assert row["status"] == "failed" and row["budget_candidates"] == 12

    code, _ = run("report", str(out))
    page = (out / "report.html").read_text()
    assert code == 0 and "Run failed: PluginFailed: strategy &#x27;boom&#x27;" in page
    assert "once its cause is fixed, resume with `noisesearch run --resume" in page


def test_a_decode_that_returns_no_tensor_is_blamed_on_the_model() -> None:
    """What the engine does with a decode's output (``.float().clamp(0, 1)``) runs inside the
    model's blame: a decode that returns something else fails the run naming the model."""
    import torch

    from noisesearch.faults import Owner, PluginFailed
    from noisesearch.testing import GaussianModel
    from noisesearch.units import DECODE, Unit, compute

    class NumpyDecode(GaussianModel):
        def decode(self, x0):  # noqa: ANN001, ANN202
            return x0.numpy()  # a plugin's bug: not a tensor

    model = NumpyDecode()
    owner = Owner("model", "numpy-decode", "a-plugin")
    with pytest.raises(PluginFailed, match="model 'numpy-decode' .*AttributeError"):
        compute(model, None, "ddim", Unit(DECODE, torch.zeros(2, *model.latent_shape)), owner)
