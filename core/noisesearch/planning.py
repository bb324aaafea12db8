"""Planning a search: resolve every name and check every combination before anything loads.

A plan is the checked form of a :class:`RunConfig`: the condition (a prompt or a label,
checked against the model's traits), the registry entries of the model, verifiers, evaluator
and strategy (options checked against their signatures, verifier needs against the
condition), the budget and the output folder. Errors here name the field and exit with code 2.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisesearch.accounting import Budget
from noisesearch.config import RunConfig, check_output_writable, config_from_mapping
from noisesearch.errors import ConfigError, IncompatibleError, NoiseSearchError
from noisesearch.plugins import Registries, build_registries
from noisesearch.registry import Entry, verifier_requirements
from noisesearch.types import Condition

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
    #: Already-built objects to use instead of creating them (a loop or a bench pays once).
    built_model: Any = None
    built_verifiers: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> Any:
        """Create the model (this is when its weights load), unless one was given built."""
        if self.built_model is not None:
            return self.built_model
        return self.model.create(**with_device(self.model, self.config.model_options, self.config.device))

    def build_verifier(self, entry: Entry) -> Any:
        if entry.name in self.built_verifiers:
            return self.built_verifiers[entry.name]
        options = self.config.verifier_options.get(entry.name, {})
        return entry.create(**with_device(entry, options, self.config.device))


def plan(
    config: RunConfig,
    registries: Registries | None = None,
    *,
    built_model: Any = None,
    built_verifiers: dict[str, Any] | None = None,
    check_output: bool = True,
) -> Plan:
    """Resolve and check a configuration before anything is loaded or computed.

    ``built_model`` (an already-built model of ``config.model``) and ``built_verifiers``
    (already-built verifiers by name) are used as they are; the model's traits are then read
    from the object itself. ``check_output=False``: nothing will be written (``search(...,
    write=False)``), so the output folder is not probed (a folder made and removed: ~5 ms).
    """
    config.validate()
    registries = registries or build_registries()
    if built_model is None or isinstance(config.model, str):
        return _plan(config, registries, built_model, built_verifiers, check_output)
    given = built_model
    built_model, config.model = _built_and_name(built_model, registries, config)
    try:
        return _plan(config, registries, built_model, built_verifiers, check_output)
    except BaseException:
        close = getattr(built_model, "close", None)
        if built_model is not given and callable(close):  # made here around the user's pipeline:
            close()  # a refused plan gives it back as it was (its LoRAs)
        raise


def _plan(
    config: RunConfig, registries: Registries, built_model: Any, built_verifiers: dict[str, Any] | None,
    check_output: bool,
) -> Plan:
    """:func:`plan` once the model is known by name (and built, where it was given)."""
    if not isinstance(config.model, str):
        raise ConfigError("model", f"must be a model name (see `noisesearch models`), got {config.model!r}")
    _expand_model_prefix(config)
    model = registries.models.get(config.model)
    normalize = getattr(model.factory, "normalize_options", None)
    if callable(normalize):  # as run.json records them: e.g. local paths made absolute (hf)
        config.model_options = normalize(**config.model_options)
    if built_model is None:
        model.check_options(with_device(model, config.model_options, config.device))
        _check_devices(config)
    # The device too: a model checks options that depend on it (CPU offload) before loading.
    traits = model_traits(model, with_device(model, config.model_options, config.device), built_model)
    _check_native_options(config, traits)
    if callable(traits.get("check_steps")):  # the model's options against the run's steps
        traits["check_steps"](config.steps or traits["default_steps"])
    condition = _checked_condition(model, _condition(config, model, traits), built_model)
    if callable(traits.get("check_negative_prompt")):  # one no branch would read: refused
        traits["check_negative_prompt"](condition.negative_prompt)
    verifier_names = config.verifiers or list(traits["default_verifiers"])
    if not verifier_names:
        raise ConfigError("verifiers", f"model {model.name!r} has no default verifier: name one")
    _check_each_once(verifier_names)
    verifiers = [registries.verifiers.get(name) for name in verifier_names]
    evaluator_name = config.evaluator or traits["default_evaluator"]
    evaluator = None
    if evaluator_name and evaluator_name != NO_EVALUATOR:
        evaluator = registries.verifiers.get(evaluator_name)
        if pool_relative(evaluator):
            raise ConfigError("evaluator", f"{evaluator_name!r} ranks images within each scored batch, so "
                              f"as the judge its scores would depend on which candidates were judged "
                              f"together; name one of its members as the evaluator")
    for entry in [*verifiers, *([evaluator] if evaluator else [])]:
        options = config.verifier_options.get(entry.name, {})
        entry.check_options(options)
        _check_verifier_fits(entry, options, condition, model)
    strategy = registries.strategies.get(config.strategy)
    strategy.check_options(config.strategy_options)
    _check_strategy_values(strategy, config.strategy_options)
    _check_strategy_fits(strategy, [*verifiers, *([evaluator] if evaluator else [])], config)
    _check_gradients(strategy, verifiers, config, registries)
    unknown = set(config.verifier_options) - {e.name for e in verifiers} - {evaluator_name}
    if unknown:
        raise ConfigError("verifier_options", f"options for verifiers not in use: {sorted(unknown)}")
    if config.solver == "native" and not traits.get("native_solver"):
        raise ConfigError("solver", f"model {model.name!r} has no native sampler of its own; "
                          f"use ddim or heun")
    if config.solver == "native":
        _check_native_restarts(strategy, model, traits)
    steps = config.steps or traits["default_steps"]
    _check_max_steps(steps, traits)
    budget = Budget(candidates=config.effective_candidates(), nfe=config.budget_nfe)
    order = traits.get("native_order") or 1
    if callable(order):  # read only when it matters: it may import the model's library
        order = order() if config.solver == "native" else 1
    _check_budget(budget, steps, config.solver, int(order))
    output = Path(config.output).expanduser() if config.output else None  # "~/x" from a file or the API
    if check_output:
        check_output_writable(output or DEFAULT_OUTPUT_ROOT)
    if output is not None:
        config.output = str(output)  # run.json records where the run went (and stays JSON)
    config.verifiers = verifier_names
    config.evaluator = evaluator.name if evaluator else NO_EVALUATOR
    config.label = condition.label
    config.prompt = condition.prompt
    config.steps = steps
    return Plan(config, condition, model, verifiers, evaluator, strategy, steps, budget, output,
                built_model, dict(built_verifiers or {}))


def _built_and_name(obj: Any, registries: Registries, config: RunConfig) -> tuple[Any, str]:
    """A built model and its registered name; an object of a class no plugin registers (a
    diffusers pipeline in memory) is wrapped by the first factory whose ``wrap`` takes it."""
    try:
        return obj, model_name_of(obj, registries)
    except ConfigError:
        wrapped = wrap_foreign_model(obj, registries, config.model_options, config.device)
        if wrapped is None:
            raise
        return wrapped


def wrap_foreign_model(
    obj: Any, registries: Registries, options: dict[str, Any], device: str | None
) -> tuple[Any, str] | None:
    """``(model, entry name)`` from the first registered factory whose ``wrap(obj, **options)``
    returns a model for ``obj`` (e.g. ``hf`` for a diffusers pipeline); None if none does."""
    for entry in registries.models:
        wrap = getattr(entry.factory, "wrap", None)
        if callable(wrap):
            model = wrap(obj, **with_device(entry, options, device))
            if model is not None:
                return model, entry.name
    return None


def model_name_of(built: Any, registries: Registries) -> str:
    """The registered name of an already-built model: the entry whose factory is its class
    (exactly, else a base class)."""
    entries = list(registries.models)
    for exact in (True, False):
        for entry in entries:
            factory = entry.factory
            if isinstance(factory, type) and (
                type(built) is factory if exact else isinstance(built, factory)
            ):
                return entry.name
    raise ConfigError(
        "model", f"{type(built).__name__} is not a model class that a plugin registers; "
        "pass a model name, or register its class"
    )


#: Model traits the core reads before loading anything, with their defaults.
MODEL_TRAITS: dict[str, Any] = {
    "conditioning": "none",
    "num_classes": None,
    "class_names": None,
    "default_verifiers": (),
    "default_evaluator": None,
    "default_steps": 20,
    "default_prompt": None,
    "native_solver": False,  # the model brings its own sampler: ``native_solver()`` (--solver native)
    "native_solver_options": (),  # model options only that sampler uses (a diffusers scheduler)
    # network calls per step of that sampler (2: Heun's, the last step one); or a callable that
    # returns it, called only for --solver native (finding it may import the model's library)
    "native_order": 1,
    # a callable ``check_steps(steps)`` that refuses (ConfigError) a number of steps the model's
    # options cannot run (img2img: a strength that leaves no step), before anything loads
    "check_steps": None,
    # whether that sampler can start a solve part-way along its grid, as strategies that solve
    # from mid-path states need (False: PNDM, whose step keeps a history); or a callable that
    # returns it, called only for --solver native with such a strategy
    "native_restartable": True,
    # the most --steps the model runs (a DDPM-trained network: its training timesteps); None: any
    "max_steps": None,
    # a callable ``check_negative_prompt(negative_prompt)`` that refuses (ConfigError) a negative
    # prompt the model's options would ignore (no guidance branch reads it), or an option that
    # needs one, before anything loads
    "check_negative_prompt": None,
}
_UNSET = object()
#: ``--model hf:<id-or-folder>`` is the model ``hf`` with the option ``path``.
HF_PREFIX = "hf:"


def _expand_model_prefix(config: RunConfig) -> None:
    if config.model.startswith(HF_PREFIX):
        config.model_options = {**config.model_options, "path": config.model[len(HF_PREFIX):]}
        config.model = "hf"


def model_traits(entry: Entry, options: dict[str, Any], built: Any = None) -> dict[str, Any]:
    """What a model is, without loading it: its class attributes, updated by the factory's
    ``describe(**options)`` where traits depend on options (a diffusers folder's
    ``model_index.json`` says whether it takes prompts or labels); for an already-built
    model, its own attributes."""
    if built is not None:
        traits = {name: getattr(built, name, _UNSET) for name in MODEL_TRAITS}  # asked every search
        for name, value in traits.items():
            if value is _UNSET:
                traits[name] = getattr(entry.factory, name, MODEL_TRAITS[name])
        return traits
    traits = {name: getattr(entry.factory, name, default) for name, default in MODEL_TRAITS.items()}
    describe = getattr(entry.factory, "describe", None)
    if callable(describe):
        traits.update(describe(**options))
    return traits


def _resolve_label(label: int | str, model: Entry, traits: dict[str, Any]) -> int:
    names = traits["class_names"]
    if isinstance(label, str) and not (label.strip().isascii() and label.strip().isdigit()):
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
    if conditioning != "prompt" and config.negative_prompt is not None:
        # refused like --prompt: recorded in run.json, it would claim an effect it never had
        kind = "class-conditional" if conditioning == "label" else "unconditional"
        raise ConfigError("negative_prompt", f"model {model.name!r} is {kind}: a negative prompt "
                          f"has no effect on it; leave it out")
    if conditioning == "label":
        if config.prompt is not None:
            raise IncompatibleError(
                f"model {model.name!r} is class-conditional: give it --label, not a prompt (--prompt, "
                f"--prompts-file)"
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
        prompt = config.prompt if config.prompt is not None else traits["default_prompt"]
        if prompt is None:
            raise ConfigError("prompt", f"model {model.name!r} needs a prompt")
        return Condition(prompt=prompt, negative_prompt=config.negative_prompt)
    if config.prompt is not None or config.label is not None:
        raise IncompatibleError(f"model {model.name!r} is unconditional: it takes no prompt or label")
    return Condition()


def _checked_condition(model: Entry, condition: Condition, built: Any = None) -> Condition:
    """The model's own check of its condition, before anything loads: a ``check_condition``
    classmethod (words outside a small vocabulary, counts beyond a limit) raises a
    :class:`ConfigError`, and may return the condition in canonical form to run instead."""
    check = getattr(built if built is not None else model.factory, "check_condition", None)
    if not callable(check):
        return condition
    checked = check(condition)
    return condition if checked is None else checked


def pool_relative(entry: Entry) -> bool:
    """Whether a verifier's scores are ranks over the images scored together (an ensemble:
    ``member_scores`` and ``combine``): fine to search by, meaningless as a judge of one image."""
    factory = entry.factory
    return callable(getattr(factory, "member_scores", None)) and callable(getattr(factory, "combine", None))


def _check_each_once(verifier_names: list[str]) -> None:
    """Each verifier once: a second copy would be built, run and weighted as another verifier.
    (An evaluator that is also searched on is allowed, as the model's default is with
    ``--verifier shapes-judge``, the oracle ceiling; the run table then does not call it
    independent. ``bench`` refuses it: its tables claim a held-out evaluator.)"""
    for i, name in enumerate(verifier_names):
        if name in verifier_names[:i]:
            raise ConfigError("verifiers", f"{name!r} is named twice; name each verifier once")


def _check_verifier_fits(
    entry: Entry, options: dict[str, Any], condition: Condition, model: Entry
) -> None:
    # The class's own needs first: ``describe`` may check what the options name (weights that are
    # missing offline), which matters less than a verifier that cannot judge this run at all.
    declared = getattr(entry.factory, "requires", ())
    if isinstance(declared, (set, frozenset, list, tuple)):  # else verifier_requirements refuses it
        _refuse_unmet(entry, frozenset(declared), condition, model)
    _refuse_unmet(entry, verifier_requirements(entry, options), condition, model)


def _refuse_unmet(entry: Entry, needs: frozenset[str], condition: Condition, model: Entry) -> None:
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


def _check_strategy_values(strategy: Entry, options: dict[str, Any]) -> None:
    """Build the strategy once, so that a bad option value (a ``ValueError`` or ``TypeError`` of its
    constructor: a ``ConfigError``) exits 2 before anything loads; strategies load nothing when
    built. Any other exception is the plugin's own failure, reported when the run builds it."""
    try:
        strategy.create(**options)
    except NoiseSearchError:
        raise
    except Exception:  # noqa: BLE001 - blamed on the plugin when api.py builds it again
        return


