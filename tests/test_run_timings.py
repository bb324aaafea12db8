"""run.json's ``timings`` account for the whole search in named buckets (issue 12 item 3):
loading the model and the verifiers, model and verifier time with their parts, and an
``other`` that is only the engine's own bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import noisesearch

BUCKETS = ("load_model", "load_verifiers", "model", "verifiers", "other")


def test_timings_add_up_to_the_search_and_name_their_parts(tmp_path: Path) -> None:
    result = noisesearch.search(model="digits", label=3, candidates=8, steps=4, output=str(tmp_path / "run"))
    timings = json.loads((tmp_path / "run" / "run.json").read_text())["timings"]
    assert set(timings) >= {*BUCKETS, "prepare", "decode", "evaluator", "baseline", "search_total", "writing"}
    assert abs(sum(timings[key] for key in BUCKETS) - timings["search_total"]) < 1e-3
    assert timings["search_total"] == round(result.seconds, 4)
    assert timings["load_model"] > 0 and timings["decode"] > 0 and timings["evaluator"] > 0
    assert timings["prepare"] + timings["decode"] <= timings["model"] + 1e-4
    assert timings["evaluator"] <= timings["verifiers"] + 1e-4
    assert timings["baseline"] == 0.0  # random search's first candidate is the baseline
