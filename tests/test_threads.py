"""``threads``: torch's intra-op threads for a run, recorded in run.json and used by replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import noisesearch
from noisesearch.api import replay_run
from noisesearch.cli import build_app


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_run_sets_and_records_its_threads_and_replay_uses_them(tmp_path: Path, restore_threads) -> None:
    torch.set_num_threads(2)
    out = tmp_path / "run"
    noisesearch.search(model="digits", label=2, candidates=4, steps=4, threads=1, output=str(out))
    assert torch.get_num_threads() == 1
    assert json.loads((out / "run.json").read_text())["config"]["threads"] == 1
    torch.set_num_threads(2)
    assert replay_run(out).identical
    assert torch.get_num_threads() == 1


def test_without_threads_torch_keeps_its_own(tmp_path: Path, restore_threads) -> None:
    torch.set_num_threads(2)
    noisesearch.search(model="digits", label=2, candidates=2, steps=4, write=False)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("value", ["0", "-1", "99999"])
def test_a_bad_thread_count_exits_2_naming_the_option_and_creates_nothing(tmp_path: Path, value: str) -> None:
    result = CliRunner().invoke(build_app(), ["run", "--model", "digits", "--threads", value,
                                              "-o", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "threads" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
