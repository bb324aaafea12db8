"""What a bench folder shows beside its run folders: ``summary.md`` (mean ± 95% CI per
strategy x budget x verifier x evaluator), scaling plots with error bands (one panel per
searched-on verifier), a verifier-hacking plot, and a self-contained ``report.html``.

Verifier-free baselines belong to every verifier's panel; the default-steps baseline (one
budget-free cell) is drawn at every budget.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisesearch.files import write_atomic

SUMMARY_MD = "summary.md"
HACKING_PNG = "hacking.png"
REPORT_HTML = "report.html"

#: Student's t at 97.5% by degrees of freedom (1..30); 1.96 beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Stat:
    n: int
    mean: float
    ci: float  # half-width of the 95% confidence interval of the mean (0 for n = 1)

    def text(self) -> str:
        return f"{self.mean:.4f} ± {self.ci:.4f}" if self.n > 1 else f"{self.mean:.4f}"


def stat(values: list[float]) -> Stat | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Stat(1, mean, 0.0)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return Stat(n, mean, t * sd / math.sqrt(n))


def _axes(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str], list[int]]:
    """Searched verifiers, evaluators, strategy labels (searches, then baselines), budgets."""
    verifiers = _ordered(row["verifier"] for row in rows if row["kind"] == "search")
    if not verifiers:  # a bench of baselines only: their recorded verifiers
        verifiers = _ordered(name for row in rows for name in (row.get("verifiers") or []))
    evaluators = _ordered(name for row in rows for name in (row.get("evaluators") or []))
    strategies = _ordered(row["strategy"] for row in rows if row["kind"] == "search")
    strategies += _ordered(row["strategy"] for row in rows if row["kind"] == "baseline")
    budgets = sorted({row["budget"] for row in rows if row.get("budget") is not None})
    return verifiers, evaluators, strategies, budgets


def _ordered(values: Any) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None))


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per verifier x evaluator x strategy x budget, with the statistics."""
    ok = [row for row in rows if row.get("status") == "ok"]
    verifiers, evaluators, strategies, budgets = _axes(ok)
    images: dict[str, Any] = {}  # best.png of each cell, read once
    entries = []
    for verifier in verifiers:
        for evaluator in evaluators:
            for strategy in strategies:
                for budget in budgets:
                    chosen = [row for row in ok if row["strategy"] == strategy
                              and row["verifier"] in (verifier, None)
                              and row.get("budget") in (budget, None)]
                    if not chosen:
                        continue
                    scores = [(row.get("scores") or {}) for row in chosen]
                    agrees = [row["agrees"] for row in chosen if isinstance(row.get("agrees"), bool)]
                    entries.append({
                        "verifier": verifier, "evaluator": evaluator, "strategy": strategy,
                        "budget": budget, "baseline": chosen[0]["kind"] == "baseline",
                        "evaluator_stat": stat([s.get(evaluator) for s in scores]),
                        "verifier_stat": stat([s.get(verifier) for s in scores]),
                        "accuracy": sum(agrees) / len(agrees) if agrees else None,
                        "nfe": stat([row.get("nfe") for row in chosen]),
                        "diversity": stat([row.get("diversity") for row in chosen]),
                        "seed_diversity": seed_diversity(chosen, images),
                    })
    return entries


def seed_diversity(rows: list[dict[str, Any]], images: dict[str, Any]) -> float | None:
    """How different the winners of one condition are across seeds: the mean pairwise RMS
    pixel distance of their ``best.png``, averaged over conditions (``None`` with one seed).
    Low means the search finds the same image whatever the seed."""
    import numpy as np

    by_condition: dict[str, list[Any]] = {}
    for row in rows:
        path = str(Path(row["run_dir"]) / "best.png")
        if path not in images:
            try:
                from PIL import Image

                with Image.open(path) as image:
                    images[path] = np.asarray(image.convert("RGB"), dtype=np.float32).ravel() / 255
            except OSError:
                images[path] = None
        if images[path] is not None:
            by_condition.setdefault(f"{row.get('prompt')}|{row.get('label')}", []).append(images[path])
    means = []
    for winners in by_condition.values():
        pairs = [(a, b) for i, a in enumerate(winners) for b in winners[i + 1:] if a.shape == b.shape]
        if pairs:
            means.append(sum(float(np.sqrt(np.mean((a - b) ** 2))) for a, b in pairs) / len(pairs))
    return round(sum(means) / len(means), 6) if means else None


