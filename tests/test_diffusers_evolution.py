"""The ``evolution`` strategy on a tiny random-weight Stable Diffusion pipeline, loaded through the
``hf`` model's real loading path: its 4-channel 8x8 latents' DCT band is searched, previews and
finalists are charged within the budget, and replay is bit for bit (core and native solvers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from diffusers_tiny import registries_with_brightness

import noisesearch
from noisesearch.api import replay_run
from noisesearch.plugins import Registries

PROMPT = "a photo of a red apple on a wooden table"


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Registries:
    return registries_with_brightness()


def _search(tiny: Callable[[str], Path], registries: Registries, out: Path, **fields: object) -> dict:
    noisesearch.search(
        model="hf", model_options={"path": str(tiny("sd")), **fields.pop("model_options", {})}, prompt=PROMPT,
        verifiers=["test-brightness"], evaluator="none", budget_nfe=40, steps=4, batch_size=3,
        strategy="evolution", output=str(out), registries=registries, **fields,
    )
    return json.loads((out / "run.json").read_text())


@pytest.mark.slow
def test_previews_and_finalists_fit_the_budget_and_replay_bit_for_bit(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    run = _search(tiny, registries, tmp_path / "run",
                  strategy_options={"population": 4, "preview_steps": 2, "band": 2})
    report = run["strategy_report"]["evolution"]
    assert report["layout"] == [4, 8, 8] and report["dimensions"] == 16
    assert (report["preview_nfe"], report["full_nfe"], report["finalists"]) == (2, 4, 1)
    assert report["generation_sizes"] == [4, 4, 4, 4, 2]  # (40 - 1 * 4) / 2 = 18 previews
    assert run["usage"]["nfe"] == report["planned_nfe"] == 40
    assert run["usage"]["candidates"] == 1
    assert run["best"]["recipe"]["start"]["kind"] == "subspace"
    outcome = replay_run(tmp_path / "run", registries=registries)
    assert outcome.identical, outcome.max_abs_diff


@pytest.mark.slow
def test_with_the_pipelines_own_scheduler_previews_are_full_samples(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    """A native solver steps along its whole grid, so a preview would cost a full sample: every
    member is then a candidate, and the budget still holds."""
    run = _search(tiny, registries, tmp_path / "native", solver="native",
                  model_options={"scheduler": "EulerDiscreteScheduler"},
                  strategy_options={"population": 3, "preview_steps": 2})
    report = run["strategy_report"]["evolution"]
    assert report["full_previews"] and report["finalists"] == 0
    assert report["generation_sizes"] == [3, 3, 3, 1]
    assert run["usage"]["nfe"] == 40 and run["usage"]["candidates"] == 10
    outcome = replay_run(tmp_path / "native", registries=registries)
    assert outcome.identical, outcome.max_abs_diff
