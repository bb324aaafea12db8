"""Values of the wrong kind are refused while the run is planned, naming the field, before any
folder exists: RunConfig fields from every path (files, ``--set``, ``search(**fields)``, a
RunConfig built by hand) and plugin options against their factories' annotations. Also: a
negative prompt a model cannot use, a verifier named twice, ``~`` in paths."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import noisesearch
from noisesearch import ConfigError
from noisesearch.cli import build_app
from noisesearch.config import RunConfig, load_config_file, read_prompts
from noisesearch.planning import plan, plan_saved_run
from noisesearch.plugins import build_registries
from noisesearch.registry import Registry
from noisesearch.testing import GaussianModel

DIGITS = ["--model", "digits", "--label", "3"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(build_app(), list(args))


def refused(result: Result, *phrases: str) -> str:
    """Exit code 2 with one clear line (no traceback); the output, its lines joined."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = " ".join(result.output.split())
    assert "Traceback" not in text
    for phrase in phrases:
        assert phrase in text, text
    return text


# -- M1: RunConfig fields from the Python API -------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("overwrite", "no"), ("evaluate_all", 1), ("overlap", "yes"),
    ("verifiers", "digits-classifier"), ("verifiers", [1]), ("strategy", None),
    ("evaluator", ["digits-evaluator"]), ("model_options", None), ("verifier_options", {"x": 1}),
    ("strategy_options", []), ("output", 5), ("top_k", None), ("top_k", 2.0), ("seed", True),
    ("negative_prompt", 5), ("label", True), ("device", 0), ("model", None),
])
def test_search_refuses_a_field_of_the_wrong_kind(field: str, value: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fields = {"model": "digits", "label": 3, "candidates": 2, "output": str(out), field: value}
    with pytest.raises(ConfigError, match=f"^{field}: "):
        noisesearch.search(**fields)
    assert not out.exists()


def test_overwrite_no_does_not_replace_a_finished_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    noisesearch.search(model="digits", label=3, candidates=2, steps=2, output=str(out))
    before = (out / "run.json").read_bytes()
    with pytest.raises(ConfigError, match="overwrite: must be true or false, got 'no'"):
        noisesearch.search(model="digits", label=3, candidates=3, steps=2, output=str(out), overwrite="no")
    assert (out / "run.json").read_bytes() == before


def test_a_run_config_built_by_hand_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="evaluate_all: must be true or false"):
        plan(RunConfig(model="digits", label=3, evaluate_all="no"), check_output=False)


def test_an_output_path_object_is_planned_as_text(tmp_path: Path) -> None:
    checked = plan(RunConfig(model="digits", label=3, output=tmp_path / "run"), check_output=False)
    assert checked.output == tmp_path / "run" and checked.config.output == str(tmp_path / "run")
    json.dumps(checked.config.to_json())  # run.json takes it


# -- M2, L1, M3: plugin option values against the factories' annotations -----------------------


