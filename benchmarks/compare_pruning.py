"""Does early pruning pay? How well early ``x0_hat`` scores rank the final ones, and pruning
against random search at equal and at half NFE budgets, judged by the held-out evaluator.

Two parts (``--part``, default both):

- ``correlation``: per condition and seed, ``--pool`` noises are solved along the run's grid;
  at each of ``--levels`` their clean prediction ``x0_hat`` is decoded and scored by the
  searched verifier; then they are finished and scored by the verifier and the held-out
  evaluator. Reports Spearman's rho of early against final scores, and how often the
  verifier's final winner of the pool survives a cut to the top ``keep`` fraction by early score.
- ``compare``: real searches (``noisesearch.search``), one per condition and seed: ``random`` at
  budgets ``B`` and ``B / 2``, and each ``--pruning`` configuration at ``B / 2`` and ``B``. Per
  arm: the evaluator's mean score with its 95% confidence interval (t), its accuracy (does the
  winner read as the requested digit / satisfy the prompt), the verifier's mean score, and the
  paired difference to random at ``B`` (mean and 95% CI): pruning "reaches random" at half its
  NFEs when that interval does not lie wholly below zero and its mean is at least random's.

    python benchmarks/compare_pruning.py --model digits --seeds 5 --budget 640 \
        --out docs/strategies

``--model shapes`` uses ``shapes-clip`` (searched) and ``shapes-judge`` (held out) on the first
``--prompts`` prompts of each category of the shapes suite. Writes ``pruning-MODEL-BUDGET.json`` (without
the pools' raw scores) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import noisesearch
from noisesearch.api import search_levels
from noisesearch.plugins import build_registries
from noisesearch.recipes import seed_recipe

LEVELS = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
KEEPS = (0.5, 0.25, 0.125, 0.0625, 0.03125)
PRUNING = ("checkpoints=[0.6,0.3],keep=0.5", "checkpoints=[0.8],keep=0.125",
           "checkpoints=[0.7],keep=0.125", "checkpoints=[0.8,0.5],keep=0.25")
PAIRS = {"digits": ("digits-classifier", "digits-evaluator"), "shapes": ("shapes-clip", "shapes-judge")}


def conditions(model: str, registries: Any, prompts: int) -> list[dict[str, Any]]:
    """Digits: every label; shapes: the first ``prompts`` prompts of each category of its suite."""
    if model == "digits":
        return [{"label": label} for label in range(10)]
    suite = Path(registries.models.get(model).factory.prompt_suite)
    picked, category, taken = [], None, 0
    for line in suite.read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            category, taken = line[1:].strip(), 0
            continue
        if line and category and taken < prompts and " " not in category:
            picked.append({"prompt": line})
            taken += 1
    return picked


# -- part 1: early scores against final scores ------------------------------------------------


class Probe:
    """A 'strategy' that records early and final scores of one pool of seeds (no pruning)."""

    def __init__(self, pool: int, levels: list[float], verifier: str, evaluator: str) -> None:
        self.pool, self.levels, self.verifier, self.evaluator = pool, levels, verifier, evaluator
        self.early: dict[float, list[float]] = {}
        self.final: list[float] = []
        self.judged: list[float] = []

    def run(self, context: Any) -> None:
        engine = context._engine  # noqa: SLF001 - a measurement reads the engine's scores directly
        states = context.start([seed_recipe(seed) for seed in context.seeds(self.pool)])
        for level in self.levels:
            states = context.solve(states, context.grid(states.level, level))
            self.early[level] = engine.score_latents(context.predict(states))[self.verifier]
        states = context.solve(states, context.grid(states.level, context.levels[-1]))
        candidates = context.finish(states)
        self.final = [c.scores[self.verifier] for c in candidates]
        self.judged = [c.scores[self.evaluator] for c in candidates]


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    for rank, i in enumerate(order):
        out[i] = float(rank)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else 0.0


def correlation(model: str, conds: list[dict], seeds: int, pool: int, levels: list[float],
                steps: int) -> dict[str, Any]:
    from noisesearch.engine import Budget, Engine, Scorer
    from noisesearch.types import Condition

    registries = build_registries()
    verifier, evaluator = PAIRS[model]
    built = registries.models.get(model).create()
    verifiers = {name: registries.verifiers.get(name).create() for name in (verifier, evaluator)}
    grid = search_levels(built, steps)
    probes = []
    for cond, seed in itertools.product(conds, range(seeds)):
        probe = Probe(pool, levels, verifier, evaluator)
        engine = Engine(built, Condition(**cond), Scorer(verifiers), Budget(), grid,
                        batch_size=getattr(built, "preferred_batch_size", 16), seed=seed)
        engine.run(probe)
        probes.append({"condition": cond, "seed": seed, "early": {str(k): v for k, v in probe.early.items()},
                       "final": probe.final, "judged": probe.judged})
    summary = []
    for level in levels:
        before = 1 + sum(1 for g in grid[1:] if g > level + 1e-9)  # solver steps down to it
        row: dict[str, Any] = {"level": level, "steps_before": before,
                               "steps_after": 1 + sum(1 for g in grid[:-1] if g < level - 1e-9)}
        row["rho_verifier"] = statistics.fmean(spearman(p["early"][str(level)], p["final"]) for p in probes)
        row["rho_evaluator"] = statistics.fmean(spearman(p["early"][str(level)], p["judged"]) for p in probes)
        for keep in KEEPS:
            kept = max(1, math.ceil(keep * pool))
            survived = []
            for p in probes:
                early = p["early"][str(level)]
                top = sorted(range(pool), key=lambda i: -early[i])[:kept]
                survived.append(max(range(pool), key=p["final"].__getitem__) in top)
            row[f"winner_survives_keep_{keep}"] = statistics.fmean(survived)
        summary.append(row)
    final_rho = statistics.fmean(spearman(p["final"], p["judged"]) for p in probes)
    return {"pool": pool, "groups": len(probes), "grid_steps": steps, "levels": summary,
            "steps": {str(r["level"]): (r["steps_before"], r["steps_after"]) for r in summary},
            "nfe_per_sample": len(grid) - 1,
            "rho_final_verifier_vs_evaluator": final_rho, "probes": probes}


def simulate(corr: dict[str, Any], budget: int, cuts: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Random search and one-cut pruning replayed from the probes' pools: both draw the run's
    first seeds in order, so random at ``B`` NFEs is the verifier's best of the first ``B / K``
    samples, and pruning at ``b`` NFEs keeps the top ``keep`` of its first ``n0`` by early score
    (``n0`` the largest whose cost ``n0 (s + 1) + ceil(keep n0) (K' - s)`` fits) and finishes
    them. Pools too small for an arm are reported, not extended."""
    k = corr["nfe_per_sample"]
    rows = []
    arms = [("random", None, None, budget), ("random", None, None, budget // 2)]
    arms += [("pruning", level, keep, b) for level, keep in cuts for b in (budget // 2, budget)]
    reference = None
    for name, level, keep, b in arms:
        picked = []
        if name == "random":
            n0, finished = b // k, b // k
        else:
            before, after = corr["steps"][str(level)]  # DDIM: one NFE a step
            n0 = max(n for n in range(0, 100_000) if n * (before + 1) + math.ceil(keep * n) * after <= b)
            finished = math.ceil(keep * n0)
        if n0 > corr["pool"] or finished == 0:
            rows.append({"strategy": name, "level": level, "keep": keep, "budget_nfe": b, "starts": n0,
                         "skipped": f"needs a pool of {n0}"})
            continue
        for p in corr["probes"]:
            pool = list(range(n0))
            if name == "pruning":
                early = p["early"][str(level)]
                pool = sorted(pool, key=lambda i: -early[i])[:finished]
            best = max(pool, key=p["final"].__getitem__)
            picked.append((p["final"][best], p["judged"][best]))
        judged = [j for _, j in picked]
        reference = judged if reference is None else reference
        mean, half = interval(judged)
        diff, diff_half = interval([a - r for a, r in zip(judged, reference)])
        rows.append({"strategy": name, "level": level, "keep": keep, "budget_nfe": b, "starts": n0,
                     "finished": finished, "searches": len(picked),
                     "verifier": statistics.fmean(v for v, _ in picked), "evaluator": mean,
                     "evaluator_ci95": half, "diff_to_random_full": diff, "diff_ci95": diff_half})
    return rows


# -- part 2: real searches --------------------------------------------------------------------


def parse_options(spec: str) -> dict[str, Any]:
    """``key=value,key=[a,b]`` -> options; values read as JSON where they parse."""
    options: dict[str, Any] = {}
    for item in _split(spec):
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _split(spec: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in spec:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p]


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (normal quantile; n >= 50)."""
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, half


def compare(model: str, conds: list[dict], seeds: int, budget: int, pruning: list[str],
            steps: int) -> list[dict[str, Any]]:
    registries = build_registries()
    verifier, evaluator = PAIRS[model]
    built = registries.models.get(model).create()
    verifiers = {name: registries.verifiers.get(name).create() for name in (verifier, evaluator)}
    arms = [("random", "", budget), ("random", "", budget // 2)]
    arms += [("pruning", spec, b) for spec in pruning for b in (budget // 2, budget)]
    results: dict[tuple[str, str, int], list[dict]] = {}
    for name, spec, b in arms:
        started = time.perf_counter()
        rows = []
        for cond, seed in itertools.product(conds, range(seeds)):
            result = noisesearch.search(model=built, strategy=name, strategy_options=parse_options(spec),
                                        budget_nfe=b, seed=seed, steps=steps, write=False,
                                        verifiers=[verifier], evaluator=evaluator,
                                        registries=registries, built_verifiers=verifiers, **cond)
            rows.append({"verifier": result.best.scores[verifier], "evaluator": result.best.scores[evaluator],
                         "agrees": bool(result.verdicts.get("best_agrees")), "nfe": result.usage.nfe,
                         "candidates": result.usage.candidates})
        results[(name, spec, b)] = rows
        print(json.dumps({"arm": f"{name}:{spec}@{b}", "seconds": round(time.perf_counter() - started, 1)}),
              flush=True)
    reference = results[("random", "", budget)]
    table = []
    for (name, spec, b), rows in results.items():
        mean, half = interval([r["evaluator"] for r in rows])
        diff, diff_half = interval([r["evaluator"] - q["evaluator"] for r, q in zip(rows, reference)])
        table.append({
            "strategy": name if not spec else f"{name}:{spec}", "budget_nfe": b,
            "searches": len(rows), "mean_nfe": statistics.fmean(r["nfe"] for r in rows),
            "max_nfe": max(r["nfe"] for r in rows),
            "finished_candidates": statistics.fmean(r["candidates"] for r in rows),
            "verifier": statistics.fmean(r["verifier"] for r in rows),
            "evaluator": mean, "evaluator_ci95": half,
            "accuracy": statistics.fmean(r["agrees"] for r in rows),
            "diff_to_random_full": diff, "diff_ci95": diff_half,
            "reaches_random_full": b <= budget // 2 and diff >= 0.0,
            "not_worse_than_random_full": diff + diff_half >= 0.0,
        })
    return table


def markdown(corr: dict | None, table: list[dict] | None, budget: int) -> str:
    out = []
    if corr:
        keeps = " | ".join(f"winner kept at {k}" for k in KEEPS)
        out += [f"Pool of {corr['pool']} noises, {corr['groups']} pools; Spearman's rho of final verifier "
                f"against final evaluator: {corr['rho_final_verifier_vs_evaluator']:.3f}.", "",
                f"| level | steps done | rho (early vs final verifier) | rho (early vs evaluator) "
                f"| {keeps} |",
                "| ---: | ---: | ---: | ---: |" + " ---: |" * len(KEEPS)]
        for r in corr["levels"]:
            kept = " | ".join(f"{r[f'winner_survives_keep_{k}']:.2f}" for k in KEEPS)
            out.append(f"| {r['level']} | {r['steps_before']} | {r['rho_verifier']:.3f} | "
                       f"{r['rho_evaluator']:.3f} | {kept} |")
        out.append("")
    if corr and corr.get("simulated"):
        out += ["Replayed from the pools (one-cut pruning; random at B and B/2):", "",
                "| arm | NFE budget | started | finished | verifier | evaluator (95% CI) "
                "| paired diff. to random@full (95% CI) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in corr["simulated"]:
            arm = r["strategy"] if r["level"] is None else f"pruning at {r['level']}, keep {r['keep']}"
            if "skipped" in r:
                out.append(f"| {arm} | {r['budget_nfe']} | {r['starts']} | | {r['skipped']} | | |")
                continue
            out.append(f"| {arm} | {r['budget_nfe']} | {r['starts']} | {r['finished']} | "
                       f"{r['verifier']:.4f} | "
                       f"{r['evaluator']:.3f} ± {r['evaluator_ci95']:.3f} | "
                       f"{r['diff_to_random_full']:+.3f} ± {r['diff_ci95']:.3f} |")
        out.append("")
    if table:
        out += [f"Reference: random at {budget} NFEs.", "",
                "| strategy | NFE budget | NFEs spent (mean / max) | finished | verifier "
                "| evaluator (95% CI) | accuracy | paired diff. to random@full (95% CI) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in table:
            out.append(f"| {r['strategy']} | {r['budget_nfe']} | {r['mean_nfe']:.0f} / {r['max_nfe']} | "
                       f"{r['finished_candidates']:.1f} | {r['verifier']:.4f} | "
                       f"{r['evaluator']:.3f} ± {r['evaluator_ci95']:.3f} | {r['accuracy']:.2f} | "
                       f"{r['diff_to_random_full']:+.3f} ± {r['diff_ci95']:.3f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PAIRS), default="digits")
    parser.add_argument("--part", choices=("correlation", "compare", "both"), default="both")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=2, help="shapes: prompts per category")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pool", type=int, default=256, help="correlation: noises per pool")
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    parser.add_argument("--budget", type=int, default=640, help="random's full budget B (NFEs)")
    parser.add_argument("--pruning", nargs="+", default=list(PRUNING), help="pruning option sets")
    parser.add_argument("--simulate", nargs="*", default=["0.9:0.0625", "0.8:0.125", "0.6:0.25"],
                        help="correlation: one-cut pruning LEVEL:KEEP replayed from the pools at --budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    conds = conditions(args.model, build_registries(), args.prompts)
    started = time.perf_counter()
    corr = table = None
    if args.part in ("correlation", "both"):
        corr = correlation(args.model, conds, args.seeds, args.pool, sorted(args.levels, reverse=True),
                           args.steps)
        cuts = [(float(level), float(keep)) for level, keep in (c.split(":") for c in args.simulate)]
        corr["simulated"] = simulate(corr, args.budget, cuts)
    if args.part in ("compare", "both"):
        table = compare(args.model, conds, args.seeds, args.budget, args.pruning, args.steps)
    text = markdown(corr, table, args.budget)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{args.threads} thread(s)")
        if corr is not None:  # the pools' raw scores are large; the summary and replays are kept
            corr = {k: v for k, v in corr.items() if k != "probes"}
        (args.out / f"pruning-{args.model}-{args.budget}.json").write_text(json.dumps(
            {"machine": machine, "seconds": round(time.perf_counter() - started, 1), "args": vars(args) | {
                "out": str(args.out)}, "correlation": corr, "compare": table}, indent=1))


if __name__ == "__main__":
    main()
