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


# -- probe7 D2: actors the cluster cannot place are refused or reported, never waited for silently --

class NodesOnly:
    """A cluster as ``ray.nodes()`` describes it (resources per node; a dead node counts for nothing)."""

    def __init__(self, *nodes: dict) -> None:
        self._nodes = [{"Alive": True, "Resources": node} for node in nodes]
        self._nodes.append({"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}})

    def nodes(self) -> list[dict]:
        return self._nodes


def placement(nodes: list[dict], resources: dict | None = None, **options) -> tuple[dict, int]:
    from noisesearch_builtin.executors.ray_executor import RayExecutor

    executor = RayExecutor(**options)
    executor.ray = NodesOnly(*nodes)
    return executor._placement(resources or {}, "digits")


def test_workers_or_resources_that_no_node_can_hold_are_refused() -> None:
    pytest.importorskip("ray")
    from noisesearch.errors import ConfigError

    cpus = [{"CPU": 2.0, "memory": 4.0 * 2**30}]
    with pytest.raises(ConfigError, match=r"^workers: 4 workers for 'digits', each taking 1 CPU, 0 GPUs, "
                                          r"do not fit: the Ray cluster has 2 CPUs, 0 GPUs \(1 node\), "
                                          r"room for 2"):
        placement(cpus, workers=4)
    with pytest.raises(ConfigError, match=r"^resources: a worker for 'digits' takes 1 CPU, 1 GPU, which no "
                                          r"node has: the Ray cluster has 2 CPUs, 0 GPUs"):
        placement(cpus, {"num_gpus": 1})
    with pytest.raises(ConfigError, match=r"^resources: .* 8 GiB of memory, which no node has"):
        placement(cpus, {"memory": 8 * 2**30})
    two_gpus_apart = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    with pytest.raises(ConfigError, match=r"^resources: .* 2 GPUs, which no node has: .* 2 GPUs \(2 nodes\)"):
        placement(two_gpus_apart, {"num_gpus": 2})  # two in all, but an actor is on one node
    assert placement(cpus) == ({"num_cpus": 1, "num_gpus": 0.0}, 2)
    assert placement(cpus, workers=2)[1] == 2
    assert placement([{"CPU": 4.0, "GPU": 8.0}])[1] == 4  # one CPU each: 8 would leave 4 pending
    assert placement([{"CPU": 8.0, "GPU": 1.0}], {"num_gpus": 0.25})[1] == 4
    assert placement(two_gpus_apart, {"num_gpus": 1})[1] == 2
    assert placement(cpus, {"num_cpus": 0}, workers=4)[1] == 4  # an actor that takes nothing always fits


@pytest.mark.slow
def test_a_bench_asking_more_than_the_cluster_has_stops_or_goes_on_never_hangs(tmp_path: Path) -> None:
    """On a 2-CPU local cluster: --workers 4, or a GPU per worker, is refused before the bench
    folder exists; actors that other actors keep from their CPUs are reported after
    ready_timeout_s, the bench going on with those that started, or stopping when none could."""
    pytest.importorskip("ray")
    import warnings

    import ray
    from typer.testing import CliRunner

    from noisesearch.cli import build_app
    from noisesearch.errors import ConfigError

    class Holder:
        def ping(self) -> int:
            return 1

    # 12 cells: more than the one worker that starts runs before the others are reported.
    small = BenchGrid(models=["digits"], strategies=[StrategySpec("random")], budgets=[40, 80, 160],
                      limit=3, baselines=["default"], output=str(tmp_path / "b"), threads=1)
    cells = expand(small, build_registries())
    executor = make_executor("ray", {"workers": 2, "threads": 1, "num_cpus": 2, "ready_timeout_s": 1})
    try:
        executor.start()
        out = tmp_path / "refused"
        args = ["bench", "--budget", "40", "--limit", "1", "--executor", "ray", "-o", str(out)]
        result = CliRunner().invoke(build_app(), [*args, "--workers", "4"])
        assert result.exit_code == 2, result.output
        assert "Error: workers: 4 workers for 'digits'" in result.output
        assert "the Ray cluster has 2 CPUs, 0 GPUs" in result.output
        grid_file = tmp_path / "gpu.toml"
        grid_file.write_text("[resources.digits]\nnum_gpus = 1\n")
        result = CliRunner().invoke(build_app(), [*args, str(grid_file)])
        assert result.exit_code == 2, result.output
        assert "Error: resources: a worker for 'digits' takes 1 CPU, 1 GPU" in result.output
        assert not out.exists()

        holders = [ray.remote(num_cpus=1)(Holder).remote()]
        ray.get(holders[0].ping.remote())  # one of the 2 CPUs taken: one worker waits
        rows: list[dict] = []
        with warnings.catch_warnings(record=True) as told:
            warnings.simplefilter("always")
            executor.run(cells, rows.append)
        assert [row["status"] for row in rows] == ["ok"] * len(cells), [row.get("error") for row in rows]
        said = [str(w.message) for w in told]
        assert any("1 worker for 'digits' each taking 1 CPU, 0 GPUs could not be placed in 1 s: the "
                   "cluster has 0 CPUs free of 2 CPUs" in message for message in said), said
        assert len(executor.actors) == 1  # the one that could not be placed is gone

        executor._kill_actors()
        holders.append(ray.remote(num_cpus=1)(Holder).remote())
        ray.get(holders[1].ping.remote(), timeout=60)  # both CPUs taken: no worker can start
        with pytest.raises(ConfigError, match=r"^resources: no Ray worker could start: 2 workers for"):
            executor.run(cells, rows.append)
    finally:
        executor.close()
    assert not ray.is_initialized()
