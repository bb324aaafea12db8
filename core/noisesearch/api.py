"""``search(...)``: the one entry point that the CLI, tests and scripts share.

A search goes through two phases. *Planning* resolves names and checks every combination
(condition vs model, verifier needs, options, budgets, output folder) without loading
anything. *Running* builds the plugins, runs the strategy through the engine and writes the
run directory.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch.config import RunConfig, check_output_writable
from noisesearch.engine import Budget, Engine, EngineResult, Scorer, Usage
from noisesearch.errors import ConfigError, IncompatibleError
from noisesearch.plugins import Registries, build_registries
from noisesearch.registry import Entry, verifier_requirements
from noisesearch.types import Candidate, Condition

if TYPE_CHECKING:
    from noisesearch.engine import Listener

DEFAULT_OUTPUT_ROOT = Path("noisesearch-runs")
NO_EVALUATOR = "none"


@dataclass
class Plan:
    """A checked configuration: every name resolved, nothing loaded yet."""

    config: RunConfig
    condition: Condition
    model: Entry
    verifiers: list[Entry]
    evaluator: Entry | None
    strategy: Entry
    steps: int
    budget: Budget
    output: Path | None


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

    def summary(self) -> dict[str, Any]:
        return {
            "condition": self.condition.to_json(),
            "objective": self.config.verifiers[0] if self.config.verifiers else None,
            "baseline": self.baseline.to_json(),
            "best": self.best.to_json(),
            "verdicts": self.verdicts,
            "usage": self.usage.to_json(),
            "nfe_per_candidate": self.nfe_per_candidate,
            "seconds": round(self.seconds, 4),
            "run_dir": str(self.run_dir) if self.run_dir else None,
        }


def plan(config: RunConfig, registries: Registries | None = None) -> Plan:
    """Resolve and check a configuration before anything is loaded or computed."""
    config.validate()
    registries = registries or build_registries()
    _expand_model_prefix(config)
    model = registries.models.get(config.model)
    model.check_options(_with_device(model, config.model_options, config.device))
    traits = model_traits(model, config.model_options)
    condition = _condition(config, model, traits)
    verifier_names = config.verifiers or list(traits["default_verifiers"])
    if not verifier_names:
        raise ConfigError("verifiers", f"model {model.name!r} has no default verifier: name one")
    verifiers = [registries.verifiers.get(name) for name in verifier_names]
    evaluator_name = config.evaluator or traits["default_evaluator"]
    evaluator = None
    if evaluator_name and evaluator_name != NO_EVALUATOR:
        evaluator = registries.verifiers.get(evaluator_name)
    for entry in [*verifiers, *([evaluator] if evaluator else [])]:
        options = config.verifier_options.get(entry.name, {})
        entry.check_options(options)
        _check_verifier_fits(entry, options, condition, model)
    strategy = registries.strategies.get(config.strategy)
    strategy.check_options(config.strategy_options)
    unknown = set(config.verifier_options) - {e.name for e in verifiers} - {evaluator_name}
    if unknown:
        raise ConfigError("verifier_options", f"options for verifiers not in use: {sorted(unknown)}")
    steps = config.steps or traits["default_steps"]
    budget = Budget(candidates=config.effective_candidates(), nfe=config.budget_nfe)
    output = Path(config.output) if config.output else None
    check_output_writable(output or DEFAULT_OUTPUT_ROOT)
    config.verifiers = verifier_names
    config.evaluator = evaluator.name if evaluator else NO_EVALUATOR
    config.label = condition.label
    config.steps = steps
    return Plan(config, condition, model, verifiers, evaluator, strategy, steps, budget, output)


#: Model traits the core reads before loading anything, with their defaults.
MODEL_TRAITS: dict[str, Any] = {
    "conditioning": "none",
    "num_classes": None,
    "class_names": None,
    "default_verifiers": (),
    "default_evaluator": None,
    "default_steps": 20,
}
#: ``--model hf:<id-or-folder>`` is the model ``hf`` with the option ``path``.
HF_PREFIX = "hf:"


def _expand_model_prefix(config: RunConfig) -> None:
    if config.model.startswith(HF_PREFIX):
        config.model_options = {**config.model_options, "path": config.model[len(HF_PREFIX):]}
        config.model = "hf"


def model_traits(entry: Entry, options: dict[str, Any]) -> dict[str, Any]:
    """What a model is, without loading it: its class attributes, updated by the factory's
    ``describe(**options)`` where traits depend on options (a diffusers folder's
    ``model_index.json`` says whether it takes prompts or labels)."""
    traits = {name: getattr(entry.factory, name, default) for name, default in MODEL_TRAITS.items()}
    describe = getattr(entry.factory, "describe", None)
    if callable(describe):
        traits.update(describe(**options))
    return traits


def _resolve_label(label: int | str, model: Entry, traits: dict[str, Any]) -> int:
    names = traits["class_names"]
    if isinstance(label, str) and not label.strip().isdigit():
        if not names:
            raise ConfigError("label", f"model {model.name!r} takes class indices, got {label!r}")
        lowered = {name.lower(): i for i, name in enumerate(names)}
        if label.lower() in lowered:
            return lowered[label.lower()]
        import difflib

        close = difflib.get_close_matches(label.lower(), list(lowered), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError("label", f"{label!r} is not a class name of {model.name!r}.{hint}")
    return int(label)


def _condition(config: RunConfig, model: Entry, traits: dict[str, Any]) -> Condition:
    conditioning = traits["conditioning"]
    if conditioning == "label":
        if config.prompt is not None:
            raise IncompatibleError(
                f"model {model.name!r} is class-conditional: give it --label, not --prompt"
            )
        num_classes = traits["num_classes"]
        if config.label is None:
            if num_classes is None:
                raise ConfigError("label", f"model {model.name!r} needs a class label")
            label = random.Random(config.seed).randrange(num_classes)
        else:
            label = _resolve_label(config.label, model, traits)
        if num_classes is not None and not 0 <= label < num_classes:
            raise ConfigError("label", f"must be in 0..{num_classes - 1} for {model.name!r}, got {label}")
        return Condition(label=label)
    if conditioning == "prompt":
        if config.label is not None:
            raise IncompatibleError(
                f"model {model.name!r} is text-conditioned: give it --prompt, not --label"
            )
        if config.prompt is None:
            raise ConfigError("prompt", f"model {model.name!r} needs a prompt")
        return Condition(prompt=config.prompt, negative_prompt=config.negative_prompt)
    if config.prompt is not None or config.label is not None:
        raise IncompatibleError(f"model {model.name!r} is unconditional: it takes no prompt or label")
    return Condition()


def _check_verifier_fits(
    entry: Entry, options: dict[str, Any], condition: Condition, model: Entry
) -> None:
    needs = verifier_requirements(entry, options)
    for need in ("prompt", "label"):
        if need in needs and getattr(condition, need) is None:
            has = "class-conditional" if condition.label is not None else (
                "text-conditioned" if condition.prompt is not None else "unconditional"
            )
            raise IncompatibleError(
                f"verifier {entry.name!r} needs a {need}, but this run of the {has} model "
                f"{model.name!r} has none; choose a verifier that needs no {need} "
                f"(see `noisesearch verifiers`)"
            )


def _with_device(entry: Entry, options: dict[str, Any], device: str | None) -> dict[str, Any]:
    if device is not None and entry.accepts("device") and "device" not in options:
        return {**options, "device": device}
    return dict(options)


def condition_slug(condition: Condition) -> str:
    """A safe, short folder-name fragment for a condition (see :mod:`noisesearch.names`)."""
    from noisesearch.names import safe_name

    if condition.label is not None:
        return f"label{condition.label}"
    if condition.prompt is not None:
        return safe_name(condition.prompt, max_length=48)
    return "unconditional"


def run_plan(plan: Plan, progress: bool = False, write: bool = True, resume: bool = False) -> SearchResult:
    """Build the plugins of a checked plan, search, and write the run directory.

    While the search runs, ``run.json`` says it is incomplete and every expensive engine call
    is journaled; an interrupted run (Ctrl-C, a crash) keeps its folder consistent and
    ``resume=True`` continues it to the same result as an uninterrupted run.
    """
    from noisesearch import results
    from noisesearch.journal import Journal

    config = plan.config
    started = time.perf_counter()
    model = plan.model.create(**_with_device(plan.model, config.model_options, config.device))
    verifiers = {
        entry.name: entry.create(
            **_with_device(entry, config.verifier_options.get(entry.name, {}), config.device)
        )
        for entry in plan.verifiers
    }
    evaluator = None
    if plan.evaluator is not None:
        options = config.verifier_options.get(plan.evaluator.name, {})
        evaluator = (
            plan.evaluator.name,
            verifiers.get(plan.evaluator.name)
            or plan.evaluator.create(**_with_device(plan.evaluator, options, config.device)),
        )
    strategy = plan.strategy.create(**config.strategy_options)
    run_dir = None
    journal = None
    listeners: list[Listener] = []
    if write:
        root = plan.output or results.default_run_dir(
            DEFAULT_OUTPUT_ROOT, config.model, condition_slug(plan.condition)
        )
        run_dir = root
        run_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal(run_dir / JOURNAL_FOLDER, resume=resume)
        _write_status(run_dir, plan, "running")
        listeners.append(results.CandidatesWriter(run_dir / "candidates.jsonl"))
    if progress:
        from noisesearch.progress import ProgressBar

        listeners.append(ProgressBar(plan.budget.nfe, plan.budget.candidates))
    engine = Engine(
        model,
        plan.condition,
        Scorer(verifiers, evaluator),
        plan.budget,
        search_levels(model, plan.steps),
        solver=config.solver,
        batch_size=config.batch_size or getattr(model, "preferred_batch_size", 16),
        seed=config.seed,
        top_k=config.top_k,
        listeners=listeners,
        journal=journal,
    )
    try:
        outcome = engine.run(strategy)
    except BaseException as error:  # Ctrl-C or a crash: leave a folder that says so
        if run_dir is not None:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            _write_status(run_dir, plan, status, engine.usage, error)
        raise
    finally:
        for listener in listeners:
            close = getattr(listener, "close", None)
            if close is not None:
                close()
    if journal is not None:
        journal.remove()
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
    )
    if run_dir is not None:
        _write_run_dir(result, run_dir, engine, plan)
    return result


JOURNAL_FOLDER = "journal"


def _write_status(
    run_dir: Path, plan: Plan, status: str, usage: Usage | None = None, error: BaseException | None = None
) -> None:
    """``run.json`` of a run that is not (yet) complete: enough to resume it."""
    from noisesearch import results

    data: dict[str, Any] = {
        "schema_version": results.SCHEMA_VERSION,
        "complete": False,
        "status": status,
        "config": plan.config.to_json(),
        "condition": plan.condition.to_json(),
    }
    if usage is not None:
        data["usage"] = usage.to_json()
    if error is not None and not isinstance(error, KeyboardInterrupt):
        data["error"] = f"{type(error).__name__}: {error}"
    results.write_json(run_dir / "run.json", data)


def resume_run(run_dir: Path, progress: bool = False, registries: Registries | None = None) -> SearchResult:
    """Continue an interrupted run in its own folder (``noisesearch run --resume RUN``)."""
    import json

    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise ConfigError("resume", f"{run_dir} holds no run.json; is it a run folder?")
    run = json.loads(path.read_text())
    if run.get("complete"):
        raise ConfigError("resume", f"the run in {run_dir} is complete; nothing to resume")
    if not (run_dir / JOURNAL_FOLDER).is_dir():
        raise ConfigError("resume", f"the run in {run_dir} has no journal to resume from")
    fields = set(RunConfig.__dataclass_fields__)
    config = RunConfig(**{k: v for k, v in run["config"].items() if k in fields})
    config.output = str(run_dir)
    return run_plan(plan(config, registries), progress=progress, resume=True)


def search_levels(model: Any, steps: int) -> list[float]:
    """The model's own grid for ``steps`` solver steps (``model.levels(steps)``, e.g. to match
    a diffusers scheduler's timesteps), else its schedule's default grid."""
    levels = getattr(model, "levels", None)
    return list(levels(steps)) if callable(levels) else model.schedule.levels(steps)


def _verdicts(
    evaluator: tuple[str, Any] | None, outcome: EngineResult, condition: Condition
) -> dict[str, Any]:
    """The evaluator's predicted class for the baseline and the best, where it can say."""
    if evaluator is None or not hasattr(evaluator[1], "predict") or condition.label is None:
        return {}
    import torch

    pair = [outcome.baseline or outcome.best, outcome.best]
    predicted = evaluator[1].predict(torch.stack([c.image for c in pair]))
    return {
        "evaluator": evaluator[0],
        "baseline_predicted": int(predicted[0]),
        "best_predicted": int(predicted[1]),
        "baseline_agrees": int(predicted[0]) == condition.label,
        "best_agrees": int(predicted[1]) == condition.label,
    }


