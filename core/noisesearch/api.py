"""``search(...)``: the one entry point that the CLI, tests and scripts share.

A search goes through two phases. *Planning* resolves names and checks every combination
(condition vs model, verifier needs, options, budgets, output folder) without loading
anything. *Running* builds the plugins, runs the strategy through the engine and writes the
run directory.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch import batch_memory, fingerprint, interrupts, locking, results
from noisesearch.config import RunConfig
from noisesearch.engine import Engine, EngineResult, Scorer, Usage
from noisesearch.errors import ConfigError, RunInterrupted
from noisesearch.faults import blame
from noisesearch.names import model_label
from noisesearch.planning import (  # noqa: F401 - plan() and model_traits() are public here too
    DEFAULT_OUTPUT_ROOT,
    NO_EVALUATOR,
    Plan,
    model_name_of,
    model_traits,
    plan,
    plan_saved_run,
)
from noisesearch.plugins import Registries, build_registries
from noisesearch.registry import searched_names, verifier_requirements
from noisesearch.sampling import Solver, resolve_solver
from noisesearch.types import Candidate, Condition

if TYPE_CHECKING:
    from noisesearch.engine import Listener
    from noisesearch.journal import Journal
    from noisesearch.units import Dispatch



@dataclass
class SearchResult:
    """What a search found, and what it cost."""

    config: RunConfig
    condition: Condition
    best: Candidate
    baseline: Candidate
    top: list[Candidate]
    usage: Usage
    seconds: float
    run_dir: Path | None
    nfe_per_candidate: int
    verdicts: dict[str, Any] = field(default_factory=dict)
    history: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)
    strategy_report: dict[str, Any] = field(default_factory=dict)
    non_finite: dict[str, Any] = field(default_factory=dict)  # NaN/inf objectives and scores
    baseline_origin: str = "candidate"  # or "extra": see noisesearch.baseline
    #: The best noise as the model's own pipeline takes ``latents=`` (``model.pipeline_latents``:
    #: a diffusers pipeline's ``(1, C, h, w)``, FLUX packed), None for models without one; and
    #: how to call the pipeline with it (``pipeline_latents_info``).
    best_latents: Any = None
    latents_info: dict[str, Any] = field(default_factory=dict)
    #: Seconds spent building the model and the verifiers (run.json ``timings``).
    loading: dict[str, float] = field(default_factory=dict)
    #: Where ``config.batch_size`` came from: "user", "remembered" or "model default"
    #: (``noisesearch.batch_memory``).
    batch_size_from: str | None = None
    #: Every verifier the search scored by: ``config.verifiers`` and their members (an ensemble's),
    #: so that an evaluator among them is not called held out.
    searched: list[str] = field(default_factory=list)

    @property
    def image(self) -> Any:
        """The best candidate's image as an RGB PIL image at the model's size (None if not kept)."""
        from PIL import Image

        if self.best.image is None:
            return None
        array = (self.best.image.detach().float().clamp(0, 1) * 255).round().byte()  # (3, H, W)
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")

    def summary(self) -> dict[str, Any]:
        """Strict JSON (``noisesearch.finite``): non-finite scores are ``null`` plus a flag."""
        from noisesearch.finite import strict_json

        return strict_json({
            "condition": self.condition.to_json(),
            "objective": self.config.verifiers[0] if self.config.verifiers else None,
            "baseline": self.baseline.to_json(),
            "best": self.best.to_json(),
            "verdicts": self.verdicts,
            "usage": self.usage.to_json(),
            "nfe_per_candidate": self.nfe_per_candidate,
            "seconds": round(self.seconds, 4),
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "baseline_origin": self.baseline_origin,
            "non_finite": self.non_finite,
            "searched": self.searched,
        })


def condition_slug(condition: Condition) -> str:
    """A safe, short folder-name fragment for a condition (see :mod:`noisesearch.names`)."""
    from noisesearch.names import safe_name

    if condition.label is not None:
        return f"label{condition.label}"
    if condition.prompt is not None:
        return safe_name(condition.prompt, max_length=48)
    return "unconditional"


def check_output_folder(plan: Plan, resume: bool = False) -> None:
    """Refuse a run folder that a live process holds, or, unless resuming or overwriting, one that
    holds a run already (``--dry-run`` checks this too)."""
    if plan.output is None:
        return
    locking.check_unlocked(plan.output)
    if not resume:
        locking.check_fresh(plan.output, plan.config.overwrite)


def run_plan(
    plan: Plan, progress: bool = False, write: bool = True, resume: bool = False, report: bool = True,
    dispatch: Dispatch | None = None, journaled: bool = True,
) -> SearchResult:
    """Build the plugins of a checked plan, search, and write the run directory.

    While the search runs, ``run.json`` says it is incomplete and every expensive engine call
    is journaled; an interrupted run (Ctrl-C, a crash) keeps its folder consistent and
    ``resume=True`` continues it to the same result as an uninterrupted run. ``dispatch``:
    who computes the model's batches (``noisesearch.units``; default: this process).
    ``journaled=False`` keeps no journal (nothing to resume from; the finished folder is the
    same): for a caller that reruns an interrupted run from scratch, as a bench cell does.
    ``config.overlap``: this process's units computed one ahead on a thread
    (``noisesearch.overlap``), the same result.
    """
    config = plan.config
    if config.overlap and dispatch is not None:
        raise _overlap_refused()
    started = time.perf_counter()
    if write:  # before any weights load: a folder in use or taken
        check_output_folder(plan, resume)
    owners = fingerprint.owners(plan)
    loading = None
    if progress:  # loading takes seconds with nothing else on screen
        from noisesearch.progress import LoadingStatus

        loading = LoadingStatus()
        loading.show(f"loading model {plan.model.name}\u2026")
    loaded = {"load_model": time.perf_counter()}
    try:
        interrupts.import_torch()  # (a Ctrl-C in torch's import, which most models start with, is held)
        with blame(owners["model"]):
            use_threads(config.threads)
            model = plan.build_model()
        loaded["load_model"] = time.perf_counter() - loaded["load_model"]
        loaded["load_verifiers"] = time.perf_counter()
        if loading is not None:
            loading.show("loading verifiers\u2026")
        verifiers = {}
        for entry in plan.verifiers:
            with blame(owners[entry.name]):
                verifiers[entry.name] = plan.build_verifier(entry)
        evaluator = None
        if plan.evaluator is not None:
            name = plan.evaluator.name
            with blame(owners[name]):
                evaluator = (name, verifiers.get(name) or plan.build_verifier(plan.evaluator))
        loaded["load_verifiers"] = time.perf_counter() - loaded["load_verifiers"]
    finally:
        if loading is not None:
            loading.close()
    with blame(owners["strategy"]):
        strategy = plan.strategy.create(**config.strategy_options)
        check_model = getattr(strategy, "check_model", None)
        if callable(check_model):  # refused with the built model, before a run folder is made
            check_model(model)
    # The effective batch size is part of the configuration: results depend on it (by ~1e-7),
    # and a resumed or repeated run must batch alike. Unset: the size that fit last time
    # (noisesearch.batch_memory) or the model's; run.json says which (batch_size_from).
    solver = resolve_solver(model, config.solver, plan.steps)  # "native": the model's own sampler
    levels = search_levels(model, plan.steps, solver)
    def memory_key() -> str:  # made only where the memory is read or written
        return batch_memory.key(str(config.model), model, config.model_options)

    recorded = batch_memory.recorded_from(plan.output) if resume else None
    config.batch_size, batch_from = batch_memory.choose(config.batch_size, model, memory_key, recorded,
                                                        _padded_batch_cap(model, plan, levels, solver))
    run_dir = None
    journal = None
    listeners: list[Listener] = []
    engine = None
    held = contextlib.ExitStack()
    try:
        if write:
            folder = plan.output or results.default_run_dir(
                DEFAULT_OUTPUT_ROOT, model_label(config.model, config.model_options),
                condition_slug(plan.condition))
            _make_run_folder(folder)
            held.enter_context(locking.hold(folder))  # nothing is written here before this
            journal = _open_journal(folder, plan, resume, fingerprint.fingerprint(plan), journaled)
            run_dir = folder
            _write_status(run_dir, plan, "running", batch_from=batch_from)
            listeners.append(results.CandidatesWriter(run_dir / "candidates.jsonl"))
        listeners.append(interrupts.Checkpoint())
        if progress:
            from noisesearch.progress import ProgressBar

            listeners.append(ProgressBar(plan.budget.nfe, plan.budget.candidates))
        engine = Engine(
            model,
            plan.condition,
            Scorer(verifiers, evaluator, owners, evaluate_all=config.evaluate_all),
            plan.budget,
            levels,
            solver=solver,
            batch_size=config.batch_size,
            seed=config.seed,
            top_k=config.top_k,
            listeners=listeners,
            journal=journal,
            owners=owners,
            dispatch=dispatch or _overlap_dispatch(config),
        )
        outcome = engine.run(strategy)
        _close(listeners)
        if engine.batch_size < config.batch_size:  # halved on out-of-memory: start there next time
            batch_memory.remember(memory_key, engine.batch_size, failed=config.batch_size)
        result = SearchResult(
            config=config,
            condition=plan.condition,
            best=outcome.best,
            baseline=outcome.baseline or outcome.best,
            top=outcome.top,
            usage=outcome.usage,
            seconds=time.perf_counter() - started,
            run_dir=run_dir,
            nfe_per_candidate=engine.nfe_per_candidate,
            verdicts=_verdicts(evaluator, outcome, plan.condition),
            history=outcome.history,
            strategy_report=outcome.report,
            non_finite=outcome.non_finite,
            baseline_origin=outcome.baseline_origin,
            loading=loaded,
            batch_size_from=batch_from,
            searched=sorted(searched_names(plan.verifiers, config.verifier_options)),
        )
        result.best_latents, result.latents_info = pipeline_latents_info(
            model, outcome.best, engine.levels, config.solver, plan.steps, plan.condition)
        inputs = dict(getattr(model, "input_hashes", None) or {})
        for candidate in {id(c): c for c in (result.best, result.baseline)}.values():
            if inputs:  # files the result depends on (img2img's image): replay checks them
                candidate.recipe["inputs"] = inputs
        if run_dir is not None:
            _write_run_dir(result, run_dir, engine, plan, report)
    except BaseException as error:  # Ctrl-C or a crash: leave a folder that says so
        _close(listeners)
        if run_dir is not None:
            # A Ctrl-C that a library swallowed (a half-done lazy import) may surface as
            # another error: it is still an interruption (noisesearch.interrupts).
            stopped = isinstance(error, KeyboardInterrupt) or interrupts.requested()
            status = "interrupted" if stopped else "failed"
            _write_status(run_dir, plan, status, engine.usage if engine else None,
                          None if stopped else error, batch_from)
            if stopped and not isinstance(error, RunInterrupted):
                raise RunInterrupted(run_dir) from None
        raise
    finally:
        held.close()
    if journal is not None:  # last: until run.json says complete, the journal can resume it
        journal.remove()
    return result


def _overlap_dispatch(config: RunConfig) -> Dispatch | None:
    """``overlap``: the next batch computed on a thread while this one is scored."""
    if not config.overlap:
        return None
    from noisesearch.overlap import OverlapDispatch

    return OverlapDispatch()


def _overlap_refused() -> ConfigError:
    return ConfigError("overlap", "computes a search's batches on a thread of this process; an "
                       "executor computes them on its own workers. Leave out one of them")


def _padded_batch_cap(model: Any, plan: Plan, levels: list[float], solver: str | Solver) -> int | None:
    """For a model that pads every denoiser batch to the batch size (``static_batch``: a compiled
    network), the most candidates the budget allows: an automatic batch size above it would only
    compute padding rows (16 candidates in a batch of 64: 4x the work). None for other models."""
    if not getattr(model, "static_batch", False):
        return None
    from noisesearch.sampling import solver_nfe

    limits = [plan.budget.candidates] if plan.budget.candidates is not None else []
    if plan.budget.nfe is not None:
        per_candidate = max(1, solver_nfe(model.schedule, levels, solver))
        limits.append(-(-plan.budget.nfe // per_candidate))  # ceil
    return min(limits) if limits else None


def _open_journal(
    folder: Path, plan: Plan, resume: bool, fingerprint: dict[str, Any], journaled: bool = True
) -> Journal | None:
    """The run's journal, once ``folder`` is locked. A new run clears what a run before it
    left (``--overwrite``; refused without it) and records the fingerprint of its setup;
    a resumed one must have the same fingerprint (``noisesearch.fingerprint``). None for a
    new run that keeps no journal (``journaled=False``: ~10 ms a run of small files)."""
    from noisesearch import locking
    from noisesearch.fingerprint import check_same
    from noisesearch.journal import Journal

    if resume:
        journal = Journal(folder / JOURNAL_FOLDER, resume=True)
        recorded = journal.recorded_fingerprint()
        if recorded is not None:  # journals of older versions have none
            check_same(recorded, fingerprint, folder)
        return journal
    locking.check_fresh(folder, plan.config.overwrite)  # again, now that the folder is ours
    if plan.config.overwrite:
        locking.clear_run_files(folder)
    if not journaled:
        if (folder / JOURNAL_FOLDER).exists():  # an overwritten run's: not this run's
            import shutil

            shutil.rmtree(folder / JOURNAL_FOLDER)
        return None
    journal = Journal(folder / JOURNAL_FOLDER)
    journal.record_fingerprint(fingerprint)
    return journal


def _make_run_folder(folder: Path) -> None:
    """Create the run folder; an output root that cannot hold one (``/proc/...``, a file on
    the way, no permission) is bad input, said in one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("output", f"cannot create the run folder {str(folder)!r}: "
                          f"{exc.strerror or exc}") from None


