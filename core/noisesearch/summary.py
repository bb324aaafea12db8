"""The short table that ``noisesearch run`` prints: the first candidate against the best."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from noisesearch.api import SearchResult


def print_summary(result: SearchResult) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    objective = result.config.verifiers[0]
    evaluator = result.config.evaluator if result.config.evaluator != "none" else None
    caption = f"score: {objective} (searched on)"
    if evaluator:  # the default judge, or an ensemble's member, may be searched on too
        from noisesearch.runs import judge_label

        caption += f"; judge: {judge_label(evaluator, result.searched or result.config.verifiers)}"
    from noisesearch.names import model_label

    model = model_label(result.config.model, result.config.model_options)
    table = Table(title=f"noisesearch run: {model} {result.condition.to_json()}",
                  caption=caption)
    table.add_column("")
    table.add_column("score", justify="right")
    if evaluator:
        table.add_column("judge", justify="right")
        if result.verdicts:
            clauses = "baseline_clauses" in result.verdicts
            table.add_column("judge says", justify="left" if clauses else "right")
    table.add_column("NFEs", justify="right")
    table.add_column("compute s", justify="right")
    compute = result.usage.model_seconds + result.usage.verifier_seconds
    per_candidate = compute / max(result.usage.candidates, 1)
    rows = [
        ("no search", result.baseline, "baseline", result.nfe_per_candidate, per_candidate),
        (f"best of {result.usage.candidates}", result.best, "best", result.usage.nfe, compute),
    ]
    for title, candidate, key, nfe, seconds in rows:
        cells = [title, f"{candidate.scores.get(objective, candidate.objective):.4f}"]
        if evaluator:
            cells.append(f"{candidate.scores[evaluator]:.4f}")
            if result.verdicts:
                cells.append(verdict_text(result.verdicts, key))
        cells += [str(nfe), f"{seconds:.2f}"]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    for line in notes(result):
        console.print(line)
    if result.run_dir is not None:  # never folded inside the path: it is copied from here
        console.print(f"Results in [bold]{escape(str(result.run_dir))}[/] ({result.seconds:.1f} s in all)",
                      soft_wrap=True)


def verdict_text(verdicts: Mapping[str, Any], key: str) -> str:
    """The judge's word on the baseline or the best (``key``), as rich markup for a table cell:
    its predicted class, right or wrong; or, from a judge that checks a prompt clause by clause
    (``{key}_clauses``), one clause a line, marked, then whether all of them hold."""
    from rich.markup import escape

    mark = "[green]right[/]" if verdicts.get(f"{key}_agrees") else "[red]wrong[/]"
    clauses = verdicts.get(f"{key}_clauses")
    if clauses:
        lines = [("[green]✓[/] " if ok else "[red]✗[/] ") + escape(str(text)) for text, ok in clauses]
        return "\n".join([*lines, f"exact: {mark}"])
    return f"{escape(str(verdicts.get(f'{key}_predicted')))} ({mark})"


def notes(result: SearchResult) -> list[str]:
    """What the table cannot show: non-finite scores, and a baseline made apart."""
    from rich.markup import escape

    lines = []
    bad = result.non_finite.get("candidates", 0)
    scores = result.non_finite.get("scores") or {}
    if bad or scores:
        per_score = escape(", ".join(f"{name}: {count}" for name, count in scores.items()))
        if bad:
            lines.append(f"[yellow]Warning:[/] {bad} of {result.usage.candidates} candidates had a "
                         f"non-finite objective (NaN or infinite) and were never selected; "
                         f"non-finite scores: {per_score or 'none'}")
        else:  # only scores that do not rank (the judge's, an ensemble member's): no candidate lost
            lines.append(f"[yellow]Warning:[/] non-finite scores (NaN or infinite), which no "
                         f"selection used: {per_score}")
    if result.baseline_origin == "extra":
        lines.append(f"The no-search baseline was generated apart from the search "
                     f"({result.usage.baseline_nfe} NFEs, not charged to the budget).")
    return lines
