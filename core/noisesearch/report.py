"""``report.html`` and ``scaling.png``: what a run found, on one page a person can open.

Both are built from the run folder alone (``run.json``, ``candidates.jsonl`` and the PNGs),
so that ``noisesearch report RUN`` rebuilds exactly what ``noisesearch run`` wrote. The page
is self-contained: images are base64 data URIs and a Content-Security-Policy forbids every
other load, so it opens offline, from a mail attachment or a CI artifact.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from noisesearch.results import write_atomic
from noisesearch.runs import RunRecord, load_run

SCALING_PNG = "scaling.png"
REPORT_HTML = "report.html"
#: Images narrower than this are shown enlarged with crisp pixels (the 8x8 digits).
PIXELATED_BELOW = 256
SHOWN_SIZE = 256
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# -- the scaling plot --------------------------------------------------------------------


def nfe_axis(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """NFEs spent up to each candidate, as if candidates were evaluated one by one.

    ``nfe_spent`` is the run's NFEs when a candidate was scored, so a batch scored together
    shares one value; the NFEs since the previous batch are spread evenly over its rows
    (best-of-16 in one batch plots at 20, 40, ..., 320 NFEs, not 16 times at 320). Older
    files without ``nfe_spent`` use the running sum of each candidate's own NFEs.
    """
    if any(row.get("nfe_spent") is None for row in rows):
        total, spent = 0.0, []
        for row in rows:
            total += float(row.get("nfe", 0))
            spent.append(total)
        return spent
    raw = [float(row["nfe_spent"]) for row in rows]
    out: list[float] = []
    previous, i = 0.0, 0
    while i < len(raw):
        j = i
        while j + 1 < len(raw) and raw[j + 1] == raw[i]:
            j += 1
        size = j - i + 1
        out += [previous + (raw[i] - previous) * (k + 1) / size for k in range(size)]
        previous, i = raw[i], j + 1
    return out


def running_best(values: Sequence[float | None]) -> list[float | None]:
    """The best value so far at each position (``None`` until the first value)."""
    best: float | None = None
    out: list[float | None] = []
    for value in values:
        if value is not None and not math.isnan(value) and (best is None or value > best):
            best = value
        out.append(best)
    return out


def scaling_series(
    rows: Sequence[Mapping[str, Any]], verifiers: Sequence[str], evaluator: str | None,
    oracle: bool = True,
) -> list[tuple[str, list[float], list[float | None], str]]:
    """The lines of ``scaling.png`` as ``(label, nfe, best so far, line style)``.

    One line per verifier (its own running best) and the evaluator's; with an evaluator,
    also its score of the candidate the search ranks best so far, which is what a user
    gets, and whose gap to the searched score shows verifier hacking. The evaluator's own
    running best (the oracle line) needs its score of every candidate: ``oracle=False`` (a
    run that evaluated only what it reports, ``noisesearch.evaluation``) leaves it out.
    """
    x = nfe_axis(rows)
    series = []
    for i, name in enumerate(verifiers):
        label = f"{name} (searched on)" if i == 0 else name
        members = sorted({key for row in rows for key in row["scores"] if key.startswith(f"{name}/")})
        # A pooled objective (an ensemble) has no score of its own, only its members'.
        for key in members or [name]:
            shown = label if key == name else f"{key} (member)"
            series.append((shown, x, running_best([row["scores"].get(key) for row in rows]), "-"))
    if evaluator:
        values = [row["scores"].get(evaluator) for row in rows]
        if oracle:
            series.append((f"{evaluator} (evaluator)", x, running_best(values), "--"))
        if verifiers:
            chosen: list[float | None] = []
            best_objective: float | None = None
            judged: float | None = None
            for row, value in zip(rows, values):
                objective = row["scores"].get(verifiers[0])
                if objective is not None and (best_objective is None or objective > best_objective):
                    best_objective, judged = objective, value
                chosen.append(judged)
            series.append((f"{evaluator} of the searched best", x, chosen, ":"))
    return series


def step_points(x: Sequence[float], y: Sequence[float | None]) -> list[tuple[float, float]]:
    """The points of a running best that a ``steps-post`` line needs: where it changes, and
    the last one (it extends the line to the end). The same drawing as every point, and
    matplotlib (its ``loc="best"`` legend above all) is linear in the points: 4096 candidates
    took ~0.6 s to plot, their few change points take a fixed ~0.1 s."""
    points = [(a, b) for a, b in zip(x, y) if b is not None]
    kept = [p for i, p in enumerate(points) if i == 0 or p[1] != points[i - 1][1]]
    if points and kept[-1] is not points[-1]:
        kept.append(points[-1])
    return kept


def scaling_png(
    rows: Sequence[Mapping[str, Any]], verifiers: Sequence[str], evaluator: str | None, title: str,
    oracle: bool = True,
) -> bytes:
    """The plot as PNG bytes: best score so far against NFEs spent (Agg, no pyplot, so no
    global backend is changed in the caller's process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x_values = []
    for label, x, y, style in scaling_series(rows, verifiers, evaluator, oracle):
        points = step_points(x, y)
        if points:
            xs, ys = zip(*points)
            axes.plot(xs, ys, linestyle=style, drawstyle="steps-post", label=label, linewidth=1.8)
            x_values += xs
    if x_values and min(x_values) > 0 and max(x_values) >= 10 * min(x_values):
        from matplotlib.ticker import FuncFormatter, NullFormatter

        axes.set_xscale("log")  # scaling curves are read per doubling of compute
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        few = max(x_values) <= 100 * min(x_values)
        minor = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "235" else "")
        axes.xaxis.set_minor_formatter(minor if few else NullFormatter())
    if not x_values:
        axes.text(0.5, 0.5, "no candidates yet", ha="center", va="center", transform=axes.transAxes)
    else:
        axes.legend(loc="best", fontsize="small")
    axes.set_xlabel("NFEs spent (denoiser evaluations)")
    axes.set_ylabel("best score so far")
    axes.set_title(title, fontsize="medium")
    axes.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# -- the page ----------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG header, without decoding the image."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _inside(folder: Path, name: Any) -> Path | None:
    """``folder/name`` if it is a PNG inside ``folder``: a run.json from elsewhere must not
    make the report embed an arbitrary file of this machine."""
    if not isinstance(name, str) or not name.endswith(".png"):
        return None
    path = (folder / name).resolve()
    return path if path.is_relative_to(folder.resolve()) and path.is_file() else None