def _close(listeners: list[Listener]) -> None:
    for listener in listeners:
        close = getattr(listener, "close", None)
        if close is not None:
            close()


JOURNAL_FOLDER = "journal"


def _write_status(
    run_dir: Path, plan: Plan, status: str, usage: Usage | None = None, error: BaseException | None = None,
    batch_from: str | None = None,
) -> None:
    """``run.json`` of a run that is not (yet) complete: enough to resume it."""
    data: dict[str, Any] = {
        "schema_version": results.SCHEMA_VERSION,
        "complete": False,
        "status": status,
        "config": plan.config.to_json(),
        "condition": plan.condition.to_json(),
        "budget": {"candidates": plan.budget.candidates, "nfe": plan.budget.nfe},
        "batch_size_from": batch_from,  # a resumed run keeps it (noisesearch.batch_memory)
    }
    if usage is not None:
        data["usage"] = usage.to_json()
    if error is not None and not isinstance(error, KeyboardInterrupt):
        data["error"] = f"{type(error).__name__}: {error}"
        if getattr(error, "resumable", True) is False:  # its journal would fail it again
            data["resumable"] = False
    results.write_json(run_dir / "run.json", data)


def resume_run(run_dir: Path, progress: bool = False, registries: Registries | None = None) -> SearchResult:
    """Continue an interrupted run in its own folder (``noisesearch run --resume RUN``)."""
    from noisesearch.runs import run_folder

    run_dir = run_folder(run_dir)  # the folder, or its run.json as `show` and `report` take
    _check_run_json(run_dir)
    checked, run = plan_saved_run(run_dir, registries)
    if run.get("complete"):
        raise ConfigError("resume", f"the run in {run_dir} is complete; nothing to resume")
    if not (run_dir / JOURNAL_FOLDER).is_dir():
        raise ConfigError("resume", f"the run in {run_dir} has no journal to resume from")
    return run_plan(checked, progress=progress, resume=True)


