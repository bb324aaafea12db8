"""``--overlap`` (``noisesearch.overlap``): the next batch is computed on a worker thread while
the engine scores the last one. The result must not change at all: the same model batches, the
same journal entries in the same order, byte-identical ``candidates.jsonl``; a failing unit, a
failing verifier and Ctrl-C stop the worker, and an interrupted run resumes exactly."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from scripts import load_benchmark

import noisesearch
from noisesearch import ConfigError
from noisesearch.api import resume_run
from noisesearch.errors import RunInterrupted
from noisesearch.journal import Journal
from noisesearch.overlap import OverlapDispatch
from noisesearch.units import SOLVE, Unit
from noisesearch_builtin.models.digits import DigitsModel

WORKER = "noisesearch-overlap"
LINES = "candidates.jsonl"


def workers_alive() -> bool:
    return any(thread.name == WORKER for thread in threading.enumerate())


@contextmanager
def watched(seconds: float = 60) -> Iterator[None]:
    """A hang (a worker never joined, an output never handed over) ends the test process with
    every thread's traceback instead of blocking the suite."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@contextmanager
def recorded(model_class: Any = DigitsModel) -> Iterator[dict[str, list]]:
    """What the model and the journal saw: each denoiser call's rows and thread, each journal
    entry's kind, rows and batch size (in order), while the block runs."""
    seen: dict[str, list] = {"denoise": [], "threads": [], "journal": []}
    denoise, write = model_class.denoise, Journal.write

    def spied_denoise(self: Any, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
        seen["denoise"].append(int(x.shape[0]))
        seen["threads"].append(threading.current_thread().name)
        return denoise(self, x, sigma, prepared)

    def spied_write(self: Journal, kind: str, rows: int, tensors: Any, meta: dict[str, Any]) -> None:
        seen["journal"].append((kind, rows, meta.get("batch_size")))
        write(self, kind, rows, tensors, meta)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_class, "denoise", spied_denoise)
        patch.setattr(Journal, "write", spied_write)
        yield seen


@pytest.mark.parametrize(("strategy", "budget"), [
    ("random", {"candidates": 26}), ("smc", {"budget_nfe": 240}), ("paths", {"budget_nfe": 240})])
def test_overlap_gives_the_same_batches_journal_and_candidates_on_digits(
    tmp_path: Path, strategy: str, budget: dict[str, int]
) -> None:
    common = {"model": "digits", "label": 5, "seed": 4, "strategy": strategy, "batch_size": 4, **budget}
    with recorded() as plain:
        reference = noisesearch.search(**common, output=str(tmp_path / "plain"))
    with recorded() as ahead, watched():
        overlapped = noisesearch.search(**common, output=str(tmp_path / "overlap"), overlap=True)
    assert ahead["denoise"] == plain["denoise"]  # the same model batches, in the same order
    assert ahead["journal"] == plain["journal"]
    if strategy == "random":  # 26 rows: 7 chunks of full samples, each a solve then a finish
        assert [kind for kind, _, _ in plain["journal"]] == ["solve", "finish"] * 7
    else:  # partial paths: re-noised and solved again
        assert any(op["op"] == "renoise" for op in reference.best.recipe["ops"])
    assert WORKER in ahead["threads"] and WORKER not in plain["threads"]
    assert not workers_alive()
    lines = (tmp_path / "plain" / "candidates.jsonl").read_bytes()
    assert (tmp_path / "overlap" / "candidates.jsonl").read_bytes() == lines
    assert overlapped.best.recipe == reference.best.recipe
    assert overlapped.best.image.equal(reference.best.image)
    run = json.loads((tmp_path / "overlap" / "run.json").read_text())
    assert run["config"]["overlap"] is True
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["config"]["overlap"] is False


