"""`noisesearch show`, `runs`, quiet and JSON output, prompts files and safe folder names."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from noisesearch import hookimpl
from noisesearch.cli import build_app
from noisesearch.config import read_prompts
from noisesearch.names import MAX_NAME_LENGTH, safe_name, safe_token
from noisesearch.testing import BrightnessVerifier, GaussianModel


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, label in (("a", "1"), ("nested/b", "2")):
        result = invoke("run", "--model", "digits", "-o", str(root / name), "-q", "--label", label,
                        "--candidates", "4")
        assert result.exit_code == 0, result.output
    return root


# -- show and runs -----------------------------------------------------------------------------


def test_show_prints_what_ran_and_first_against_best(runs_root: Path) -> None:
    result = invoke("show", str(runs_root / "a"))
    assert result.exit_code == 0, result.output
    for text in ("digits", "label 1", "random", "complete", "no search", "best of 4", "judge says"):
        assert text in result.output


def test_show_json_matches_run_json(runs_root: Path) -> None:
    result = invoke("show", str(runs_root / "a" / "run.json"), "--json")
    shown = json.loads(result.stdout)
    run = json.loads((runs_root / "a" / "run.json").read_text())
    assert shown["best"] == run["best"]["objective"] and shown["nfe"] == run["usage"]["nfe"]
    assert shown["config"] == run["config"] and shown["complete"] is True


def test_show_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = invoke("show", str(tmp_path))
    assert result.exit_code == 2 and "not a run folder" in result.output
    result = invoke("show", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_runs_lists_every_run_at_any_depth_complete_or_not(runs_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(runs_root, root)
    (root / "nested" / "b" / "run.json").unlink()  # as if interrupted
    listed = json.loads(invoke("runs", str(root), "--json").stdout)
    assert [(row["run"], row["complete"]) for row in listed] == [("a", True), ("nested/b", False)]
    assert listed[0]["model"] == "digits" and listed[0]["strategy"] == "random"
    assert listed[0]["nfe"] == 80 and listed[1]["candidates"] == 4
    table = invoke("runs", str(root))
    assert table.exit_code == 0 and "interrupted" in table.output and "nested/b" in table.output
    assert "--resume" in table.output


def test_runs_in_an_empty_or_missing_folder(tmp_path: Path) -> None:
    result = invoke("runs", str(tmp_path))
    assert result.exit_code == 0 and "No runs under" in result.output
    assert invoke("runs", str(tmp_path / "missing")).exit_code == 2


# -- quiet and JSON output ---------------------------------------------------------------------


def test_quiet_prints_nothing_and_json_prints_only_json(tmp_path: Path) -> None:
    quiet = invoke("run", "--model", "digits", "-o", str(tmp_path / "q"), "-q", "--candidates", "2")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    as_json = invoke("run", "--model", "digits", "-o", str(tmp_path / "j"), "--json", "--candidates", "2")
    assert as_json.exit_code == 0 and as_json.stderr == ""
    assert json.loads(as_json.stdout)["usage"]["candidates"] == 2
    failed = invoke("run", "--model", "digits", "-o", str(tmp_path / "e"), "-q", "--candidates", "0")
    assert failed.exit_code == 2 and failed.stdout == "" and "candidates:" in failed.stderr


def test_a_run_says_what_it_loads_before_the_progress_bar(tmp_path: Path) -> None:
    result = invoke("run", "--model", "digits", "-o", str(tmp_path / "s"), "--candidates", "2")
    assert result.exit_code == 0, result.output
    where = [result.stderr.find(text) for text in
             ("loading model digits\u2026", "loading verifiers\u2026", "searching")]
    assert -1 not in where and where == sorted(where), result.stderr


def test_the_console_script_flushes_its_output_before_its_fast_exit(tmp_path: Path) -> None:
    """The console script skips the interpreter's teardown after a run (os._exit): what it
    printed to a pipe and wrote to the run folder must all be there."""
    import subprocess
    import sys

    script = str(Path(sys.executable).parent / "noisesearch")
    done = subprocess.run([script, "run", "--model", "digits", "--json", "--candidates", "2",
                           "-o", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["usage"]["candidates"] == 2
    assert json.loads((tmp_path / "r" / "run.json").read_text())["usage"]["candidates"] == 2


# -- prompts files ----------------------------------------------------------------------------


class PromptGaussian(GaussianModel):
    """A text-conditioned test model: the prompt is accepted and ignored."""

    conditioning: ClassVar[str] = "prompt"
    default_verifiers: ClassVar[tuple[str, ...]] = ("test-brightness",)


@hookimpl
def register_models(register) -> None:
    register("test-prompt-gaussian", PromptGaussian)


@hookimpl
def register_verifiers(register) -> None:
    register("test-brightness", BrightnessVerifier)


@pytest.fixture
def with_prompt_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load this module as one more built-in plugin, as a third-party package would be."""
    from noisesearch import plugins

    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", (*plugins.DEFAULT_PLUGINS, __name__))


