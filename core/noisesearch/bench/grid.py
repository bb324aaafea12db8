"""The bench grid: models x strategies (with options) x budgets x verifiers x suite x seeds,
from a TOML file or the command line, checked field by field before any model loads."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError, UnknownNameError
from noisesearch.registry import split_top_level

#: The baselines every bench runs beside its strategies, at the same NFEs (docs/bench.md).
BASELINES = ("default", "more-steps", "stochastic")
DEFAULT_BUDGETS = (40, 80, 160)
#: What a model-holding worker may declare it needs (Ray's actor options).
RESOURCE_KEYS = ("num_gpus", "num_cpus", "memory")
#: The grid's single positive-integer fields (``budgets`` and ``seeds`` are lists of integers).
INT_FIELDS = ("per_category", "limit", "steps", "batch_size", "threads", "top_k")


@dataclass
class StrategySpec:
    """One strategy of the grid with its options; ``label`` names it in tables and plots."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            extra = ",".join(f"{k}={_short(v)}" for k, v in sorted(self.options.items()))
            self.label = f"{self.name}({extra})" if extra else self.name


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _shown(value: Any) -> str:
    """A value as the grid file writes it (``true``, ``80``, ``"digits"``), for messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def parse_strategy(text: str) -> StrategySpec:
    """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` (values are JSON where they parse; a list's or
    table's commas stay in its value: ``pruning:checkpoints=[0.6,0.3],keep=0.5``)."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for pair in filter(None, split_top_level(rest, ",")):
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError("strategies", f"expected NAME:KEY=VALUE,..., got {text!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw.strip()
    if not name.strip():
        raise ConfigError("strategies", f"a strategy needs a name, got {text!r}")
    return StrategySpec(name.strip(), options)


@dataclass
class BenchGrid:
    """Everything that defines a bench. Each searched-on verifier (an ensemble counts as one)
    steers its own searches; every evaluator judges every winner and is never searched on."""

    models: list[str] = field(default_factory=lambda: ["digits"])
    strategies: list[StrategySpec] = field(default_factory=lambda: [StrategySpec("random")])
    budgets: list[int] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    verifiers: list[str] | None = None  # default: the model's first default verifier
    evaluators: list[str] | None = None  # default: the model's default evaluator
    prompts: str = "model"  # a suite (noisesearch.bench.suites)
    per_category: int | None = None
    limit: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None
    solver: str = "ddim"
    batch_size: int | None = None
    top_k: int = 4
    device: str | None = None
    threads: int | None = None  # torch threads per worker; results are bit-exact per count
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    cell_reports: bool = False  # each cell's report.html + scaling.png (~0.5 s a cell on a CPU)
    #: Each cell's next batch denoised while the last is scored (``--overlap``): the same results,
    #: so not part of a cell's key (a bench re-run with or without it continues).
    overlap: bool = False
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per model, what one worker holding it takes (Ray): ``{"flux-dev": {"num_gpus": 1}}``.
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    verifier_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    output: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.output, os.PathLike):  # bench(output=Path(...)): kept as text in bench.json
            self.output = os.fspath(self.output)

    def validate(self) -> None:
        """Checks that need no plugin; each error names the field."""
        for name in ("models", "strategies", "budgets", "seeds"):
            if not getattr(self, name):
                raise ConfigError(name, "give at least one")
        for budget in self.budgets:
            if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
                raise ConfigError("budgets", f"NFE budgets must be positive integers, got {budget!r}")
        for seed in self.seeds:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise ConfigError("seeds", f"must be non-negative integers, got {seed!r}")
        for name in INT_FIELDS:  # a bool is an int to Python: `threads = true` is refused
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(name, f"must be a positive integer, got {_shown(value)}")
        for name in ("models", "budgets", "seeds", "verifiers", "evaluators", "baselines"):
            seen: list[Any] = []
            for value in getattr(self, name) or ():
                if value in seen:  # else two cells would be the same search, named by neither
                    raise ConfigError(name, f"{_shown(value)} is given twice")
                seen.append(value)
        # An empty string is no suite, and as a folder it would be the current one.
        if not isinstance(self.prompts, str) or not self.prompts.strip():
            raise ConfigError("prompts", f"must be a suite name or file, got {self.prompts!r}")
        if self.output is not None and (not isinstance(self.output, str) or not self.output.strip()):
            raise ConfigError("output", f"must be a folder path, got {self.output!r}")
        for name in ("overlap", "cell_reports"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ConfigError("baselines", f"unknown {sorted(unknown)}; choose from {', '.join(BASELINES)}")
        if self.verifiers is not None and not self.verifiers:
            raise ConfigError("verifiers", "name at least one verifier to search on")
        if self.evaluators is not None and not self.evaluators:
            raise ConfigError("evaluators", "name at least one held-out evaluator (leave the key "
                              "out for the model's default evaluator)")
        for table in ("model_options", "resources"):
            for model in getattr(self, table):
                if model not in self.models:
                    raise ConfigError(table, f"{model!r} is not one of the grid's models {self.models}")
        for model, needs in self.resources.items():
            for key, value in needs.items():
                if (key not in RESOURCE_KEYS or isinstance(value, bool)
                        or not isinstance(value, (int, float)) or value < 0):
                    raise ConfigError("resources", f"{model}.{key}={value!r}: use non-negative "
                                      f"numbers for {', '.join(RESOURCE_KEYS)}")
        labels = [spec.label for spec in self.strategies]
        if len(set(labels)) != len(labels):
            raise ConfigError("strategies", f"two strategies share a label: {labels}; set 'label'")
        if set(labels) & {f"baseline:{b}" for b in BASELINES}:
            raise ConfigError("strategies", "labels starting with 'baseline:' are reserved")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: What each grid key accepts in a TOML file, for messages.
_LIST_INT = ("budgets", "seeds")
_LIST_STR = ("models", "verifiers", "evaluators", "baselines")


def grid_from_mapping(data: dict[str, Any], where: str = "grid") -> BenchGrid:
    """A grid from a TOML table (or merged command-line layers); unknown keys are refused."""
    valid = set(BenchGrid.__dataclass_fields__)
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(key, f"unknown key in {where}. Valid keys: {', '.join(sorted(valid))}")
        if key in _LIST_INT + _LIST_STR and not isinstance(value, list):
            value = [value]
        if key in _LIST_STR and value is not None and not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of names in {where}, got {value!r}")
        if key == "strategies":
            entries = value if isinstance(value, list) else [value]
            value = [_strategy_entry(entry, where) for entry in entries]
        if key in ("model_options", "verifier_options", "resources") and not (
            isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())
        ):
            raise ConfigError(key, f"expected a table of option tables by name in {where}")
        fields[key] = value
    grid = BenchGrid(**fields)
    grid.validate()
    return grid


def _strategy_entry(entry: Any, where: str) -> StrategySpec:
    if isinstance(entry, StrategySpec):
        return entry
    if isinstance(entry, str):
        return parse_strategy(entry)
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        extra = set(entry) - {"name", "options", "label"}
        if extra:
            raise ConfigError("strategies",
                              f"unknown keys {sorted(extra)} in {where}; use name, options, label")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise ConfigError("strategies", f"'options' must be a table in {where}")
        return StrategySpec(entry["name"], dict(options), str(entry.get("label", "")))
    raise ConfigError("strategies", f"expected a name or a table with 'name' in {where}, got {entry!r}")


def load_grid_file(path: Path | str) -> dict[str, Any]:
    """The table of a bench TOML file (``noisesearch bench GRID.toml``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("grid", f"cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("grid", f"{path}: invalid TOML: {exc}") from None


def named(field_name: str, error: UnknownNameError) -> ConfigError:
    """An unknown name as an error that names the grid field it came from."""
    return ConfigError(field_name, str(error))
