"""Compare every search strategy at equal NFE budgets on the embedded digits model.

For each strategy, budget, label and seed, one search with the ``digits-classifier``
verifier; the independent ``digits-evaluator`` judges the winner. Reports, per strategy and
budget: the verifier's score of the winner (what was optimised), the evaluator's accuracy
(whether the winner really is the requested digit) and the diversity of the winners across
seeds (mean pairwise L2 distance of their images, averaged over labels; lower = the search
keeps finding the same image).

    python benchmarks/compare_strategies.py --budgets 320 1280 5120 --seeds 5 --out docs/strategies

Writes ``comparison.json``, ``comparison.md`` and ``comparison.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

import noisesearch
from noisesearch.plugins import build_registries

STRATEGIES = ("random", "zero-order", "paths", "smc", "pruning")


def run(budgets: list[int], seeds: int, labels: list[int], strategies: list[str]) -> list[dict]:
    registries = build_registries()
    rows = []
    for strategy, budget in itertools.product(strategies, budgets):
        started = time.perf_counter()
        scores, hits, nfes, diversity = [], [], [], []
        for label in labels:
            winners = []
            for seed in range(seeds):
                result = noisesearch.search(model="digits",
                    label=label, strategy=strategy, budget_nfe=budget, seed=seed, write=False,
                    registries=registries,
                )
                scores.append(result.best.scores["digits-classifier"])
                hits.append(result.verdicts["best_agrees"])
                nfes.append(result.usage.nfe)
                winners.append(result.best.image.flatten())
            stacked = torch.stack(winners)  # (seeds, 3*8*8)
            distances = torch.cdist(stacked[None], stacked[None])[0]
            diversity.append(float(distances.sum() / (seeds * (seeds - 1))))
        rows.append({
            "strategy": strategy,
            "budget_nfe": budget,
            "mean_nfe_spent": sum(nfes) / len(nfes),
            "verifier_log_prob": sum(scores) / len(scores),
            "evaluator_accuracy": sum(hits) / len(hits),
            "diversity": sum(diversity) / len(diversity),
            "searches": len(hits),
            "seconds": round(time.perf_counter() - started, 2),
        })
        print(json.dumps(rows[-1]))
    return rows


def baseline(seeds: int, labels: list[int]) -> dict:
    """One sample per search (no search at all): what the model gives on its own."""
    registries = build_registries()
    hits = [
        noisesearch.search(model="digits", label=label, candidates=1, seed=seed, write=False,
                           registries=registries).verdicts["best_agrees"]
        for label in labels for seed in range(seeds)
    ]
    return {"evaluator_accuracy": sum(hits) / len(hits), "searches": len(hits)}


def write_markdown(rows: list[dict], base: dict, path: Path, command: str) -> None:
    lines = [
        "| strategy | NFE budget | NFEs spent (mean) | verifier log p(label) "
        "| evaluator accuracy | diversity |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['budget_nfe']} | {r['mean_nfe_spent']:.0f} | "
            f"{r['verifier_log_prob']:.4f} | {r['evaluator_accuracy']:.3f} | {r['diversity']:.3f} |"
        )
    text = (
        f"Produced by `{command}`.\n\n"
        f"Without search (one sample, 20 NFEs): evaluator accuracy {base['evaluator_accuracy']:.3f} "
        f"over {base['searches']} samples.\n\n" + "\n".join(lines) + "\n"
    )
    path.write_text(text)


def plot(rows: list[dict], base: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("verifier_log_prob", "verifier log p(label)"),
               ("evaluator_accuracy", "evaluator accuracy"), ("diversity", "diversity of winners")]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, (key, title) in zip(axes, metrics):
        for strategy in dict.fromkeys(r["strategy"] for r in rows):
            mine = [r for r in rows if r["strategy"] == strategy]
            axis.plot([r["budget_nfe"] for r in mine], [r[key] for r in mine], marker="o", label=strategy)
        if key == "evaluator_accuracy":
            axis.axhline(base["evaluator_accuracy"], color="grey", linestyle="--", label="no search")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("NFE budget")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[320, 1280, 5120])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labels", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--out", type=Path, default=Path("docs/strategies"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # comparable, repeatable numbers on a shared machine
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.budgets, args.seeds, args.labels, args.strategies)
    base = baseline(args.seeds, args.labels)
    command = (f"python benchmarks/compare_strategies.py --budgets {' '.join(map(str, args.budgets))} "
               f"--seeds {args.seeds} --out {args.out}")
    (args.out / "comparison.json").write_text(json.dumps({"baseline": base, "rows": rows}, indent=2))
    write_markdown(rows, base, args.out / "comparison.md", command)
    plot(rows, base, args.out / "comparison.png")
    print((args.out / "comparison.md").read_text())


if __name__ == "__main__":
    main()
