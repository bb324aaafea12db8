"""``--overlap`` against the default on one loaded model: the wall time of
``noisesearch.search(model=<built model>, candidates=N, write=False)`` with and without
``overlap=True`` (the next batch denoised on a worker thread while the last one is decoded,
scored and recorded; ``noisesearch.overlap``), interleaved repetitions, median and spread of
the ratio overlap / default (below 1: overlap is faster). Both runs' ``candidates.jsonl``
lines must be identical, and are checked.

Wall time, not CPU time: overlap spends the same CPU sooner, on two threads. With one torch
thread (the default here) each of the two threads has a core of a 2-core machine.

    python benchmarks/overlap.py                                  # shapes, N = 64, its batch size
    python benchmarks/overlap.py --batch-size 16 --reps 9         # 4 batches of 16
    python benchmarks/overlap.py --batch-size 16 --steps 4        # scoring weighs 5x more
    python benchmarks/overlap.py --model digits --candidates 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch  # imported before any clock starts

import noisesearch
from noisesearch.plugins import build_registries


def lines(result: Any) -> list[tuple[Any, ...]]:
    """What ``candidates.jsonl`` would say of each candidate, comparably."""
    return [(nfe, objective, json.dumps(scores, sort_keys=True)) for nfe, objective, scores in result.history]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    registries = build_registries()
    model = registries.models.get(args.model).create()
    names = [*getattr(model, "default_verifiers", ()), getattr(model, "default_evaluator", None)]
    verifiers = {name: registries.verifiers.get(name).create() for name in dict.fromkeys(names) if name}
    common: dict[str, Any] = dict(model=model, candidates=args.candidates, batch_size=args.batch_size,
                                  steps=args.steps, write=False, registries=registries,
                                  built_verifiers=verifiers)
    arms = {"default": lambda: noisesearch.search(**common),
            "overlap": lambda: noisesearch.search(**common, overlap=True)}
    reference = lines(arms["default"]())  # warm-up (lazy imports, allocator), and the check
    assert lines(arms["overlap"]()) == reference, "overlap changed the candidates"
    times: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    for rep in range(args.reps):
        for name in (list(arms) if rep % 2 == 0 else list(arms)[::-1]):
            start, used = time.perf_counter(), time.process_time()
            arms[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - used)
    ratios = [o / d for o, d in zip(times["overlap"], times["default"])]
    batch_size = args.batch_size or getattr(model, "preferred_batch_size", None)
    out = {"model": args.model, "candidates": args.candidates, "steps": args.steps, "batch_size": batch_size,
           "threads": args.threads, "reps": args.reps,
           "median_s": {name: statistics.median(t) for name, t in times.items()},
           "median_cpu_s": {name: statistics.median(t) for name, t in cpu.items()},
           "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
           "wall_s": times, "cpu_s": cpu}
    print(f"{args.model}, N = {args.candidates}, batch {out['batch_size']}, steps {args.steps or 'default'}, "
          f"torch {torch.__version__}, {args.threads} thread(s), {args.reps} interleaved repetitions")
    median, ratio = out["median_s"], out["ratio"]
    print(f"default {median['default']:.3f} s, overlap {median['overlap']:.3f} s (medians; CPU "
          f"{out['median_cpu_s']['default']:.3f} s, {out['median_cpu_s']['overlap']:.3f} s); "
          f"overlap / default {ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(out, handle, indent=1)
    return out


if __name__ == "__main__":
    main()