def _check_strategy_fits(strategy: Entry, verifiers: list[Entry], config: RunConfig) -> None:
    """Strategies that re-noise or resample (``partial_paths = True``) finish samples whose path
    has no single clean prediction per level: verifiers that read the trajectory cannot score
    them."""
    if not getattr(strategy.factory, "partial_paths", False):
        return
    for entry in verifiers:
        if "trajectory" in verifier_requirements(entry, config.verifier_options.get(entry.name, {})):
            raise IncompatibleError(
                f"verifier {entry.name!r} reads the sampling trajectory, which strategy "
                f"{strategy.name!r} does not keep (it re-noises or resamples along the way); "
                f"use it with random or zero-order search"
            )


def solves_mid_path(strategy: Entry) -> bool:
    """Whether a strategy solves from states part-way along the grid (re-noised, resampled or
    partly solved ones: paths, smc, pruning), as it declares with ``mid_path_solves``; a
    strategy that does not declares it with ``partial_paths`` (whose strategies all re-noise or
    resample, except ``evolution`` under a model's own solver, which runs whole solves only)."""
    declared = getattr(strategy.factory, "mid_path_solves", None)
    if declared is None:
        declared = getattr(strategy.factory, "partial_paths", False)
    return bool(declared)


def _check_native_restarts(strategy: Entry, model: Entry, traits: dict[str, Any]) -> None:
    """A model's own sampler that cannot start mid-path (``native_restartable`` false: PNDM, as
    SD 1.5 ships it) with a strategy that solves from mid-path states: refused here, not after the
    weights load."""
    if not solves_mid_path(strategy):
        return
    restartable = traits.get("native_restartable", True)
    if callable(restartable):  # may import the model's library: only now that it matters
        restartable = restartable()
    if restartable is False:
        raise ConfigError("strategy", f"{strategy.name!r} solves from mid-path states, which the "
                          f"native scheduler of this {model.name!r} model cannot restart from (PNDM, "
                          f"or another whose step keeps a history); with --solver native use a "
                          f"strategy that solves whole paths (random, zero-order), or another "
                          f"--model-opt scheduler, or --solver ddim or heun")


