"""What `noisesearch bench` costs beyond its searches, and what Ray's scale-out buys.

1. **Overhead** (local executor): a bench of 100 small cells on an embedded model, run
   folders included: `digits` (default; cells of ~10 ms of search, so a run folder's writing
   dominates) or `--model shapes --budgets 40 80 120 160 200` (the default model; cells of
   2-10 candidates, ~0.4-2 s). Overhead = (bench wall time - sum of the cells' search seconds) /
   sum of search seconds. torch is imported before the clock starts; the model and verifier
   loads (once per worker) are counted as overhead. Target: <= 10%.
2. **Scale-out** (Ray executor, `noisesearch[ray]`): a 40-cell bench whose cells take >= 2 s
   each on one torch thread, with 1 worker and then 2 workers (one torch thread each) on a
   local cluster of 2 CPUs. Target: time(2 workers) <= 0.6 x time(1 worker).

    python benchmarks/bench_overhead.py                 # both, prints a table, writes JSON
    python benchmarks/bench_overhead.py --skip-ray      # the overhead only
    python benchmarks/bench_overhead.py --quick         # a smoke run (10 + 4 cells)

On a shared 2-core machine other processes skew absolute times: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch  # imported before any clock starts

from noisesearch.bench.grid import BenchGrid, StrategySpec
from noisesearch.bench.runner import run_bench

BUDGETS = [80, 160, 320, 640, 1280]


def overhead(folder: Path, quick: bool, budgets: list[int], model: str = "digits") -> dict[str, Any]:
    """100 cells: 10 labels (or suite prompts) x 2 seeds x 5 budgets of random search (10 cells
    with --quick)."""
    grid = BenchGrid(models=[model], strategies=[StrategySpec("random")],
                     budgets=budgets[:1] if quick else budgets, seeds=[0] if quick else [0, 1],
                     limit=10, baselines=[], threads=1, output=str(folder))
    started = time.perf_counter()
    result = run_bench(grid)
    wall = time.perf_counter() - started
    search = sum(row["search_seconds"] for row in result.rows)
    cells = sum(row["seconds"] for row in result.rows)
    return {"cells": len(result.rows), "wall_s": round(wall, 3), "sum_search_s": round(search, 3),
            "sum_cell_s": round(cells, 3), "overhead": round((wall - search) / search, 4),
            "overhead_in_cells": round((cells - search) / search, 4)}


def scale_out(folder: Path, quick: bool, budget: int = 131072) -> dict[str, Any]:
    """The same 40-cell bench with 1 and with 2 Ray workers (4 cells with --quick)."""
    labels = 2 if quick else 10
    grid = dict(models=["digits"], strategies=[StrategySpec("random")],
                budgets=[budget], seeds=[0, 1] if quick else [0, 1, 2, 3], limit=labels,
                baselines=[], threads=1)
    times: dict[str, float] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for workers in (1, 2):
        out = folder / f"ray-{workers}"
        started = time.perf_counter()
        result = run_bench(BenchGrid(**grid, output=str(out)), executor="ray",
                           executor_options={"workers": workers, "num_cpus": 2})
        times[str(workers)] = time.perf_counter() - started
        rows[str(workers)] = result.rows
    per_cell = [row["search_seconds"] for row in rows["1"]]
    same = [{k: v for k, v in r.items() if k not in ("seconds", "search_seconds", "run_dir")}
            for r in rows["1"]] == [{k: v for k, v in r.items()
                                     if k not in ("seconds", "search_seconds", "run_dir")} for r in rows["2"]]
    return {"cells": len(rows["1"]), "one_worker_s": round(times["1"], 2),
            "two_workers_s": round(times["2"], 2), "ratio": round(times["2"] / times["1"], 3),
            "median_cell_search_s": round(sorted(per_cell)[len(per_cell) // 2], 3),
            "identical_rows": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run: 10 + 4 cells.")
    parser.add_argument("--skip-ray", action="store_true", help="Measure the local overhead only.")
    parser.add_argument("--json", default="bench_overhead.json", help="Where to write the numbers.")
    parser.add_argument("--budgets", type=int, nargs=5, default=BUDGETS,
                        help="The overhead bench's 5 NFE budgets (cell size); default 80 ... 1280.")
    parser.add_argument("--model", default="digits",
                        help="The overhead bench's model: digits (cells of ~10 ms) or shapes (~1 s).")
    parser.add_argument("--scale-budget", type=int, default=131072,
                        help="NFEs of each scale-out cell: size it so a cell takes >= 2 s here.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        report: dict[str, Any] = {"overhead": overhead(root / "local", args.quick, args.budgets, args.model)}
        print(f"overhead: {report['overhead']}")
        if not args.skip_ray:
            report["scale_out"] = scale_out(root, args.quick, args.scale_budget)
            print(f"scale-out: {report['scale_out']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
