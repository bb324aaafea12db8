"""The report at large N: the plot draws only a running best's change points, and a run
writes its report from the rows it holds, without parsing candidates.jsonl back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import noisesearch
from noisesearch import runs
from noisesearch.report import step_points, write_report


def test_step_points_keep_each_change_and_the_last_point() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [None, 0.5, 0.5, 0.7, 0.7, 0.7]
    assert step_points(x, y) == [(2.0, 0.5), (4.0, 0.7), (6.0, 0.7)]
    assert step_points(x[:4], y[:4]) == [(2.0, 0.5), (4.0, 0.7)]
    assert step_points(x, [None] * 6) == []


def test_a_run_writes_its_report_without_reading_candidates_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: Path) -> list:  # noqa: ARG001
        raise AssertionError("candidates.jsonl parsed back by the process that wrote it")

    monkeypatch.setattr(runs, "read_candidates", refuse)
    out = tmp_path / "run"
    noisesearch.search(model="digits", label=5, candidates=24, batch_size=8, steps=4, output=str(out))
    written = (out / "scaling.png").read_bytes()
    monkeypatch.undo()
    assert len((out / "candidates.jsonl").read_text().splitlines()) == 24
    write_report(out)  # `noisesearch report RUN`: from the folder alone, the same plot
    assert (out / "scaling.png").read_bytes() == written
    assert json.loads((out / "run.json").read_text())["complete"]
