"""The batch-size memory (``noisesearch.batch_memory``): after an out-of-memory halving, the size
that worked is remembered per model, resolution, dtype and device; a later run that leaves
``batch_size`` unset starts there, and run.json says where its batch size came from. A damaged
memory file is ignored with a warning. (The cache folder is each test's own: conftest.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import noisesearch
from noisesearch import batch_memory
from noisesearch.batch_memory import BatchMemoryWarning
from noisesearch_builtin.models.digits import DigitsModel


class FakeOutOfMemory(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError, which a CPU machine cannot raise for real."""

    is_out_of_memory = True


@pytest.fixture
def fits_two(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The digits model on a device that holds at most 2 rows: returns the refused batch sizes."""
    refused: list[int] = []
    original = DigitsModel.denoise

    def small_memory(self: DigitsModel, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
        if x.shape[0] > 2:
            refused.append(x.shape[0])
            raise FakeOutOfMemory(f"CUDA out of memory: tried {x.shape[0]} rows")
        return original(self, x, sigma, prepared)

    monkeypatch.setattr(DigitsModel, "denoise", small_memory)
    return refused


def _search(**fields: Any) -> noisesearch.SearchResult:
    return noisesearch.search(model="digits", label=3, candidates=6, steps=4, evaluator="none", **fields)


def test_an_out_of_memory_halving_is_remembered_and_the_next_run_starts_there(
    fits_two: list[int], tmp_path: Path
) -> None:
    first = _search(output=str(tmp_path / "first"))
    assert first.config.batch_size == DigitsModel.preferred_batch_size  # 256, then halved to 2
    assert first.batch_size_from == batch_memory.MODEL_DEFAULT
    assert fits_two[0] == 6  # the 6 candidates in one batch of 256 rows did not fit
    assert 2 not in fits_two
    saved = json.loads(batch_memory.memory_file().read_text())["entries"]
    (entry,) = saved.values()
    assert entry["batch_size"] == 2 and entry["failed"] == DigitsModel.preferred_batch_size

    fits_two.clear()
    second = _search(output=str(tmp_path / "second"))
    assert second.config.batch_size == 2 and second.batch_size_from == batch_memory.REMEMBERED
    assert fits_two == []  # no batch ran out of memory: it started at the size that fit
    run = json.loads((tmp_path / "second" / "run.json").read_text())
    assert run["config"]["batch_size"] == 2 and run["batch_size_from"] == "remembered"
    # The same candidates as the first run, which ended at the same size after halving.
    assert [c.objective for c in second.top] == [c.objective for c in first.top]

    given = _search(batch_size=2, write=False)
    assert given.batch_size_from == batch_memory.USER


def test_the_memory_is_per_resolution_dtype_and_device() -> None:
    class Sized:
        def __init__(self, height: int, dtype: torch.dtype, device: str = "cpu") -> None:
            self.height = self.width = height
            self.weights_dtype, self.device = dtype, device

    key = batch_memory.key("hf:a/b", Sized(512, torch.float16), {})
    assert key == "hf:a/b|512x512|float16|cpu"
    batch_memory.remember(key, 4, failed=8)
    assert batch_memory.recall(key) == 4
    assert batch_memory.recall(batch_memory.key("hf:a/b", Sized(1024, torch.float16), {})) is None
    assert batch_memory.recall(batch_memory.key("hf:a/b", Sized(512, torch.float32), {})) is None
    assert batch_memory.key("sd15", Sized(512, torch.float16), {"path": "/ft"}).startswith("sd15@/ft|")


def test_a_damaged_memory_file_is_ignored_with_a_warning(fits_two: list[int]) -> None:
    path = batch_memory.memory_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    for damaged in ("{not json", json.dumps({"entries": ["a list"]}), "\xff\xfe"):
        path.write_text(damaged, encoding="latin-1")
        with pytest.warns(BatchMemoryWarning, match="batch-size memory"):
            result = _search(write=False)  # halves 256 -> 2 and rewrites the file
        assert result.batch_size_from == batch_memory.MODEL_DEFAULT
        assert batch_memory.recall(next(iter(json.loads(path.read_text())["entries"]))) == 2
    entries = json.loads(path.read_text())["entries"]
    (key,) = entries
    path.write_text(json.dumps({"version": 1, "entries": {key: {"batch_size": "two"}}}))
    with pytest.warns(BatchMemoryWarning, match="entry"):
        assert batch_memory.recall(key) is None


def test_an_unwritable_cache_warns_and_the_run_goes_on(
    fits_two: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(batch_memory.CACHE_ENV, str(blocker / "cache"))  # a folder under a file
    with pytest.warns(BatchMemoryWarning, match="cannot write"):
        result = _search(write=False)
    assert len(result.top) > 0


def test_a_cap_bounds_only_a_size_not_given() -> None:
    class Model:
        preferred_batch_size = 64

    assert batch_memory.choose(None, Model(), "k", cap=5) == (5, batch_memory.MODEL_DEFAULT)
    assert batch_memory.choose(8, Model(), "k", cap=5) == (8, batch_memory.USER)
    batch_memory.remember("k", 2, failed=4)
    assert batch_memory.choose(None, Model(), "k", cap=5) == (2, batch_memory.REMEMBERED)


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(batch_memory.CACHE_ENV, str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert batch_memory.cache_dir() == tmp_path / "own"
    monkeypatch.delenv(batch_memory.CACHE_ENV)
    assert batch_memory.cache_dir() == tmp_path / "xdg" / "noisesearch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert batch_memory.cache_dir() == Path.home() / ".cache" / "noisesearch"


def test_a_resumed_run_keeps_where_its_batch_size_came_from(
    fits_two: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from noisesearch.api import resume_run
    from noisesearch.faults import PluginFailed
    from noisesearch_builtin.verifiers import digits_classifiers

    _search(write=False)  # remembers 2
    calls = {"n": 0}
    original = digits_classifiers.DigitsClassifier.score

    def crash_once(self: Any, images: torch.Tensor, condition: Any, trajectory: Any = None) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        return original(self, images, condition, trajectory)

    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", crash_once)
    out = tmp_path / "run"
    with pytest.raises(PluginFailed, match="power cut"):
        _search(output=str(out))
    assert json.loads((out / "run.json").read_text())["batch_size_from"] == "remembered"
    resumed = resume_run(out)
    assert resumed.config.batch_size == 2 and resumed.batch_size_from == batch_memory.REMEMBERED
    assert json.loads((out / "run.json").read_text())["batch_size_from"] == "remembered"


def test_a_static_batch_model_pads_to_the_halved_size_and_its_candidates_replay() -> None:
    """Padding follows the engine's batch size after an out-of-memory halving: the denoiser sees
    only the halved shape from then on, and each recipe records it, so replay is exact."""
    from noisesearch.engine import Budget
    from noisesearch.recipes import replay
    from noisesearch.testing import GaussianModel, run_strategy
    from noisesearch_builtin.search.random_search import RandomSearch

    class StaticSmallMemory(GaussianModel):
        static_batch = True

        def __init__(self) -> None:
            super().__init__()
            self.shapes: list[int] = []

        def denoise(self, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
            self.shapes.append(x.shape[0])
            if x.shape[0] > 2:
                raise FakeOutOfMemory("CUDA out of memory")
            return super().denoise(x, sigma, prepared)

    model = StaticSmallMemory()
    run = run_strategy(RandomSearch(), Budget(candidates=5), model=model, batch_size=8, top_k=5)
    assert model.shapes[0] == 8  # 5 rows padded to 8: out of memory; then 4: again; then 2
    assert set(model.shapes[model.shapes.index(2):]) == {2}  # the last, lone row ran padded to 2
    assert all(op["batch"] == 2 for c in run.candidates for op in c.recipe["ops"])
    last = run.candidates[-1]
    assert last.recipe["ops"][0]["row"] == 0 and last.recipe["decode"]["batch"] == 1
    assert last.image is not None
    with torch.inference_mode():
        latent = replay(last.recipe, lambda x, s: model.denoise(x, s, None), model.schedule, "ddim",
                        tuple(model.latent_shape))
        image = model.decode(latent[None])[0]
    assert torch.equal(image, last.image)


def test_a_memory_another_process_writes_is_seen_within_the_recheck_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No memory file is taken as absent for ABSENT_RECHECK_S without asking the file system
    again (a loop of small searches asked on every search); a file another process writes
    meanwhile is read once the interval has passed, and this process's own is read at once."""
    import time

    monkeypatch.setattr(batch_memory, "ABSENT_RECHECK_S", 0.3)
    assert batch_memory.recall("m|8x8|float32|cpu") is None  # no file: absent for 0.3 s
    path = batch_memory.memory_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"batch_size": 3, "failed": 6, "updated": "2026-12-01T00:00:00Z"}
    path.write_text(json.dumps({"version": 1, "entries": {"m|8x8|float32|cpu": entry}}))  # "another process"
    time.sleep(0.35)
    assert batch_memory.recall("m|8x8|float32|cpu") == 3
    path.unlink()
    assert batch_memory.recall("m|8x8|float32|cpu") is None
    batch_memory.remember("m|8x8|float32|cpu", 5, failed=10)  # this process: seen at once
    assert batch_memory.recall("m|8x8|float32|cpu") == 5
