"""Cells: one search (or one baseline) of the grid, keyed by a hash of its full configuration,
and the worker-side runner that runs cells with each model built once."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Row columns that measure time: the only ones allowed to differ between two runs of a cell.
TIMING_COLUMNS = ("seconds", "search_seconds")


@dataclass
class Cell:
    """One unit of work: a RunConfig's fields plus what the bench records about it."""

    key: str
    config: dict[str, Any]  # RunConfig fields (output set to the cell's run folder)
    strategy: str  # the label in tables (a strategy spec's label, or "baseline:NAME")
    kind: str  # "search" or "baseline"
    verifier: str | None  # the searched-on verifier (None for verifier-free baselines)
    budget: int | None  # the NFE budget it answers to (None: the default-steps baseline)
    condition: dict[str, Any]  # {"prompt" | "label", "category"}
    seed: int
    evaluators: list[str]
    evaluator_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int | None = None
    report: bool = False  # draw the cell's report.html (`noisesearch report RUN` can, later)
    resources: dict[str, float] = field(default_factory=dict)  # what a worker holding its model takes

    @property
    def run_dir(self) -> str:
        return str(self.config["output"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cell_key(identity: dict[str, Any]) -> str:
    """A stable hash of everything that determines a cell's result."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_cell(
    root: Path,
    config: dict[str, Any],
    strategy: str,
    kind: str,
    verifier: str | None,
    budget: int | None,
    condition: dict[str, Any],
    evaluators: list[str],
    evaluator_options: dict[str, dict[str, Any]],
    threads: int | None,
    report: bool = False,
    resources: dict[str, float] | None = None,
) -> Cell:
    from noisesearch.names import safe_name

    # Neither where a cell writes nor whether it overlaps its batches changes its result.
    identity = {"config": {k: v for k, v in config.items() if k not in ("output", "overlap")}, "kind": kind,
                "strategy": strategy, "budget": budget, "evaluators": evaluators,
                "evaluator_options": evaluator_options, "threads": threads}
    key = cell_key(identity)
    what = condition.get("prompt")
    what = f"label{condition.get('label')}" if what is None else what
    name = safe_name(f"{strategy}-nfe{budget or 'default'}-{what}-s{config['seed']}", max_length=60)
    config = {**config, "output": str(root / "runs" / f"{name}-{key[:10]}")}
    return Cell(key, config, strategy, kind, verifier, budget, condition, int(config["seed"]),
                evaluators, evaluator_options, threads, report, dict(resources or {}))


class CellRunner:
    """Runs cells in one process: each model, verifier and evaluator is built once (by its
    name and options) and serves every cell that uses it. The local executor holds one; each
    Ray actor holds its own."""

    def __init__(self, threads: int | None = None) -> None:
        from noisesearch.plugins import build_registries

        self.registries = build_registries()
        self._models: dict[str, Any] = {}
        self._verifiers: dict[str, Any] = {}
        self.threads = threads
        self.load_seconds = 0.0
        self._probed: set[str] = set()  # output folders found writable (config.check_output_writable)

    def run(self, cell: Cell) -> dict[str, Any]:
        """The cell's result row; a failure (exception, out of memory) becomes a row with its
        error, so that the bench goes on. A leftover folder of an interrupted try is emptied
        first (:func:`fresh_run_folder`): a cell runs from scratch and ends the same."""
        started = time.perf_counter()
        threads = cell.threads or self.threads
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            with fresh_run_folder(Path(cell.run_dir)):
                row = self._run(cell)
        except Exception as error:  # recorded, and the bench goes on (Ctrl-C is not an Exception)
            from noisesearch import interrupts

            if interrupts.requested():  # a Ctrl-C that a library turned into another error
                raise KeyboardInterrupt from error
            row = base_row(cell)
            row.update(status="failed", error=f"{type(error).__name__}: {error}",
                       trace=traceback.format_exc(limit=-3))
        row["seconds"] = round(time.perf_counter() - started, 4)
        return row

    def _run(self, cell: Cell) -> dict[str, Any]:
        from noisesearch.api import run_plan
        from noisesearch.config import RunConfig
        from noisesearch.planning import plan

        config = RunConfig(**cell.config)
        model = self._model(config)
        # The bench's run folders share one parent: probing it once per worker is enough.
        parent = str(Path(cell.run_dir).parent)
        checked = plan(config, self.registries, built_model=model, check_output=parent not in self._probed)
        self._probed.add(parent)
        checked.built_verifiers = {
            entry.name: self._verifier(entry.name, config.verifier_options.get(entry.name, {}), config.device)
            for entry in [*checked.verifiers, *([checked.evaluator] if checked.evaluator else [])]
        }
        # No journal: an interrupted cell is run again from scratch (see run), never resumed.
        result = run_plan(checked, write=True, report=cell.report, journaled=False)
        scores = dict(result.best.scores)
        # Every evaluator judges the winner the same way, after the search and on its image
        # alone, so that a row's evaluator scores and verdicts do not depend on the order of
        # the evaluators (the run's own evaluator, the first, scored the winner in its batch:
        # ~1e-6 apart; run.json keeps that score and verdict).
        agrees: dict[str, bool | None] = {}
        for name in cell.evaluators:
            judge = self._verifier(name, cell.evaluator_options.get(name, {}), config.device)
            scores[name], agrees[name] = judge_winner(judge, result.best.image, result.condition)
        row = base_row(cell)
        row.update(
            status="ok",
            nfe=result.usage.nfe,
            candidates=result.usage.candidates,
            steps=config.steps,
            objective=result.best.objective,
            scores={name: _finite(value) for name, value in sorted(scores.items())},
            agrees=agrees,
            diversity=diversity([c.image for c in result.top if c.image is not None]),
            search_seconds=round(result.seconds, 4),
        )
        return row

    def _model(self, config: Any) -> Any:
        key = json.dumps([config.model, config.model_options, config.device], sort_keys=True, default=str)
        if key not in self._models:
            from noisesearch.planning import _expand_model_prefix, with_device

            started = time.perf_counter()
            self._models.clear()  # one model at a time: cells come grouped by model
            probe = type(config)(**{**config.to_json()})
            _expand_model_prefix(probe)
            entry = self.registries.models.get(probe.model)
            self._models[key] = entry.create(**with_device(entry, probe.model_options, probe.device))
            self.load_seconds += time.perf_counter() - started
        return self._models[key]

    def _verifier(self, name: str, options: dict[str, Any], device: str | None) -> Any:
        key = json.dumps([name, options, device], sort_keys=True, default=str)
        if key not in self._verifiers:
            from noisesearch.planning import with_device

            started = time.perf_counter()
            entry = self.registries.verifiers.get(name)
            self._verifiers[key] = entry.create(**with_device(entry, options, device))
            self.load_seconds += time.perf_counter() - started
        return self._verifiers[key]


@contextmanager
def fresh_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold a cell's run folder (``locking.py``) for the block, emptied of what an interrupted
    try left. The folder is emptied only once its lock is ours: a folder that another live
    process holds (``noisesearch report`` on it, a stray worker) is refused with
    :class:`~noisesearch.locking.FolderInUse` and left as it is, never removed under that
    process; a dead holder's lock (a killed worker's) is stale and broken. This lock, not
    the bench folder's, is what guards a cell, because the cells of a bench run in workers
    (Ray actors) that do not hold the bench lock: the driver holds it for them."""
    from noisesearch import locking

    if not run_dir.exists():  # nothing to clear: run_plan makes the folder and locks it
        yield
        return
    with locking.hold(run_dir):  # run_plan's own hold of it re-enters
        for entry in run_dir.iterdir():
            if entry.name.startswith(locking.LOCK_FILE):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        yield


def base_row(cell: Cell) -> dict[str, Any]:
    """The columns every row has, from the cell alone (failed cells too)."""
    return {
        "key": cell.key,
        "model": cell.config["model"],
        "strategy": cell.strategy,
        "kind": cell.kind,
        "verifier": cell.verifier,
        "verifiers": list(cell.config.get("verifiers") or []),
        "evaluators": list(cell.evaluators),
        "budget": cell.budget,
        **{k: v for k, v in cell.condition.items()},
        "seed": cell.seed,
        "run_dir": cell.run_dir,
        "status": "pending",
        "error": None,
    }


def judge_winner(judge: Any, image: Any, condition: Any) -> tuple[float | None, bool | None]:
    """A held-out evaluator's score of the winner ``image`` (C, H, W) and its verdict: whether
    it agrees with the condition (its own ``verdict``, else its ``predict`` against a label),
    ``None`` where it cannot say. As the run's verdicts are asked (``api._verdicts``)."""
    score = _finite(float(judge.score(image[None], condition)[0]))
    verdict = getattr(judge, "verdict", None)
    if callable(verdict):
        said = verdict(image, condition)
        return score, (bool(said["agrees"]) if said else None)
    if callable(getattr(judge, "predict", None)) and condition.label is not None:
        return score, int(judge.predict(image[None])[0]) == int(condition.label)
    return score, None


def agrees_of(row: dict[str, Any], evaluator: str) -> bool | None:
    """``evaluator``'s verdict on a row's winner: ``agrees`` holds one per evaluator; a row of an
    earlier bench holds one bool, the verdict of its first evaluator (the run's own)."""
    agrees = row.get("agrees")
    if isinstance(agrees, dict):
        value = agrees.get(evaluator)
        return value if isinstance(value, bool) else None
    if isinstance(agrees, bool) and list(row.get("evaluators") or [])[:1] == [evaluator]:
        return agrees
    return None


def diversity(images: list[Any]) -> float | None:
    """Mean pairwise RMS pixel distance between a cell's kept winners (its top-k images): 0
    when search collapses onto one image; ``None`` with fewer than two."""
    if len(images) < 2:
        return None
    import torch

    flat = torch.stack([image.float().flatten() for image in images])  # (k, C*H*W)
    distances = torch.cdist(flat[None], flat[None])[0] / flat.shape[1] ** 0.5  # (k, k)
    k = flat.shape[0]
    return round(float(distances.sum() / (k * (k - 1))), 6)


def _finite(value: Any) -> Any:
    import math

    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
