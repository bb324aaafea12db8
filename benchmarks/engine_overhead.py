"""What the search engine costs beyond the work it cannot avoid, on the embedded digits model.

A search (``noisesearch.search`` with the model and verifiers built once) against a
hand-written batched loop in this file that does the same work: the same noises' count, the
same 20 DDIM steps (the same NFEs) with the same weights and batch size, the decode, the
searched verifier on every candidate and the top-k by its score. Two ratios, search / loop:

- **like for like**: no evaluator (``evaluator="none"``), nothing written;
- **defaults**: the model's default evaluator, nothing written (the run folder is measured
  on its own by ``noisesearch run``; see docs/performance.md).

Repetitions are interleaved (the arms take turns, in rotating order) so that the load of a
shared machine falls on every arm alike; each ratio is the median over repetitions of
(search time / loop time of the same repetition), with [min, max]. Times are this process's
CPU time (``time.process_time``, one torch thread): on a shared machine, wall time also
counts the waits for a core that other processes hold; the wall-time ratios are printed too.
Peak Python memory (tracemalloc, in a separate pass: tracing slows Python down) of one
defaults search per N shows whether per-candidate state grows with N.

    python benchmarks/engine_overhead.py                  # N = 16, 256, 4096
    python benchmarks/engine_overhead.py --sizes 16 --reps 3 --json out.json

``--shapes`` measures the embedded diffusers pipeline instead (issue 12 item 3): diffusers' own
batched call ``pipe(prompt, num_images_per_prompt=N)`` plus the searched verifier on its N
images (**diffusers**), against ``noisesearch.search`` random N on the same loaded pipeline
and verifiers with the model's defaults (20 DDIM steps, CFG 2, the ``shapes-judge``
evaluator), nothing written (**search**) and with its run folder (**search, folder**: journal,
``candidates.jsonl``, PNGs, run.json, report). Ratio = search / diffusers (goal <= 1.3):

    python benchmarks/engine_overhead.py --shapes --sizes 16 --reps 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import torch  # imported before any clock starts

import noisesearch
from noisesearch import batch_memory
from noisesearch.plugins import build_registries

LABEL = 3
STEPS = 20
TOP_K = 8


def hand_loop(model: Any, verifier: Any, n: int, batch_size: int) -> torch.Tensor:
    """The minimal batched search: noise, DDIM over the grid, decode, score, keep the top-k."""
    from noisesearch import Condition

    condition = Condition(label=LABEL)
    prepared = model.prepare(condition)
    levels = model.schedule.levels(STEPS)
    generator = torch.Generator("cpu").manual_seed(0)
    scores, kept = [], []
    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            rows = min(batch_size, n - lo)
            x = torch.randn((rows, *model.latent_shape), generator=generator)  # (B, 64)
            for sigma, sigma_next in zip(levels, levels[1:]):
                x0 = model.denoise(x, sigma, prepared)
                eps = (x - (1.0 - sigma) * x0) / sigma
                x = (1.0 - sigma_next) * x0 + sigma_next * eps
            images = model.decode(x).float().clamp(0, 1)  # (B, 3, 8, 8)
            batch_scores = verifier.score(images, condition)  # (B,)
            scores.append(batch_scores)
            kept.append(images)
        top = torch.cat(scores).topk(min(TOP_K, n)).indices
        return torch.cat(kept)[top]


def check_same_batches(built: dict[str, Any]) -> None:
    """The search must batch as the loop does: a batch size remembered after an out-of-memory
    halving (``noisesearch.batch_memory``, in the user cache) would make it run smaller batches."""
    model = built["model"]
    searched = make_arms(1, built)["like_for_like"]().config.batch_size
    if searched != model.preferred_batch_size:
        raise SystemExit(
            f"the search runs batches of {searched}, the loop of {model.preferred_batch_size}: a batch "
            f"size is remembered in {batch_memory.memory_file()}; run with NOISESEARCH_CACHE_DIR set "
            f"to an empty folder (or delete that file)")


def make_arms(n: int, built: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    model, registries = built["model"], built["registries"]
    verifiers = {"digits-classifier": built["classifier"], "digits-evaluator": built["evaluator"]}
    common = dict(model=model, label=LABEL, candidates=n, steps=STEPS, top_k=TOP_K, write=False,
                  registries=registries, built_verifiers=verifiers)
    return {
        "loop": lambda: hand_loop(model, built["classifier"], n, model.preferred_batch_size),
        "like_for_like": lambda: noisesearch.search(evaluator="none", **common),
        "defaults": lambda: noisesearch.search(**common),
    }


def shapes_arms(n: int, built: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """diffusers' batched call + the verifier, against the search, on one loaded pipeline."""
    import tempfile

    from noisesearch import Condition

    model, clip = built["model"], built["shapes-clip"]
    prompt = model.default_prompt
    condition = Condition(prompt=prompt)
    verifiers = {"shapes-clip": clip, "shapes-judge": built["shapes-judge"]}
    steps = built.get("steps") or model.default_steps
    common = dict(model=model, prompt=prompt, candidates=n, steps=steps, registries=built["registries"],
                  built_verifiers=verifiers)
    folder = tempfile.mkdtemp(prefix="engine-overhead-")

    def diffusers_call() -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(0)
        with torch.inference_mode():
            images = model.pipe(prompt, num_images_per_prompt=n, num_inference_steps=steps,
                                guidance_scale=model.guidance_scale, height=model.height, width=model.width,
                                generator=generator, output_type="pt").images  # (N, 3, H, W) in [0, 1]
            return clip.score(images, condition)  # (N,)

    return {
        "diffusers": diffusers_call,
        "search": lambda: noisesearch.search(write=False, **common),
        "search_folder": lambda: noisesearch.search(write=True, output=folder, overwrite=True, **common),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(n: int, reps: int, built: dict[str, Any]) -> dict[str, Any]:
    arms = (shapes_arms if "shapes-clip" in built else make_arms)(n, built)
    names = list(arms)
    for fn in arms.values():  # warm-up: first calls pay for lazy imports and allocator growth
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            times[name].append(timed(arms[name]))
    out: dict[str, Any] = {"n": n, "reps": reps,
                           "median_cpu_s": {k: statistics.median(c for c, _ in v) for k, v in times.items()},
                           "median_wall_s": {k: statistics.median(w for _, w in v) for k, v in times.items()}}
    for name in names[1:]:
        for clock, i in (("", 0), ("wall_", 1)):
            ratios = [s[i] / h[i] for s, h in zip(times[name], times[names[0]])]
            out[clock + name] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def engine_in_situ(n: int, reps: int, built: dict[str, Any]) -> dict[str, float]:
    """Where a like-for-like search's time goes, inside real searches (µs, medians): the model's
    (``usage.model_seconds``: its units, solve and decode), the searched verifier's, and the rest,
    the engine's own work, which right after the denoiser runs with cold caches (a stand-in model
    that costs nothing would show it smaller)."""
    search = make_arms(n, built)["like_for_like"]
    search()
    parts: dict[str, list[float]] = {"total": [], "model": [], "verifier": [], "engine": []}
    for _ in range(reps):
        start = time.perf_counter()
        usage = search().usage
        total = time.perf_counter() - start
        for name, value in (("total", total), ("model", usage.model_seconds),
                            ("verifier", usage.verifier_seconds),
                            ("engine", total - usage.model_seconds - usage.verifier_seconds)):
            parts[name].append(value * 1e6)
    return {name: statistics.median(values) for name, values in parts.items()}


def peak_memory(n: int, built: dict[str, Any]) -> dict[str, float]:
    """Peak Python-allocated memory (KB) of one defaults search and one loop of ``n``."""
    arms = make_arms(n, built)
    out = {}
    for name in ("loop", "defaults"):
        tracemalloc.start()
        arms[name]()
        out[name] = tracemalloc.get_traced_memory()[1] / 1024
        tracemalloc.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 256, 4096])
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default: by N)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both arms)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--shapes", action="store_true",
                        help="the embedded diffusers pipeline: search / diffusers' batched call")
    parser.add_argument("--steps", type=int, default=0,
                        help="--shapes: DDIM steps per candidate (default: the model's 20)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registries = build_registries()
    if args.shapes:
        shapes_main(args, registries)
        return
    built = {
        "registries": registries,
        "model": registries.models.get("digits").create(),
        "classifier": registries.verifiers.get("digits-classifier").create(),
        "evaluator": registries.verifiers.get("digits-evaluator").create(),
    }
    check_same_batches(built)
    results = []
    print(f"torch {torch.__version__}, {args.threads} thread(s); ratio = search / hand-written loop, "
          "median [min, max] over interleaved repetitions; CPU time (wall time)")
    print(f"{'N':>6} {'reps':>4} {'loop ms':>9} {'like for like':>22} {'defaults':>22}"
          f" {'wall: like for like':>22} {'wall: defaults':>22}")
    for n in args.sizes:
        reps = args.reps or {16: 200, 256: 40}.get(n, 9)  # a 5 ms search moves by +-0.03 run to run
        row = measure(n, reps, built)
        results.append(row)
        cells = [f"{row[k]['median']:.3f} [{row[k]['min']:.2f}, {row[k]['max']:.2f}]"
                 for k in ("like_for_like", "defaults", "wall_like_for_like", "wall_defaults")]
        print(f"{n:>6} {reps:>4} {row['median_cpu_s']['loop'] * 1000:>9.1f} "
              + " ".join(f"{cell:>22}" for cell in cells), flush=True)
    print("\nlike for like inside real searches (µs, medians; wall time): the engine's own = total - "
          "model - verifier")
    print(f"{'N':>6} {'total':>9} {'model':>9} {'verifier':>9} {'engine':>9}")
    in_situ = {}
    for n in args.sizes:
        in_situ[n] = engine_in_situ(n, min(args.reps or 50, 50), built)
        parts = ("total", "model", "verifier", "engine")
        print(f"{n:>6} " + " ".join(f"{in_situ[n][k]:>9.0f}" for k in parts))
    print("\npeak Python memory (tracemalloc, KB), one run each:")
    print(f"{'N':>6} {'loop':>10} {'search (defaults)':>18}")
    memory = {}
    for n in args.sizes:
        memory[n] = peak_memory(n, built)
        print(f"{n:>6} {memory[n]['loop']:>10.0f} {memory[n]['defaults']:>18.0f}")
    if len(args.sizes) > 1:
        lo, hi = min(args.sizes), max(args.sizes)
        growth = (memory[hi]["defaults"] - memory[lo]["defaults"]) / (hi - lo) * 1024
        print(f"search growth: {growth:.0f} bytes per candidate from N={lo} to N={hi}; "
              f"peak ratio N={hi} / N={lo}: {memory[hi]['defaults'] / memory[lo]['defaults']:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": args.threads, "ratios": results,
                       "engine_in_situ_us": {str(k): v for k, v in in_situ.items()},
                       "peak_python_kb": {str(k): v for k, v in memory.items()}}, handle, indent=2)