def _write_run_dir(result: SearchResult, run_dir: Path, engine: Engine, plan: Plan) -> None:
    from noisesearch import results

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
        "nfe_per_candidate": engine.nfe_per_candidate,
        "budget": {"candidates": plan.budget.candidates, "nfe": plan.budget.nfe},
        "usage": result.usage.to_json(),
        "seconds": round(result.seconds, 4),
        "best": result.best.to_json(),
        "baseline": result.baseline.to_json(),
        "verdicts": result.verdicts,
        "strategy_report": result.strategy_report,
        "environment": results.environment(),
    }
    from noisesearch.report import write_report

    writing = time.perf_counter()
    results.save_png(result.best.image, run_dir / "best.png")
    results.save_png(result.baseline.image, run_dir / "baseline.png")
    evaluator = result.config.evaluator if result.config.evaluator != NO_EVALUATOR else None
    results.save_grid(result.top, run_dir / "grid.png", evaluator=evaluator)
    (run_dir / "top").mkdir(exist_ok=True)
    run_json["top"] = []
    for rank, candidate in enumerate(result.top, 1):
        entry = candidate.to_json()
        if candidate.image is not None:
            results.save_png(candidate.image, run_dir / "top" / f"{rank:02d}.png")
            entry["image"] = f"top/{rank:02d}.png"
        run_json["top"].append(entry)
    results.save_noise(
        result.best.noise, result.best.image, run_dir / "best_noise.safetensors", result.best.recipe
    )
    usage = result.usage
    run_json["timings"] = {
        "model": round(usage.model_seconds, 4),
        "verifiers": round(usage.verifier_seconds, 4),
        "other": round(max(result.seconds - usage.model_seconds - usage.verifier_seconds, 0.0), 4),
        "search_total": round(result.seconds, 4),
        "writing": round(time.perf_counter() - writing, 4),
    }
    results.write_json(run_dir / "run.json", run_json)
    write_report(run_dir)