def _check_max_steps(steps: Any, traits: dict[str, Any]) -> None:
    """More steps than the model can run (a DDPM-trained network's training timesteps)."""
    bound = traits.get("max_steps")
    if isinstance(bound, int) and isinstance(steps, int) and not isinstance(steps, bool) \
            and 0 < bound < steps:
        raise ConfigError("steps", f"must be at most {bound} for this pipeline (its scheduler's "
                          f"grid must stay within the network's training timesteps), got {steps}")


def _check_gradients(strategy: Entry, verifiers: list[Entry], config: RunConfig,
                     registries: Registries) -> None:
    """A strategy that follows gradients (``needs_gradients = True``, e.g. ``gradient``): every
    verifier it differentiates (its ``weights``, else the objective)
    declares ``differentiable = True``; and a core solver, not a model's own. Before loading
    (option values, such as lr > 0, were checked when ``plan`` built the strategy)."""
    if not getattr(strategy.factory, "needs_gradients", False):
        return
    weights = config.strategy_options.get("weights")
    names = list(weights) if isinstance(weights, dict) and weights else [verifiers[0].name]
    in_run = {entry.name: entry for entry in verifiers}
    for name in names:
        if name not in in_run:
            raise ConfigError(f"strategy {strategy.name}: option 'weights'",
                              f"{name!r} is not one of this run's verifiers ({', '.join(in_run)})")
        if not getattr(in_run[name].factory, "differentiable", False):
            usable = sorted(e.name for e in registries.verifiers
                            if getattr(e.factory, "differentiable", False))
            raise IncompatibleError(
                f"strategy {strategy.name!r} follows the gradient of its verifiers, and verifier "
                f"{name!r} is not differentiable; differentiable verifiers: {', '.join(usable)}"
            )
    if config.solver == "native":
        raise IncompatibleError(f"strategy {strategy.name!r} differentiates through the core "
                                f"solvers only; use --solver ddim or heun")


