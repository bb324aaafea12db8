"""``bench()``: expand a grid into cells (checking everything before any model loads), run
the cells that are not finished yet, and write the bench folder's tables, plots and report."""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisesearch.bench import store
from noisesearch.bench.cells import Cell, cell_key, make_cell
from noisesearch.bench.grid import BenchGrid
from noisesearch.bench.suites import check_items, load_suite, subset
from noisesearch.errors import ConfigError, UnknownNameError
from noisesearch.registry import searched_names

DEFAULT_BENCH_ROOT = Path("noisesearch-bench")
BENCH_JSON = "bench.json"


@dataclass
class BenchResult:
    """A finished bench: its folder and one row per cell, in grid order."""

    folder: Path
    rows: list[dict[str, Any]]
    ran: int  # cells run by this call (the others were finished before)
    seconds: float

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row.get("status") != "ok"]


def one_sample_nfe(steps: int, solver: str) -> int:
    """NFEs of one sample at ``steps`` steps (Heun's last step to clean is an Euler step)."""
    return steps if solver == "ddim" else 2 * steps - 1


def more_steps_for(budget: int, solver: str) -> int:
    """The most steps one sample can take within ``budget`` NFEs, up to the steps a run allows
    (``noisesearch.config.LIMITS``; beyond ~10^3 steps a flow has long converged)."""
    from noisesearch.config import LIMITS

    steps = budget if solver == "ddim" else (budget + 1) // 2
    return min(steps, LIMITS.get("steps", steps))


def expand(grid: BenchGrid, registries: Any) -> list[Cell]:
    """Every cell of the grid, in its canonical order (model, condition, seed, budget,
    verifier, strategy, then the baselines), each planned: bad input fails here."""
    from noisesearch.config import RunConfig, check_output_writable
    from noisesearch.planning import NO_EVALUATOR, _expand_model_prefix, model_traits, plan

    grid.validate()
    # Absolute: remote workers (Ray) need not share the driver's working directory.
    root = bench_folder(grid).absolute()
    cells: list[Cell] = []
    used: set[str] = set()  # verifiers and evaluators of some model: what verifier_options may name
    for model_name in grid.models:
        probe = RunConfig(model=model_name, model_options=dict(grid.model_options.get(model_name, {})))
        _expand_model_prefix(probe)
        entry = _get(registries.models, probe.model, "models")
        traits = model_traits(entry, probe.model_options)
        verifiers = grid.verifiers or list(traits["default_verifiers"])[:1]
        evaluators = grid.evaluators or ([traits["default_evaluator"]] if traits["default_evaluator"] else [])
        if not verifiers:
            raise ConfigError("verifiers", f"model {model_name!r} has no default verifier: name one")
        if not evaluators or NO_EVALUATOR in evaluators:
            raise ConfigError("evaluators", f"name at least one held-out evaluator for {model_name!r}")
        for name in verifiers:
            _get(registries.verifiers, name, "verifiers")
        for name in evaluators:
            _get(registries.verifiers, name, "evaluators")
        used.update(verifiers, evaluators)
        _check_held_out(verifiers, evaluators, grid.verifier_options, registries)
        for spec in grid.strategies:  # built once here: option values are checked, no weights
            _get(registries.strategies, spec.name, "strategies").create(**spec.options)
        steps = grid.steps or traits["default_steps"]
        cost = one_sample_nfe(steps, grid.solver)
        for budget in grid.budgets:
            if budget < cost:
                raise ConfigError("budgets", f"{budget} NFEs is below one sample's cost for "
                                  f"{model_name!r} ({cost} NFEs: {steps} steps, {grid.solver})")
        source = grid.prompts
        items = subset(load_suite(source, getattr(entry.factory, "prompt_suite", None), model_name),
                       grid.per_category, grid.limit)
        check_items(items, traits["conditioning"], model_name, source)
        evaluator_options = {n: grid.verifier_options.get(n, {}) for n in evaluators}
        base = {
            "model": model_name, "model_options": dict(grid.model_options.get(model_name, {})),
            "evaluator": evaluators[0], "solver": grid.solver, "batch_size": grid.batch_size,
            "top_k": grid.top_k, "device": grid.device, "overlap": grid.overlap,
        }

        def add(config: dict[str, Any], strategy: str, kind: str, verifier: str | None,
                budget: int | None, condition: dict[str, Any], evaluators: list[str] = evaluators,
                evaluator_options: dict[str, Any] = evaluator_options,
                resources: dict[str, float] | None = grid.resources.get(model_name)) -> None:
            used = [*config["verifiers"], evaluators[0]]
            config["verifier_options"] = {n: grid.verifier_options[n] for n in used
                                          if n in grid.verifier_options}
            cells.append(make_cell(root, config, strategy, kind, verifier, budget, condition,
                                   evaluators, evaluator_options, grid.threads, grid.cell_reports,
                                   resources))

        for item in items:
            condition = item.to_json()
            given = {"prompt": item.prompt} if item.prompt is not None else {"label": item.label}
            for seed in grid.seeds:
                common = {**base, **given, "seed": seed}
                if "default" in grid.baselines:
                    add({**common, "strategy": "random", "candidates": 1, "steps": steps,
                         "verifiers": list(verifiers)}, "baseline:default", "baseline", None, None, condition)
                for budget in grid.budgets:
                    for verifier in verifiers:
                        for spec in grid.strategies:
                            add({**common, "strategy": spec.name, "strategy_options": dict(spec.options),
                                 "budget_nfe": budget, "steps": steps, "verifiers": [verifier]},
                                spec.label, "search", verifier, budget, condition)
                    if "more-steps" in grid.baselines:
                        add({**common, "strategy": "random", "candidates": 1,
                             "steps": more_steps_for(budget, grid.solver), "verifiers": list(verifiers)},
                            "baseline:more-steps", "baseline", None, budget, condition)
                    if "stochastic" in grid.baselines:
                        add({**common, "strategy": "stochastic", "budget_nfe": budget, "steps": steps,
                             "verifiers": list(verifiers)},
                            "baseline:stochastic", "baseline", None, budget, condition)
    unused = sorted(set(grid.verifier_options) - used)
    if unused:  # a typo, or options meant for an ensemble's member (its member_options)
        raise ConfigError("verifier_options", f"options for {unused}, which the grid neither searches "
                          f"on nor evaluates with (it uses {sorted(used)}); an ensemble member's "
                          "options go in the ensemble's member_options")
    _check_distinct(cells)
    # Every cell's run folder is in root/runs: its writability is probed once (a folder made
    # and removed: ~6 ms, which 100 small cells paid 100 times), not once per cell.
    check_output_writable(root / "runs")
    for cell in cells:  # every combination checked now, before anything loads
        plan(RunConfig(**copy.deepcopy(cell.config)), registries, check_output=False)
    return cells


