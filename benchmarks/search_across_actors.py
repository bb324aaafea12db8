"""One search across Ray actors (``search(executor="ray")``): what spreading one search's
batches over model-holding actors buys, and that it changes nothing in the result.

One random search on the embedded digits model, run locally and then with 1 and 2 actors of a
local Ray cluster (one torch thread everywhere). Each Ray timing is the second search on the
same actors (the first one loads the model on each actor, and Ray's start is not counted).
Prints wall times, the ratios 2 actors / 1 actor and 1 actor / local, and whether every
``candidates.jsonl`` is byte-identical to the local one.

    python benchmarks/search_across_actors.py                  # 1024 candidates x 200 steps
    python benchmarks/search_across_actors.py --candidates 256 # quicker

On a shared 2-core machine other processes skew absolute times: read the ratios. The driver
scores every batch itself (verifiers stay local), which bounds what actors can buy here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch  # imported before any clock starts

import noisesearch


def timed(folder: Path, options: dict[str, Any], executor: Any = None) -> float:
    extra = {} if executor is None else {"executor": executor}
    start = time.perf_counter()
    noisesearch.search(**options, output=str(folder), overwrite=True, **extra)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200,
                        help="solver steps per sample: many make the model, not the driver, the cost")
    parser.add_argument("--repeats", type=int, default=3, help="timed searches per setting (median)")
    args = parser.parse_args()
    from noisesearch.bench.executors import make_executor

    torch.set_num_threads(1)
    options = {"model": "digits", "label": 7, "seed": 0, "strategy": "random",
               "candidates": args.candidates, "batch_size": args.batch_size, "steps": args.steps,
               "evaluator": "none"}
    root = Path(tempfile.mkdtemp(prefix="search-across-actors-"))
    timed(root / "warm", options)  # the model's first load and kernels, outside the clock
    times: dict[str, list[float]] = {"local": [timed(root / "local", options) for _ in range(args.repeats)]}
    reference = (root / "local" / "candidates.jsonl").read_bytes()
    identical = {}
    for workers in (1, 2):
        executor = make_executor("ray", {"workers": workers, "threads": 1, "num_cpus": 2})
        try:
            timed(root / f"ray{workers}", options, executor)  # actors load the model
            times[f"ray{workers}"] = [timed(root / f"ray{workers}", options, executor)
                                      for _ in range(args.repeats)]
        finally:
            executor.close()
        identical[f"ray{workers}"] = (root / f"ray{workers}" / "candidates.jsonl").read_bytes() == reference
    median = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    report = {
        "candidates": args.candidates, "batch_size": args.batch_size, "steps": args.steps, "seconds": times,
        "median": median, "ray2_over_ray1": round(median["ray2"] / median["ray1"], 3),
        "ray1_over_local": round(median["ray1"] / median["local"], 3),
        "identical_to_local": identical,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
