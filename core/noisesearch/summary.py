"""The short table that ``noisesearch run`` prints: the first candidate against the best."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from noisesearch.api import SearchResult


def print_summary(result: SearchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    objective = result.config.verifiers[0]
    evaluator = result.config.evaluator if result.config.evaluator != "none" else None
    caption = f"score: {objective} (searched on)"
    if evaluator:
        caption += f"; judge: {evaluator} (independent, not searched on)"
    table = Table(title=f"noisesearch run: {result.config.model} {result.condition.to_json()}",
                  caption=caption)
    table.add_column("")
    table.add_column("score", justify="right")
    if evaluator:
        table.add_column("judge", justify="right")
        if result.verdicts:
            table.add_column("judge says", justify="right")
    table.add_column("NFEs", justify="right")
    table.add_column("compute s", justify="right")
    compute = result.usage.model_seconds + result.usage.verifier_seconds
    per_candidate = compute / max(result.usage.candidates, 1)
    rows = [
        ("first candidate", result.baseline, "baseline", result.nfe_per_candidate, per_candidate),
        (f"best of {result.usage.candidates}", result.best, "best", result.usage.nfe, compute),
    ]
    for title, candidate, key, nfe, seconds in rows:
        cells = [title, f"{candidate.scores.get(objective, candidate.objective):.4f}"]
        if evaluator:
            cells.append(f"{candidate.scores[evaluator]:.4f}")
            if result.verdicts:
                agrees = result.verdicts[f"{key}_agrees"]
                mark = "[green]right[/]" if agrees else "[red]wrong[/]"
                cells.append(f"{result.verdicts[f'{key}_predicted']} ({mark})")
        cells += [str(nfe), f"{seconds:.2f}"]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    if result.run_dir is not None:
        console.print(f"Results in [bold]{result.run_dir}[/] ({result.seconds:.1f} s in all)")