def _check_held_out(verifiers: list[str], evaluators: list[str],
                    options: dict[str, dict[str, Any]], registries: Any) -> None:
    """Refuse an evaluator that is not held out: one searched on, itself or as a member of a
    searched ensemble, or an ensemble with a searched verifier among its members (either way
    the judge shares the searched verifier's opinion, so it cannot show verifier hacking); and
    an evaluator whose scores are ranks within a pool (an ensemble), which has no score for
    one image: a winner judged alone ranks first, 1.0, whatever it shows."""
    from noisesearch.planning import pool_relative

    searched = searched_names([registries.verifiers.get(n) for n in verifiers], options)
    for name in evaluators:
        entry = registries.verifiers.get(name)
        judged_by = searched_names([entry], options)  # its own name, and an ensemble's members
        both = sorted(searched & judged_by)
        if both:
            via = "" if both == [name] else f" (a member of {name!r})"
            raise ConfigError("evaluators", f"{both} is also searched on (verifiers){via}: an "
                              "evaluator must be held out, or it cannot show verifier hacking")
        if pool_relative(entry):
            raise ConfigError("evaluators", f"{name!r} scores an image by its rank among the images "
                              "scored with it, so a winner judged alone always scores 1.0: it cannot "
                              "be a bench's held-out evaluator; name its members as evaluators instead")


def _check_distinct(cells: list[Cell]) -> None:
    """Two cells of one search (the list fields' repeats are refused by ``validate``, so a
    condition given twice in the suite, or two model names for one model), named."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.key in seen:
            prompt = cell.condition.get("prompt")
            what = f"prompt {prompt!r}" if prompt is not None else f"label {cell.condition.get('label')!r}"
            budget = f"budget {cell.budget}, " if cell.budget is not None else ""
            raise ConfigError("grid", f"two cells of the grid are the same search: {cell.strategy} "
                              f"on {cell.config.get('model')!r}, {budget}seed {cell.seed}, {what} "
                              "(is a condition repeated in the suite, or a model named twice?)")
        seen[cell.key] = cell


def _get(registry: Any, name: str, field: str) -> Any:
    try:
        return registry.get(name)
    except UnknownNameError as exc:
        raise ConfigError(field, str(exc)) from None


def bench_folder(grid: BenchGrid) -> Path:
    """The bench folder: ``output`` (``~`` expanded: a grid file or ``bench(output=...)`` gets
    no shell to do it) or the grid's default folder."""
    return Path(grid.output).expanduser() if grid.output else default_folder(grid)


