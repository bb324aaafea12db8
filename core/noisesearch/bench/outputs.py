"""What a bench folder shows beside its run folders: ``summary.md`` (mean ± 95% CI per
model x searched verifier x held-out evaluator x strategy x budget), scaling plots with error
bands (one per evaluator, one panel per model x searched-on verifier), a verifier-hacking plot
(one panel per model x evaluator x verifier), and a self-contained ``report.html``.

Rows of different models never mix: ``model`` is an axis of every table and plot. A model's
verifier-free baselines belong to each of its verifiers' panels; the default-steps baseline
(one budget-free cell) is drawn at every budget.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisesearch.bench.cells import agrees_of
from noisesearch.files import write_atomic

SUMMARY_MD = "summary.md"
HACKING_PNG = "hacking.png"
REPORT_HTML = "report.html"
#: report.html lists at most this many cells (each is a run folder in ``runs/``).
MAX_LISTED_CELLS = 2000

#: What each baseline is (docs/bench.md, "Why the baselines").
BASELINE_TEXT = {
    "baseline:default": "one sample at the model's default steps: budget-free, the same cell "
                        "drawn at every budget (what a user gets without search)",
    "baseline:more-steps": "one sample with the budget's NFEs spent on more solver steps (up to "
                           "the 10,000 steps a run allows): scaling denoising steps instead of search",
    "baseline:stochastic": "the `stochastic` strategy: paths' re-noising rounds with a random "
                           "child kept and one random path finished, no verifier choice "
                           "(re-noising alone); where the budget cannot pay for one path, one "
                           "plain sample",
}

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
    """Searched verifiers, evaluators, strategy labels (searches, then baselines), budgets of
    ``rows`` (one model's)."""
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


def _serves(row: dict[str, Any], verifier: str) -> bool:
    """Whether a row belongs to ``verifier``'s entries: a search on it, or a verifier-free
    baseline that recorded its score (one baseline cell serves every searched verifier)."""
    if row.get("verifier") is not None:
        return row["verifier"] == verifier
    recorded = row.get("verifiers")
    return verifier in recorded if recorded else True


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model x verifier x evaluator x strategy x budget, with the statistics."""
    ok = [row for row in rows if row.get("status") == "ok"]
    images: dict[str, Any] = {}  # best.png of each cell, read once
    entries = []
    for model in _ordered(row.get("model") for row in ok):
        mine = [row for row in ok if row.get("model") == model]
        verifiers, evaluators, strategies, budgets = _axes(mine)
        for verifier in verifiers:
            for evaluator in evaluators:
                for strategy in strategies:
                    for budget in budgets:
                        chosen = [row for row in mine if row["strategy"] == strategy
                                  and _serves(row, verifier) and row.get("budget") in (budget, None)
                                  and evaluator in (row.get("evaluators") or [])]
                        if not chosen:
                            continue
                        scores = [(row.get("scores") or {}) for row in chosen]
                        agrees = [a for a in (agrees_of(row, evaluator) for row in chosen) if a is not None]
                        entries.append({
                            "model": model, "verifier": verifier, "evaluator": evaluator,
                            "strategy": strategy, "budget": budget,
                            "baseline": chosen[0]["kind"] == "baseline",
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


def grid_lines(rows: list[dict[str, Any]], grid: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The bench's grid in a few lines (name, text), for the top of summary.md and report.html:
    what its rows cover (models, strategies, budgets, verifiers, evaluators, baselines, seeds,
    conditions) and, from ``bench.json``'s grid where given, the suite and solver settings."""
    grid = grid or {}
    models = _ordered(row.get("model") for row in rows)

    def joined(values: Any) -> str:
        return ", ".join(str(v) for v in values) or "-"

    def per_model(values: Any) -> str:
        """One list for all models when they agree, else ``model: list`` per model."""
        texts = {model: joined(values([row for row in rows if row.get("model") == model]))
                 for model in models}
        if len(set(texts.values())) <= 1:
            return next(iter(texts.values()), "-")
        return "; ".join(f"{model}: {text}" for model, text in texts.items())

    def verifiers(mine: list[dict[str, Any]]) -> list[Any]:
        return (_ordered(row.get("verifier") for row in mine)
                or _ordered(name for row in mine for name in row.get("verifiers") or []))

    def evaluators(mine: list[dict[str, Any]]) -> list[Any]:
        return _ordered(name for row in mine for name in row.get("evaluators") or [])

    def conditions(mine: list[dict[str, Any]]) -> list[str]:
        count = len({(row.get("prompt"), row.get("label")) for row in mine})
        return [f"{count} condition{'' if count == 1 else 's'}"]

    suite = str(grid.get("prompts") or "model")
    if grid.get("per_category") is not None:
        suite += f", per category {grid['per_category']}"
    if grid.get("limit") is not None:
        suite += f", limit {grid['limit']}"
    lines = [
        ("models", joined(models)),
        ("strategies", joined(_ordered(row["strategy"] for row in rows if row.get("kind") == "search"))),
        ("NFE budgets", joined(sorted({row["budget"] for row in rows if row.get("budget") is not None}))),
        ("searched verifiers", per_model(verifiers)),
        ("held-out evaluators", per_model(evaluators)),
        ("baselines", joined(_ordered(row["strategy"] for row in rows if row.get("kind") == "baseline"))),
        ("suite", f"{suite}: {per_model(conditions)}"),
        ("seeds", joined(_ordered(row.get("seed") for row in rows))),
    ]
    if grid:
        steps = grid.get("steps") or "the model's"
        lines.append(("steps, solver", f"{steps}, {grid.get('solver') or 'ddim'}"))
    return lines


def baseline_lines(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, what it is) for each baseline of the bench, as docs/bench.md defines them."""
    found = _ordered(row["strategy"] for row in rows if row.get("kind") == "baseline")
    return [(label, BASELINE_TEXT.get(label, "a verifier-free baseline")) for label in found]


#: The columns of an entry, as summary.md and report.html head them.
COLUMNS = ("searched verifier", "held-out evaluator", "strategy", "NFE budget", "n",
           "evaluator score (held out)", "verifier score (searched)", "accuracy (evaluator's verdict)",
           "NFEs used")


def _cells(e: dict[str, Any]) -> list[str]:
    """An entry's values under :data:`COLUMNS` (text, not escaped)."""
    accuracy = "-" if e["accuracy"] is None else f"{e['accuracy']:.3f}"
    return [e["verifier"], e["evaluator"], e["strategy"], str(e["budget"]),
            str(e["evaluator_stat"].n if e["evaluator_stat"] else 0),
            e["evaluator_stat"].text() if e["evaluator_stat"] else "-",
            e["verifier_stat"].text() if e["verifier_stat"] else "-", accuracy,
            f"{e['nfe'].mean:.1f}" if e["nfe"] else "-"]


def _failed_text(row: dict[str, Any], several_models: bool) -> str:
    what = row.get("prompt") if row.get("prompt") is not None else f"label {row.get('label')}"
    model = f"{row.get('model')} " if several_models else ""
    return (f"{model}{row['strategy']} budget={row.get('budget') or 'default'} {what} "
            f"seed={row.get('seed')}: {row.get('error')}")


def summary_markdown(rows: list[dict[str, Any]], entries: list[dict[str, Any]],
                     grid: dict[str, Any] | None = None) -> str:
    failed = [row for row in rows if row.get("status") != "ok"]
    models = _ordered(e["model"] for e in entries)
    lines = ["# Bench summary", "",
             f"{len(rows)} cells, {len(rows) - len(failed)} finished, {len(failed)} failed. "
             "Scores are the winner's; mean ± half-width of the 95% confidence interval over "
             "conditions and seeds, per model (rows of different models are never pooled). "
             "Accuracy: the share of winners the held-out evaluator judges right (its verdict; "
             "`-` where it gives none). NFEs used: what the cells spent, which can be less than "
             "the budget. Top-k diversity: mean pairwise RMS pixel distance between a cell's kept "
             "best images; winners' diversity across seeds: the same between the winners of one "
             "condition's seeds (low: the search finds the same image whatever the seed).", "",
             "## Grid", ""]
    lines += [f"- {name}: {text}" for name, text in grid_lines(rows, grid)]
    baselines = baseline_lines(rows)
    if baselines:
        lines += ["", "## Baselines", "",
                  "Verifier-free: one baseline cell serves every searched verifier's rows "
                  "(its cells record every searched verifier's score)."]
        lines += [f"- `{label}`: {text}" for label, text in baselines]
    header = "| " + " | ".join([*COLUMNS, "top-k diversity", "winners' diversity across seeds"]) + " |"
    for model in models:
        lines += ["", f"## Model {model}", "", header, "|" + "---|" * (len(COLUMNS) + 2)]
        for e in entries:
            if e["model"] != model:
                continue
            extra = [e["diversity"].text() if e["diversity"] else "-",
                     "-" if e["seed_diversity"] is None else format(e["seed_diversity"], ".4f")]
            lines.append("| " + " | ".join([*_cells(e), *extra]) + " |")
    if failed:
        several = len(_ordered(row.get("model") for row in rows)) > 1
        lines += ["", "## Failed cells", ""]
        lines += [f"- `{row['key']}` {_failed_text(row, several)}" for row in failed]
    return "\n".join(lines) + "\n"


Lines = list[tuple[str, list[dict[str, Any]]]]  # (strategy, its entries by budget)


def _panels(chosen: list[dict[str, Any]]) -> Iterator[tuple[Any, str, str, str, Lines]]:
    """One matplotlib panel per model x evaluator (a row of panels each) x searched-on
    verifier (a column each), with its lines (strategy -> entries by budget): yields (axes,
    model, evaluator, verifier, lines). The figure is laid out and closed by :func:`_save`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _ordered((e["model"], e["evaluator"]) for e in chosen)
    columns = {group: _ordered(e["verifier"] for e in chosen if (e["model"], e["evaluator"]) == group)
               for group in groups}
    width = max((len(v) for v in columns.values()), default=1)
    _, axes = plt.subplots(max(len(groups), 1), width, figsize=(5.5 * width, 4 * max(len(groups), 1)),
                           squeeze=False)
    for row, (model, evaluator) in enumerate(groups):
        for column, ax in enumerate(axes[row]):
            if column >= len(columns[(model, evaluator)]):
                ax.axis("off")
                continue
            verifier = columns[(model, evaluator)][column]
            mine = [e for e in chosen
                    if (e["model"], e["evaluator"], e["verifier"]) == (model, evaluator, verifier)]
            lines = []
            for strategy in _ordered(e["strategy"] for e in mine):
                line = sorted((e for e in mine if e["strategy"] == strategy), key=lambda e: e["budget"])
                lines.append((strategy, line))
            yield ax, model, evaluator, verifier, lines


def _title(model: str, text: str, several_models: bool) -> str:
    return f"{model}: {text}" if several_models else text


def _save(path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plt.gcf()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def scaling_png(entries: list[dict[str, Any]], evaluator: str, path: Path) -> None:
    """Evaluator score against NFEs, one line per strategy with its 95% band, one panel per
    model x searched-on verifier."""
    chosen = [e for e in entries if e["evaluator"] == evaluator and e["evaluator_stat"]]
    budgets = sorted({e["budget"] for e in chosen})
    several = len(_ordered(e["model"] for e in entries)) > 1
    for ax, model, _, verifier, lines in _panels(chosen):
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
        ax.set_title(_title(model, f"searched on {verifier}", several))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(path)


def hacking_png(entries: list[dict[str, Any]], path: Path) -> None:
    """The searched verifier's score against each held-out evaluator's as the budget grows
    (one panel per model x evaluator x verifier): a line that runs right but not up is the
    search fooling its verifier."""
    chosen = [e for e in entries if e["evaluator_stat"] and e["verifier_stat"]]
    several = len(_ordered(e["model"] for e in entries)) > 1
    for ax, model, evaluator, verifier, lines in _panels(chosen):
        for strategy, line in lines:
            x = [e["verifier_stat"].mean for e in line]
            y = [e["evaluator_stat"].mean for e in line]
            ax.plot(x, y, "--" if line[0]["baseline"] else "-", marker="o", label=strategy)
            ax.annotate(str(line[-1]["budget"]), (x[-1], y[-1]), fontsize=6)
        ax.set_xlabel(f"{verifier} (searched on)")
        ax.set_ylabel(f"{evaluator} (held out)")
        ax.set_title(_title(model, f"verifier hacking, judged by {evaluator}\n(budgets grow along "
                                   "each line)", several), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(path)


def scaling_name(evaluator: str) -> str:
    from noisesearch.names import safe_token

    return f"scaling-{safe_token(evaluator)}.png"


def report_html(folder: Path, rows: list[dict[str, Any]], entries: list[dict[str, Any]],
                pictures: list[str], grid: dict[str, Any] | None = None) -> str:
    """One page with everything inline (plots as data URIs), links to each cell's report."""
    esc = html.escape
    failed = [row for row in rows if row.get("status") != "ok"]
    from noisesearch.report import CSP

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>noisesearch bench</title>",
             f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
             "collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "td:nth-child(-n+3),#grid td,#grid th{text-align:left}.baseline{color:#555;font-style:italic}"
             "img{max-width:100%}</style></head><body>",
             f"<h1>noisesearch bench</h1><p id='counts'>{len(rows)} cells, "
             f"{len(rows) - len(failed)} finished, {len(failed)} failed.</p>",
             "<h2>Grid</h2><table id='grid'>"]
    parts += [f"<tr><th>{esc(name)}</th><td>{esc(text)}</td></tr>" for name, text in grid_lines(rows, grid)]
    parts.append("</table>")
    baselines = baseline_lines(rows)
    if baselines:
        parts.append("<h2>Baselines</h2><p>Verifier-free: one baseline cell serves every searched "
                     "verifier's rows. <em>NFEs used</em> says what each spent.</p><ul id='baselines'>")
        parts += [f"<li><code>{esc(label)}</code>: {esc(text.replace('`', ''))}</li>"
                  for label, text in baselines]
        parts.append("</ul>")
    for name in pictures:
        data = base64.b64encode((folder / name).read_bytes()).decode()
        if name == HACKING_PNG:
            judges = ", ".join(_ordered(e["evaluator"] for e in entries))
            title = f"Verifier hacking: the searched verifier against the held-out evaluator ({judges})"
        else:
            judge = next((e["evaluator"] for e in entries if scaling_name(e["evaluator"]) == name), name)
            title = f"Held-out evaluator {judge} against NFEs"
        parts.append(f"<h2>{esc(title)}</h2><p><code>{esc(name)}</code></p>"
                     f"<img alt='{esc(name)}' src='data:image/png;base64,{data}'>")
    models = _ordered(e["model"] for e in entries)
    parts.append("<h2>Summary</h2><p>Mean ± half-width of the 95% confidence interval over "
                 "conditions and seeds; accuracy: the share of winners the held-out evaluator "
                 "judges right.</p>")
    head = "".join(f"<th>{esc(column)}</th>" for column in COLUMNS)
    for model in models:
        one = len(models) == 1
        ident = "summary" if one else f"summary-{esc(model)}"
        parts.append(f"<h3>Model {esc(model)}</h3><table id='{ident}' class='summary'><tr>{head}</tr>")
        for e in entries:
            if e["model"] == model:
                cells = "".join(f"<td>{esc(text)}</td>" for text in _cells(e))
                parts.append(f"<tr class='{'baseline' if e['baseline'] else 'search'}'>{cells}</tr>")
        parts.append("</table>")
    if failed:
        several = len(_ordered(row.get("model") for row in rows)) > 1
        parts.append("<h2>Failed cells</h2><ul>")
        parts += [f"<li>{esc(_failed_text(row, several))}</li>" for row in failed]
        parts.append("</ul>")
    shown = rows[:MAX_LISTED_CELLS]
    count = (f" (the first {len(shown)} of {len(rows)}; results.jsonl lists them all)"
             if len(shown) < len(rows) else "")
    parts.append(f"<h2>Cells{esc(count)}</h2><p>Each cell is an ordinary run folder: "
                 "<code>noisesearch show</code>, <code>replay</code> and <code>report</code> (which "
                 "draws its report.html) work on it.</p><ul id='cells'>")
    several = len(_ordered(row.get("model") for row in rows)) > 1
    for row in shown:
        link = _relative(folder, row.get("run_dir"))
        what = row.get("prompt") if row.get("prompt") is not None else f"label {row.get('label')}"
        model = f"{row.get('model')} " if several else ""
        used = f" ({row['nfe']} NFEs used)" if row.get("nfe") is not None else ""
        parts.append(f"<li><code>{esc(link)}</code>: {esc(str(model))}{esc(row['strategy'])} "
                     f"budget={row.get('budget') or 'default'}{used} {esc(str(what))} "
                     f"seed={row['seed']}</li>")
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
    grid = _read_grid(folder)
    write_atomic(folder / SUMMARY_MD, summary_markdown(rows, entries, grid).encode())
    pictures = []
    evaluators = _ordered(e["evaluator"] for e in entries)
    for evaluator in evaluators:
        name = scaling_name(evaluator)
        scaling_png(entries, evaluator, folder / name)
        pictures.append(name)
    if evaluators:
        hacking_png(entries, folder / HACKING_PNG)
        pictures.append(HACKING_PNG)
    write_atomic(folder / REPORT_HTML, report_html(folder, rows, entries, pictures, grid).encode())
    return [SUMMARY_MD, *pictures, REPORT_HTML]


def _read_grid(folder: Path) -> dict[str, Any]:
    """The grid in the folder's ``bench.json`` (its suite and solver settings), or ``{}``."""
    import json

    try:
        grid = json.loads((folder / "bench.json").read_text())["grid"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return grid if isinstance(grid, dict) else {}
