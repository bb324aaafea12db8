"""The Ray executor (noisesearch[ray]) gives the local executor's rows, bit for bit, and a
killed worker's cell is retried without a duplicated row; one search spread over its actors
ends as the local search. Ray runs on this machine only (127.0.0.1, num_cpus=2) and is shut
down."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from noisesearch.bench.cells import TIMING_COLUMNS
from noisesearch.bench.executors import LocalExecutor, make_executor
from noisesearch.bench.grid import BenchGrid, StrategySpec
from noisesearch.bench.runner import expand
from noisesearch.plugins import build_registries


def grid(output: Path) -> BenchGrid:
    return BenchGrid(models=["digits"], strategies=[StrategySpec("random"), StrategySpec("smc")],
                     budgets=[40, 80], seeds=[0], limit=1, baselines=["default", "stochastic"],
                     output=str(output), threads=1)


def comparable(rows: list[dict]) -> list[dict]:
    drop = (*TIMING_COLUMNS, "run_dir")
    return sorted(({k: v for k, v in row.items() if k not in drop} for row in rows),
                  key=lambda row: row["key"])


def block_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imports of ray fail, as where the extra is not installed."""
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)


def test_without_ray_the_executor_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from noisesearch.cli import build_app

    block_ray(monkeypatch)
    out = tmp_path / "bench"
    result = CliRunner().invoke(build_app(), ["bench", "--executor", "ray", "-o", str(out)])
    assert result.exit_code == 2
    expected = "Error: executor: the Ray executor needs Ray: pip install 'noisesearch[ray]'"
    assert result.output.strip() == expected
    assert not out.exists()


@pytest.mark.slow
def test_ray_rows_equal_local_rows_and_a_killed_worker_is_retried(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    registries = build_registries()
    local_cells = expand(grid(tmp_path / "local"), registries)
    ray_cells = expand(grid(tmp_path / "ray"), registries)
    assert [c.key for c in ray_cells] == [c.key for c in local_cells]

    local_rows: list[dict] = []
    LocalExecutor(threads=1).run(local_cells, local_rows.append)

    executor = make_executor("ray", {"workers": 2, "threads": 1, "num_cpus": 2})
    ray_rows: list[dict] = []
    killed: list[int] = []

    def on_row(row: dict) -> None:
        ray_rows.append(row)
        if not killed:  # kill one worker while it holds cells: they must be retried
            import ray

            assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
            pid = executor.pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        executor.run(ray_cells, on_row)
        assert executor.pids()[0] != killed[0]  # the actor was restarted
    finally:
        executor.close()
    import ray

    assert not ray.is_initialized()  # the local cluster it started is shut down
    assert len(ray_rows) == len(ray_cells)
    assert len({row["key"] for row in ray_rows}) == len(ray_cells)  # no duplicate
    assert all(row["status"] == "ok" for row in ray_rows), [r.get("error") for r in ray_rows]
    assert comparable(ray_rows) == comparable(local_rows)  # every score, bit for bit
    for row in ray_rows:
        assert (Path(row["run_dir"]) / "run.json").is_file()


def test_run_with_executor_ray_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from noisesearch.cli import build_app

    block_ray(monkeypatch)
    out = tmp_path / "run"
    args = ["run", "--model", "digits", "--candidates", "2", "--executor", "ray", "-o", str(out)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2
    expected = "Error: executor: the Ray executor needs Ray: pip install 'noisesearch[ray]'"
    assert result.output.strip() == expected
    assert not out.exists()


@pytest.mark.slow
def test_one_search_across_two_ray_actors_equals_the_local_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The winner and candidates.jsonl of a search whose batches were solved and decoded on 2
    actors equal a local search's (same seed, same batch size), for full samples (random),
    partial paths (paths) and clean predictions (smc), also when an actor is killed mid-search;
    through search() and `run --executor`."""
    pytest.importorskip("ray")
    import ray
    import torch
    from typer.testing import CliRunner

    import noisesearch
    from noisesearch.cli import build_app

    torch.set_num_threads(1)  # the actors take this process's count: the same kernels, bit for bit

    def same(local: Path, spread: Path) -> None:
        assert (spread / "candidates.jsonl").read_bytes() == (local / "candidates.jsonl").read_bytes()
        assert (spread / "best.png").read_bytes() == (local / "best.png").read_bytes()

    executor = make_executor("ray", {"workers": 2, "threads": 1, "num_cpus": 2})
    try:
        for strategy, batch_size in (("random", 6), ("paths", 4), ("smc", 3)):
            common = {"model": "digits", "label": 7, "seed": 3, "strategy": strategy,
                      "budget_nfe": 240, "batch_size": batch_size}
            local = noisesearch.search(**common, output=str(tmp_path / f"local-{strategy}"))
            spread = noisesearch.search(**common, output=str(tmp_path / f"ray-{strategy}"),
                                        executor=executor)
            same(tmp_path / f"local-{strategy}", tmp_path / f"ray-{strategy}")
            assert spread.best.recipe == local.best.recipe and spread.best.image.equal(local.best.image)
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        computed = executor.computed()
        assert len(computed) == 2 and min(computed) > 0, computed  # both actors took units

        from noisesearch_builtin.executors.ray_executor import RayDispatch

        gather, killed = RayDispatch.map, []

        def map_and_kill(self, units):  # noqa: ANN001, ANN202
            outputs = gather(self, units)
            if len(units) < 3 or killed:
                yield from outputs
                return
            yield next(outputs)  # all sent: each actor holds one of the two left, and one dies
            killed.append(executor.pids()[0])
            os.kill(killed[0], signal.SIGKILL)
            yield from outputs

        monkeypatch.setattr(RayDispatch, "map", map_and_kill)
        noisesearch.search(model="digits", label=7, seed=3, strategy="smc", budget_nfe=240,
                           batch_size=3, output=str(tmp_path / "ray-killed"), executor=executor)
        same(tmp_path / "local-smc", tmp_path / "ray-killed")
        assert killed and executor.pids()[0] != killed[0]  # the actor was restarted
    finally:
        executor.close()
    assert not ray.is_initialized()

    args = ["run", "--model", "digits", "--label", "7", "--seed", "3", "--budget-nfe", "240",
            "--batch-size", "6", "-q", "--executor", "ray", "--workers", "2", "-o", str(tmp_path / "cli")]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    same(tmp_path / "local-random", tmp_path / "cli")
    assert not ray.is_initialized()  # the cluster that `run` started is shut down


def test_units_and_prepared_conditions_travel_with_their_tensors_moved() -> None:
    """Between the driver and the actors tensors go on the CPU, and each side moves them to its
    model's device: nested in units, outputs and prepared conditions (dataclasses, dicts,
    tuples). Moved here to the meta device, which no tensor is on by accident."""
    from dataclasses import dataclass

    import torch

    from noisesearch.units import Unit
    from noisesearch_builtin.executors.ray_executor import _moved

    @dataclass(frozen=True)
    class Embeddings:
        cond: torch.Tensor
        uncond: torch.Tensor | None
        extra: tuple[torch.Tensor, ...]

    prepared = {"embeddings": Embeddings(torch.ones(2, 3), None, (torch.zeros(1),)), "scale": 7.5}
    moved = _moved(prepared, "meta")
    assert moved["embeddings"].cond.is_meta and moved["embeddings"].extra[0].is_meta
    assert moved["embeddings"].uncond is None and moved["scale"] == 7.5
    unit = _moved(Unit("decode", torch.ones(4, 8), also={0.5: torch.ones(4, 8)}), "meta")
    assert unit.x.is_meta and unit.also[0.5].is_meta and unit.kind == "decode"
