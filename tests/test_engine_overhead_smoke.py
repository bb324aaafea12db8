"""Smoke check of ``benchmarks/engine_overhead.py``: both ratios, their spread and the peak
memory come out for a small N, and its hand-written loop does the search's work."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from scripts import load_benchmark


def load_script() -> Any:
    return load_benchmark("engine_overhead")


def run_main(script: Any) -> None:
    """``script.main()`` with sys.argv already set; the script pins torch's thread count, so the
    later tests in this process get theirs back."""
    import torch

    threads = torch.get_num_threads()
    try:
        script.main()
    finally:
        torch.set_num_threads(threads)


def test_engine_overhead_prints_both_ratios_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script()
    out = tmp_path / "o.json"
    argv = ["engine_overhead.py", "--sizes", "8", "--reps", "2", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    run_main(script)
    data = json.loads(out.read_text())
    (row,) = data["ratios"]
    for arm in ("like_for_like", "defaults", "wall_like_for_like", "wall_defaults"):
        assert 0 < row[arm]["min"] <= row[arm]["median"] <= row[arm]["max"]
    assert set(data["peak_python_kb"]["8"]) == {"loop", "defaults"}
    parts = data["engine_in_situ_us"]["8"]  # the search's time split into model, verifier, engine
    assert parts["model"] > 0 and parts["verifier"] > 0 and parts["engine"] > 0
    assert parts["total"] >= parts["model"] + parts["verifier"]
    assert "like for like" in capsys.readouterr().out
    # The loop keeps the top-k of the same number of candidates a search evaluates.
    from noisesearch.plugins import build_registries

    registries = build_registries()
    model = registries.models.get("digits").create()
    verifier = registries.verifiers.get("digits-classifier").create()
    assert script.hand_loop(model, verifier, 12, 5).shape == (script.TOP_K, 3, 8, 8)


@pytest.mark.slow
def test_shapes_mode_prints_search_over_diffusers_batched_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script()
    out = tmp_path / "s.json"
    argv = ["engine_overhead.py", "--shapes", "--sizes", "2", "--steps", "2", "--reps", "1",
            "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    run_main(script)
    (row,) = json.loads(out.read_text())["ratios"]
    assert set(row["median_cpu_s"]) == {"diffusers", "search", "search_folder"}
    for arm in ("search", "search_folder", "wall_search", "wall_search_folder"):
        assert 0 < row[arm]["min"] <= row[arm]["median"] <= row[arm]["max"]
    assert "search, folder" in capsys.readouterr().out