def summary_markdown(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> str:
    failed = [row for row in rows if row.get("status") != "ok"]
    lines = ["# Bench summary", "",
             f"{len(rows)} cells, {len(rows) - len(failed)} finished, {len(failed)} failed. "
             "Scores are the winner's; mean ± half-width of the 95% confidence interval over "
             "conditions and seeds. Baselines spend the same NFEs without a verifier's choice. "
             "Top-k diversity: mean pairwise RMS pixel distance between a cell's kept best "
             "images; winners' diversity across seeds: the same between the winners of one "
             "condition's seeds (low: the search finds the same image whatever the seed).", ""]
    header = ("| verifier | evaluator | strategy | NFE budget | n | evaluator score | verifier score "
              "| accuracy | NFEs used | top-k diversity | winners' diversity across seeds |")
    lines += [header, "|" + "---|" * 11]
    for e in entries:
        accuracy = "-" if e["accuracy"] is None else f"{e['accuracy']:.3f}"
        lines.append(
            f"| {e['verifier']} | {e['evaluator']} | {e['strategy']} | {e['budget']} | "
            f"{e['evaluator_stat'].n if e['evaluator_stat'] else 0} | "
            f"{e['evaluator_stat'].text() if e['evaluator_stat'] else '-'} | "
            f"{e['verifier_stat'].text() if e['verifier_stat'] else '-'} | {accuracy} | "
            f"{e['nfe'].mean:.1f} | {e['diversity'].text() if e['diversity'] else '-'} | "
            f"{'-' if e['seed_diversity'] is None else format(e['seed_diversity'], '.4f')} |"
        )
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- `{row['key']}` {row['strategy']} nfe={row.get('budget')}: {row.get('error')}"
                  for row in failed]
    return "\n".join(lines) + "\n"


Lines = list[tuple[str, list[dict[str, Any]]]]  # (strategy, its entries by budget)


