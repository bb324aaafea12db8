"""`noisesearch run --config FILE`, `--set KEY=VALUE`, and repeating a run from its run.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from noisesearch.api import plan
from noisesearch.cli import build_app
from noisesearch.config import (
    RunConfig,
    config_from_mapping,
    load_config_file,
    merge_config,
    parse_set,
)
from noisesearch.errors import ConfigError

FULL_TOML = """
model = "digits"
strategy = "random"
verifiers = ["digits-classifier", "digits-evaluator"]
evaluator = "none"
label = 4
candidates = 6
steps = 10
solver = "heun"
seed = 11
batch_size = 3
top_k = 2
device = "cpu"

[model_options]
guidance_scale = 1.5

[verifier_options.digits-classifier]
device = "cpu"
"""


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def objectives(run_dir: Path) -> list[float]:
    lines = (run_dir / "candidates.jsonl").read_text().splitlines()
    return [json.loads(line)["objective"] for line in lines]


def test_a_toml_file_sets_fields_and_plugin_option_tables(tmp_path: Path) -> None:
    data = load_config_file(write(tmp_path / "run.toml", FULL_TOML))
    checked = plan(config_from_mapping(data))
    config = checked.config
    assert (config.label, config.candidates, config.steps) == (4, 6, 10)
    assert (config.solver, config.seed, config.batch_size, config.top_k) == ("heun", 11, 3, 2)
    assert config.verifiers == ["digits-classifier", "digits-evaluator"] and checked.evaluator is None
    assert config.model_options == {"guidance_scale": 1.5}
    assert config.verifier_options == {"digits-classifier": {"device": "cpu"}}


def test_every_run_config_field_can_be_set_in_a_file(tmp_path: Path) -> None:
    defaults = RunConfig().to_json()
    text = json.dumps(defaults)
    assert load_config_file(write(tmp_path / "all.json", text)) == defaults


def test_unknown_key_names_itself_and_the_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", 'model = "digits"\ncandidate = 4\n')
    result = invoke("run", "--config", str(path), "-o", str(tmp_path / "never"))
    assert result.exit_code == 2
    assert "candidate: unknown key" in result.output
    assert "Valid keys: model, strategy" in result.output and "budget_nfe" in result.output
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('candidates = "16"', "candidates: expected an integer"),
        ('verifiers = "digits-classifier"', "verifiers: expected a list of names"),
        ("model_options = 3", "model_options: expected a table of options"),
        ("seed = true", "seed: expected an integer"),
        ("model = [", "invalid TOML"),
    ],
)
def test_wrong_values_in_a_file_are_refused_with_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config_file(write(tmp_path / "bad.toml", text + "\n"))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("run", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2 and "cannot read" in result.output and "nope.toml" in result.output


def test_set_reaches_into_tables_with_dotted_keys() -> None:
    assert parse_set(["verifier_options.digits-classifier.device=cpu", "seed=3", "label=cat",
                      "verifiers=digits-evaluator", "model_options.guidance_scale=2.5", "device=0"]) == {
        "verifier_options": {"digits-classifier": {"device": "cpu"}},
        "seed": 3,
        "label": "cat",
        "verifiers": ["digits-evaluator"],
        "model_options": {"guidance_scale": 2.5},
        "device": "0",
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("sed=3", "sed: unknown key in --set. Valid keys:"),
        ("seed", "expected KEY=VALUE"),
        ("seed.x=3", "--set expects seed=VALUE"),
        ("verifier_options.device=cpu", "--set expects verifier_options.VERIFIER.OPTION=VALUE"),
        ("candidates=many", "candidates: expected an integer"),
    ],
)
def test_malformed_set_is_refused(pair: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_set([pair])


def test_command_line_beats_set_beats_file_and_option_tables_merge(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", FULL_TOML)
    merged = merge_config(
        load_config_file(path),
        parse_set(["seed=12", "steps=12", "model_options.weights=w.safetensors"]),
        {"steps": 8, "model_options": {"guidance_scale": 3.0}},
    )
    assert (merged["seed"], merged["steps"], merged["candidates"]) == (12, 8, 6)
    assert merged["model_options"] == {"guidance_scale": 3.0, "weights": "w.safetensors"}
    assert merged["verifier_options"] == {"digits-classifier": {"device": "cpu"}}


def test_cli_options_override_the_file_and_defaults_do_not(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml",
                 'model = "digits"\nlabel = 2\ncandidates = 3\nseed = 7\nsolver = "heun"\nsteps = 4\n')
    out = tmp_path / "r"
    result = invoke("run", "--config", str(path), "--candidates", "2", "--set", "seed=9", "-o", str(out),
                    "--json")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "run.json").read_text())["config"]
    # --candidates given: it wins; --seed not given: the file's value is not reset to 0 ...
    assert (config["candidates"], config["label"], config["solver"], config["steps"]) == (2, 2, "heun", 4)
    assert config["seed"] == 9  # ... but --set overrides the file


def test_run_json_repeats_the_run_with_identical_scores(tmp_path: Path) -> None:
    first = tmp_path / "first"
    result = invoke("run", "--model", "digits", "-o", str(first), "-q", "--seed", "3", "--candidates", "6",
                    "--set", "model_options.guidance_scale=2.0")
    assert result.exit_code == 0, result.output
    again = tmp_path / "again"
    result = invoke("run", "--config", str(first / "run.json"), "-o", str(again), "-q")
    assert result.exit_code == 0, result.output
    assert objectives(again) == objectives(first)
    config_first, config_again = (json.loads((d / "run.json").read_text())["config"] for d in (first, again))
    assert {**config_first, "output": None} == {**config_again, "output": None}


def test_a_run_json_never_sends_the_repeat_into_the_original_folder(tmp_path: Path) -> None:
    config = RunConfig(model="digits", label=1).to_json()
    run_json = {"schema_version": 1, "config": {**config, "output": str(tmp_path)}}
    data = load_config_file(write(tmp_path / "run.json", json.dumps(run_json)))
    assert "output" not in data and data["label"] == 1