def test_read_prompts_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\na red apple\n\n   \n  # indented comment\n a cat #1 \n")
    assert read_prompts(path) == ["a red apple", "a cat #1"]
    path.write_text("# nothing\n\n")
    with pytest.raises(Exception, match="holds no prompt"):
        read_prompts(path)


def test_a_prompts_file_runs_one_search_per_prompt_in_safe_sub_folders(
    tmp_path: Path, with_prompt_model: None
) -> None:
    prompts = ["a red apple", "../../etc/passwd", "a/b\x00c", "a red apple!"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n# done\n")
    out = tmp_path / "out"
    result = invoke("run", "--model", "test-prompt-gaussian", "--prompts-file", str(path), "-o", str(out),
                    "--candidates", "2", "--json")
    assert result.exit_code == 0, result.output
    summaries = json.loads(result.stdout)
    assert [s["condition"]["prompt"] for s in summaries] == prompts
    folders = sorted(p.name for p in out.iterdir())
    assert folders == [f"{i:03d}-{safe_name(p)}" for i, p in enumerate(prompts, 1)]
    assert all(Path(s["run_dir"]).parent == out for s in summaries)
    assert all((out / name / "report.html").is_file() for name in folders)
    assert not (tmp_path / "etc").exists()


def test_a_prompts_file_on_the_class_conditional_digits_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n")
    result = invoke("run", "--model", "digits", "--prompts-file", str(path), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "class-conditional: give it --label, not a prompt (--prompt, --prompts-file)" in result.output
    assert not (tmp_path / "out").exists()


def test_a_prompt_and_a_prompts_file_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n")
    result = invoke("run", "--prompts-file", str(path), "--prompt", "a dog")
    assert result.exit_code == 2 and "not both" in result.output


# -- safe names --------------------------------------------------------------------------------

HOSTILE = ["../../etc", "a/b", "\x00", "..", ".", ".hidden", "a\\b\\..\\c", "con", "NUL.txt",
           "x" * 5000, "猫と犬", "🙂", "é" * 300, "line\nbreak\rtab\t", " ", "", "\ud800 lone surrogate",
           "-leading-dash", "a" * 51 + "/../" + "b"]


@pytest.mark.parametrize("text", HOSTILE)
def test_safe_names_are_plain_bounded_single_components(text: str) -> None:
    name = safe_name(text)
    assert 0 < len(name) <= MAX_NAME_LENGTH
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in name)
    assert name[0].isalnum() and name == name.lower()
    assert Path(name).name == name and name not in (".", "..")


def test_safe_names_keep_distinct_prompts_distinct_and_are_stable() -> None:
    texts = ["a cat", "A cat", "a cat!", "a  cat", "猫", "犬", "x" * 5000, "x" * 5001, ""]
    assert len({safe_name(t) for t in texts}) == len(texts)
    assert safe_name("a red apple").startswith("a-red-apple-")
    assert safe_name("a red apple") == safe_name("a red apple")


def test_plain_tokens_stay_readable() -> None:
    assert safe_token("digits") == "digits" and safe_token("label3") == "label3"
    assert safe_token("../x") != "../x" and "/" not in safe_token("../x")


def test_run_folders_named_after_prompts_stay_inside_the_output_root(tmp_path: Path) -> None:
    from noisesearch.api import condition_slug
    from noisesearch.results import default_run_dir
    from noisesearch.types import Condition

    for prompt in HOSTILE:
        path = default_run_dir(tmp_path, "../model", condition_slug(Condition(prompt=prompt)))
        assert path.parent == tmp_path and len(path.name) < 140
        assert os.sep not in path.name and not path.name.startswith(".")