def default_folder(grid: BenchGrid) -> Path:
    """Same grid, same folder: re-running a command continues its bench."""
    from noisesearch.names import safe_token

    # Neither the output, nor overlapping batches (same rows), nor drawing each cell's report
    # (not part of a cell's key) makes another bench. cell_reports is kept at false rather than
    # dropped, so that the folders of earlier benches keep their names.
    identity = {k: v for k, v in grid.to_json().items() if k not in ("output", "overlap")}
    identity["cell_reports"] = False
    return DEFAULT_BENCH_ROOT / f"{safe_token(grid.models[0])}-{cell_key(identity)[:10]}"


def run_bench(
    grid: BenchGrid,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    progress: bool = False,
    registries: Any = None,
    overwrite: bool = False,
) -> BenchResult:
    """Run every unfinished cell of ``grid`` and write the bench folder (docs/bench.md).

    The bench folder is locked for the whole bench (``locking.py``, as a run folder is), before
    anything in it is written: a second bench on it is refused. ``overwrite`` starts a bench of
    another grid afresh in a folder that holds one (see :func:`check_folder`)."""
    from noisesearch import locking
    from noisesearch.bench.executors import make_executor
    from noisesearch.plugins import build_registries, get_plugin_manager
    from noisesearch.results import write_json

    if not isinstance(overwrite, bool):
        raise ConfigError("overwrite", f"must be true or false, got {overwrite!r}")
    started = time.perf_counter()
    pm = get_plugin_manager()
    registries = registries or build_registries(pm)
    cells = expand(grid, registries)
    folder = bench_folder(grid)
    check_folder(folder, grid, cells, overwrite)  # early: before a cluster starts
    runner = make_executor(executor, {"threads": grid.threads, **(executor_options or {})}, pm)
    with contextlib.ExitStack() as held:
        try:
            start = getattr(runner, "start", None)
            if callable(start):  # join or start a cluster before anything is written
                start()
            check = getattr(runner, "check", None)
            if callable(check):  # what the cells ask of the executor (Ray: workers, resources)
                check(cells)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                held.enter_context(locking.hold(folder, "bench folder"))  # nothing written before
            except locking.FolderInUse as exc:
                raise _in_use(exc) from None
            check_folder(folder, grid, cells, overwrite)  # again, now that the folder is ours
            if overwrite:
                clear_bench_files(folder)
            write_json(folder / BENCH_JSON, {"grid": grid.to_json(), "executor": executor,
                                              "cells": [cell.key for cell in cells]})
            ran = _run_cells(folder, cells, runner, progress)
        finally:
            runner.close()
        rows = finish(folder, cells)
    return BenchResult(folder, rows, ran, time.perf_counter() - started)


def _run_cells(folder: Path, cells: list[Cell], runner: Any, progress: bool) -> int:
    """Run the cells without an ``ok`` row, appending each row as it arrives; returns how
    many ran."""
    done = store.read_rows(folder / store.RESULTS_JSONL)
    todo = [cell for cell in cells if done.get(cell.key, {}).get("status") != "ok"]
    appender = store.RowAppender(folder / store.RESULTS_JSONL)
    count = {"n": 0}

    def on_row(row: dict[str, Any]) -> None:
        appender.append(row)
        count["n"] += 1
        if progress:
            what = row.get("prompt") if row.get("prompt") is not None else f"label {row.get('label')}"
            status = "ok" if row["status"] == "ok" else f"FAILED: {row.get('error')}"
            budget = "default" if row.get("budget") is None else row["budget"]  # baseline:default has none
            used = f", {row['nfe']} NFEs used" if row.get("nfe") is not None else ""
            print(f"[{count['n']}/{len(todo)}] {row['strategy']} budget={budget} {what} "
                  f"seed={row['seed']}: {status} ({row.get('seconds')} s{used})", file=sys.stderr, flush=True)

    if progress and len(todo) < len(cells):
        print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished in {folder}",
              file=sys.stderr)
    try:
        runner.run(todo, on_row)
    finally:
        appender.close()
    return count["n"]


