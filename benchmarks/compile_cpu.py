"""``--model-opt compile`` on the CPU: the same search with the denoiser eager and compiled.

Builds the default ``shapes`` model twice (eager, and with ``compile=default`` and the given
backend), runs one search with each (the compiled one compiles: its time is reported apart),
compares their top-k images, then interleaves ``--reps`` more searches of each and prints the
ratio of their process CPU times (median [min, max]). One torch thread: this machine is shared.
The numbers in docs/performance.md ("GPU options") came from:

    python benchmarks/compile_cpu.py --backend eager --candidates 16 --batch 16
    python benchmarks/compile_cpu.py --backend eager --candidates 20 --batch 8   # a padded batch
    python benchmarks/compile_cpu.py --backend inductor --candidates 16 --batch 16  # needs a C++ compiler

Process CPU time leaves out inductor's C++ compiler, which runs in child processes: the first
search's wall time shows it.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="eager", help="torch.compile backend (eager, inductor)")
    parser.add_argument("--mode", default="default", help="compile mode")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)

    import torch

    import noisesearch
    from noisesearch.plugins import build_registries, get_plugin_manager

    torch.set_num_threads(1)
    registries = build_registries(get_plugin_manager(load_entrypoints=False))
    models = {
        "eager": registries.models.create("shapes", device="cpu"),
        "compiled": registries.models.create("shapes", device="cpu", compile=args.mode,
                                             compile_backend=args.backend),
    }

    def search(name: str) -> noisesearch.SearchResult:
        return noisesearch.search(model=models[name], candidates=args.candidates, batch_size=args.batch,
                                  write=False, registries=registries)

    first = {}
    for name in models:
        wall, cpu = time.perf_counter(), time.process_time()
        first[name] = search(name)
        print(f"{name}: first search {time.perf_counter() - wall:.2f} s wall, "
              f"{time.process_time() - cpu:.2f} s CPU", flush=True)
    images = {name: torch.stack([c.image for c in sorted(r.top, key=lambda c: c.index)])
              for name, r in first.items()}
    diff = float((images["compiled"] - images["eager"]).abs().max())
    same = first["compiled"].best.index == first["eager"].best.index
    print(f"top-k images, max |compiled - eager|: {diff:.3g}; same winner: {same}")
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.reps):
        for name in models:
            cpu = time.process_time()
            search(name)
            seconds[name].append(time.process_time() - cpu)
    ratios = [c / e for c, e in zip(seconds["compiled"], seconds["eager"])]
    print("CPU s per search:", {name: [round(s, 3) for s in values] for name, values in seconds.items()})
    median = statistics.median(ratios)
    print(f"compiled / eager CPU time: {median:.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