def search(
    config: RunConfig | None = None,
    *,
    progress: bool = False,
    write: bool = True,
    registries: Registries | None = None,
    **options: Any,
) -> SearchResult:
    """Run one search and return its result.

    Pass a :class:`RunConfig` or its fields as keywords, e.g.
    ``search(model="digits", label=3, candidates=64)``. With ``write=False`` nothing is
    written to disk. Raises a :class:`~noisesearch.errors.NoiseSearchError` subclass for any
    bad input, before loading weights.
    """
    if config is None:
        try:
            config = RunConfig(**options)
        except TypeError as exc:
            fields = ", ".join(RunConfig.__dataclass_fields__)
            raise ConfigError("search()", f"{exc}. Valid fields: {fields}") from None
    elif options:
        raise ConfigError("search()", "pass either a RunConfig or keyword fields, not both")
    return run_plan(plan(config, registries), progress=progress, write=write)


@dataclass
class ReplayResult:
    """A winner regenerated from its recipe, compared with the image the run saved."""

    image: Any  # (3, H, W) in [0, 1]
    identical: bool
    max_abs_diff: float
    score: float
    recorded_score: float


def replay_run(run_dir: Path, registries: Registries | None = None) -> ReplayResult:
    """Regenerate a run's best candidate from its recipe (``noisesearch replay``).

    Bit for bit on the same device, dtype and thread count (see ``noisesearch.recipes``);
    noises of kinds that cannot be re-derived come from ``best_noise.safetensors``.
    """
    import json

    import torch

    from noisesearch import recipes, results

    run_dir = Path(run_dir)
    run_json_path = run_dir / "run.json"
    if not run_json_path.is_file():
        raise ConfigError("run", f"{run_dir} holds no run.json; is it a run folder?")
    run = json.loads(run_json_path.read_text())
    fields = set(RunConfig.__dataclass_fields__)
    config = RunConfig(**{k: v for k, v in run["config"].items() if k in fields})
    config.output = str(run_dir)
    checked = plan(config, registries)
    saved = results.load_best(run_dir / "best_noise.safetensors")
    model = checked.model.create(**_with_device(checked.model, config.model_options, config.device))
    objective = checked.verifiers[0]
    verifier = objective.create(
        **_with_device(objective, config.verifier_options.get(objective.name, {}), config.device)
    )
    recipe = run["best"]["recipe"]
    noise = None if recipes.is_derivable(recipe["start"]) else saved["noise"]
    prepared = model.prepare(checked.condition)
    with torch.inference_mode():
        latent = recipes.replay(
            recipe,
            lambda x, sigma: model.denoise(x, sigma, prepared),
            model.schedule,
            config.solver,
            tuple(model.latent_shape),
            getattr(model, "device", "cpu"),
            getattr(model, "dtype", None),
            noise=noise,
        )
        image = model.decode(latent[None]).float().clamp(0, 1)
        score = float(verifier.score(image, checked.condition)[0])
    image = image[0].cpu()
    recorded = saved["image"]
    results.save_png(image, run_dir / "replay.png")
    return ReplayResult(
        image=image,
        identical=bool(torch.equal(image, recorded)),
        max_abs_diff=float((image - recorded).abs().max()),
        score=score,
        recorded_score=float(run["best"]["scores"][objective.name]),
    )