def shapes_main(args: argparse.Namespace, registries: Any) -> None:
    """``--shapes``: search / (diffusers' batched call + verifier), interleaved, per N."""
    built = {"registries": registries, "model": registries.models.get("shapes").create(), "steps": args.steps}
    for name in ("shapes-clip", "shapes-judge"):
        built[name] = registries.verifiers.get(name).create()
    model = built["model"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), shapes (batch {model.preferred_batch_size}, "
          f"{args.steps or model.default_steps} steps); ratio = search / (diffusers' batched call + "
          "verifier), median [min, max] over interleaved repetitions; CPU time (wall time)")
    print(f"{'N':>6} {'reps':>4} {'diffusers s':>11} {'search':>22} {'search, folder':>22}"
          f" {'wall: search':>22} {'wall: search, folder':>22}")
    results = []
    for n in args.sizes:
        row = measure(n, args.reps or 5, built)
        results.append(row)
        cells = [f"{row[k]['median']:.3f} [{row[k]['min']:.2f}, {row[k]['max']:.2f}]"
                 for k in ("search", "search_folder", "wall_search", "wall_search_folder")]
        print(f"{n:>6} {row['reps']:>4} {row['median_cpu_s']['diffusers']:>11.2f} "
              + " ".join(f"{cell:>22}" for cell in cells), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": args.threads, "model": "shapes", "ratios": results}, handle, indent=2)


if __name__ == "__main__":
    main()
