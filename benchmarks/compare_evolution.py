"""Evolution (SES-style) against random search and zero-order at equal NFE budgets, on the
embedded digits model.

Every search optimises the ``digits-classifier`` verifier; the ``digits-evaluator`` (a separately
trained network the search never sees) judges each winner: its accuracy (does it read the
requested digit) and its log p(label). One search per label and seed; ``--labels`` x ``--seeds``
searches per strategy and budget. A strategy is ``NAME`` or ``NAME:key=value,key=value``
(strategy options), e.g. ``evolution:band=2``.

    python benchmarks/compare_evolution.py --budgets 320 1280 --seeds 5 --out docs/strategies

Writes ``evolution.json`` and ``evolution.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import torch

import noisesearch
from noisesearch.plugins import build_registries

STRATEGIES = ("random", "zero-order", "evolution", "evolution:preview_steps=20")


def parse(spec: str) -> tuple[str, dict[str, object]]:
    """``NAME[:key=value,...]`` -> (name, options); values are read as JSON where they parse."""
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def run(budgets: list[int], seeds: int, labels: list[int], strategies: list[str]) -> list[dict]:
    registries = build_registries()
    rows = []
    for spec, budget in itertools.product(strategies, budgets):
        name, options = parse(spec)
        started = time.perf_counter()
        verifier, evaluator, hits, nfes, drifts = [], [], [], [], []
        for label, seed in itertools.product(labels, range(seeds)):
            result = noisesearch.search(model="digits", label=label, strategy=name, strategy_options=options,
                                        budget_nfe=budget, seed=seed, write=False, registries=registries)
            verifier.append(result.best.scores["digits-classifier"])
            evaluator.append(result.best.scores["digits-evaluator"])
            hits.append(result.verdicts["best_agrees"])
            nfes.append(result.usage.nfe)
            generations = result.strategy_report.get("evolution", {}).get("generations")
            if generations:
                drifts.append(generations[-1]["elite_norm_drift_mean"])
        n = len(hits)
        rows.append({
            "strategy": spec, "budget_nfe": budget, "searches": n,
            "mean_nfe_spent": sum(nfes) / n, "max_nfe_spent": max(nfes),
            "verifier_log_prob": sum(verifier) / n,
            "evaluator_log_prob": sum(evaluator) / n,
            "evaluator_accuracy": sum(hits) / n,
            "elite_norm_drift_last_generation": sum(drifts) / len(drifts) if drifts else None,
            "seconds": round(time.perf_counter() - started, 2),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write_markdown(rows: list[dict], path: Path, command: str, machine: str) -> None:
    lines = [
        "| strategy | NFE budget | NFEs spent (mean / max) | verifier log p(label) | evaluator log p(label) "
        "| evaluator accuracy | elites' norm drift (last gen.) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        drift = "" if r["elite_norm_drift_last_generation"] is None else \
            f"{r['elite_norm_drift_last_generation']:+.3f}"
        lines.append(
            f"| {r['strategy']} | {r['budget_nfe']} | {r['mean_nfe_spent']:.0f} / {r['max_nfe_spent']} | "
            f"{r['verifier_log_prob']:.4f} | {r['evaluator_log_prob']:.4f} | {r['evaluator_accuracy']:.3f} | "
            f"{drift} |"
        )
    searches = rows[0]["searches"] if rows else 0
    path.write_text(f"Produced by `{command}` on {machine}; {searches} searches per row.\n\n"
                    + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[320, 1280])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labels", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--out", type=Path, default=Path("docs/strategies"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # comparable, repeatable numbers on a shared machine
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = run(args.budgets, args.seeds, args.labels, args.strategies)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}"
    command = (f"python benchmarks/compare_evolution.py --budgets {' '.join(map(str, args.budgets))} "
               f"--seeds {args.seeds} --strategies {' '.join(args.strategies)} --out {args.out}")
    (args.out / "evolution.json").write_text(json.dumps(
        {"command": command, "machine": machine, "seconds": round(time.perf_counter() - started, 1),
         "rows": rows}, indent=2))
    write_markdown(rows, args.out / "evolution.md", command, machine)
    print((args.out / "evolution.md").read_text())


if __name__ == "__main__":
    main()