def use_threads(threads: int | None) -> None:
    """A run's ``threads`` (torch's intra-op threads, process-wide), set before its model loads;
    None leaves torch's choice alone."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def search_levels(model: Any, steps: int, solver: str | Solver = "ddim") -> list[float]:
    """The grid for ``steps`` solver steps: a model's own solver's grid; else the model's own grid
    (``model.levels(steps)``, e.g. to match a diffusers scheduler's timesteps), else its
    schedule's default grid."""
    if not isinstance(solver, str):
        return list(solver.levels(steps))
    levels = getattr(model, "levels", None)
    return list(levels(steps)) if callable(levels) else model.schedule.levels(steps)


def pipeline_latents_info(
    model: Any, best: Candidate, levels: list[float], solver: str, steps: int,
    condition: Condition | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The winner's noise as the model's pipeline takes ``latents=`` (``model.pipeline_latents``),
    and what regenerates the winner from it: ``regenerates`` is true only for a whole sample
    (one solve over the run's grid) with a solver that a pipeline scheduler runs; a winner of paths,
    SMC or pruning (re-noised, resampled or resumed) needs its recipe (``noisesearch replay``), and
    so does one whose step noise the pipeline would draw elsewhere (a model whose
    ``pipeline_step_generator`` is false: its pipeline does not pass ``generator`` to the
    scheduler's step). ``condition``'s negative prompt goes into the call's ``kwargs``."""
    convert = getattr(model, "pipeline_latents", None)
    if not callable(convert) or best.noise is None:
        return None, {}
    latents = convert(best.noise[None])
    if latents is None:
        return None, {}
    call = dict(model.pipeline_call(solver, steps))
    why_not = call.pop("why_not", None)  # the model says why its pipeline's latents= cannot (img2img)
    negative = condition.negative_prompt if condition is not None else None
    if negative is not None and isinstance(call.get("kwargs"), dict):
        call["kwargs"] = {**call["kwargs"], "negative_prompt": negative}
    ops = best.recipe.get("ops", [])
    whole = (len(ops) == 1 and ops[0].get("op") == "solve"
             and [float(v) for v in ops[0]["levels"]] == [float(v) for v in levels])
    info: dict[str, Any] = {"shape": list(latents.shape), "scaling": model.latents_scaling, **call}
    if not whole:
        info["regenerates"] = False
        info["why"] = ("the winner was re-noised, resampled or resumed along its path (paths, SMC, "
                       "pruning): its initial noise alone does not give it; replay its recipe "
                       "(noisesearch replay RUN)")
    elif why_not:
        info["regenerates"] = False
        info["why"] = why_not
    elif call.get("scheduler") is None:
        info["regenerates"] = False
        info["why"] = (f"no diffusers scheduler runs the {solver} solver; search with --solver ddim "
                       f"or native to regenerate the winner with the pipeline")
    elif "noise_seed" in ops[0] and not getattr(model, "pipeline_step_generator", True):
        info["regenerates"] = False
        info["why"] = ("the pipeline does not pass its generator to the scheduler's step, so its "
                       "stochastic scheduler would draw other step noise (from torch's global "
                       "generator); replay the recipe (noisesearch replay RUN)")
    else:
        info["regenerates"] = True
        if "noise_seed" in ops[0]:  # a stochastic scheduler's step noise
            info["generator_seed"] = int(ops[0]["noise_seed"])
    return latents, info


def _verdicts(
    evaluator: tuple[str, Any] | None, outcome: EngineResult, condition: Condition
) -> dict[str, Any]:
    """The evaluator's word on the baseline and the best, where it can say: its predicted
    class (an evaluator with ``predict``, label conditions; taken from its scoring call when it
    has ``score_and_predict``), or its own verdict (an evaluator
    with ``verdict(image, condition) -> {"predicted": str, "agrees": bool, ...}``, e.g. a
    prompt judged clause by clause)."""
    if evaluator is None:
        return {}
    pair = [outcome.baseline or outcome.best, outcome.best]
    verdict = getattr(evaluator[1], "verdict", None)
    if callable(verdict):
        found: dict[str, Any] = {"evaluator": evaluator[0]}
        for key, candidate in zip(("baseline", "best"), pair):
            said = verdict(candidate.image, condition)
            if not said:
                return {}
            found.update({f"{key}_{name}": value for name, value in said.items()})
            found[f"{key}_agrees"] = bool(said["agrees"])
        return found
    if not hasattr(evaluator[1], "predict") or condition.label is None:
        return {}
    import torch

    # From the evaluator's scoring calls where they predicted (score_and_predict), else asked now.
    known = [outcome.predicted.get(c.index) for c in pair]
    missing = [c for c, label in zip(pair, known) if label is None]
    asked = iter(evaluator[1].predict(torch.stack([c.image for c in missing])).tolist() if missing else ())
    predicted = [label if label is not None else next(asked) for label in known]
    return {
        "evaluator": evaluator[0],
        "baseline_predicted": int(predicted[0]),
        "best_predicted": int(predicted[1]),
        "baseline_agrees": int(predicted[0]) == condition.label,
        "best_agrees": int(predicted[1]) == condition.label,
    }


def _write_run_dir(
    result: SearchResult, run_dir: Path, engine: Engine, plan: Plan, report: bool = True
) -> None:
    """Everything a run folder holds; ``report=False`` leaves out report.html and scaling.png
    (``noisesearch report RUN`` draws them later), which a bench of many cells skips."""
    model = engine.model
    run_json = {
        "schema_version": results.SCHEMA_VERSION,
        "complete": True,
        "config": result.config.to_json(),
        "condition": result.condition.to_json(),
        "device": str(getattr(model, "device", "cpu")),
        "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
        "weights_dtype": str(getattr(model, "weights_dtype", getattr(model, "dtype", ""))).replace(
            "torch.", ""
        ),
        "levels": engine.levels,
        "batch_size_from": result.batch_size_from,  # "user", "remembered" or "model default"
        "nfe_per_candidate": engine.nfe_per_candidate,
        "budget": {"candidates": plan.budget.candidates, "nfe": plan.budget.nfe},
        "usage": result.usage.to_json(),
        "seconds": round(result.seconds, 4),
        "best": result.best.to_json(),
        "baseline": result.baseline.to_json(),
        "baseline_origin": result.baseline_origin,
        "non_finite": result.non_finite,
        "verdicts": result.verdicts,
        "evaluated": engine.scorer.evaluated,  # "all", "reported" (noisesearch.evaluation) or None
        "searched": result.searched,  # the verifiers and their members: a judge among them is not held out
        "strategy_report": result.strategy_report,
        "environment": results.environment(),
    }
    if getattr(model, "static_batch", False):  # a compiled denoiser: one batch shape (units.Unit.pad_to)
        run_json["denoiser_padding"] = {
            "rows": "batch_size", "fill": "last row repeated", "kept": "the real rows",
            "recorded": "each solve op's batch is the padded size, which replay pads to"}
    from noisesearch.report import write_report

    writing = time.perf_counter()
    pictures = results.Pictures()  # the best image is also top/01.png and a grid tile: encoded once
    results.save_png(result.best.image, run_dir / "best.png", pictures)
    results.save_png(result.baseline.image, run_dir / "baseline.png", pictures)
    evaluator = result.config.evaluator if result.config.evaluator != NO_EVALUATOR else None
    results.save_grid(result.top, run_dir / "grid.png", evaluator=evaluator, pictures=pictures)
    (run_dir / "top").mkdir(exist_ok=True)
    run_json["top"] = []
    for rank, candidate in enumerate(result.top, 1):
        entry = candidate.to_json()
        if candidate.image is not None:
            results.save_png(candidate.image, run_dir / "top" / f"{rank:02d}.png", pictures)
            entry["image"] = f"top/{rank:02d}.png"
        run_json["top"].append(entry)
    results.save_noise(
        result.best.noise, result.best.image, run_dir / "best_noise.safetensors", result.best.recipe,
        latents=result.best_latents, latents_info=result.latents_info,
    )
    run_json["timings"] = timings(result, time.perf_counter() - writing)
    results.write_json(run_dir / "run.json", run_json)
    if report:
        # The plot's rows from memory (history shares each candidate's scores): no re-parse.
        write_report(run_dir, [{"scores": scores, "nfe_spent": nfe} for nfe, _, scores in result.history])


def timings(result: SearchResult, writing: float) -> dict[str, float]:
    """run.json's ``timings``: where ``search_total`` went, in named buckets. ``load_model``,
    ``load_verifiers``, ``model`` and ``verifiers`` add up to it with ``other`` (engine,
    strategy, selection, journal, ``candidates.jsonl``); ``prepare`` (the prompt's encoding)
    and ``decode`` are parts of ``model``, ``evaluator`` of ``verifiers``, and ``baseline`` (a
    plain sample made apart from the search) spans both. ``writing``: the folder, after."""
    usage, loading = result.usage, result.loading
    accounted = usage.model_seconds + usage.verifier_seconds + sum(loading.values())
    parts = {key: usage.phases.get(key, 0.0) for key in ("prepare", "decode", "evaluator", "baseline")}
    numbers = {
        **{key: loading.get(key, 0.0) for key in ("load_model", "load_verifiers")},
        "model": usage.model_seconds,
        **{key: parts[key] for key in ("prepare", "decode")},
        "verifiers": usage.verifier_seconds,
        "evaluator": parts["evaluator"],
        "baseline": parts["baseline"],
        "other": max(result.seconds - accounted, 0.0),
        "search_total": result.seconds,
        "writing": writing,
    }
    return {key: round(value, 4) for key, value in numbers.items()}


def search(
    config: RunConfig | None = None,
    *,
    progress: bool = False,
    write: bool | None = None,
    registries: Registries | None = None,
    built_verifiers: dict[str, Any] | None = None,
    executor: Any = "local",
    executor_options: dict[str, Any] | None = None,
    **options: Any,
) -> SearchResult:
    """Run one search and return its result.

    Pass a :class:`RunConfig` or its fields as keywords, e.g.
    ``search(model="digits", label=3, candidates=64)``. With ``write=False`` nothing is
    written to disk. Raises a :class:`~noisesearch.errors.NoiseSearchError` subclass for any
    bad input, before loading weights.

    ``model`` takes a name, an ``hf:`` string, an already-built model (its registered name
    is found from its class), or an object a model plugin wraps: a diffusers pipeline in memory,
    with its LoRAs, scheduler and offload as the user set them (``search(model=pipe,
    prompt=...)``). ``write``: write the run folder; default yes, except for a wrapped pipeline,
    which writes nothing unless asked. The best image is ``result.image`` (PIL).
    ``built_verifiers`` maps verifier names to built verifiers, and ``registries`` are reused: a
    loop or a bench pays for building them once.

    ``executor="ray"`` (``pip install 'noisesearch[ray]'``) solves and decodes the search's
    batches on model-holding Ray actors and gathers them in order: the same winner and
    ``candidates.jsonl`` as a local search with the same seed and batch size.
    ``executor_options`` as for ``noisesearch bench`` (``workers``, ``address``, ``threads``,
    ...). An executor object (``noisesearch.bench.executors.make_executor("ray", ...)``) is
    used as it is and left open, so a loop of searches loads the model once per actor.
    ``overlap=True`` (``--overlap``) denoises the next batch on a thread of this process while
    the last one is decoded, scored and recorded: the same result, sooner when the verifiers
    take a while (``noisesearch.overlap``; not with another executor).
    """
    if write is not None and not isinstance(write, bool):  # "no" is truthy: it would write
        raise ConfigError("write", f"expected True, False or None, got {write!r}")
    built_model = None
    if config is not None and not isinstance(config.model, str):
        built_model = config.model
    elif not isinstance(options.get("model", ""), str):
        built_model = options["model"]
    if config is None:
        try:
            config = RunConfig(**options)
        except TypeError as exc:
            fields = ", ".join(RunConfig.__dataclass_fields__)
            raise ConfigError("search()", f"{exc}. Valid fields: {fields}") from None
    elif options:
        raise ConfigError("search()", "pass either a RunConfig or keyword fields, not both")
    if write is None:  # an object of a class that no plugin registers is wrapped: no folder
        registries = registries or build_registries()
        write = built_model is None or _registered(built_model, registries)
    checked = plan(config, registries, built_model=built_model, built_verifiers=built_verifiers,
                   check_output=write)
    try:
        if executor in (None, "local") and not executor_options:
            return run_plan(checked, progress=progress, write=write)
        spread = search_executor(executor, executor_options or {}, checked)  # before anything is made
        try:
            dispatch = spread_dispatch(spread, checked)
            return run_plan(checked, progress=progress, write=write, dispatch=dispatch)
        finally:
            if spread is not executor:  # made here: its cluster and actors go with the search
                spread.close()
    finally:
        wrapped = checked.built_model
        if wrapped is not None and wrapped is not built_model:  # made here around the user's object
            close = getattr(wrapped, "close", None)
            if callable(close):  # a diffusers pipeline gets its adapters back, failed search or not
                close()


def spread_dispatch(spread: Any, checked: Plan) -> Dispatch:
    """The dispatch of ``spread`` (an executor from :func:`search_executor`) for one search:
    workers that build the plan's model by its name and options, as this process does."""
    from noisesearch.planning import with_device

    options = with_device(checked.model, checked.config.model_options, checked.config.device)
    return spread.dispatch(checked.model.name, options)


def search_executor(executor: Any, options: dict[str, Any], checked: Plan) -> Any:
    """The executor that spreads one search's batches over its workers: ``executor`` itself
    when it is one, else the one a plugin registers under that name (``register_executors``),
    built with ``options``. Bad input is refused before anything is created."""
    if checked.config.overlap:
        raise _overlap_refused()
    if checked.built_model is not None:
        raise ConfigError("executor", "spreading a search over workers needs the model by name "
                          "(each worker builds its own), not a model object")
    if not isinstance(executor, str):
        if not callable(getattr(executor, "dispatch", None)):
            raise ConfigError("executor", f"{type(executor).__name__} cannot spread a search "
                              "(it has no dispatch(model, options))")
        return executor
    from noisesearch.plugins import get_plugin_manager

    factories: dict[str, Any] = {}
    get_plugin_manager().hook.register_executors(
        register=lambda name, factory: factories.setdefault(name, factory))
    if executor == "local":
        raise ConfigError("executor_options", "the local executor takes no options")
    if executor not in factories:
        names = ", ".join(["local", *factories])
        raise ConfigError("executor", f"unknown executor {executor!r}; available: {names}")
    try:
        built = factories[executor](**options)
    except TypeError as exc:
        raise ConfigError("executor_options", f"{executor}: {exc}") from None
    if not callable(getattr(built, "dispatch", None)):
        built.close()
        raise ConfigError("executor", f"the {executor!r} executor runs bench cells only; it "
                          "cannot spread one search over workers")
    return built


def _registered(built: Any, registries: Registries) -> bool:
    """Whether ``built`` is of a model class a plugin registers (not one to wrap)."""
    try:
        model_name_of(built, registries)
    except ConfigError:
        return False
    return True


@dataclass
class ReplayResult:
    """A winner regenerated from its recipe, compared with the image the run saved."""

    image: Any  # (3, H, W) in [0, 1]
    identical: bool
    max_abs_diff: float
    score: float | None  # the objective verifier's score of the replayed image, where it has one
    recorded_score: float | None


def replay_run(run_dir: Path, registries: Registries | None = None) -> ReplayResult:
    """Regenerate a run's best candidate from its recipe (``noisesearch replay``).

    Bit for bit on the same device, dtype and thread count (see ``noisesearch.recipes``);
    noises of kinds that cannot be re-derived come from ``best_noise.safetensors``.
    """
    import torch

    from noisesearch import recipes
    from noisesearch.runs import run_folder

    run_dir = run_folder(run_dir)  # the folder, or its run.json as `show` and `report` take
    _check_run_json(run_dir)
    checked, run = plan_saved_run(run_dir, registries)
    if not run.get("complete"):
        raise ConfigError("replay", f"the run in {run_dir} is not complete; finish it first with "
                          f"`noisesearch run --resume {run_dir}`")
    saved_path = run_dir / "best_noise.safetensors"
    if not saved_path.is_file():
        raise ConfigError("replay", f"{saved_path} is missing; the run folder is damaged")
    best = run.get("best")
    recipe = best.get("recipe") if isinstance(best, dict) else None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("start"), dict):
        raise ConfigError("replay", f"{run_dir / 'run.json'} records no recipe of its best "
                          f"candidate (\"best\": {{\"recipe\": ...}}); the file is damaged")
    _refuse_damaged_recipe(run_dir, recipe, max_batch=checked.config.batch_size)
    try:
        saved = results.load_best(saved_path)
        saved["image"], saved["noise"]  # noqa: B018 - both must be there
    except Exception as exc:  # truncated, a pickle, or any other non-safetensors file
        raise ConfigError("replay", f"{saved_path} is not a readable safetensors file of this "
                          f"run ({type(exc).__name__}: {exc}); the run folder is damaged") from None
    _check_inputs(recipe.get("inputs") or {}, checked.config.model_options)
    use_threads(checked.config.threads)  # results are bit-exact for a given count
    model = checked.build_model()
    _refuse_damaged_recipe(run_dir, recipe, shape=tuple(model.latent_shape))  # a subspace noise's layout
    noise = None if recipes.is_derivable(recipe["start"]) else saved["noise"]
    prepared = model.prepare(checked.condition)
    solver = resolve_solver(model, checked.config.solver, checked.steps)
    start, first = getattr(model, "initial_state", None), search_levels(model, checked.steps, solver)[0]
    with torch.inference_mode():
        latent = recipes.replay(
            recipe,
            lambda x, sigma: model.denoise(x, sigma, prepared),
            model.schedule,
            solver,
            tuple(model.latent_shape),
            getattr(model, "device", "cpu"),
            getattr(model, "dtype", None),
            noise=noise,
            initial_state=None if start is None else (lambda x: start(x, first)),
        )
        decode = lambda latents: model.decode(latents).float().clamp(0, 1)  # noqa: E731
        image = recipes.decode_padded(decode, latent, **recipe.get("decode", {})).cpu()
    recorded = saved["image"]
    results.save_png(image, run_dir / "replay.png")
    score, recorded_score = _replayed_score(checked, image, run)
    return ReplayResult(
        image=image,
        identical=bool(torch.equal(image, recorded)),
        max_abs_diff=float((image - recorded).abs().max()),
        score=score,
        recorded_score=recorded_score,
    )


def _refuse_damaged_recipe(run_dir: Path, recipe: dict[str, Any], **limits: Any) -> None:
    """A hand-edited or damaged recipe is one line naming run.json and the field, not a
    traceback from the middle of the replay."""
    from noisesearch import recipes

    problem = recipes.recipe_problem(recipe, **limits)
    if problem:
        raise ConfigError("replay", f"{run_dir / 'run.json'}: best.recipe.{problem}; the file was "
                          "edited or damaged, so its best cannot be replayed")


def _check_inputs(inputs: dict[str, str], model_options: dict[str, Any]) -> None:
    """The files a winner depends on (model option -> SHA-256 in its recipe, e.g. img2img's
    ``init_image``) must be the same files now: another image gives another result."""
    import hashlib

    for option, digest in inputs.items():
        path = Path(str(model_options.get(option) or "")).expanduser()
        if not path.is_file():
            raise ConfigError(option, f"the run used the file {str(path)!r} (sha256 {digest[:12]}...), "
                              f"which is gone; replay needs that same file")
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if found != digest:
            raise ConfigError(option, f"{str(path)!r} is not the file the run used (sha256 {found[:12]}... "
                              f"instead of {digest[:12]}...); replay needs the same file")


def _check_run_json(run_dir: Path) -> None:
    """Refuse a run.json this version cannot read (a newer schema, not UTF-8, a damaged
    table) with the same message as ``noisesearch show``."""
    from noisesearch.runs import RUN_JSON, read_run_json

    if (run_dir / RUN_JSON).is_file():
        read_run_json(run_dir / RUN_JSON)


def _replayed_score(checked: Plan, image: Any, run: dict[str, Any]) -> tuple[float | None, float | None]:
    """The objective's score of the replayed image, when one image alone has a score: not for
    verifiers that rank a pool (ensembles) or read the trajectory."""
    entry = checked.verifiers[0]
    needs = verifier_requirements(entry, checked.config.verifier_options.get(entry.name, {}))
    if "trajectory" in needs or hasattr(entry.factory, "combine"):
        return None, None
    verifier = checked.build_verifier(entry)
    score = float(verifier.score(image[None], checked.condition)[0])
    recorded = (run["best"].get("scores") or {}).get(entry.name)  # an edited run.json may lack it
    return score, float(recorded) if isinstance(recorded, (int, float)) else None
