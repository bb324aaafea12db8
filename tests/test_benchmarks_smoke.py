"""Smoke checks of ``benchmarks/diffusers_throughput.py --tiny``: every arm runs on the CPU, the
JSON holds rates, ratios with spread and the section statuses (the overlap section's too, with
its results equal to the plain search's), and the time budget skips cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from scripts import load_benchmark


def _script() -> ModuleType:
    return load_benchmark("diffusers_throughput")


def test_budget_exhausted_skips_every_section(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    assert _script().main(["--tiny", "--budget", "0", "--out", str(out), "--work", str(tmp_path)]) == 0
    data = json.loads(out.read_text())
    for key in ("dit", "sd15"):
        assert data["models"][key]["main"]["status"].startswith("skipped")
        assert data["models"][key]["overlap"]["status"].startswith("skipped")
    assert data["notes"] and not list(tmp_path.glob("throughput-*"))  # the work folder is gone
    argv = ["--tiny", "--budget", "0", "--no-overlap", "--out", str(out), "--work", str(tmp_path)]
    assert _script().main(argv) == 0
    assert not any("overlap" in entry for entry in json.loads(out.read_text())["models"].values())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dit", "sd15"])  # a label pipeline and a prompt pipeline
def test_tiny_runs_every_arm(tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.json"
    argv = ["--tiny", "--models", model, "--reps", "2", "--compile-reps", "2", "--overlap-reps", "2",
            "--candidates", "4", "--batch", "2", "--loop-candidates", "1", "--steps", "2",
            "--budget", "3600", "--out", str(out), "--work", str(tmp_path)]
    assert _script().main(argv) == 0
    data = json.loads(out.read_text())
    main, compiled = data["models"][model]["main"], data["models"][model]["compile"]
    assert main["status"] == "done" and compiled["status"] == "done"
    assert main["cold_search"]["usage"]["candidates"] == 2  # one batch through hf:<folder>
    assert main["reps"] == 2
    for arm in ("raw", "hand", "search", "loop"):
        assert len(main["arms"][arm]["rates"]) == 2 and min(main["arms"][arm]["rates"]) > 0
    assert main["arms"]["search"]["nfe"] == 4 * main["nfe_per_candidate"]
    search_raw = main["ratios"]["search/raw"]
    assert search_raw["min"] <= search_raw["median"] <= search_raw["max"] and search_raw["target"] == 0.9
    assert compiled["backend"] == "eager" and len(compiled["ratios"]["compiled/eager"]["values"]) == 2
    searched = compiled["search"]  # the search arm with --model-opt compile=default, eager backend
    assert searched["backend"] == "eager" and len(searched["ratios"]["search compiled/eager"]["values"]) == 2
    assert min(searched["arms"]["search-compiled"]["rates"]) > 0
    overlap = data["models"][model]["overlap"]  # --overlap's search against the plain one: 2 batches each
    assert overlap["status"] == "done" and overlap["batches"] == 2 and overlap["reps"] == 2
    assert overlap["arms"]["search-overlap"]["overlap"] and not overlap["arms"]["search"]["overlap"]
    overlapped = overlap["arms"]["search-overlap"]
    assert len(overlapped["rates"]) == 2 and min(overlapped["rates"]) > 0 and "peak_gb" in overlapped
    assert len(overlapped["verifier_s"]) == 2 and overlapped["nfe"] == 4 * main["nfe_per_candidate"]
    same = overlap["ratios"]["search-overlap/search"]
    assert len(same["values"]) == 2 and same["min"] <= same["median"] <= same["max"]
    assert overlap["same_best"] == [True, True]  # --overlap changes timing only
    assert "search-overlap/search" in capsys.readouterr().out  # the printed table has the ratio