def _img(path: Path | None, alt: str, shown: int = SHOWN_SIZE) -> str:
    if path is None:
        return f'<p class="missing">{html.escape(alt)}: image missing</p>'
    data = path.read_bytes()
    size = png_size(data)
    attributes = ""
    if size is not None:
        width, height = size
        scale = shown / width if width < PIXELATED_BELOW or width > shown else 1.0
        attributes = f' width="{round(width * scale)}" height="{round(height * scale)}"'
        if width < PIXELATED_BELOW:
            attributes += ' class="pixelated"'
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{uri}" alt="{html.escape(alt)}"{attributes}>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _e(value: Any) -> str:
    return html.escape(_fmt(value))


def describe_condition(condition: Mapping[str, Any] | None) -> str:
    if not condition:
        return "unconditional"
    parts = []
    if "label" in condition:
        parts.append(f"label {condition['label']}")
    if "prompt" in condition:
        parts.append(f"prompt {condition['prompt']!r}")
    if "negative_prompt" in condition:
        parts.append(f"negative prompt {condition['negative_prompt']!r}")
    return ", ".join(parts)


def _score_names(record: RunRecord) -> list[str]:
    names = list(record.config.get("verifiers") or [])
    if record.evaluator and record.evaluator not in names:
        names.append(record.evaluator)
    for key in ("best", "baseline"):
        names += [n for n in (record.run.get(key) or {}).get("scores", {}) if n not in names]
    return names


def _verdict(verdicts: Mapping[str, Any], key: str) -> str:
    if f"{key}_predicted" not in verdicts:
        return ""
    agrees = verdicts.get(f"{key}_agrees")
    word, css = ("right", "right") if agrees else ("wrong", "wrong")
    clauses = verdicts.get(f"{key}_clauses")
    if clauses:  # a judge that checks a prompt clause by clause
        items = "".join(
            f'<li class="{"right" if ok else "wrong"}">{"✓" if ok else "✗"} {html.escape(str(text))}</li>'
            for text, ok in clauses
        )
        return (f'<div class="verdict">judge says<ul class="clauses">{items}</ul>'
                f'exact match: <span class="{css}">{word}</span></div>')
    predicted = html.escape(str(verdicts[f"{key}_predicted"]))
    return f'<p class="verdict">judge says {predicted} (<span class="{css}">{word}</span>)</p>'


