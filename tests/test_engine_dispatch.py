"""The engine's dispatch seam (noisesearch.units): the model's batches are pure units that a
dispatch may compute anywhere, in any order, on its own copy of the model; the search ends
bit for bit as a local one. Ray's dispatch is tested in test_bench_ray.py."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import noisesearch
from noisesearch.units import Output, Unit, compute


class ReversedDispatch:
    """Computes every unit of an engine call at once, last first, on a model of its own, from
    pickled copies of the units and the job (as a worker in another process receives them)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.rows: list[int] = []  # each unit's rows, in the order the engine made them
        self.kinds: set[str] = set()

    def open(self, model: Any, prepared: Any, solver: Any, owner: Any) -> None:
        assert model is not self.model  # the search's own model stays in the engine
        self.job = pickle.loads(pickle.dumps((prepared, solver, owner)))

    def map(self, units: Sequence[Unit]) -> Iterator[Output]:
        copies = pickle.loads(pickle.dumps(list(units)))
        self.rows.extend(unit.rows for unit in copies)
        self.kinds.update(unit.kind for unit in copies)
        prepared, solver, owner = self.job
        outputs = [compute(self.model, prepared, solver, unit, owner) for unit in reversed(copies)]
        yield from reversed(outputs)


class ReversedExecutor:
    """What ``search(executor=...)`` takes: ``dispatch(model name, options)`` and ``close``."""

    def __init__(self) -> None:
        self.dispatches: list[ReversedDispatch] = []

    def dispatch(self, model: str, options: dict[str, Any]) -> ReversedDispatch:
        from noisesearch.plugins import build_registries

        built = build_registries().models.get(model).create(**options)
        self.dispatches.append(ReversedDispatch(built))
        return self.dispatches[-1]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("strategy", "batch_size"), [("random", 6), ("smc", 3), ("paths", 4)])
def test_a_search_whose_units_are_computed_elsewhere_ends_as_the_local_one(
    tmp_path: Path, strategy: str, batch_size: int
) -> None:
    common = {"model": "digits", "label": 7, "seed": 3, "strategy": strategy, "budget_nfe": 240,
              "batch_size": batch_size}
    local = noisesearch.search(**common, output=str(tmp_path / "local"))
    executor = ReversedExecutor()
    spread = noisesearch.search(**common, output=str(tmp_path / "spread"), executor=executor)
    dispatch = executor.dispatches[0]
    assert dispatch.rows and max(dispatch.rows) == batch_size  # one unit per model batch
    # full samples go as one unit per chunk (solve, then decode); partial paths solve and decode apart
    assert ({"sample"} if strategy == "random" else {"solve", "decode"}) <= dispatch.kinds
    lines = (tmp_path / "local" / "candidates.jsonl").read_bytes()
    assert (tmp_path / "spread" / "candidates.jsonl").read_bytes() == lines
    assert spread.best.recipe == local.best.recipe
    assert spread.best.image.equal(local.best.image)
    assert spread.usage.nfe == local.usage.nfe


def test_smc_sends_its_clean_predictions_through_the_dispatch_too(tmp_path: Path) -> None:
    executor = ReversedExecutor()
    noisesearch.search(model="digits", label=2, strategy="smc", budget_nfe=160, batch_size=4,
                       write=False, executor=executor)
    assert "predict" in executor.dispatches[0].kinds


def test_out_of_memory_in_a_dispatched_unit_halves_the_batch_as_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from noisesearch_builtin.models.digits import DigitsModel

    original = DigitsModel.denoise

    class FakeOutOfMemory(RuntimeError):
        is_out_of_memory = True

    def small_memory(self, x, sigma, prepared):  # noqa: ANN001, ANN202
        if x.shape[0] > 4:
            raise FakeOutOfMemory("CUDA out of memory")
        return original(self, x, sigma, prepared)

    monkeypatch.setattr(DigitsModel, "denoise", small_memory)
    reference = noisesearch.search(model="digits", label=3, candidates=12, batch_size=16,
                                   output=str(tmp_path / "reference"))
    executor = ReversedExecutor()
    spread = noisesearch.search(model="digits", label=3, candidates=12, batch_size=16,
                                output=str(tmp_path / "spread"), executor=executor)
    assert executor.dispatches[0].rows[:2] == [12, 8]  # refused, halved, refused, halved
    assert set(executor.dispatches[0].rows[2:]) == {4}
    assert spread.best.image.equal(reference.best.image)
    lines = (tmp_path / "reference" / "candidates.jsonl").read_bytes()
    assert (tmp_path / "spread" / "candidates.jsonl").read_bytes() == lines


def test_an_executor_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(noisesearch.ConfigError, match="unknown executor 'nope'; available: local"):
        noisesearch.search(model="digits", candidates=2, output=str(out), executor="nope")
    with pytest.raises(noisesearch.ConfigError, match="the local executor takes no options"):
        noisesearch.search(model="digits", candidates=2, output=str(out), executor="local",
                           executor_options={"workers": 2})
    with pytest.raises(noisesearch.ConfigError, match="cannot spread a search"):
        noisesearch.search(model="digits", candidates=2, output=str(out), executor=object())
    assert not out.exists()