def _check_native_options(config: RunConfig, traits: dict[str, Any]) -> None:
    """Options that only the model's own sampler reads (a diffusers ``scheduler``) would change
    nothing with the core's solvers: refused rather than silently unused."""
    if config.solver == "native":
        return
    for name in traits.get("native_solver_options") or ():
        if config.model_options.get(name) not in (None, "", {}):
            raise ConfigError(f"model_options.{name}", f"is used only by --solver native (the model's "
                              f"own sampler); the {config.solver} solver would ignore it. Add "
                              f"--solver native, or leave it out")


def _check_budget(budget: Budget, steps: int, solver: str, native_order: int = 1) -> None:
    """A budget that cannot pay for one candidate, or a search that would never end, is
    refused here, before any folder exists. One candidate costs at least ``steps`` NFEs
    (DDIM, and a model's native sampler), ``2 * steps - 1`` with Heun (its last step may be an
    Euler step), the core's or a native second-order one (``native_order`` 2)."""
    from noisesearch.config import LIMITS

    if not isinstance(steps, int) or isinstance(steps, bool) or not 0 < steps <= LIMITS["steps"]:
        raise ConfigError("steps", f"must be a positive integer up to {LIMITS['steps']:,}, got {steps!r}")
    second_order = solver == "heun" or (solver == "native" and native_order >= 2)
    least = 2 * steps - 1 if second_order else steps
    if budget.nfe is not None and budget.nfe < least:
        raise ConfigError("budget_nfe", f"{budget.nfe} NFEs cannot pay for one candidate: each "
                          f"costs at least {least} ({steps} steps of {solver}); give at least "
                          f"{least}, or fewer --steps")
    if budget.candidates is not None and budget.nfe is None:
        cost = budget.candidates * least
        if cost > LIMITS["budget_nfe"]:
            raise ConfigError("candidates", f"{budget.candidates:,} candidates x {least} NFEs is "
                              f"{cost:,} denoiser evaluations, more than this tool runs in one "
                              f"search ({LIMITS['budget_nfe']:,}); lower --candidates or --steps")