def render_html(record: RunRecord) -> str:
    """The report page of a run folder whose ``scaling.png`` is already written."""
    run, config, folder = record.run, record.config, record.path
    names = _score_names(record)
    title = f"noisesearch: {config.get('model', '?')}, {describe_condition(run.get('condition'))}"
    usage, budget = run.get("usage") or {}, run.get("budget") or {}
    verdicts = run.get("verdicts") or {}
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    status = record.describe_status()
    spent = f"{_e(usage.get('nfe'))} NFEs" + (f" of {_e(budget['nfe'])}" if budget.get("nfe") else "")
    out.append(
        f'<p class="lead">{_e(config.get("strategy"))} search, {_e(usage.get("candidates"))} candidates, '
        f"{spent}, {_e(usage.get('verifier_calls'))} verifier calls, "
        f"{_e(run.get('seconds'))} s; searched on <b>{_e(record.objective)}</b>"
        + (f", judged by <b>{_e(record.judge)}</b>" if record.evaluator else "")
        + f". Run {html.escape(status)}.</p>"
    )
    non_finite = run.get("non_finite") or {}
    if non_finite.get("candidates") or non_finite.get("scores"):
        per_score = ", ".join(f"{name}: {count}" for name, count in (non_finite.get("scores") or {}).items())
        out.append(
            f'<p class="warning">{_e(non_finite.get("candidates", 0))} candidates had a non-finite '
            f"objective (NaN or infinite) and were never selected. Non-finite scores: "
            f"{html.escape(per_score or 'none')}.</p>"
        )
    if run.get("baseline_origin") == "extra":
        out.append(
            f"<p>The no-search baseline (the plain sampler from the run's first seed) was generated "
            f"apart from the search: {_e(usage.get('baseline_nfe'))} NFEs, not charged to the budget.</p>"
        )

    out.append('<section id="compare"><h2>First candidate and best</h2><div class="pair">')
    for key, heading, image in (("baseline", "no search (first seed)", "baseline.png"),
                                ("best", f"best of {_fmt(usage.get('candidates'))}", "best.png")):
        candidate = run.get(key) or {}
        scores = candidate.get("scores") or {}
        rows = "".join(f"<tr><th>{html.escape(n)}</th><td>{_e(scores.get(n))}</td></tr>" for n in names)
        out.append(
            f'<figure class="{key}">{_img(_inside(folder, image), heading)}'
            f"<figcaption><b>{html.escape(heading)}</b> (candidate {_e(candidate.get('index'))})"
            f"<table>{rows}</table>{_verdict(verdicts, key)}</figcaption></figure>"
        )
    out.append("</div></section>")

    out.append('<section id="gallery"><h2>Top candidates</h2><div class="gallery">')
    top = run.get("top") or []
    for rank, candidate in enumerate(top, 1):
        scores = candidate.get("scores") or {}
        lines = "".join(
            f"<div>{html.escape(n)}: {_e(scores.get(n))}</div>" for n in names if n in scores
        )
        alt = f"#{rank}, candidate {_fmt(candidate.get('index'))}"
        out.append(
            f"<figure>{_img(_inside(folder, candidate.get('image')), alt, 160)}"
            f"<figcaption><b>#{rank}</b> candidate {_e(candidate.get('index'))}{lines}</figcaption></figure>"
        )
    if not top:
        out.append(_img(_inside(folder, "grid.png"), "top candidates", 640))
    out.append("</div></section>")

    out.append('<section id="scaling"><h2>Best score against compute</h2>')
    out.append(_img(_inside(folder, SCALING_PNG), "scaling plot", 700))
    if record.evaluator and not evaluated_all(record):
        out.append(f"<p class=\"note\">No oracle line ({_e(record.evaluator)}'s best over every "
                   "candidate): this run scored only what it reports with the evaluator (the "
                   "baseline, the running bests, the top-k); <code>--evaluate-all</code> scores "
                   "every candidate.</p>")
    out.append("</section>")

    out.append('<section id="config"><h2>Configuration</h2><table class="kv">')
    out += [f"<tr><th>{html.escape(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in config.items()]
    out.append("</table><p>Repeat this run: <code>noisesearch run --config "
               f"{html.escape(str(folder / 'run.json'))}</code></p></section>")

    environment = run.get("environment") or {}
    facts = {
        "device": run.get("device"), "dtype": run.get("dtype"),
        "NFEs per candidate": run.get("nfe_per_candidate"), "budget": budget, "usage": usage,
        "timings (s)": run.get("timings"), "python": environment.get("python"),
        "platform": environment.get("platform"), "packages": environment.get("packages"),
        "created": environment.get("created"), "schema version": run.get("schema_version"),
    }
    out.append('<section id="environment"><h2>Cost and environment</h2><table class="kv">')
    out += [f"<tr><th>{html.escape(k)}</th><td><code>{_e(v)}</code></td></tr>"
            for k, v in facts.items() if v not in (None, {}, "")]
    out.append("</table></section></body></html>")
    return "\n".join(out) + "\n"


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1100px; padding: 0 16px; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.5em; word-break: break-word; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.lead { color: #444; }
img.pixelated { image-rendering: pixelated; image-rendering: crisp-edges; }
img { border: 1px solid #ddd; background: #f4f4f4; max-width: 100%; height: auto; }
.pair { display: flex; flex-wrap: wrap; gap: 32px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(176px, 1fr)); gap: 16px; }
figure { margin: 0; } figcaption { font-size: 0.9em; margin-top: 4px; }
table { border-collapse: collapse; margin-top: 4px; }
th, td { text-align: left; padding: 2px 10px 2px 0; border-bottom: 1px solid #eee; vertical-align: top; }
table.kv code { white-space: pre-wrap; word-break: break-all; }
.right { color: #0a7d28; font-weight: 600; } .wrong { color: #c0231b; font-weight: 600; }
.missing { color: #c0231b; } .warning { color: #c0231b; }
ul.clauses { list-style: none; margin: 2px 0; padding-left: 0.6em; } ul.clauses li { font-weight: 400; }
"""


def plot_title(record: RunRecord, limit: int = 90) -> str:
    """A one-line title; ``$`` escaped, since matplotlib reads ``$...$`` as mathtext."""
    title = f"{record.config.get('model', '?')}, {describe_condition(record.run.get('condition'))}"
    title = " ".join(title.split())
    title = title if len(title) <= limit else title[: limit - 1] + "\u2026"
    return title.replace("$", r"\$")


def write_report(folder: Path | str, candidates: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """(Re)build ``scaling.png`` and ``report.html`` in a run folder; returns the page.

    ``candidates``: what the plot reads of ``candidates.jsonl`` (``scores``, ``nfe_spent``),
    given by a process that holds it, so that the file is not parsed back.
    Holds the folder's lock (``noisesearch.locking``): a run still writing it is not raced."""
    from noisesearch.locking import hold
    from noisesearch.runs import run_folder

    with hold(run_folder(folder)):
        return _write_report(folder, candidates)


def evaluated_all(record: RunRecord) -> bool:
    """Whether the evaluator scored every candidate (runs before ``"evaluated"`` existed did)."""
    return record.run.get("evaluated", "all") == "all"


def _write_report(folder: Path | str, candidates: Sequence[Mapping[str, Any]] | None = None) -> Path:
    record = load_run(folder, candidates=candidates is None)
    if candidates is not None:
        record.candidates = [dict(row) for row in candidates]
    verifiers = list(record.config.get("verifiers") or [])
    if not verifiers and record.candidates:  # no run.json yet: every score, as recorded
        verifiers = list(record.candidates[0]["scores"])
    plot = scaling_png(record.candidates, verifiers, record.evaluator, plot_title(record),
                       evaluated_all(record))
    write_atomic(record.path / SCALING_PNG, plot)
    page = record.path / REPORT_HTML
    write_atomic(page, render_html(record).encode("utf-8"))
    return page