def check_folder(folder: Path, grid: BenchGrid, cells: list[Cell], overwrite: bool) -> None:
    """Refuse, before anything is written, a folder this bench must not write into: one that
    another process holds; one that holds a run (``run.json``: its report would be replaced)
    or anything else but a bench; and, unless ``overwrite``, a bench of another grid that
    this one would drop cells of. A grid that keeps every cell of the folder's (more budgets,
    seeds or strategies; ``overlap`` or the executor changed) continues the bench: its rows
    are kept, so nothing leaves the tables."""
    from noisesearch import locking

    if not folder.is_dir():
        return
    try:
        locking.check_unlocked(folder, "bench folder")
    except locking.FolderInUse as exc:
        raise _in_use(exc) from None
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(locking.LOCK_FILE))
    if locking.is_run_folder(folder):
        raise ConfigError("output", f"{str(folder)!r} holds a `noisesearch run` (run.json), not a "
                          "bench; choose another --output")
    if BENCH_JSON not in names:
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ConfigError("output", f"{str(folder)!r} is not empty and holds no {BENCH_JSON} "
                              f"(it holds {shown}): a bench writes into a new or empty folder, or "
                              "continues a bench folder; choose another --output")
        return
    if not overwrite:
        _check_same_cells(folder, grid, cells)


def _in_use(exc: Exception) -> Exception:
    """A bench folder in use, with what to do about it."""
    return type(exc)(f"{exc}; a bench folder takes one bench at a time: wait for that one to "
                     "finish, or choose another --output")


def _check_same_cells(folder: Path, grid: BenchGrid, cells: list[Cell]) -> None:
    """Refuse a grid that would drop cells of the bench in ``folder``, naming the grid keys
    that differ and how many finished rows would leave the tables."""
    again = "re-run its own grid, pass --overwrite to replace it, or choose another --output"
    try:
        earlier = load_bench_json(folder)
        earlier_grid, earlier_cells = dict(earlier["grid"]), set(earlier["cells"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError("output", f"{str(folder / BENCH_JSON)!r} cannot be read; pass --overwrite "
                          "to start the bench afresh, or choose another --output") from None
    dropped = earlier_cells - {cell.key for cell in cells}
    if not dropped:
        return
    now = json.loads(json.dumps(grid.to_json(), default=str))  # as bench.json holds it
    differ = [f"{k}: {_short(earlier_grid.get(k))} -> {_short(now.get(k))}"
              for k in sorted({*earlier_grid, *now}) if k != "output" and earlier_grid.get(k) != now.get(k)]
    rows = store.read_rows(folder / store.RESULTS_JSONL)
    finished = sum(1 for key in dropped if rows.get(key, {}).get("status") == "ok")
    raise ConfigError("output", f"{str(folder)!r} holds a bench of another grid "
                      f"({'; '.join(differ) or 'other cells'}): {len(dropped)} of its cells "
                      f"({finished} finished) are not in this grid and would leave its tables; {again}")


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def clear_bench_files(folder: Path) -> None:
    """Remove what a bench writes beside ``runs/`` (its rows, tables, plots and report), and
    nothing else (``overwrite``): every cell then runs again, each emptying its own run folder
    under that folder's lock. Run folders of cells that the new grid lacks stay in ``runs/``."""
    from noisesearch.bench.outputs import HACKING_PNG, REPORT_HTML, SUMMARY_MD

    for name in (BENCH_JSON, store.RESULTS_JSONL, store.RESULTS_CSV, SUMMARY_MD, REPORT_HTML, HACKING_PNG):
        (folder / name).unlink(missing_ok=True)
    for plot in folder.glob("scaling-*.png"):
        plot.unlink()


def finish(folder: Path, cells: list[Cell]) -> list[dict[str, Any]]:
    """Rewrite the tables in grid order and draw the summary, plots and report."""
    from noisesearch.bench.outputs import write_outputs

    found = store.read_rows(folder / store.RESULTS_JSONL)
    rows = [found[cell.key] for cell in cells if cell.key in found]
    store.write_final(folder, rows)
    write_outputs(folder, rows)
    return rows


def bench(grid: BenchGrid | dict[str, Any] | None = None, *, executor: str = "local",
          executor_options: dict[str, Any] | None = None, progress: bool = False,
          overwrite: bool = False, **fields: Any) -> BenchResult:
    """Run a bench from a :class:`BenchGrid`, or its fields as keywords, e.g.
    ``bench(models=["digits"], strategies=["random", "paths"], budgets=[40, 80], seeds=[0, 1])``.
    Re-running the same grid skips finished cells; a grid that would drop cells of the bench
    in its folder is refused unless ``overwrite`` (which starts that bench afresh)."""
    from noisesearch.bench.grid import grid_from_mapping

    if grid is None:
        grid = grid_from_mapping(fields, where="bench()")
    elif isinstance(grid, dict):
        grid = grid_from_mapping({**grid, **fields}, where="bench()")
    elif fields:
        raise ConfigError("bench()", "pass either a BenchGrid or keyword fields, not both")
    return run_bench(grid, executor, executor_options, progress, overwrite=overwrite)


def load_bench_json(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / BENCH_JSON).read_text())