def _check_devices(config: RunConfig) -> None:
    """Every device named (``--device`` and ``device`` options) exists on this machine."""
    from noisesearch.devices import check_device

    named = [("device", config.device), ("model_options.device", config.model_options.get("device"))]
    named += [(f"verifier_options.{name}.device", options.get("device"))
              for name, options in config.verifier_options.items() if isinstance(options, dict)]
    for field_name, device in named:
        if device is not None:
            if not isinstance(device, str):
                raise ConfigError(field_name, f"expected a device such as cpu or cuda, got {device!r}")
            check_device(device, field_name)


def with_device(entry: Entry, options: dict[str, Any], device: str | None) -> dict[str, Any]:
    if device is not None and entry.accepts("device") and "device" not in options:
        return {**options, "device": device}
    return dict(options)


def plan_saved_run(run_dir: Path, registries: Registries | None = None) -> tuple[Plan, dict[str, Any]]:
    """The plan of a run folder's effective configuration (for replay and resume), writing
    into that same folder, and its ``run.json``."""
    import json

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ConfigError("run", f"{run_dir} holds no run.json; is it a run folder?")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        saved = run["config"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ConfigError("run", f"{path} is not a run.json written by noisesearch") from None
    if not isinstance(saved, dict):
        raise ConfigError("run", f"{path}: its \"config\" is not a table; the file is damaged")
    fields = set(RunConfig.__dataclass_fields__)
    config = config_from_mapping({k: v for k, v in saved.items() if k in fields})
    config.output = str(run_dir)
    return plan(config, registries), run