@pytest.mark.parametrize(("strategy", "option", "expected"), [
    ("zero-order", "neighbours=2.5", "zero-order.neighbours: expected an integer, got 2.5"),
    ("zero-order", "neighbours=abc", "zero-order.neighbours: expected an integer, got 'abc'"),
    ("zero-order", "iterations=2.5", "zero-order.iterations: expected an integer or null, got 2.5"),
    ("zero-order", "pivot_competes=maybe", "zero-order.pivot_competes: expected true or false, got 'maybe'"),
    ("zero-order", "pivot_competes=False", "zero-order.pivot_competes: expected true or false, got 'False'"),
    ("zero-order", "cosine=abc", "zero-order.cosine: expected a finite number, got 'abc'"),
    ("paths", "children=2.5", "paths.children: expected an integer, got 2.5"),
    ("paths", "forward=abc", "paths.forward: expected a finite number"),
    # the factory's own check, in the stochastic sampler (a subclass of paths) under its own name
    ("stochastic", "backward=0.1", "stochastic.backward: need 0 < forward < backward"),
    ("paths", "backward=0.1", "paths.backward: need 0 < forward < backward"),
    ("smc", "resample_every=1.5", "smc.resample_every: expected an integer, got 1.5"),
    ("smc", "particles=2.5", "smc.particles: expected an integer or null, got 2.5"),
    ("smc", "churn=true", "smc.churn: expected a finite number, got True"),
])
def test_a_strategy_option_of_the_wrong_kind_is_refused_before_the_run_folder(
    strategy: str, option: str, expected: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    refused(invoke("run", *DIGITS, "--budget-nfe", "200", "--strategy", strategy, "--strategy-opt", option,
                   "-o", str(out)), expected)
    assert not out.exists()


@pytest.mark.parametrize(("model", "option", "expected"), [
    (DIGITS, "guidance_scale=nan", "digits.guidance_scale: expected a finite number, got 'nan'"),
    (DIGITS, "guidance_scale=abc", "digits.guidance_scale: expected a finite number, got 'abc'"),
    (["--model", "shapes"], "guidance_scale=nan", "shapes.guidance_scale: expected a finite number or null"),
    (["--model", "shapes"], "vae_tiling=no", "shapes.vae_tiling: expected true or false, got 'no'"),
    (["--model", "shapes"], "use_safetensors=no", "shapes.use_safetensors: expected true or false"),
])
def test_a_model_option_of_the_wrong_kind_is_refused_before_the_run_folder(
    model: list[str], option: str, expected: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    refused(invoke("run", *model, "--candidates", "2", "--model-opt", option, "-o", str(out)), expected)
    assert not out.exists()


def test_a_non_finite_float_option_is_refused_wherever_it_comes_from() -> None:
    registries = build_registries()
    for value in (math.nan, math.inf, -math.inf, 10**400):
        with pytest.raises(ConfigError, match="digits.guidance_scale: expected a finite number"):
            registries.models.create("digits", guidance_scale=value)


def test_options_of_the_right_kind_still_plan() -> None:
    result = invoke("run", *DIGITS, "--budget-nfe", "200", "--strategy", "zero-order", "--dry-run",
                    "--strategy-opt", "neighbours=2", "--strategy-opt", "cosine=1e-1",
                    "--strategy-opt", "pivot_competes=false", "--strategy-opt", "iterations=null",
                    "--model-opt", "guidance_scale=2")  # an int for a float
    assert result.exit_code == 0, result.output


def _factory(flag: bool = True, count: int = 1, scale: float = 1.0, name: str | None = None,
             layers: list[int] | None = None, table: dict[str, Any] | None = None,
             names: Sequence[str] = (), anything=None) -> None:  # noqa: ANN001
    """A factory with an option of each kind of annotation."""


@pytest.mark.parametrize(("option", "value", "ok"), [
    ("flag", False, True), ("flag", "no", False), ("flag", 0, False),
    ("count", 3, True), ("count", 3.0, False), ("count", True, False),
    ("scale", 3, True), ("scale", 0.5, True), ("scale", True, False), ("scale", math.nan, False),
    ("name", None, True), ("name", "x", True), ("name", 1, False),
    ("layers", [1, 2], True), ("layers", (1,), True), ("layers", [1.5], False), ("layers", 1, False),
    ("table", {"a": 1}, True), ("table", [1], False),
    ("names", 5, True), ("anything", object(), True),  # not a simple annotation: the factory's to check
])
def test_option_values_are_checked_against_simple_annotations(option: str, value: Any, ok: bool) -> None:
    registry = Registry("strategy")
    registry.add("hand", _factory, "tests")
    if ok:
        registry.get("hand").check_options({option: value})
    else:
        with pytest.raises(ConfigError, match=f"^hand.{option}: expected "):
            registry.get("hand").check_options({option: value})


def test_every_registered_default_fits_its_own_annotation() -> None:
    """The annotations the checks read are right: each option's default passes its check."""
    from noisesearch.registry import value_checks

    registries = build_registries()
    wrong = [
        f"{kind} {entry.name}.{param.name}: {param.annotation} = {param.default!r}"
        for kind in ("model", "verifier", "strategy")
        for entry in registries.of(kind)
        for param in entry.parameters()
        if not param.required and param.name in value_checks(entry.factory)
        and not value_checks(entry.factory)[param.name][0](param.default)
    ]
    assert wrong == []


# -- M6: a negative prompt the model cannot use --------------------------------------------------


def test_a_negative_prompt_on_a_class_conditional_model_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    refused(invoke("run", *DIGITS, "--negative-prompt", "x", "--candidates", "2", "-o", str(out)),
            "negative_prompt:", "class-conditional")
    assert not out.exists()


def test_a_negative_prompt_on_an_unconditional_model_is_refused() -> None:
    registries = build_registries()
    registries.models.add("gaussian", GaussianModel, "tests")
    with pytest.raises(ConfigError, match="negative_prompt: .*unconditional"):
        plan(RunConfig(model="gaussian", negative_prompt="x"), registries, check_output=False)


# -- M8: a leading ~ is the home folder ---------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of the test's own, and a working folder apart from it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return home


def test_an_output_under_tilde_goes_to_the_home_folder(home: Path) -> None:
    checked = plan(RunConfig(model="digits", label=3, output="~/run"))
    assert checked.output == home / "run" and checked.config.output == str(home / "run")
    config = home / "t.toml"
    config.write_text('model = "digits"\nlabel = 3\noutput = "~/from-file"\n')
    result = invoke("run", "--config", "~/t.toml", "--dry-run")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == str(home / "from-file")
    assert not (Path.cwd() / "~").exists()


def test_config_and_prompts_files_under_tilde_are_read_from_the_home_folder(home: Path) -> None:
    (home / "t.toml").write_text('model = "digits"\n')
    (home / "p.txt").write_text("a red circle\n")
    assert load_config_file("~/t.toml") == {"model": "digits"}
    assert read_prompts("~/p.txt") == ["a red circle"]


# -- L2: an evaluator searched on is labelled so; each verifier once ------------------------------


def test_a_verifier_named_twice_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    refused(invoke("run", *DIGITS, "--verifier", "digits-classifier", "--verifier", "digits-classifier",
                   "--candidates", "2", "-o", str(out)), "verifiers: 'digits-classifier' is named twice")
    assert not out.exists()


def test_an_ensemble_is_refused_as_the_evaluator(tmp_path: Path) -> None:
    """It ranks the images scored together: a lone winner would score 1 whatever it shows."""
    out = tmp_path / "run"
    refused(invoke("run", *DIGITS, "--evaluator", "ensemble", "-o", str(out)),
            "evaluator:", "ranks images within each scored batch")
    assert not out.exists()


def test_an_evaluator_searched_on_as_an_ensembles_member_is_not_called_independent(tmp_path: Path) -> None:
    members = "ensemble.members=digits-classifier,digits-evaluator"
    result = invoke("run", *DIGITS, "--verifier", "ensemble", "--verifier-opt", members,
                    "--candidates", "2", "--steps", "2", "-o", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "judge: digits-evaluator (also searched on: not independent)" in text


@pytest.mark.parametrize("named", [False, True], ids=["default-evaluator", "named-evaluator"])
def test_an_evaluator_that_is_also_searched_on_is_not_called_independent(named: bool, tmp_path: Path) -> None:
    """The quickstart's oracle ceiling (``--verifier shapes-judge``, whose default evaluator it is),
    or an evaluator named as one of the verifiers: the run goes on, the table does not call the
    judge independent (it was: probe L2), and the saved run plans again (``plan`` writes the
    resolved evaluator into the configuration, so planning it twice must not refuse it)."""
    out = tmp_path / "run"
    named_evaluator = ["--evaluator", "digits-evaluator"] if named else []
    result = invoke("run", *DIGITS, "--verifier", "digits-evaluator", *named_evaluator, "--candidates", "2",
                    "--steps", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "judge: digits-evaluator (also searched on: not independent)" in text
    assert "independent, not searched on" not in text
    checked, _ = plan_saved_run(out)
    assert checked.evaluator.name == "digits-evaluator"
    repeated = invoke("run", "--config", str(out / "run.json"), "--dry-run")
    assert repeated.exit_code == 0, repeated.output
    # every view of the folder says so too, not only the run's table
    shown = " ".join(invoke("show", str(out)).output.split())
    assert "digits-evaluator (also searched on: not independent)" in shown
    assert "judged by <b>digits-evaluator (also searched on: not independent)</b>" in \
        (out / "report.html").read_text()


# -- L5: one ensemble weight ----------------------------------------------------------------------


def test_one_ensemble_weight_for_two_members_names_the_count_before_loading(tmp_path: Path) -> None:
    out = tmp_path / "run"
    text = refused(invoke("run", *DIGITS, "--verifier", "ensemble", "--candidates", "2", "-o", str(out),
                          "--verifier-opt", "ensemble.members=digits-classifier,digits-evaluator",
                          "--verifier-opt", "ensemble.weights=1"),
                   "ensemble.weights: 1 weights for 2 members")
    assert "loading" not in text and not out.exists()


def test_one_ensemble_weight_for_one_member_is_a_list_of_one() -> None:
    ensemble = build_registries().verifiers.create("ensemble", members="digits-classifier", weights=1)
    assert ensemble.weights == {"digits-classifier": 1.0}


@pytest.mark.parametrize("requires", [["prompt", "colour"], "prompt", None, 5])
def test_a_verifier_declaring_unknown_needs_is_refused_naming_its_plugin(requires: object) -> None:
    """An unknown need would never be checked, and a string is read letter by letter."""
    from noisesearch import ConfigError
    from noisesearch.registry import Entry, verifier_requirements

    class Odd:
        pass

    Odd.requires = requires
    entry = Entry("verifier", "odd", Odd, "someone-plugin", "odd")
    named = r"verifier odd \(plugin someone-plugin\).*label, prompt, trajectory"
    with pytest.raises(ConfigError, match=named):
        verifier_requirements(entry, {})
    Odd.requires = ["prompt"]  # a list of known needs is fine
    assert verifier_requirements(entry, {}) == frozenset({"prompt"})


def test_a_verifier_that_cannot_judge_the_run_is_refused_before_its_options_are_checked() -> None:
    """A prompt verifier on the digits model: that it needs a prompt is the refusal, not what its
    describe() finds wrong with its options (weights missing offline)."""
    from noisesearch import ConfigError, IncompatibleError
    from noisesearch.config import RunConfig
    from noisesearch.planning import plan
    from noisesearch.plugins import build_registries

    class NeedsWeights:
        requires = frozenset({"prompt"})

        @classmethod
        def describe(cls, **options: object) -> dict:
            raise ConfigError("needs-weights.checkpoint", "not in the hub cache")

    registries = build_registries()
    registries.verifiers.add("needs-weights", NeedsWeights, "test")
    with pytest.raises(IncompatibleError, match="needs a prompt"):
        plan(RunConfig(model="digits", verifiers=["needs-weights"]), registries, check_output=False)