def _panels(chosen: list[dict[str, Any]]) -> Iterator[tuple[Any, str, Lines]]:
    """One matplotlib panel per searched-on verifier, with its lines (strategy -> entries by
    budget); the figure is laid out and closed by :func:`_save`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verifiers = _ordered(e["verifier"] for e in chosen)
    _, axes = plt.subplots(1, max(len(verifiers), 1), figsize=(5.5 * max(len(verifiers), 1), 4),
                           squeeze=False)
    for ax, verifier in zip(axes[0], verifiers):
        lines = []
        for strategy in _ordered(e["strategy"] for e in chosen):
            line = sorted((e for e in chosen if e["verifier"] == verifier and e["strategy"] == strategy),
                          key=lambda e: e["budget"])
            if line:
                lines.append((strategy, line))
        yield ax, verifier, lines


def _save(path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plt.gcf()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def scaling_png(entries: list[dict[str, Any]], evaluator: str, path: Path) -> None:
    """Evaluator score against NFEs, one line per strategy with its 95% band, one panel per
    searched-on verifier."""
    chosen = [e for e in entries if e["evaluator"] == evaluator and e["evaluator_stat"]]
    budgets = sorted({e["budget"] for e in chosen})
    for ax, verifier, lines in _panels(chosen):
        for strategy, line in lines:
            x = [e["budget"] for e in line]
            mean = [e["evaluator_stat"].mean for e in line]
            ci = [e["evaluator_stat"].ci for e in line]
            style = "--" if line[0]["baseline"] else "-"
            (drawn,) = ax.plot(x, mean, style, marker="o", label=strategy)
            ax.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                            color=drawn.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("NFE budget")
        ax.set_ylabel(f"{evaluator} (held out)")
        ax.set_title(f"searched on {verifier}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(path)


def hacking_png(entries: list[dict[str, Any]], evaluator: str, path: Path) -> None:
    """The searched verifier's score against the held-out evaluator's as the budget grows:
    a line that runs right but not up is the search fooling its verifier."""
    chosen = [e for e in entries
              if e["evaluator"] == evaluator and e["evaluator_stat"] and e["verifier_stat"]]
    for ax, verifier, lines in _panels(chosen):
        for strategy, line in lines:
            x = [e["verifier_stat"].mean for e in line]
            y = [e["evaluator_stat"].mean for e in line]
            ax.plot(x, y, "--" if line[0]["baseline"] else "-", marker="o", label=strategy)
            ax.annotate(str(line[-1]["budget"]), (x[-1], y[-1]), fontsize=6)
        ax.set_xlabel(f"{verifier} (searched on)")
        ax.set_ylabel(f"{evaluator} (held out)")
        ax.set_title("verifier hacking: budgets grow along each line")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(path)


def scaling_name(evaluator: str) -> str:
    from noisesearch.names import safe_token

    return f"scaling-{safe_token(evaluator)}.png"


def report_html(folder: Path, rows: list[dict[str, Any]], entries: list[dict[str, Any]],
                pictures: list[str]) -> str:
    """One page with everything inline (plots as data URIs), links to each cell's report."""
    esc = html.escape
    failed = [row for row in rows if row.get("status") != "ok"]
    from noisesearch.report import CSP

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>noisesearch bench</title>",
             f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
             "collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "td:nth-child(-n+3){text-align:left}.baseline{color:#555;font-style:italic}"
             "img{max-width:100%}</style></head><body>",
             f"<h1>noisesearch bench</h1><p id='counts'>{len(rows)} cells, "
             f"{len(rows) - len(failed)} finished, {len(failed)} failed.</p>"]
    for name in pictures:
        data = base64.b64encode((folder / name).read_bytes()).decode()
        title = ("Verifier hacking: the searched verifier against the held-out evaluator"
                 if name == HACKING_PNG else "Evaluator score against NFEs")
        parts.append(f"<h2>{esc(title)}</h2><p><code>{esc(name)}</code></p>"
                     f"<img alt='{esc(name)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Summary</h2><table id='summary'><tr><th>verifier</th><th>evaluator</th>"
                 "<th>strategy</th><th>NFEs</th><th>n</th><th>evaluator</th><th>verifier</th>"
                 "<th>accuracy</th></tr>")
    for e in entries:
        accuracy = "-" if e["accuracy"] is None else f"{e['accuracy']:.3f}"
        parts.append(
            f"<tr class='{'baseline' if e['baseline'] else 'search'}'><td>{esc(e['verifier'])}</td>"
            f"<td>{esc(e['evaluator'])}</td><td>{esc(e['strategy'])}</td><td>{e['budget']}</td>"
            f"<td>{e['evaluator_stat'].n if e['evaluator_stat'] else 0}</td>"
            f"<td>{esc(e['evaluator_stat'].text()) if e['evaluator_stat'] else '-'}</td>"
            f"<td>{esc(e['verifier_stat'].text()) if e['verifier_stat'] else '-'}</td>"
            f"<td>{accuracy}</td></tr>")
    parts.append("</table>")
    if failed:
        parts.append("<h2>Failed cells</h2><ul>")
        parts += [f"<li>{esc(row['strategy'])} nfe={row.get('budget')}: {esc(str(row.get('error')))}</li>"
                  for row in failed]
        parts.append("</ul>")
    parts.append("<h2>Cells</h2><p>Each cell is an ordinary run folder: <code>noisesearch show</code>, "
                 "<code>replay</code> and <code>report</code> (which draws its report.html) work on "
                 "it.</p><ul>")
    for row in rows[:2000]:
        link = _relative(folder, row.get("run_dir"))
        what = row.get("prompt") if row.get("prompt") is not None else f"label {row.get('label')}"
        parts.append(f"<li><code>{esc(link)}</code>: {esc(row['strategy'])} "
                     f"nfe={row.get('budget')} {esc(str(what))} seed={row['seed']}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def _relative(folder: Path, run_dir: Any) -> str:
    try:
        return str(Path(run_dir).resolve().relative_to(folder.resolve()))
    except (ValueError, TypeError):
        return str(run_dir)


def write_outputs(folder: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Write summary.md, the plots and report.html; returns the files written."""
    entries = table(rows)
    write_atomic(folder / SUMMARY_MD, summary_markdown(rows, entries).encode())
    pictures = []
    evaluators = _ordered(e["evaluator"] for e in entries)
    for evaluator in evaluators:
        name = scaling_name(evaluator)
        scaling_png(entries, evaluator, folder / name)
        pictures.append(name)
    if evaluators:
        hacking_png(entries, evaluators[0], folder / HACKING_PNG)
        pictures.append(HACKING_PNG)
    write_atomic(folder / REPORT_HTML, report_html(folder, rows, entries, pictures).encode())
    return [SUMMARY_MD, *pictures, REPORT_HTML]