@pytest.mark.usefixtures("plain_kernels")
@pytest.mark.parametrize(("strategy", "budget"), [("random", {"candidates": 5}), ("smc", {"budget_nfe": 16})])
def test_overlap_gives_the_same_candidates_on_a_tiny_diffusers_pipeline(
    tiny: Callable[[str], Path], tmp_path: Path, strategy: str, budget: dict[str, int]
) -> None:
    from diffusers_tiny import IMAGE_SIZE, registries_with_brightness

    registries = registries_with_brightness()
    common = {
        "model": "hf", "model_options": {"path": str(tiny("sd")), "height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "prompt": "a red apple", "verifiers": ["test-brightness"], "evaluator": "none", "steps": 2,
        "batch_size": 2, "strategy": strategy, "registries": registries, **budget,
    }
    reference = noisesearch.search(**common, output=str(tmp_path / "plain"))
    with watched():
        overlapped = noisesearch.search(**common, output=str(tmp_path / "overlap"), overlap=True)
    lines = (tmp_path / "plain" / "candidates.jsonl").read_bytes()
    assert len(lines.splitlines()) >= 3
    assert (tmp_path / "overlap" / "candidates.jsonl").read_bytes() == lines
    assert overlapped.best.image.equal(reference.best.image)
    assert overlapped.usage.nfe == reference.usage.nfe
    if strategy == "smc":  # partial paths: re-noised and solved again
        assert any(op["op"] == "renoise" for op in reference.best.recipe["ops"])
    assert not workers_alive()


def test_a_failing_unit_stops_the_worker_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third chunk's denoiser fails on the worker: the run fails naming the model, nothing
    after that chunk was computed, and the two chunks before it are recorded."""
    steps, calls = 4, {"n": 0}
    original = DigitsModel.denoise

    def third_chunk_fails(self: Any, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2 * steps + 1:
            raise RuntimeError("the accelerator fell off the bus")
        return original(self, x, sigma, prepared)

    monkeypatch.setattr(DigitsModel, "denoise", third_chunk_fails)
    out = tmp_path / "run"
    with watched(), pytest.raises(noisesearch.NoiseSearchError, match="model 'digits' .*fell off the bus"):
        noisesearch.search(model="digits", label=1, candidates=24, batch_size=4, steps=steps,
                           output=str(out), overlap=True)
    assert calls["n"] == 2 * steps + 1  # no denoiser call after the failing one
    assert not workers_alive()
    assert len((out / "candidates.jsonl").read_text().splitlines()) == 8
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_a_failing_verifier_stops_the_worker_and_the_run_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from noisesearch_builtin.verifiers import digits_classifiers

    original = digits_classifiers.DigitsClassifier.score
    calls = {"n": 0}

    def flaky(self: Any, images: torch.Tensor, condition: Any, trajectory: Any = None) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return original(self, images, condition, trajectory)

    common = {"model": "digits", "label": 6, "candidates": 40, "batch_size": 4, "seed": 1}
    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", flaky)
    out = tmp_path / "run"
    with watched(), pytest.raises(noisesearch.NoiseSearchError, match="digits-classifier.*disk on fire"):
        noisesearch.search(**common, output=str(out), overlap=True)
    assert not workers_alive()
    assert len((out / "candidates.jsonl").read_text().splitlines()) == 8
    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", original)
    with watched():
        resumed = resume_run(out)
    reference = noisesearch.search(**common, output=str(tmp_path / "reference"))
    assert (out / "candidates.jsonl").read_bytes() == (tmp_path / "reference" / LINES).read_bytes()
    assert resumed.best.recipe == reference.best.recipe and resumed.usage.nfe == reference.usage.nfe


def test_ctrl_c_stops_the_worker_without_a_hang_and_the_run_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT, sent while the worker denoises the fourth chunk: the engine's thread raises
    KeyboardInterrupt (a batch being recorded is finished first), joins the worker, and leaves
    a folder that resumes to the uninterrupted result."""
    steps, calls = 4, {"n": 0}
    original = DigitsModel.denoise

    def interrupted(self: Any, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3 * steps + 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, sigma, prepared)

    common = {"model": "digits", "label": 8, "candidates": 32, "batch_size": 4, "steps": steps, "seed": 5}
    monkeypatch.setattr(DigitsModel, "denoise", interrupted)
    out = tmp_path / "run"
    # Python's own Ctrl-C handler, whatever this process inherited (a background job's shell
    # starts it with SIGINT ignored, and the SIGINT below would then do nothing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with watched(), pytest.raises((KeyboardInterrupt, RunInterrupted)):
            noisesearch.search(**common, output=str(out), overlap=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not workers_alive()
    assert calls["n"] <= 5 * steps  # at most the chunk after the one in hand was computed
    run = json.loads((out / "run.json").read_text())
    scored = len((out / "candidates.jsonl").read_text().splitlines())
    assert run["status"] == "interrupted" and 0 < scored < 32 and run["usage"]["candidates"] == scored
    monkeypatch.setattr(DigitsModel, "denoise", original)
    with watched():
        resumed = resume_run(out)
    reference = noisesearch.search(**common, output=str(tmp_path / "reference"))
    assert (out / "candidates.jsonl").read_bytes() == (tmp_path / "reference" / LINES).read_bytes()
    assert resumed.best.recipe == reference.best.recipe


def test_the_worker_computes_at_most_one_unit_ahead() -> None:
    """While the engine holds output k, the worker may compute unit k + 1, not k + 2."""
    from noisesearch.faults import Owner
    from noisesearch.testing import GaussianModel

    class Counting(GaussianModel):
        def __init__(self) -> None:
            super().__init__()
            self.units: list[int] = []  # the rows of each solve, as it starts

        def denoise(self, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
            if sigma == 1.0:
                self.units.append(int(x.shape[0]))
            return super().denoise(x, sigma, prepared)

    model = Counting()
    dispatch = OverlapDispatch()
    dispatch.open(model, None, "ddim", Owner("model", "counting", None))
    units = [Unit(SOLVE, torch.randn(rows, 1, 8, 8), [1.0, 0.5, 0.0]) for rows in (1, 2, 3, 4, 5)]
    with watched():
        outputs = dispatch.map(units)
        first = next(outputs)
        assert first.x.shape[0] == 1
        while len(model.units) < 2:  # unit 1 is computed while the engine holds output 0
            threading.Event().wait(0.01)
        threading.Event().wait(0.3)  # time enough for a worker that ran ahead to start unit 2
        assert model.units == [1, 2]
        assert [output.x.shape[0] for output in outputs] == [2, 3, 4, 5]
    assert not workers_alive()
    # Dropped after the first output: the worker is joined, units 2.. are never computed.
    model.units.clear()
    with watched():
        outputs = dispatch.map(units)
        next(outputs)
        outputs.close()
    assert model.units in ([1], [1, 2]) and not workers_alive()


def test_overlap_is_a_run_option_refused_with_an_executor(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from noisesearch.cli import build_app

    result = CliRunner().invoke(build_app(), ["run", "--model", "digits", "--overlap", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["overlap"] is True
    with pytest.raises(ConfigError, match="overlap"):
        noisesearch.search(model="digits", candidates=2, output=str(tmp_path / "run"), overlap=True,
                           executor=object())
    with pytest.raises(ConfigError, match="overlap: must be true or false"):
        noisesearch.search(model="digits", candidates=2, write=False, overlap="yes")
    assert not (tmp_path / "run").exists()


def test_the_overlap_benchmark_runs_and_checks_the_candidates(tmp_path: Path) -> None:
    module = load_benchmark("overlap")
    threads = torch.get_num_threads()
    try:
        out = module.main(["--model", "digits", "--candidates", "12", "--batch-size", "4", "--reps", "2",
                           "--json", str(tmp_path / "o.json")])
    finally:
        torch.set_num_threads(threads)
    assert out["reps"] == 2 and out["ratio"]["min"] > 0 and out["batch_size"] == 4
    assert json.loads((tmp_path / "o.json").read_text())["ratio"] == out["ratio"]
