"""The Ray executor (noisesearch[ray]) gives the local executor's rows, bit for bit, and a
killed worker's cell is retried without a duplicated row. Ray runs on this machine only
(127.0.0.1, num_cpus=2) and is shut down."""

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


def test_without_ray_the_executor_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    from typer.testing import CliRunner

    from noisesearch.cli import build_app

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
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
