"""Gradient ascent on the noise vs random search vs zero-order, at equal NFEs, on the digits model.

Every search uses the same few-step sampler (``--steps`` of DDIM; the ``gradient`` strategy's
``steps`` is set to the same, so it differentiates through exactly that sampler), the same NFE
budget (the backward passes counted: ``noisesearch.gradients.BACKWARD_NFE_FACTOR`` x forward), the
``digits-classifier`` verifier (searched on), and the held-out ``digits-evaluator`` (a different
network trained on the other half of the data, never seen by the search) as the judge.

Per strategy and budget, over ``labels x seeds`` searches: the winner's verifier log p(label),
the evaluator's accuracy on the winner and its log p(label), and the verifier-hacking rate: the
fraction of searches whose winner scores higher than the first candidate on the verifier but
lower on the evaluator. The first candidate is the plain sample of the run's first seed, the
same noise for every strategy (random's first draw, zero-order's first pivot, gradient's first
restart before any step).

    nice -n 10 python benchmarks/compare_gradient.py --budgets 100 300 --seeds 5 --out docs/strategies

Writes ``gradient.json`` and ``gradient.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import noisesearch
from noisesearch.plugins import build_registries

VERIFIER = "digits-classifier"
EVALUATOR = "digits-evaluator"
STRATEGIES = ("gradient", "random", "zero-order")


def one(strategy: str, budget: int, label: int, seed: int, steps: int, options: dict[str, Any],
        registries: Any) -> dict[str, Any]:
    result = noisesearch.search(
        model="digits", label=label, seed=seed, strategy=strategy, budget_nfe=budget, steps=steps,
        verifiers=[VERIFIER], evaluator=EVALUATOR, write=False, registries=registries,
        strategy_options=options,
    )
    best, first = result.best.scores, result.baseline.scores
    return {
        "verifier": best[VERIFIER], "evaluator": best[EVALUATOR],
        "agrees": bool(result.verdicts["best_agrees"]),
        "first_agrees": bool(result.verdicts["baseline_agrees"]),
        "hacked": best[VERIFIER] > first[VERIFIER] and best[EVALUATOR] < first[EVALUATOR],
        "nfe": result.usage.nfe, "backward_nfe": result.usage.backward_nfe,
        "first_verifier": first[VERIFIER], "first_evaluator": first[EVALUATOR],
    }


def run(
    budgets: list[int], seeds: int, labels: list[int], steps: int, gradient: dict[str, Any]
) -> list[dict]:
    registries = build_registries()
    rows = []
    for strategy, budget in itertools.product(STRATEGIES, budgets):
        started = time.perf_counter()
        options = {**gradient, "steps": steps} if strategy == "gradient" else {}
        runs = [one(strategy, budget, label, seed, steps, options, registries)
                for label in labels for seed in range(seeds)]
        n = len(runs)
        rows.append({
            "strategy": strategy, "budget_nfe": budget, "searches": n,
            "mean_nfe_spent": sum(r["nfe"] for r in runs) / n,
            "mean_backward_nfe": sum(r["backward_nfe"] for r in runs) / n,
            "verifier_log_prob": sum(r["verifier"] for r in runs) / n,
            "evaluator_log_prob": sum(r["evaluator"] for r in runs) / n,
            "evaluator_accuracy": sum(r["agrees"] for r in runs) / n,
            "first_accuracy": sum(r["first_agrees"] for r in runs) / n,
            "hacking_rate": sum(r["hacked"] for r in runs) / n,
            "seconds": round(time.perf_counter() - started, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write_markdown(rows: list[dict], path: Path, command: str, machine: str) -> None:
    lines = [
        f"Produced by `{command}` on {machine}.",
        "",
        "| strategy | NFE budget | NFEs spent (backward) | verifier log p | evaluator log p "
        "| evaluator accuracy | hacking rate |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['budget_nfe']} "
            f"| {r['mean_nfe_spent']:.0f} ({r['mean_backward_nfe']:.0f}) "
            f"| {r['verifier_log_prob']:.5f} | {r['evaluator_log_prob']:.3f} "
            f"| {r['evaluator_accuracy']:.2f} | {r['hacking_rate']:.2f} |"
        )
    first = rows[0]["first_accuracy"]
    lines += ["", f"First candidate (no search, the same noise for every strategy): evaluator "
                  f"accuracy {first:.2f} over {rows[0]['searches']} searches."]
    path.write_text("\n".join(lines) + "\n")


def cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labels", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--gradient-opt", action="append", default=[], metavar="KEY=JSON",
                        help="an option of the gradient strategy (default: its defaults)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gradient = {k: json.loads(v) for k, _, v in (o.partition("=") for o in args.gradient_opt)}
    rows = run(args.budgets, args.seeds, args.labels, args.steps, gradient)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        machine = (f"{cpu_name()} ({os.cpu_count()} cores), {args.threads} torch thread(s), "
                   f"torch {torch.__version__}")
        command = "nice -n 10 python benchmarks/compare_gradient.py " + " ".join(
            [f"--budgets {' '.join(map(str, args.budgets))}", f"--seeds {args.seeds}",
             f"--steps {args.steps}",
             *(f"--gradient-opt {o}" for o in args.gradient_opt), f"--out {args.out}"])
        (args.out / "gradient.json").write_text(json.dumps(
            {"command": command, "machine": machine, "gradient_options": gradient, "rows": rows}, indent=2))
        write_markdown(rows, args.out / "gradient.md", command, machine)


if __name__ == "__main__":
    main()
