"""Quieter loading: diffusers' and transformers' loading bars and advice are left out (the run's
status line stands for them) unless ``--verbose`` (``NOISESEARCH_VERBOSE=1``) asks for them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from diffusers_tiny import IMAGE_SIZE, registries_with_brightness, save
from typer.testing import CliRunner

from noisesearch.cli import build_app

BAR = "Loading pipeline components"


def test_a_pipeline_loads_without_the_libraries_bars_unless_verbose(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save("sd", tmp_path / "sd")
    registries = registries_with_brightness()
    monkeypatch.delenv("NOISESEARCH_VERBOSE", raising=False)
    capfd.readouterr()
    registries.models.create("hf", path=str(folder), height=IMAGE_SIZE, width=IMAGE_SIZE)
    assert BAR not in capfd.readouterr().err
    monkeypatch.setenv("NOISESEARCH_VERBOSE", "1")
    registries.models.create("hf", path=str(folder), height=IMAGE_SIZE, width=IMAGE_SIZE)
    assert BAR in capfd.readouterr().err  # the same load, with diffusers' own bar


def test_run_verbose_turns_the_switch_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOISESEARCH_VERBOSE", raising=False)
    result = CliRunner().invoke(build_app(), ["run", "--model", "digits", "--verbose", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert os.environ.get("NOISESEARCH_VERBOSE") == "1"
